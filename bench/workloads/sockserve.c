/*
 * sockserve: a single-threaded server holding one socket of each kind cryo
 * rebuilds, for the tests of checkpoint and restore of sockets.
 *
 * Usage: sockserve DIR PEERPORT TRIGGER
 *
 * It makes, at the lowest free numbers:
 *   a TCP listener on 127.0.0.1 (an ephemeral port; no SO_REUSEADDR, so that a
 *     restore must cope with the TIME_WAIT its own closes leave on the port),
 *   a TCP listener on ::1 with IPV6_V6ONLY and SO_REUSEADDR, nonblocking,
 *   a UDP socket on 127.0.0.1 that echoes datagrams,
 *   a unix stream listener on DIR/serve.sock,
 *   a unix stream socket pair, "to-a" queued on one end and "to-b" on the other,
 *   a TCP connection to 127.0.0.1:PEERPORT (the test), on which it sends
 *     "hello\n" (PEERPORT 0: no connection).
 *
 * It prints "ready tcp4=<port> tcp6=<port> udp=<port> conn=<fd>" and then
 * serves, polling every 10 ms: each listener accepts a connection, writes
 * "pong <kind> <n>\n" (n counts the connections served since the start, kept
 * in memory) and closes it, printing "served <kind> <n>"; the UDP socket
 * answers "pong udp <n>". Each line read on the connection is printed as
 * "conn got <line>"; when the connection ends it prints "conn closed: <reason>"
 * ("eof", or the errno's text) and carries on without it.
 *
 * When TRIGGER exists it reads both ends of the pair (each must hold its bytes),
 * writes on the connection if it was closed (which must fail) and prints
 * "OK" (exit 0) or "FAIL <detail>" lines (exit 1).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fflush(stdout);
}

static void die(const char *what)
{
	say("FAIL %s: %s\n", what, strerror(errno));
	exit(2);
}

static int port_of(int fd)
{
	struct sockaddr_in6 sa;
	socklen_t len = sizeof sa;
	if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
		die("getsockname");
	return ntohs(sa.sin6_port); /* the same offset in sockaddr_in */
}

static int served;

static void serve(int l, const char *kind)
{
	int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	if (c < 0) {
		if (errno != EAGAIN)
			say("FAIL accept %s: %s\n", kind, strerror(errno));
		return;
	}
	char line[64];
	int n = snprintf(line, sizeof line, "pong %s %d\n", kind, ++served);
	if (write(c, line, n) != n)
		say("FAIL write %s: %s\n", kind, strerror(errno));
	close(c);
	say("served %s %d\n", kind, served);
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: sockserve DIR PEERPORT TRIGGER\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	int one = 1;

	int t4 = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	struct sockaddr_in a4 = {.sin_family = AF_INET};
	a4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (t4 < 0 || bind(t4, (struct sockaddr *)&a4, sizeof a4) < 0 || listen(t4, 8) < 0)
		die("tcp4 listener");

	int t6 = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK, 0);
	struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
	if (t6 < 0 || setsockopt(t6, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) < 0 ||
	    setsockopt(t6, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
	    bind(t6, (struct sockaddr *)&a6, sizeof a6) < 0 || listen(t6, 8) < 0)
		die("tcp6 listener");

	int u = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	if (u < 0 || bind(u, (struct sockaddr *)&a4, sizeof a4) < 0)
		die("udp socket");

	int ux = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
	struct sockaddr_un un = {.sun_family = AF_UNIX};
	snprintf(un.sun_path, sizeof un.sun_path, "%s/serve.sock", argv[1]);
	unlink(un.sun_path);
	if (ux < 0 || bind(ux, (struct sockaddr *)&un, sizeof un) < 0 || listen(ux, 8) < 0)
		die("unix listener");

	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0 || write(sv[0], "to-b", 4) != 4 ||
	    write(sv[1], "to-a", 4) != 4)
		die("socket pair");

	int conn = -1, peer = atoi(argv[2]);
	if (peer > 0) {
		conn = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in pa = a4;
		pa.sin_port = htons(peer);
		if (conn < 0 || connect(conn, (struct sockaddr *)&pa, sizeof pa) < 0 ||
		    write(conn, "hello\n", 6) != 6)
			die("connect to the test");
	}
	say("ready tcp4=%d tcp6=%d udp=%d conn=%d\n", port_of(t4), port_of(t6), port_of(u), conn);

	int conn_closed = 0;
	char buf[256];
	while (access(argv[3], F_OK) != 0) {
		struct pollfd p[5] = {{t4, POLLIN, 0}, {t6, POLLIN, 0}, {u, POLLIN, 0},
				      {ux, POLLIN, 0}, {conn, POLLIN, 0}};
		int r = poll(p, conn >= 0 && !conn_closed ? 5 : 4, 10);
		if (r < 0 && errno != EINTR)
			die("poll");
		if (r <= 0)
			continue;
		if (p[0].revents)
			serve(t4, "tcp4");
		if (p[1].revents)
			serve(t6, "tcp6");
		if (p[3].revents)
			serve(ux, "unix");
		if (p[2].revents) {
			struct sockaddr_in from;
			socklen_t fl = sizeof from;
			ssize_t n = recvfrom(u, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
			if (n >= 0) {
				int m = snprintf(buf, sizeof buf, "pong udp %d\n", ++served);
				if (sendto(u, buf, m, 0, (struct sockaddr *)&from, fl) != m)
					say("FAIL sendto: %s\n", strerror(errno));
				say("served udp %d\n", served);
			}
		}
		if (conn >= 0 && !conn_closed && p[4].revents) {
			ssize_t n = read(conn, buf, sizeof buf - 1);
			if (n > 0) {
				buf[n] = 0;
				buf[strcspn(buf, "\n")] = 0;
				say("conn got %s\n", buf);
			} else {
				conn_closed = 1;
				say("conn closed: %s\n", n == 0 ? "eof" : strerror(errno));
			}
		}
	}

	int fails = 0;
	char got[16];
	fcntl(sv[0], F_SETFL, O_NONBLOCK);
	fcntl(sv[1], F_SETFL, O_NONBLOCK);
	ssize_t n = read(sv[0], got, sizeof got);
	if (n != 4 || memcmp(got, "to-a", 4) != 0) {
		say("FAIL pair end a read %zd bytes\n", n);
		fails++;
	}
	n = read(sv[1], got, sizeof got);
	if (n != 4 || memcmp(got, "to-b", 4) != 0) {
		say("FAIL pair end b read %zd bytes\n", n);
		fails++;
	}
	if (conn >= 0 && conn_closed) {
		if (write(conn, "x", 1) >= 0) {
			say("FAIL write on the closed connection succeeded\n");
			fails++;
		} else {
			say("conn write: %s\n", strerror(errno));
		}
	}
	if (fails)
		return 1;
	say("OK\n");
	return 0;
}
