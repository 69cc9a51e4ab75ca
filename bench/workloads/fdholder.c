/*
 * fdholder: holds one of every file descriptor kind cryo restores, waits,
 * then checks that every one of them is still exactly as it was set up.
 *
 * Usage: fdholder TRIGGER DIR
 *
 * It creates files in DIR, sets up its descriptors, writes "ready\n" to
 * stdout and then polls every 10 ms for the file TRIGGER to exist. A test
 * checkpoints it while it waits, kills it, restores it and creates TRIGGER.
 * It then checks every descriptor, prints one "FAIL <item>: <detail>" line
 * per difference and finally "OK" (exit 0) or "FAILED <n>" (exit 1).
 *
 * Nothing is checked or consumed before the trigger: in particular epoll is
 * never waited on before, so the edge-triggered watch still has its edge.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#define PIPE_BYTES 1000
#define FILE_SIZE 20000
#define FILE_OFFSET 12345
#define HIGH_FD 100

#define DATA_EVENTFD 0x1111aaaa2222bbbbULL
#define DATA_PIPE_ET 0x3333cccc4444ddddULL
#define DATA_PIPE_LT 0x5555eeee6666ffffULL

/* The descriptors, kept in globals so they live in the checkpointed image. */
static int efd, epfd, pipea[2], pipeb[2], regfd, appfd, nullfd;
static char regpath[4096], apppath[4096];
static int failures;

/* The watches as the kernel reported them in fdinfo before the checkpoint. */
#define MAX_WATCHES 16
struct watch {
	int tfd;
	unsigned long long events, data;
};
static struct watch before[MAX_WATCHES];
static int nbefore;

/* The open descriptor numbers before the checkpoint. */
#define MAX_FDS 256
static int fdsbefore[MAX_FDS];
static int nfdsbefore;

static void out(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof buf - 1)
		n = sizeof buf - 1;
	for (int off = 0; off < n;) {
		ssize_t w = write(1, buf + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			_exit(3);
		off += w;
	}
}

static void fail(const char *item, const char *fmt, ...)
{
	char buf[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	out("FAIL %s: %s\n", item, buf);
	failures++;
}

static void die(const char *what)
{
	out("setup %s: %s\n", what, strerror(errno));
	exit(2);
}

static unsigned char pipe_byte(int i) { return (unsigned char)(i * 7 + 3); }
static unsigned char file_byte(int i) { return (unsigned char)('a' + (i * 13) % 26); }

static int read_watches(struct watch *w, int max)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", epfd);
	FILE *f = fopen(path, "re");
	if (!f)
		return -1;
	int n = 0;
	while (fgets(line, sizeof line, f)) {
		struct watch x;
		if (sscanf(line, "tfd: %d events: %llx data: %llx", &x.tfd, &x.events,
			   &x.data) == 3 && n < max)
			w[n++] = x;
	}
	fclose(f);
	return n;
}

static int list_fds(int *fds, int max)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -1;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		int fd = atoi(e->d_name);
		if (fd == dirfd(d))
			continue;
		if (n < max)
			fds[n++] = fd;
	}
	closedir(d);
	/* Sort: readdir order is not guaranteed. */
	for (int i = 1; i < n; i++)
		for (int j = i; j > 0 && fds[j - 1] > fds[j]; j--) {
			int t = fds[j];
			fds[j] = fds[j - 1];
			fds[j - 1] = t;
		}
	return n;
}

