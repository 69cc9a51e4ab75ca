// sockets opens one socket of every kind engine/fds rebuilds, at fixed numbers,
// prints "ready\n" on stdout and waits for a line on stdin. Then it checks that
// the dump took nothing (the bytes queued in its unix sockets are all there, in
// order, and their peek offsets are off) and prints "ok\n" or a reason.
//
//  3  TCP/IPv4 listening on 127.0.0.1, backlog 17, SO_REUSEADDR, TCP_NODELAY,
//     SO_RCVBUF 100000, nonblocking
//  4  TCP/IPv6 listening on ::1, IPV6_V6ONLY, SO_REUSEPORT, SO_KEEPALIVE,
//     TCP_KEEPIDLE 77, backlog 3
//  5  UDP/IPv4 bound to 127.0.0.1, SO_BROADCAST
//  6  UDP/IPv6 connected to [::1]:9
//  7  unix stream listening on DIR/listen.sock (mode 0640), backlog 5
//  8  unix datagram bound to an abstract name ("\0cryo-test-PID\0x")
//  9, 10   unix stream pair: "hello" queued at 10, "world!" at 9; 9 shut for sending
//  11, 12  unix datagram pair: three messages queued at 12
//  13, 14  a TCP connection to 3 (client 13, accepted 14): "tcp data" queued at 14
//  15, 16  a unix stream connection to 7 (client 15, accepted 16): "ping" at 16
//  17  a fresh TCP socket, not bound
//  18  a unix stream socket whose peer has closed, "last words" queued
//  19  a dup of 3
//  20, 21  unix seqpacket pair: "m1" and "m2" queued at 21
//
// Usage: sockets DIR
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static void die(const char *what) {
	printf("error %s: %s\n", what, strerror(errno));
	fflush(stdout);
	exit(1);
}

static void place(int fd, int num) {
	if (fd < 0)
		die("socket");
	if (fd == num)
		return;
	if (dup2(fd, num) < 0)
		die("dup2");
	close(fd);
}

static void setint(int fd, int level, int opt, int v) {
	if (setsockopt(fd, level, opt, &v, sizeof v) < 0)
		die("setsockopt");
}

static int expect(int fd, const char *want, int len) {
	char buf[256];
	int peek = -2;
	socklen_t pl = sizeof peek;
	if (getsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &peek, &pl) < 0 || peek != -1) {
		printf("fd %d: SO_PEEK_OFF is %d, want -1\n", fd, peek);
		return 0;
	}
	ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
	if (n != len || memcmp(buf, want, len) != 0) {
		printf("fd %d: read %zd bytes, want %d\n", fd, n, len);
		return 0;
	}
	return 1;
}

