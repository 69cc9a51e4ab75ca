/*
 * statecheck: sets up the process-wide kernel state cryo restores, waits to be
 * checkpointed, then checks that every piece came back as it was.
 *
 * Usage: statecheck TRIGGER DIR
 *
 * It becomes a session leader, changes to DIR, and sets signal handlers,
 * blocked and pending signals (process-wide and queued to itself alone),
 * interval timers, POSIX timers, rlimits, umask, personality, nice and
 * scheduling policy, CPU affinity, I/O priority, timer slack, the child
 * subreaper flag, no_new_privs, a timerfd (relative and absolute), a signalfd
 * and a memfd; then drops to uid/gid 1000 with saved set ids 0,
 * supplementary groups and a few capabilities (one of them ambient). It
 * writes "ready\n" to stdout and polls every 10 ms for TRIGGER to exist. A
 * test checkpoints it while it waits, kills it, restores it and creates
 * TRIGGER. It then prints one "FAIL <item>: <detail>" line per difference and
 * finally "OK" (exit 0) or "FAILED <n>" (exit 1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define UID 1000
#define GID 1000
#define MEMFD_NAME "statecheck mem"
#define MEMFD_DATA 10000
#define MEMFD_SIZE 20000
#define MEMFD_POS 1234
#define NICE 7
#define IOPRIO ((2 << 13) | 5) /* IOPRIO_CLASS_BE, level 5 */
#define SLACK 123456

static int failures;
static int tfd_rel, tfd_abs, tfd_fired, sfd, mfd;
static long long abs_expiry; /* CLOCK_REALTIME ns of tfd_abs's expiry */
static long long set_at;     /* CLOCK_MONOTONIC ns when the timers were set */
static char dir[4096];
static struct stat dirst;
static int sig_rt1, sig_rt2, sig_rt3, sig_rt4;

static void fail(const char *item, const char *fmt, ...)
{
	va_list ap;
	printf("FAIL %s: ", item);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	failures++;
}

static void die(const char *what)
{
	printf("FAIL setup: %s: %s\n", what, strerror(errno));
	fflush(stdout);
	exit(2);
}

static long long ns(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long tsns(struct timespec ts) { return ts.tv_sec * 1000000000LL + ts.tv_nsec; }

static void on_usr1(int sig, siginfo_t *si, void *uc) { (void)sig, (void)si, (void)uc; }
static void on_hup(int sig) { (void)sig; }

/* The rlimits set before the checkpoint. */
static const struct {
	int res;
	rlim_t cur, max;
} limits[] = {
	{RLIMIT_NOFILE, 700, 900},
	{RLIMIT_CORE, 0, RLIM_INFINITY},
	{RLIMIT_NPROC, 3000, 4000},
	{RLIMIT_MSGQUEUE, 12345, 819200},
	{RLIMIT_STACK, 6 << 20, RLIM_INFINITY},
};

static const struct {
	int which;
	long sec, interval_usec;
} itimers[] = {
	{ITIMER_REAL, 1000, 7000000},
	{ITIMER_VIRTUAL, 500, 3000000},
	{ITIMER_PROF, 600, 250000},
};

static int capset2(uint64_t eff, uint64_t prm, uint64_t inh)
{
	struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct d[2] = {
		{(uint32_t)eff, (uint32_t)prm, (uint32_t)inh},
		{(uint32_t)(eff >> 32), (uint32_t)(prm >> 32), (uint32_t)(inh >> 32)},
	};
	return syscall(SYS_capset, &h, d);
}

#define CAPS_PRM ((1ULL << CAP_NET_BIND_SERVICE) | (1ULL << CAP_CHOWN) | (1ULL << CAP_SETUID) | \
		  (1ULL << CAP_SETGID))
#define CAPS_EFF (1ULL << CAP_NET_BIND_SERVICE)
#define CAPS_INH ((1ULL << CAP_NET_BIND_SERVICE) | (1ULL << CAP_CHOWN))

static sigset_t blocked(void)
{
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGUSR1);
	sigaddset(&s, SIGWINCH);
	sigaddset(&s, sig_rt1);
	sigaddset(&s, sig_rt2);
	sigaddset(&s, sig_rt3);
	sigaddset(&s, sig_rt4);
	return s;
}