static void setup(const char *dir)
{
	/* eventfd: count 5, semaphore, non-blocking. */
	efd = eventfd(5, EFD_SEMAPHORE | EFD_NONBLOCK);
	if (efd < 0)
		die("eventfd");

	/* Two pipes: the first holds 1000 unread bytes, the second is empty. */
	if (pipe(pipea) < 0 || pipe(pipeb) < 0)
		die("pipe");
	unsigned char buf[PIPE_BYTES];
	for (int i = 0; i < PIPE_BYTES; i++)
		buf[i] = pipe_byte(i);
	if (write(pipea[1], buf, PIPE_BYTES) != PIPE_BYTES)
		die("write pipe");

	/* epoll with three watches, one edge-triggered, each with its own data. */
	epfd = epoll_create1(0);
	if (epfd < 0)
		die("epoll_create1");
	struct epoll_event ev;
	ev.events = EPOLLIN;
	ev.data.u64 = DATA_EVENTFD;
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, efd, &ev) < 0)
		die("epoll_ctl eventfd");
	ev.events = EPOLLIN | EPOLLET;
	ev.data.u64 = DATA_PIPE_ET;
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, pipea[0], &ev) < 0)
		die("epoll_ctl pipea");
	ev.events = EPOLLIN;
	ev.data.u64 = DATA_PIPE_LT;
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, pipeb[0], &ev) < 0)
		die("epoll_ctl pipeb");

	/* A regular file, read-write, at offset 12345. */
	snprintf(regpath, sizeof regpath, "%s/fdholder.data", dir);
	regfd = open(regpath, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (regfd < 0)
		die("open data file");
	unsigned char fbuf[FILE_SIZE];
	for (int i = 0; i < FILE_SIZE; i++)
		fbuf[i] = file_byte(i);
	if (write(regfd, fbuf, FILE_SIZE) != FILE_SIZE)
		die("write data file");
	if (lseek(regfd, FILE_OFFSET, SEEK_SET) != FILE_OFFSET)
		die("lseek data file");

	/* An O_APPEND file, write-only, holding "first\n". */
	snprintf(apppath, sizeof apppath, "%s/fdholder.log", dir);
	appfd = open(apppath, O_WRONLY | O_APPEND | O_CREAT | O_TRUNC, 0644);
	if (appfd < 0)
		die("open append file");
	if (write(appfd, "first\n", 6) != 6)
		die("write append file");

	/* fd 100: /dev/zero with FD_CLOEXEC. */
	int z = open("/dev/zero", O_RDONLY | O_CLOEXEC);
	if (z < 0)
		die("open /dev/zero");
	if (dup3(z, HIGH_FD, O_CLOEXEC) != HIGH_FD)
		die("dup3 100");
	close(z);

	/* /dev/null, write-only. */
	nullfd = open("/dev/null", O_WRONLY);
	if (nullfd < 0)
		die("open /dev/null");

	nbefore = read_watches(before, MAX_WATCHES);
	if (nbefore != 3) {
		errno = EINVAL;
		die("read epoll fdinfo");
	}
	nfdsbefore = list_fds(fdsbefore, MAX_FDS);
	if (nfdsbefore < 0)
		die("list fds");
}

/* epoll_wait with no timeout; returns the set of ready datas. */
static int poll_once(uint64_t *datas, uint32_t *events, int max)
{
	struct epoll_event evs[8];
	int n;
	do
		n = epoll_wait(epfd, evs, 8, 0);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -1;
	for (int i = 0; i < n && i < max; i++) {
		datas[i] = evs[i].data.u64;
		events[i] = evs[i].events;
	}
	return n;
}

/* expect_ready checks one epoll_wait round returns exactly the datas given. */
static void expect_ready(const char *round, int nwant, const uint64_t *want)
{
	uint64_t got[8];
	uint32_t evs[8];
	int n = poll_once(got, evs, 8);
	if (n < 0) {
		fail("epoll", "%s: epoll_wait: %s", round, strerror(errno));
		return;
	}
	int ok = n == nwant;
	for (int i = 0; ok && i < nwant; i++) {
		int found = 0;
		for (int j = 0; j < n; j++)
			if (got[j] == want[i] && (evs[j] & EPOLLIN))
				found = 1;
		ok = found;
	}
	if (!ok) {
		char s[300];
		int off = 0;
		for (int j = 0; j < n && off < (int)sizeof s - 40; j++)
			off += snprintf(s + off, sizeof s - off, " %llx/%x",
					(unsigned long long)got[j], evs[j]);
		fail("epoll", "%s: want %d ready, got %d:%s", round, nwant, n, off ? s : " none");
	}
}

