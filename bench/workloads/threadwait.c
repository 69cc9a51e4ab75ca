/*
 * threadwait: a process whose threads are each blocked in a different system
 * call at checkpoint time; after restore every call must end as it would have
 * without the checkpoint, and every thread must keep its tid.
 *
 * Usage: threadwait TRIGGER SECONDS
 *
 * Threads, each with its own signal mask (checked again when it wakes):
 *   futex     FUTEX_WAIT_PRIVATE (no timeout) on a word until main sets it,
 *             with a pattern in xmm15 that must be there after each wait.
 *   timedwait FUTEX_WAIT_BITSET on a word nobody sets, absolute CLOCK_MONOTONIC
 *             deadline now+SECONDS: must end with ETIMEDOUT, not before it.
 *   epoll     epoll_wait on an eventfd until main writes it.
 *   sleep     nanosleep(SECONDS), retried with the remaining time on EINTR
 *             (POSIX lets a sleep end early with EINTR; the caller resumes
 *             it); must not end before its deadline.
 *   read      read on a pipe until main writes "hello"; holds a robust
 *             mutex meanwhile and exits without unlocking it, so that main's
 *             lock must then report EOWNERDEAD (the robust futex list).
 *   accept    accept on a TCP socket listening on 127.0.0.1 (a port the kernel
 *             picks) until main connects and sends "knock", which the thread
 *             must read from the accepted connection.
 * main prints "tid <role> <tid>" for each thread and itself, then "ready"
 * once every thread is about to block, then polls for the file TRIGGER. Once
 * it exists it wakes the futex, epoll, read and accept threads, joins every thread
 * (pthread_join waits on the kernel's clear_child_tid), and prints "OK", or
 * "FAIL <detail>" and exits 1. Each thread checks gettid() still returns the
 * tid it had before blocking.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { FUTEX, TIMEDWAIT, EPOLL, SLEEP, READ, ACCEPT, NTHREADS };
static const char *names[NTHREADS] = {"futex", "timedwait", "epoll", "sleep", "read",
				       "accept"};

static pid_t tids[NTHREADS];
static atomic_int blocking;
static char failure[NTHREADS][200];

static int futex_word, timed_word;
static int efd, epfd, pipefd[2], lfd;
static struct sockaddr_in laddr;
static long long dur_ns;
static pthread_mutex_t robust;

static long long now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static long futex(int *uaddr, int op, int val, const struct timespec *ts, int bitset)
{
	return syscall(SYS_futex, uaddr, op, val, ts, NULL, bitset);
}

/* start records the thread's tid, gives it a signal mask of its own and says
 * it is about to block; check says whether both are still the same. */
static void start(int role, sigset_t *mask)
{
	tids[role] = gettid();
	sigemptyset(mask);
	sigaddset(mask, SIGRTMIN + role);
	sigaddset(mask, SIGUSR1);
	pthread_sigmask(SIG_SETMASK, mask, NULL);
	atomic_fetch_add(&blocking, 1);
}

static int check(int role, sigset_t *mask)
{
	sigset_t now;
	pthread_sigmask(SIG_SETMASK, NULL, &now);
	if (gettid() != tids[role]) {
		snprintf(failure[role], sizeof failure[role], "%s: tid %d, was %d", names[role],
			 gettid(), tids[role]);
		return 0;
	}
	for (int s = 1; s < SIGRTMAX; s++) {
		if (sigismember(&now, s) != sigismember(mask, s)) {
			snprintf(failure[role], sizeof failure[role], "%s: signal %d %s in the mask",
				 names[role], s, sigismember(&now, s) ? "appeared" : "vanished");
			return 0;
		}
	}
	return 1;
}

/* futex_wait_xmm is futex(uaddr, FUTEX_WAIT_PRIVATE, val) issued with a known
 * pattern in xmm15, which the kernel keeps across the call (and a restore must
 * keep too: the XSAVE area); it returns the call's result (0 or -errno) and says
 * whether xmm15 still held the pattern afterwards. */
