/*
 * syscallwait: a single thread blocked in a system call at checkpoint time,
 * which must complete correctly after restore.
 *
 * Usage: syscallwait read|sleep|abssleep [SECONDS]
 *
 *   read      prints "ready" then blocks in read(0, buf, 4096); prints
 *             "read <n> bytes: <data, one line>" and exits 0 if n > 0.
 *   sleep     prints "ready" then nanosleep(SECONDS) (relative), retried
 *             with the remaining time on EINTR (cryo's restore resumes it
 *             without one). Prints "slept eintr=<n>".
 *   abssleep  prints "ready" then clock_nanosleep(CLOCK_MONOTONIC,
 *             TIMER_ABSTIME) to now+SECONDS, retried on EINTR. Prints
 *             "slept eintr=<n>".
 *
 * Both sleeps then check CLOCK_MONOTONIC has passed the deadline and print
 * "OK" (exit 0) or "FAIL <detail>" (exit 1). Any other error return (a
 * garbage result from a wrongly resumed syscall) is reported and fails.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void say(const char *s)
{
	fputs(s, stdout);
	fflush(stdout);
}

static long long now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: syscallwait read|sleep|abssleep [SECONDS]\n");
		return 2;
	}
	double secs = argc > 2 ? atof(argv[2]) : 3;
	long long dur = (long long)(secs * 1e9);

	if (strcmp(argv[1], "read") == 0) {
		char buf[4097];
		say("ready\n");
		ssize_t n = read(0, buf, 4096);
		if (n <= 0) {
			printf("FAIL read returned %zd (%s)\n", n, n < 0 ? strerror(errno) : "EOF");
			return 1;
		}
		buf[n] = 0;
		for (ssize_t i = 0; i < n; i++)
			if (buf[i] == '\n')
				buf[i] = ' ';
		printf("read %zd bytes: %s\n", n, buf);
		say("OK\n");
		return 0;
	}

	long long start = now_ns(), deadline = start + dur;
	int eintr = 0;
	if (strcmp(argv[1], "sleep") == 0) {
		struct timespec req = {dur / 1000000000LL, dur % 1000000000LL}, rem;
		say("ready\n");
		for (;;) {
			int r = nanosleep(&req, &rem);
			if (r == 0)
				break;
			if (errno != EINTR || eintr > 100) {
				printf("FAIL nanosleep: %d (%s)\n", r, strerror(errno));
				return 1;
			}
			eintr++;
			req = rem;
		}
	} else if (strcmp(argv[1], "abssleep") == 0) {
		struct timespec at = {deadline / 1000000000LL, deadline % 1000000000LL};
		say("ready\n");
		for (;;) {
			int r = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL);
			if (r == 0)
				break;
			if (r != EINTR || eintr > 100) {
				printf("FAIL clock_nanosleep: %d (%s)\n", r, strerror(r));
				return 1;
			}
			eintr++;
		}
	} else {
		fprintf(stderr, "syscallwait: unknown mode %s\n", argv[1]);
		return 2;
	}
	long long end = now_ns();
	printf("slept eintr=%d\n", eintr);
	if (end < deadline) {
		printf("FAIL woke %lld ns before the deadline\n", deadline - end);
		return 1;
	}
	say("OK\n");
	return 0;
}