static void setup(const char *where)
{
	sig_rt1 = SIGRTMIN + 1, sig_rt2 = SIGRTMIN + 2, sig_rt3 = SIGRTMIN + 3;
	sig_rt4 = SIGRTMIN + 4;
	if (setsid() < 0)
		die("setsid");
	if (chdir(where) < 0 || !getcwd(dir, sizeof dir) || stat(".", &dirst) < 0)
		die("chdir");
	umask(027);
	if (personality(ADDR_NO_RANDOMIZE) < 0)
		die("personality");
	struct sched_param sp = {0};
	if (sched_setscheduler(0, SCHED_BATCH, &sp) < 0)
		die("sched_setscheduler");
	if (setpriority(PRIO_PROCESS, 0, NICE) < 0)
		die("setpriority");
	cpu_set_t cpus;
	CPU_ZERO(&cpus);
	CPU_SET(0, &cpus);
	if (sched_setaffinity(0, sizeof cpus, &cpus) < 0)
		die("sched_setaffinity");
	if (syscall(SYS_ioprio_set, 1, 0, IOPRIO) < 0)
		die("ioprio_set");
	if (prctl(PR_SET_TIMERSLACK, SLACK, 0, 0, 0) < 0)
		die("timer slack");
	if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0)
		die("child subreaper");
	for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
		struct rlimit r = {limits[i].cur, limits[i].max};
		if (setrlimit(limits[i].res, &r) < 0)
			die("setrlimit");
	}

	/* Handlers and the mask. */
	struct sigaction sa = {0};
	sa.sa_sigaction = on_usr1;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	if (sigaction(SIGUSR1, &sa, NULL) < 0)
		die("sigaction USR1");
	signal(SIGUSR2, SIG_IGN);
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_hup;
	sigaddset(&sa.sa_mask, SIGTERM);
	if (sigaction(SIGHUP, &sa, NULL) < 0)
		die("sigaction HUP");
	sigset_t b = blocked();
	sigprocmask(SIG_BLOCK, &b, NULL);

	/* Pending: to the process, queued with values, and to this thread alone. */
	kill(getpid(), SIGUSR1);
	union sigval v = {.sival_int = 42};
	sigqueue(getpid(), sig_rt1, v);
	v.sival_int = 43;
	sigqueue(getpid(), sig_rt1, v);
	siginfo_t si = {0};
	si.si_signo = sig_rt2;
	si.si_code = SI_QUEUE;
	si.si_pid = getpid();
	si.si_uid = getuid();
	si.si_value.sival_int = 7;
	if (syscall(SYS_rt_tgsigqueueinfo, getpid(), gettid(), sig_rt2, &si) < 0)
		die("rt_tgsigqueueinfo");

	/* Interval timers. */
	set_at = ns(CLOCK_MONOTONIC);
	for (size_t i = 0; i < sizeof itimers / sizeof itimers[0]; i++) {
		struct itimerval it = {{itimers[i].interval_usec / 1000000,
					itimers[i].interval_usec % 1000000},
				       {itimers[i].sec, 0}};
		if (setitimer(itimers[i].which, &it, NULL) < 0)
			die("setitimer");
	}

	/* POSIX timers 0, 1 and 2; 1 is deleted so that the ids have a hole. */
	timer_t t[3];
	struct sigevent ev = {0};
	ev.sigev_notify = SIGEV_SIGNAL;
	ev.sigev_signo = sig_rt3;
	for (int i = 0; i < 3; i++) {
		ev.sigev_value.sival_int = 90 + i;
		if (timer_create(i == 0 ? CLOCK_MONOTONIC : CLOCK_REALTIME, &ev, &t[i]) < 0)
			die("timer_create");
		if ((long)t[i] != i) {
			errno = 0;
			die("timer ids are not 0, 1, 2");
		}
	}
	timer_delete(t[1]);
	struct itimerspec its = {{2, 500000000}, {300, 0}};
	if (timer_settime(t[0], 0, &its, NULL) < 0)
		die("timer_settime");

	/* timerfds: relative, absolute, and one that has fired once. */
	tfd_rel = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
	struct itimerspec rel = {{1, 500000000}, {200, 123456789}};
	if (tfd_rel < 0 || timerfd_settime(tfd_rel, 0, &rel, NULL) < 0)
		die("timerfd relative");
	tfd_abs = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK);
	abs_expiry = ns(CLOCK_REALTIME) + 300 * 1000000000LL + 987654321;
	struct itimerspec ab = {{0, 0}, {abs_expiry / 1000000000, abs_expiry % 1000000000}};
	if (tfd_abs < 0 || timerfd_settime(tfd_abs, TFD_TIMER_ABSTIME, &ab, NULL) < 0)
		die("timerfd absolute");
	tfd_fired = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	struct itimerspec once = {{0, 0}, {0, 1000}};
	if (tfd_fired < 0 || timerfd_settime(tfd_fired, 0, &once, NULL) < 0)
		die("timerfd fired");
	usleep(10000);

	/* signalfd and memfd. */
	sigset_t sm;
	sigemptyset(&sm);
	sigaddset(&sm, SIGWINCH);
	sigaddset(&sm, sig_rt4);
	sfd = signalfd(-1, &sm, SFD_NONBLOCK);
	if (sfd < 0)
		die("signalfd");
	mfd = memfd_create(MEMFD_NAME, MFD_ALLOW_SEALING);
	if (mfd < 0)
		die("memfd_create");
	char buf[MEMFD_DATA];
	for (int i = 0; i < MEMFD_DATA; i++)
		buf[i] = (char)(i * 7 + 3);
	if (write(mfd, buf, sizeof buf) != sizeof buf || ftruncate(mfd, MEMFD_SIZE) < 0 ||
	    lseek(mfd, MEMFD_POS, SEEK_SET) != MEMFD_POS ||
	    fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0)
		die("memfd");

	prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);

	/* Credentials last: uid and gid 1000, saved set ids 0, some capabilities. */
	gid_t groups[] = {4, 24, 1000};
	if (setgroups(3, groups) < 0)
		die("setgroups");
	if (setresgid(GID, GID, 0) < 0)
		die("setresgid");
	if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
		die("keepcaps");
	if (setresuid(UID, UID, 0) < 0)
		die("setresuid");
	if (capset2(CAPS_EFF, CAPS_PRM, CAPS_INH) < 0)
		die("capset");
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0) < 0)
		die("ambient");
	prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
}