static long futex_wait_xmm(int *uaddr, int val, int *kept)
{
	static const unsigned long long pat[2] = {0x0123456789abcdefULL, 0xfedcba9876543210ULL};
	unsigned long long out[2];
	register long r10 asm("r10") = 0;
	long r;
	asm volatile("movdqu (%[pat]), %%xmm15\n\t"
		     "syscall\n\t"
		     "movdqu %%xmm15, (%[out])"
		     : "=a"(r)
		     : "0"((long)SYS_futex), "D"(uaddr), "S"((long)FUTEX_WAIT_PRIVATE),
		       "d"((long)val), "r"(r10), [pat] "r"(pat), [out] "r"(out)
		     : "rcx", "r11", "memory", "xmm15");
	*kept = out[0] == pat[0] && out[1] == pat[1];
	return r;
}

static void *futex_thread(void *arg)
{
	sigset_t mask;
	start(FUTEX, &mask);
	int wakes = 0;
	while (__atomic_load_n(&futex_word, __ATOMIC_SEQ_CST) == 0) {
		int kept;
		long r = futex_wait_xmm(&futex_word, 0, &kept);
		if (r != 0 && r != -EAGAIN && r != -EINTR) {
			snprintf(failure[FUTEX], 200, "futex: wait: %s", strerror((int)-r));
			return NULL;
		}
		if (!kept) {
			snprintf(failure[FUTEX], 200, "futex: xmm15 lost its value across the wait");
			return NULL;
		}
		wakes++;
	}
	if (check(FUTEX, &mask))
		printf("futex ok: woken after %d returns\n", wakes);
	return NULL;
}

static void *timedwait_thread(void *arg)
{
	sigset_t mask;
	long long deadline = now_ns() + dur_ns;
	struct timespec ts = {deadline / 1000000000LL, deadline % 1000000000LL};
	start(TIMEDWAIT, &mask);
	long r = futex(&timed_word, FUTEX_WAIT_BITSET_PRIVATE, 0, &ts, FUTEX_BITSET_MATCH_ANY);
	int e = errno;
	long long late = now_ns() - deadline;
	if (r == 0 || e != ETIMEDOUT) {
		snprintf(failure[TIMEDWAIT], 200, "timedwait: returned %ld (%s), want ETIMEDOUT", r,
			 r ? strerror(e) : "woken");
		return NULL;
	}
	if (late < 0) {
		snprintf(failure[TIMEDWAIT], 200, "timedwait: ended %lld ns before its deadline",
			 -late);
		return NULL;
	}
	if (check(TIMEDWAIT, &mask))
		printf("timedwait ok: timed out %lld ms after the deadline\n", late / 1000000);
	return NULL;
}

static void *epoll_thread(void *arg)
{
	sigset_t mask;
	struct epoll_event ev;
	start(EPOLL, &mask);
	int eintr = 0;
	for (;;) {
		int n = epoll_wait(epfd, &ev, 1, -1);
		if (n == 1)
			break;
		if (n < 0 && errno == EINTR && eintr++ < 100)
			continue;
		snprintf(failure[EPOLL], 200, "epoll: epoll_wait returned %d (%s)", n,
			 strerror(errno));
		return NULL;
	}
	if (ev.data.u64 != 0xc0ffee) {
		snprintf(failure[EPOLL], 200, "epoll: event data %#llx", (long long)ev.data.u64);
		return NULL;
	}
	if (check(EPOLL, &mask))
		printf("epoll ok: eintr=%d\n", eintr);
	return NULL;
}

static void *sleep_thread(void *arg)
{
	sigset_t mask;
	long long deadline = now_ns() + dur_ns;
	struct timespec req = {dur_ns / 1000000000LL, dur_ns % 1000000000LL}, rem;
	start(SLEEP, &mask);
	int eintr = 0;
	while (nanosleep(&req, &rem) != 0) {
		if (errno != EINTR || eintr++ > 100) {
			snprintf(failure[SLEEP], 200, "sleep: nanosleep: %s", strerror(errno));
			return NULL;
		}
		req = rem;
	}
	long long late = now_ns() - deadline;
	if (late < 0) {
		snprintf(failure[SLEEP], 200, "sleep: woke %lld ns before its deadline", -late);
		return NULL;
	}
	if (check(SLEEP, &mask))
		printf("sleep ok: eintr=%d\n", eintr);
	return NULL;
}