static void check_epoll(void)
{
	struct watch now[MAX_WATCHES];
	int n = read_watches(now, MAX_WATCHES);
	if (n != nbefore) {
		fail("epoll", "fdinfo lists %d watches, want %d", n, nbefore);
	} else {
		for (int i = 0; i < n; i++) {
			int found = 0;
			for (int j = 0; j < n; j++)
				if (now[j].tfd == before[i].tfd && now[j].events == before[i].events &&
				    now[j].data == before[i].data)
					found = 1;
			if (!found)
				fail("epoll", "watch tfd %d events %llx data %llx missing or changed",
				     before[i].tfd, before[i].events, before[i].data);
		}
	}

	/* Round 1: eventfd (count 5) and pipea (1000 bytes) are ready. */
	uint64_t r1[] = {DATA_EVENTFD, DATA_PIPE_ET};
	expect_ready("round 1", 2, r1);

	/* Round 2: the edge-triggered pipea watch has given its edge already. */
	uint64_t r2[] = {DATA_EVENTFD};
	expect_ready("round 2 (EPOLLET)", 1, r2);

	/* Round 3: a byte into pipeb makes the level-triggered watch ready. */
	if (write(pipeb[1], "x", 1) != 1)
		fail("epoll", "write pipeb: %s", strerror(errno));
	uint64_t r3[] = {DATA_EVENTFD, DATA_PIPE_LT};
	expect_ready("round 3", 2, r3);
	char c;
	if (read(pipeb[0], &c, 1) != 1 || c != 'x')
		fail("epoll", "read back pipeb byte");
}

static void check_pipe(void)
{
	int avail = -1;
	if (ioctl(pipea[0], FIONREAD, &avail) < 0 || avail != PIPE_BYTES) {
		fail("pipe", "FIONREAD %d, want %d", avail, PIPE_BYTES);
		return;
	}
	unsigned char buf[PIPE_BYTES];
	int got = 0;
	while (got < PIPE_BYTES) {
		ssize_t r = read(pipea[0], buf + got, PIPE_BYTES - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			fail("pipe", "read after %d bytes: %s", got, r ? strerror(errno) : "EOF");
			return;
		}
		got += r;
	}
	for (int i = 0; i < PIPE_BYTES; i++)
		if (buf[i] != pipe_byte(i)) {
			fail("pipe", "byte %d is %#x, want %#x", i, buf[i], pipe_byte(i));
			return;
		}
	if (ioctl(pipea[0], FIONREAD, &avail) < 0 || avail != 0)
		fail("pipe", "%d bytes left after the 1000", avail);

	/* Both ends must still be one pipe. */
	if (write(pipea[1], "z", 1) != 1 || read(pipea[0], buf, 1) != 1 || buf[0] != 'z')
		fail("pipe", "write end and read end are not one pipe");
}

static void check_eventfd(void)
{
	int fl = fcntl(efd, F_GETFL);
	if (fl < 0 || !(fl & O_NONBLOCK))
		fail("eventfd", "O_NONBLOCK lost (flags %#x)", fl);
	for (int i = 0; i < 5; i++) {
		uint64_t v = 0;
		ssize_t r = read(efd, &v, 8);
		if (r != 8) {
			fail("eventfd", "read %d: %s", i + 1, r < 0 ? strerror(errno) : "short");
			return;
		}
		if (v != 1) {
			fail("eventfd", "read %d gave %llu, want 1 (semaphore mode)", i + 1,
			     (unsigned long long)v);
			return;
		}
	}
	uint64_t v;
	ssize_t r = read(efd, &v, 8);
	if (!(r < 0 && errno == EAGAIN))
		fail("eventfd", "sixth read: got %zd (%llu), want EAGAIN", r,
		     (unsigned long long)v);
}

static void check_regular(void)
{
	off_t pos = lseek(regfd, 0, SEEK_CUR);
	if (pos != FILE_OFFSET)
		fail("file offset", "lseek SEEK_CUR = %lld, want %d", (long long)pos, FILE_OFFSET);
	int fl = fcntl(regfd, F_GETFL);
	if (fl < 0 || (fl & O_ACCMODE) != O_RDWR || (fl & O_APPEND))
		fail("file offset", "flags %#x, want O_RDWR without O_APPEND", fl);
	int fdfl = fcntl(regfd, F_GETFD);
	if (fdfl != 0)
		fail("file offset", "F_GETFD %#x, want 0 (no FD_CLOEXEC)", fdfl);
	unsigned char buf[16];
	if (pread(regfd, buf, 16, FILE_OFFSET) != 16) {
		fail("file offset", "pread: %s", strerror(errno));
		return;
	}
	for (int i = 0; i < 16; i++)
		if (buf[i] != file_byte(FILE_OFFSET + i)) {
			fail("file offset", "content at %d differs", FILE_OFFSET + i);
			break;
		}
	struct stat a, b;
	if (fstat(regfd, &a) < 0 || stat(regpath, &b) < 0 || a.st_ino != b.st_ino ||
	    a.st_dev != b.st_dev)
		fail("file offset", "fd is not the file %s", regpath);
}

