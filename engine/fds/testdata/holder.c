// holder opens one file descriptor of every kind engine/fds supports, prints
// "ready\n" on stdout and waits for a line on stdin. Then it checks that its
// state is intact (the pipe still holds its bytes, the eventfd its count) and
// prints "ok\n" or a reason, and exits.
//
// Usage: holder DIR   (DIR is a scratch folder for its files)
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

static void die(const char *what) {
	printf("error %s: %s\n", what, strerror(errno));
	fflush(stdout);
	exit(1);
}

static void place(int fd, int num, int flags) {
	if (fd == num)
		return;
	if (dup3(fd, num, flags) < 0)
		die("dup3");
	close(fd);
}

int main(int argc, char **argv) {
	char path[4096];
	if (argc < 2)
		return 2;

	// 3: eventfd, semaphore, nonblocking, count 5.
	int efd = eventfd(5, EFD_SEMAPHORE | EFD_NONBLOCK);
	if (efd < 0)
		die("eventfd");
	place(efd, 3, 0);

	// 4, 5: a pipe holding 1000 unread bytes. The read end is nonblocking.
	int p[2];
	if (pipe2(p, O_NONBLOCK) < 0)
		die("pipe2");
	char buf[1000];
	for (int i = 0; i < 1000; i++)
		buf[i] = (char)(i * 7 + 1);
	if (write(p[1], buf, sizeof buf) != sizeof buf)
		die("write pipe");
	place(p[0], 4, 0);
	place(p[1], 5, 0);
	if (fcntl(5, F_SETFL, 0) < 0)
		die("setfl");

	// 6: a file at offset 12345, read-write.
	snprintf(path, sizeof path, "%s/data file", argv[1]);
	int f = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (f < 0)
		die("open data");
	if (ftruncate(f, 20000) < 0)
		die("ftruncate");
	if (lseek(f, 12345, SEEK_SET) != 12345)
		die("lseek");
	place(f, 6, 0);

	// 7: an O_APPEND file, write-only.
	snprintf(path, sizeof path, "%s/log", argv[1]);
	int a = open(path, O_WRONLY | O_APPEND | O_CREAT | O_TRUNC, 0600);
	if (a < 0)
		die("open log");
	if (write(a, "hello\n", 6) != 6)
		die("write log");
	place(a, 7, 0);

	// 8: /dev/null; 9: a directory.
	int n = open("/dev/null", O_RDWR);
	if (n < 0)
		die("open null");
	place(n, 8, 0);
	int d = open(argv[1], O_RDONLY | O_DIRECTORY);
	if (d < 0)
		die("open dir");
	place(d, 9, 0);

	// 10: epoll with three watches, one edge-triggered, distinct data.
	int ep = epoll_create1(0);
	if (ep < 0)
		die("epoll_create1");
	place(ep, 10, 0);
	struct epoll_event ev;
	ev.events = EPOLLIN;
	ev.data.u64 = 0x1111222233334444ULL;
	if (epoll_ctl(10, EPOLL_CTL_ADD, 3, &ev) < 0)
		die("epoll add 3");
	ev.events = EPOLLIN | EPOLLET;
	ev.data.u64 = 0xdeadbeefULL;
	if (epoll_ctl(10, EPOLL_CTL_ADD, 4, &ev) < 0)
		die("epoll add 4");
	ev.events = EPOLLOUT | EPOLLONESHOT;
	ev.data.u64 = 7;
	if (epoll_ctl(10, EPOLL_CTL_ADD, 5, &ev) < 0)
		die("epoll add 5");

	// 100: a dup of the data file with FD_CLOEXEC; 1000: a dup of /dev/null.
	if (dup3(6, 100, O_CLOEXEC) < 0)
		die("dup3 100");
	if (dup2(8, 1000) < 0)
		die("dup2 1000");

	printf("ready\n");
	fflush(stdout);

	char line[16];
	if (read(0, line, sizeof line) < 0)
		die("read stdin");

	// The checkpoint must not have disturbed anything.
	char got[2000];
	ssize_t r = read(4, got, sizeof got);
	if (r != 1000 || memcmp(got, buf, 1000) != 0) {
		printf("pipe holds %zd bytes\n", r);
		return 1;
	}
	uint64_t v;
	for (int i = 0; i < 5; i++)
		if (read(3, &v, 8) != 8 || v != 1) {
			printf("eventfd read %d failed\n", i);
			return 1;
		}
	if (read(3, &v, 8) >= 0 || errno != EAGAIN) {
		printf("eventfd not drained after 5 reads\n");
		return 1;
	}
	if (lseek(6, 0, SEEK_CUR) != 12345) {
		printf("file offset moved\n");
		return 1;
	}
	printf("ok\n");
	return 0;
}