static void *read_thread(void *arg)
{
	sigset_t mask;
	char buf[16] = {0};
	if (pthread_mutex_lock(&robust) != 0) {
		snprintf(failure[READ], 200, "read: lock the robust mutex");
		return NULL;
	}
	start(READ, &mask);
	ssize_t n = read(pipefd[0], buf, sizeof buf - 1);
	if (n != 5 || strcmp(buf, "hello") != 0) {
		snprintf(failure[READ], 200, "read: got %zd bytes (%s)", n,
			 n < 0 ? strerror(errno) : buf);
		return NULL;
	}
	if (check(READ, &mask))
		printf("read ok: %s\n", buf);
	return NULL; /* still holding the robust mutex */
}

static void *accept_thread(void *arg)
{
	sigset_t mask;
	char buf[16] = {0};
	start(ACCEPT, &mask);
	int c = accept(lfd, NULL, NULL);
	if (c < 0) {
		snprintf(failure[ACCEPT], 200, "accept: %s", strerror(errno));
		return NULL;
	}
	ssize_t n = read(c, buf, sizeof buf - 1);
	close(c);
	if (n != 5 || strcmp(buf, "knock") != 0) {
		snprintf(failure[ACCEPT], 200, "accept: read %zd bytes (%s)", n,
			 n < 0 ? strerror(errno) : buf);
		return NULL;
	}
	if (check(ACCEPT, &mask))
		printf("accept ok: %s\n", buf);
	return NULL;
}

/* knock connects to the accept thread's listener and sends "knock". */
static int knock(void)
{
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&laddr, sizeof laddr) != 0 ||
	    write(s, "knock", 5) != 5)
		return -1;
	return close(s);
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: threadwait TRIGGER SECONDS\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	dur_ns = (long long)(atof(argv[2]) * 1e9);

	pthread_mutexattr_t ma;
	pthread_mutexattr_init(&ma);
	pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
	pthread_mutex_init(&robust, &ma);
	efd = eventfd(0, EFD_CLOEXEC);
	epfd = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0xc0ffee};
	if (efd < 0 || epfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, efd, &ev) != 0 ||
	    pipe2(pipefd, O_CLOEXEC) != 0) {
		printf("FAIL setup: %s\n", strerror(errno));
		return 1;
	}
	socklen_t alen = sizeof laddr;
	laddr.sin_family = AF_INET;
	laddr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&laddr, sizeof laddr) != 0 ||
	    listen(lfd, 8) != 0 || getsockname(lfd, (struct sockaddr *)&laddr, &alen) != 0) {
		printf("FAIL listen: %s\n", strerror(errno));
		return 1;
	}

	void *(*fns[NTHREADS])(void *) = {futex_thread, timedwait_thread, epoll_thread,
					  sleep_thread, read_thread, accept_thread};
	pthread_t th[NTHREADS];
	for (int i = 0; i < NTHREADS; i++)
		pthread_create(&th[i], NULL, fns[i], NULL);
	while (atomic_load(&blocking) < NTHREADS)
		usleep(1000);
	printf("tid main %d\n", gettid());
	for (int i = 0; i < NTHREADS; i++)
		printf("tid %s %d\n", names[i], tids[i]);
	printf("ready\n");

	struct stat st;
	while (stat(argv[1], &st) != 0)
		usleep(10000);
	printf("triggered\n");

	__atomic_store_n(&futex_word, 1, __ATOMIC_SEQ_CST);
	futex(&futex_word, FUTEX_WAKE_PRIVATE, 1, NULL, 0);
	uint64_t one = 1;
	if (write(efd, &one, 8) != 8 || write(pipefd[1], "hello", 5) != 5 || knock() != 0) {
		printf("FAIL wake: %s\n", strerror(errno));
		return 1;
	}
	for (int i = 0; i < NTHREADS; i++)
		pthread_join(th[i], NULL);

	int failed = 0;
	for (int i = 0; i < NTHREADS; i++) {
		if (failure[i][0]) {
			printf("FAIL %s\n", failure[i]);
			failed = 1;
		}
	}
	int r = pthread_mutex_lock(&robust);
	if (r != EOWNERDEAD) {
		printf("FAIL robust mutex: lock returned %d (%s), want EOWNERDEAD\n", r, strerror(r));
		failed = 1;
	}
	if (failed)
		return 1;
	printf("OK\n");
	return 0;
}
