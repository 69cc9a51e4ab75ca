/*
 * sockholder: holds a descriptor cryo cannot checkpoint (netlink, io_uring),
 * and proves it still runs unharmed after a checkpoint attempt.
 *
 * Usage: sockholder tcp|netlink|io_uring TRIGGER
 *
 *   tcp       a listening TCP socket on 127.0.0.1 (an ephemeral port), which
 *             cryo checkpoints; no test uses this mode now
 *   netlink   a bound NETLINK_ROUTE socket
 *   io_uring  an io_uring instance made with io_uring_setup(2)
 *
 * It also fills 8 MiB with a pattern. It prints "ready fd=<n> kind=<kind>
 * port=<port>" (port 0 for io_uring) and then loops every 10 ms: in tcp mode
 * it accepts any connection and writes "pong\n" to it (and prints "pong");
 * when TRIGGER exists it checks the descriptor still works (accept on the
 * TCP socket; getsockname on the netlink one; io_uring_enter on the ring) and
 * the pattern, and prints "alive" and
 * "OK" (exit 0) or "FAIL <detail>" (exit 1).
 *
 * If the kernel refuses io_uring it prints "unsupported: <reason>" and exits 3.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/netlink.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif

#define AREA (8 << 20)

/* io_uring_params as in linux/io_uring.h (120 bytes); only zeroed here. */
struct uring_params {
	uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle, features,
		wq_fd, resv[3];
	uint64_t sq_off[5];
	uint64_t cq_off[5];
};

static unsigned char *area;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fflush(stdout);
}

static int pattern_ok(void)
{
	for (size_t i = 0; i < AREA; i++)
		if (area[i] != (unsigned char)(i * 31 + (i >> 12)))
			return 0;
	return 1;
}

int main(int argc, char **argv)
{
	if (argc != 3 || (strcmp(argv[1], "tcp") && strcmp(argv[1], "netlink") &&
			  strcmp(argv[1], "io_uring"))) {
		fprintf(stderr, "usage: sockholder tcp|netlink|io_uring TRIGGER\n");
		return 2;
	}
	int tcp = strcmp(argv[1], "tcp") == 0;
	int netlink = strcmp(argv[1], "netlink") == 0;

	area = mmap(NULL, AREA, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	for (size_t i = 0; i < AREA; i++)
		area[i] = (unsigned char)(i * 31 + (i >> 12));

	int fd, port = 0;
	if (tcp) {
		fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
		struct sockaddr_in sa = {.sin_family = AF_INET};
		sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		socklen_t len = sizeof sa;
		if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
		    listen(fd, 16) < 0 || getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
			perror("tcp socket");
			return 2;
		}
		port = ntohs(sa.sin_port);
	} else if (netlink) {
		struct sockaddr_nl nl = {.nl_family = AF_NETLINK};
		fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
		if (fd < 0 || bind(fd, (struct sockaddr *)&nl, sizeof nl) < 0) {
			perror("netlink socket");
			return 2;
		}
	} else {
		struct uring_params p;
		memset(&p, 0, sizeof p);
		fd = (int)syscall(__NR_io_uring_setup, 8, &p);
		if (fd < 0) {
			say("unsupported: io_uring_setup: %s\n", strerror(errno));
			return 3;
		}
	}
	say("ready fd=%d kind=%s port=%d\n", fd, argv[1], port);

	struct timespec tick = {0, 10 * 1000 * 1000};
	while (access(argv[2], F_OK) != 0) {
		if (tcp) {
			int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
			if (c >= 0) {
				if (write(c, "pong\n", 5) != 5)
					say("FAIL write to connection: %s\n", strerror(errno));
				close(c);
				say("pong\n");
			}
		}
		nanosleep(&tick, NULL);
	}

	int fails = 0;
	if (tcp) {
		int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0 && errno != EAGAIN) {
			say("FAIL accept: %s\n", strerror(errno));
			fails++;
		}
		if (c >= 0)
			close(c);
	} else if (netlink) {
		struct sockaddr_nl nl;
		socklen_t len = sizeof nl;
		if (getsockname(fd, (struct sockaddr *)&nl, &len) < 0 || nl.nl_family != AF_NETLINK) {
			say("FAIL getsockname on the netlink socket: %s\n", strerror(errno));
			fails++;
		}
	} else {
		long r = syscall(__NR_io_uring_enter, fd, 0, 0, 0, NULL, 0);
		if (r < 0) {
			say("FAIL io_uring_enter: %s\n", strerror(errno));
			fails++;
		}
	}
	if (!pattern_ok()) {
		say("FAIL memory pattern changed\n");
		fails++;
	}
	say("alive\n");
	if (fails)
		return 1;
	say("OK\n");
	return 0;
}
