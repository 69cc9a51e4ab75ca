/*
 * stateholdout: holds one piece of process state that cryo cannot checkpoint
 * yet, and shows that it runs on unharmed after a refused checkpoint.
 *
 * Usage: stateholdout KIND TRIGGER
 *
 * KIND is one of:
 *   seccomp       a seccomp filter (allows everything)
 *   tracer        a forked child that it traces (PTRACE_TRACEME in the child)
 *   personality   the PER_LINUX32 execution domain
 *   namespace     its own UTS namespace (unshare)
 *   cwd-deleted   a working directory that was removed
 *   timer-thread  a POSIX timer that signals a thread which has exited
 *
 * It sets the state up, prints "ready\n" and polls every 10 ms for TRIGGER;
 * then it checks that the state is still there, prints "OK" and exits 0 (or
 * "FAIL ..." and exits 1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
	printf("FAIL setup: %s: %s\n", what, strerror(errno));
	fflush(stdout);
	exit(2);
}

static pid_t thread_tid;
static int release;

/* The thread lives until the timer that signals it exists, then exits. */
static void *thread_main(void *arg)
{
	(void)arg;
	__atomic_store_n(&thread_tid, gettid(), __ATOMIC_SEQ_CST);
	while (!__atomic_load_n(&release, __ATOMIC_SEQ_CST))
		usleep(1000);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: stateholdout KIND TRIGGER\n");
		return 2;
	}
	const char *kind = argv[1];
	pid_t child = 0;
	timer_t timer;

	if (strcmp(kind, "seccomp") == 0) {
		struct sock_filter allow[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
		struct sock_fprog prog = {1, allow};
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
		    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0)
			die("seccomp");
	} else if (strcmp(kind, "tracer") == 0) {
		child = fork();
		if (child < 0)
			die("fork");
		if (child == 0) {
			ptrace(PTRACE_TRACEME, 0, 0, 0);
			for (;;)
				pause();
		}
	} else if (strcmp(kind, "personality") == 0) {
		if (personality(PER_LINUX32) < 0)
			die("personality");
	} else if (strcmp(kind, "namespace") == 0) {
		if (unshare(CLONE_NEWUTS) < 0)
			die("unshare");
	} else if (strcmp(kind, "cwd-deleted") == 0) {
		char dir[] = "/tmp/stateholdout-XXXXXX";
		if (!mkdtemp(dir) || chdir(dir) < 0 || rmdir(dir) < 0)
			die("cwd");
	} else if (strcmp(kind, "timer-thread") == 0) {
		pthread_t th;
		if (pthread_create(&th, NULL, thread_main, NULL) != 0)
			die("pthread_create");
		while (!__atomic_load_n(&thread_tid, __ATOMIC_SEQ_CST))
			usleep(1000);
		struct sigevent ev = {0};
		ev.sigev_notify = SIGEV_THREAD_ID;
		ev.sigev_signo = SIGUSR1;
		ev._sigev_un._tid = thread_tid;
		if (timer_create(CLOCK_MONOTONIC, &ev, &timer) < 0)
			die("timer_create");
		__atomic_store_n(&release, 1, __ATOMIC_SEQ_CST);
		pthread_join(th, NULL);
	} else {
		fprintf(stderr, "stateholdout: unknown kind %s\n", kind);
		return 2;
	}

	printf("ready\n");
	fflush(stdout);
	while (access(argv[2], F_OK) != 0)
		usleep(10000);

	int ok = 1;
	if (strcmp(kind, "personality") == 0)
		ok = personality(0xffffffff) == PER_LINUX32;
	if (strcmp(kind, "tracer") == 0) {
		char path[64], line[256];
		int tracer = -1;
		snprintf(path, sizeof path, "/proc/%d/status", child);
		FILE *f = fopen(path, "r");
		while (f && fgets(line, sizeof line, f))
			sscanf(line, "TracerPid: %d", &tracer);
		if (f)
			fclose(f);
		ok = tracer == getpid();
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	}
	if (!ok) {
		printf("FAIL %s state lost\n", kind);
		return 1;
	}
	printf("OK\n");
	return 0;
}