int main(int argc, char **argv) {
	if (argc < 2)
		return 2;
	struct sockaddr_in a4 = {.sin_family = AF_INET};
	a4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
	socklen_t len;

	place(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), 3);
	setint(3, SOL_SOCKET, SO_REUSEADDR, 1);
	setint(3, IPPROTO_TCP, TCP_NODELAY, 1);
	setint(3, SOL_SOCKET, SO_RCVBUF, 100000);
	if (bind(3, (struct sockaddr *)&a4, sizeof a4) < 0 || listen(3, 17) < 0)
		die("tcp4 listen");

	place(socket(AF_INET6, SOCK_STREAM, 0), 4);
	setint(4, IPPROTO_IPV6, IPV6_V6ONLY, 1);
	setint(4, SOL_SOCKET, SO_REUSEPORT, 1);
	setint(4, SOL_SOCKET, SO_KEEPALIVE, 1);
	setint(4, IPPROTO_TCP, TCP_KEEPIDLE, 77);
	if (bind(4, (struct sockaddr *)&a6, sizeof a6) < 0 || listen(4, 3) < 0)
		die("tcp6 listen");

	place(socket(AF_INET, SOCK_DGRAM, 0), 5);
	setint(5, SOL_SOCKET, SO_BROADCAST, 1);
	if (bind(5, (struct sockaddr *)&a4, sizeof a4) < 0)
		die("udp4 bind");

	place(socket(AF_INET6, SOCK_DGRAM, 0), 6);
	struct sockaddr_in6 d6 = a6;
	d6.sin6_port = htons(9);
	if (connect(6, (struct sockaddr *)&d6, sizeof d6) < 0)
		die("udp6 connect");

	struct sockaddr_un un = {.sun_family = AF_UNIX};
	snprintf(un.sun_path, sizeof un.sun_path, "%s/listen.sock", argv[1]);
	place(socket(AF_UNIX, SOCK_STREAM, 0), 7);
	if (bind(7, (struct sockaddr *)&un, sizeof un) < 0 || listen(7, 5) < 0)
		die("unix listen");
	if (chmod(un.sun_path, 0640) < 0)
		die("chmod");

	struct sockaddr_un ab = {.sun_family = AF_UNIX};
	int ablen = snprintf(ab.sun_path + 1, sizeof ab.sun_path - 1, "cryo-test-%d", getpid());
	ab.sun_path[ablen + 2] = 'x'; /* a NUL inside the name, then 'x' */
	place(socket(AF_UNIX, SOCK_DGRAM, 0), 8);
	if (bind(8, (struct sockaddr *)&ab, offsetof(struct sockaddr_un, sun_path) + ablen + 3) < 0)
		die("abstract bind");

	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		die("socketpair stream");
	place(sv[0], 9);
	place(sv[1], 10);
	if (write(9, "hello", 5) != 5 || write(10, "world!", 6) != 6)
		die("write pair");
	if (shutdown(9, SHUT_WR) < 0)
		die("shutdown");

	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) < 0)
		die("socketpair dgram");
	place(sv[0], 11);
	place(sv[1], 12);
	if (write(11, "one", 3) != 3 || write(11, "two", 3) != 3 || write(11, "three", 5) != 5)
		die("write dgram pair");

	len = sizeof a4;
	if (getsockname(3, (struct sockaddr *)&a4, &len) < 0)
		die("getsockname");
	place(socket(AF_INET, SOCK_STREAM, 0), 13);
	if (connect(13, (struct sockaddr *)&a4, sizeof a4) < 0)
		die("tcp connect");
	int acc;
	while ((acc = accept(3, NULL, NULL)) < 0)
		if (errno != EAGAIN)
			die("accept");
	place(acc, 14);
	if (write(13, "tcp data", 8) != 8)
		die("write tcp");

	place(socket(AF_UNIX, SOCK_STREAM, 0), 15);
	if (connect(15, (struct sockaddr *)&un, sizeof un) < 0)
		die("unix connect");
	place(accept(7, NULL, NULL), 16);
	if (write(15, "ping", 4) != 4)
		die("write unix");

	place(socket(AF_INET, SOCK_STREAM, 0), 17);

	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		die("socketpair orphan");
	if (write(sv[1], "last words", 10) != 10)
		die("write orphan");
	close(sv[1]);
	place(sv[0], 18);

	if (dup2(3, 19) < 0)
		die("dup2 19");
	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) < 0)
		die("socketpair seqpacket");
	place(sv[0], 20);
	place(sv[1], 21);
	if (write(20, "m1", 2) != 2 || write(20, "m2", 2) != 2)
		die("write seqpacket");

	printf("ready\n");
	fflush(stdout);
	char line[16];
	if (read(0, line, sizeof line) < 0)
		die("read stdin");

	if (!expect(10, "hello", 5) || !expect(9, "world!", 6) || !expect(12, "one", 3) ||
	    !expect(12, "two", 3) || !expect(12, "three", 5) || !expect(16, "ping", 4) ||
	    !expect(18, "last words", 10) || !expect(21, "m1", 2) || !expect(21, "m2", 2))
		return 1;
	printf("ok\n");
	return 0;
}