static void check_signals(void)
{
	struct sigaction sa;
	sigaction(SIGUSR1, NULL, &sa);
	if (sa.sa_sigaction != on_usr1 || !(sa.sa_flags & SA_SIGINFO) ||
	    !(sa.sa_flags & SA_RESTART))
		fail("handler", "SIGUSR1 handler %p flags %#x", (void *)sa.sa_sigaction,
		     sa.sa_flags);
	sigaction(SIGUSR2, NULL, &sa);
	if (sa.sa_handler != SIG_IGN)
		fail("handler", "SIGUSR2 not ignored");
	sigaction(SIGHUP, NULL, &sa);
	if (sa.sa_handler != on_hup || !sigismember(&sa.sa_mask, SIGTERM))
		fail("handler", "SIGHUP handler %p", (void *)sa.sa_handler);

	sigset_t cur, want = blocked();
	sigprocmask(SIG_BLOCK, NULL, &cur);
	for (int s = 1; s < NSIG; s++)
		if (sigismember(&cur, s) != sigismember(&want, s))
			fail("sigmask", "signal %d blocked %d, want %d", s, sigismember(&cur, s),
			     sigismember(&want, s));

	/* The thread's own queue holds sig_rt2 only; the shared one the others. */
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	unsigned long long shd = 0, thr = 0;
	while (f && fgets(line, sizeof line, f)) {
		sscanf(line, "ShdPnd: %llx", &shd);
		sscanf(line, "SigPnd: %llx", &thr);
	}
	if (f)
		fclose(f);
	unsigned long long wshd = (1ULL << (SIGUSR1 - 1)) | (1ULL << (sig_rt1 - 1));
	if (shd != wshd || thr != 1ULL << (sig_rt2 - 1))
		fail("pending", "ShdPnd %llx SigPnd %llx, want %llx and %llx", shd, thr, wshd,
		     1ULL << (sig_rt2 - 1));

	struct {
		int sig, code, value;
	} want_q[] = {
		{SIGUSR1, SI_USER, -1}, {sig_rt1, SI_QUEUE, 42}, {sig_rt1, SI_QUEUE, 43},
		{sig_rt2, SI_QUEUE, 7},
	};
	struct timespec zero = {0, 0};
	for (size_t i = 0; i < sizeof want_q / sizeof want_q[0]; i++) {
		sigset_t one;
		sigemptyset(&one);
		sigaddset(&one, want_q[i].sig);
		siginfo_t si;
		if (sigtimedwait(&one, &si, &zero) != want_q[i].sig) {
			fail("pending", "signal %d (#%zu) not pending: %s", want_q[i].sig, i,
			     strerror(errno));
			continue;
		}
		if (si.si_code != want_q[i].code || si.si_pid != getpid() ||
		    (want_q[i].value >= 0 && si.si_value.sival_int != want_q[i].value))
			fail("pending", "signal %d: code %d pid %d value %d, want %d %d %d",
			     want_q[i].sig, si.si_code, si.si_pid, si.si_value.sival_int,
			     want_q[i].code, getpid(), want_q[i].value);
	}
	sigset_t left;
	sigpending(&left);
	for (int s = 1; s < NSIG; s++)
		if (sigismember(&left, s))
			fail("pending", "signal %d still pending", s);
}