static void check_append(void)
{
	int fl = fcntl(appfd, F_GETFL);
	if (fl < 0 || !(fl & O_APPEND) || (fl & O_ACCMODE) != O_WRONLY) {
		fail("O_APPEND", "flags %#x, want O_WRONLY|O_APPEND", fl);
		return;
	}
	if (lseek(appfd, 0, SEEK_SET) != 0)
		fail("O_APPEND", "lseek: %s", strerror(errno));
	if (write(appfd, "second\n", 7) != 7) {
		fail("O_APPEND", "write: %s", strerror(errno));
		return;
	}
	char buf[64] = {0};
	int fd = open(apppath, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
	if (fd >= 0)
		close(fd);
	if (n != 13 || memcmp(buf, "first\nsecond\n", 13) != 0)
		fail("O_APPEND", "file holds %zd bytes \"%s\", want \"first\\nsecond\\n\"", n, buf);
}

static void check_high(void)
{
	int fdfl = fcntl(HIGH_FD, F_GETFD);
	if (fdfl < 0) {
		fail("fd 100", "F_GETFD: %s", strerror(errno));
		return;
	}
	if (!(fdfl & FD_CLOEXEC))
		fail("fd 100", "FD_CLOEXEC not set (F_GETFD %#x)", fdfl);
	struct stat st;
	if (fstat(HIGH_FD, &st) < 0 || !S_ISCHR(st.st_mode) || st.st_rdev != makedev(1, 5))
		fail("fd 100", "not /dev/zero");
	unsigned char buf[64];
	memset(buf, 0xAA, sizeof buf);
	if (read(HIGH_FD, buf, sizeof buf) != sizeof buf || buf[0] != 0 || buf[63] != 0)
		fail("fd 100", "read from /dev/zero");
}

static void check_null(void)
{
	struct stat st;
	if (fstat(nullfd, &st) < 0 || !S_ISCHR(st.st_mode) || st.st_rdev != makedev(1, 3))
		fail("/dev/null", "fd %d is not /dev/null", nullfd);
	int fl = fcntl(nullfd, F_GETFL);
	if (fl < 0 || (fl & O_ACCMODE) != O_WRONLY)
		fail("/dev/null", "flags %#x, want O_WRONLY", fl);
	if (write(nullfd, "gone", 4) != 4)
		fail("/dev/null", "write: %s", strerror(errno));
}

static void check_fdset(void)
{
	int now[MAX_FDS];
	int n = list_fds(now, MAX_FDS);
	int same = n == nfdsbefore;
	for (int i = 0; same && i < n; i++)
		same = now[i] == fdsbefore[i];
	if (!same) {
		char a[400], b[400];
		int oa = 0, ob = 0;
		for (int i = 0; i < nfdsbefore && oa < 380; i++)
			oa += snprintf(a + oa, sizeof a - oa, " %d", fdsbefore[i]);
		for (int i = 0; i < n && ob < 380; i++)
			ob += snprintf(b + ob, sizeof b - ob, " %d", now[i]);
		a[oa] = b[ob] = 0;
		fail("fd set", "open fds were [%s ] now [%s ]", a, b);
	}
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: fdholder TRIGGER DIR\n");
		return 2;
	}
	setup(argv[2]);
	out("ready\n");

	struct timespec tick = {0, 10 * 1000 * 1000};
	while (access(argv[1], F_OK) != 0)
		nanosleep(&tick, NULL);

	check_fdset();
	check_epoll();
	check_pipe();
	check_eventfd();
	check_regular();
	check_append();
	check_high();
	check_null();
	if (failures) {
		out("FAILED %d\n", failures);
		return 1;
	}
	out("OK\n");
	return 0;
}