static void check_timers(void)
{
	long long elapsed = ns(CLOCK_MONOTONIC) - set_at;
	for (size_t i = 0; i < sizeof itimers / sizeof itimers[0]; i++) {
		struct itimerval it;
		getitimer(itimers[i].which, &it);
		long long iv = it.it_interval.tv_sec * 1000000LL + it.it_interval.tv_usec;
		long long left = it.it_value.tv_sec * 1000000LL + it.it_value.tv_usec;
		/* CPU-time timers are rounded up to the tick. */
		long long full = itimers[i].sec * 1000000LL;
		if (iv != itimers[i].interval_usec || left <= 0 || left > full + 20000 ||
		    (itimers[i].which == ITIMER_REAL && left < full - elapsed / 1000 - 1000))
			fail("itimer", "%d: interval %lld us, left %lld us (set %lld us, %lld us ago)",
			     itimers[i].which, iv, left, full, elapsed / 1000);
	}

	struct itimerspec its;
	if (timer_gettime((timer_t)0, &its) < 0)
		fail("posix timer", "timer 0: %s", strerror(errno));
	else if (tsns(its.it_interval) != 2500000000LL || tsns(its.it_value) <= 0 ||
		 tsns(its.it_value) > 300000000000LL ||
		 tsns(its.it_value) < 300000000000LL - elapsed - 1000000)
		fail("posix timer", "timer 0: interval %lld ns, left %lld ns", tsns(its.it_interval),
		     tsns(its.it_value));
	if (timer_gettime((timer_t)1, &its) == 0 || errno != EINVAL)
		fail("posix timer", "timer 1 was deleted but answers (%s)", strerror(errno));
	if (timer_gettime((timer_t)2, &its) < 0)
		fail("posix timer", "timer 2: %s", strerror(errno));
	else if (tsns(its.it_value) != 0)
		fail("posix timer", "timer 2 was disarmed, now %lld ns left", tsns(its.it_value));

	/* Timer 2 fires with its signal and value, and says it is timer 2. */
	struct itimerspec soon = {{0, 0}, {0, 1000000}};
	timer_settime((timer_t)2, 0, &soon, NULL);
	sigset_t one;
	sigemptyset(&one);
	sigaddset(&one, sig_rt3);
	siginfo_t si;
	struct timespec wait = {5, 0};
	if (sigtimedwait(&one, &si, &wait) != sig_rt3)
		fail("posix timer", "timer 2 did not signal %d: %s", sig_rt3, strerror(errno));
	else if (si.si_code != SI_TIMER || si.si_timerid != 2 || si.si_value.sival_int != 92)
		fail("posix timer", "timer 2 signal: code %d timer %d value %d", si.si_code,
		     si.si_timerid, si.si_value.sival_int);
	/* Timers made now get fresh ids. */
	timer_t t3;
	struct sigevent ev = {.sigev_notify = SIGEV_NONE};
	if (timer_create(CLOCK_MONOTONIC, &ev, &t3) < 0 || (long)t3 == 0 || (long)t3 == 2)
		fail("posix timer", "new timer got id %ld", (long)t3);
}

static void check_timerfds(void)
{
	long long elapsed = ns(CLOCK_MONOTONIC) - set_at;
	struct itimerspec its;
	timerfd_gettime(tfd_rel, &its);
	long long full = 200123456789LL;
	if (tsns(its.it_interval) != 1500000000LL || tsns(its.it_value) <= 0 ||
	    tsns(its.it_value) > full || tsns(its.it_value) < full - elapsed)
		fail("timerfd", "relative: interval %lld ns, left %lld ns", tsns(its.it_interval),
		     tsns(its.it_value));

	/* The absolute one expires when it did: now plus what is left. */
	long long before = ns(CLOCK_REALTIME);
	timerfd_gettime(tfd_abs, &its);
	long long after = ns(CLOCK_REALTIME);
	long long exp_lo = before + tsns(its.it_value), exp_hi = after + tsns(its.it_value);
	if (tsns(its.it_interval) != 0 || exp_hi < abs_expiry - 1000000 ||
	    exp_lo > abs_expiry + 1000000)
		fail("timerfd", "absolute: expires in [%lld, %lld], want %lld (within 1 ms)", exp_lo,
		     exp_hi, abs_expiry);
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", tfd_abs);
	FILE *f = fopen(path, "r");
	int flags = -1;
	while (f && fgets(line, sizeof line, f))
		sscanf(line, "settime flags: %o", &flags);
	if (f)
		fclose(f);
	if (flags != TFD_TIMER_ABSTIME)
		fail("timerfd", "absolute: settime flags %o, want %o", flags, TFD_TIMER_ABSTIME);
	if (!(fcntl(tfd_abs, F_GETFL) & O_NONBLOCK) || !(fcntl(tfd_rel, F_GETFD) & FD_CLOEXEC))
		fail("timerfd", "flags lost");

	uint64_t ticks = 0;
	if (read(tfd_fired, &ticks, 8) != 8 || ticks != 1)
		fail("timerfd", "fired: read %llu ticks (%s), want 1", (unsigned long long)ticks,
		     strerror(errno));
}

static void check_signalfd_memfd(void)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", sfd);
	FILE *f = fopen(path, "r");
	unsigned long long mask = 0;
	while (f && fgets(line, sizeof line, f))
		sscanf(line, "sigmask: %llx", &mask);
	if (f)
		fclose(f);
	unsigned long long want = (1ULL << (SIGWINCH - 1)) | (1ULL << (sig_rt4 - 1));
	if (mask != want)
		fail("signalfd", "sigmask %llx, want %llx", mask, want);
	raise(SIGWINCH);
	struct signalfd_siginfo ssi;
	if (read(sfd, &ssi, sizeof ssi) != sizeof ssi || ssi.ssi_signo != SIGWINCH)
		fail("signalfd", "no SIGWINCH read: %s", strerror(errno));

	char link[256] = {0};
	snprintf(path, sizeof path, "/proc/self/fd/%d", mfd);
	readlink(path, link, sizeof link - 1);
	if (strcmp(link, "/memfd:" MEMFD_NAME " (deleted)") != 0)
		fail("memfd", "link %s", link);
	int seals = fcntl(mfd, F_GET_SEALS);
	if (seals != (F_SEAL_SHRINK | F_SEAL_GROW))
		fail("memfd", "seals %#x, want %#x", seals, F_SEAL_SHRINK | F_SEAL_GROW);
	struct stat st;
	fstat(mfd, &st);
	if (st.st_size != MEMFD_SIZE)
		fail("memfd", "size %lld, want %d", (long long)st.st_size, MEMFD_SIZE);
	off_t pos = lseek(mfd, 0, SEEK_CUR);
	if (pos != MEMFD_POS)
		fail("memfd", "position %lld, want %d", (long long)pos, MEMFD_POS);
	static char buf[MEMFD_SIZE];
	if (pread(mfd, buf, sizeof buf, 0) != sizeof buf)
		fail("memfd", "read: %s", strerror(errno));
	for (int i = 0; i < MEMFD_SIZE; i++) {
		char w = i < MEMFD_DATA ? (char)(i * 7 + 3) : 0;
		if (buf[i] != w) {
			fail("memfd", "byte %d is %d, want %d", i, buf[i], w);
			break;
		}
	}
}

static void check_process(void)
{
	if (getsid(0) != getpid() || getpgrp() != getpid())
		fail("session", "sid %d pgid %d, want %d", getsid(0), getpgrp(), getpid());
	char cwd[4096];
	struct stat st;
	if (!getcwd(cwd, sizeof cwd) || strcmp(cwd, dir) != 0 || stat(".", &st) < 0 ||
	    st.st_ino != dirst.st_ino)
		fail("cwd", "%s, want %s", cwd, dir);
	mode_t m = umask(0);
	if (m != 027)
		fail("umask", "%o, want 027", m);
	int pers = personality(0xffffffff);
	if (pers != ADDR_NO_RANDOMIZE)
		fail("personality", "%#x, want %#x", pers, ADDR_NO_RANDOMIZE);
	errno = 0;
	int nice = getpriority(PRIO_PROCESS, 0);
	if (nice != NICE || sched_getscheduler(0) != SCHED_BATCH)
		fail("sched", "nice %d policy %d, want %d %d", nice, sched_getscheduler(0), NICE,
		     SCHED_BATCH);
	cpu_set_t cpus;
	if (sched_getaffinity(0, sizeof cpus, &cpus) < 0 || CPU_COUNT(&cpus) != 1 ||
	    !CPU_ISSET(0, &cpus))
		fail("sched", "affinity: %d CPUs", CPU_COUNT(&cpus));
	long io = syscall(SYS_ioprio_get, 1, 0);
	if (io != IOPRIO)
		fail("ioprio", "%#lx, want %#x", io, IOPRIO);
	if (prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0) != SLACK)
		fail("timer slack", "%d, want %d", prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0), SLACK);
	int sub = 0;
	prctl(PR_GET_CHILD_SUBREAPER, &sub, 0, 0, 0);
	if (sub != 1)
		fail("child subreaper", "%d", sub);
	for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
		struct rlimit r;
		getrlimit(limits[i].res, &r);
		if (r.rlim_cur != limits[i].cur || r.rlim_max != limits[i].max)
			fail("rlimit", "%d: %llu/%llu, want %llu/%llu", limits[i].res,
			     (unsigned long long)r.rlim_cur, (unsigned long long)r.rlim_max,
			     (unsigned long long)limits[i].cur, (unsigned long long)limits[i].max);
	}
	char comm[17] = {0};
	prctl(PR_GET_NAME, comm, 0, 0, 0);
	if (strcmp(comm, "statecheck") != 0)
		fail("comm", "%s", comm);
	if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1)
		fail("no_new_privs", "not set");
	if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 1)
		fail("dumpable", "%d, want 1", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));

	uid_t r, e, s;
	gid_t gr, ge, gs;
	getresuid(&r, &e, &s);
	getresgid(&gr, &ge, &gs);
	if (r != UID || e != UID || s != 0 || gr != GID || ge != GID || gs != 0)
		fail("creds", "uids %d %d %d gids %d %d %d", r, e, s, gr, ge, gs);
	gid_t groups[16];
	int n = getgroups(16, groups);
	if (n != 3 || groups[0] != 4 || groups[1] != 24 || groups[2] != 1000)
		fail("creds", "%d groups", n);
	struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct d[2];
	syscall(SYS_capget, &h, d);
	uint64_t eff = d[0].effective | (uint64_t)d[1].effective << 32;
	uint64_t prm = d[0].permitted | (uint64_t)d[1].permitted << 32;
	uint64_t inh = d[0].inheritable | (uint64_t)d[1].inheritable << 32;
	if (eff != CAPS_EFF || prm != CAPS_PRM || inh != CAPS_INH)
		fail("creds", "caps eff %llx prm %llx inh %llx", (unsigned long long)eff,
		     (unsigned long long)prm, (unsigned long long)inh);
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_NET_BIND_SERVICE, 0, 0) != 1 ||
	    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_CHOWN, 0, 0) != 0)
		fail("creds", "ambient set");
	if (prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0) != 1)
		fail("creds", "keepcaps lost");
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: statecheck TRIGGER DIR\n");
		return 2;
	}
	setup(argv[2]);
	printf("ready\n");
	fflush(stdout);
	while (access(argv[1], F_OK) != 0)
		usleep(10000);

	check_process();
	check_signals();
	check_timers();
	check_timerfds();
	check_signalfd_memfd();
	if (failures) {
		printf("FAILED %d\n", failures);
		return 1;
	}
	printf("OK\n");
	return 0;
}
