// toucher maps a region of anonymous memory, stamps every page, prints
// "ready BASE PAGES\n" and then obeys one command a line on stdin, answering
// "ok ..." or "error ..." on stdout. It keeps the generation of each page of
// the region, so that "check" can verify at the end that every write it made
// (and every page it zapped) is what its memory holds.
//
// Usage: toucher MIB
//
// Commands (numbers in decimal, addresses in hex):
//   w I I ...       write page I of the region (new generation)
//   kw I            write page I from the kernel: read(2) from a pipe into it
//   zap I J         madvise(MADV_DONTNEED) pages [I, J): they read as zero
//   map N           map N new pages, touch them          -> ok ADDR
//   unmap ADDR N    unmap N pages at ADDR
//   mremap ADDR N   move N pages at ADDR elsewhere       -> ok NEWADDR
//   brk N           grow the heap by N pages, touch them -> ok OLD NEW
//   uffd ADDR N     register N pages at ADDR with a userfaultfd of its own
//   check           verify every page of the region
//   exec            execve itself anew (prints ready again)
//   quit            exit
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PAGE 4096

static uint8_t *base;
static long npages;
static uint32_t *gen;
static char **args;

static void stamp_value(long i, uint64_t *out) {
	*out = gen[i] ? ((uint64_t)i << 32 | gen[i]) : 0;
}

static void stamp(long i) {
	uint64_t v;
	stamp_value(i, &v);
	memcpy(base + i * PAGE, &v, 8);
	memcpy(base + i * PAGE + PAGE - 8, &v, 8);
}

static void touch(uint8_t *p, long n) {
	for (long i = 0; i < n; i++)
		p[i * PAGE] = 1;
}

static int cmd(char *line) {
	char *arg = strchr(line, ' ');
	arg = arg ? arg + 1 : line + strlen(line);
	if (!strncmp(line, "w ", 2)) {
		char *end;
		for (;;) {
			long i = strtol(arg, &end, 10);
			if (end == arg)
				break;
			arg = end;
			if (i < 0 || i >= npages)
				return printf("error page %ld out of range\n", i);
			gen[i]++;
			stamp(i);
		}
		return printf("ok\n");
	}
	if (!strncmp(line, "kw ", 3)) {
		long i = atol(arg);
		int p[2];
		uint64_t v;
		if (pipe(p) < 0)
			return printf("error pipe: %s\n", strerror(errno));
		gen[i]++;
		stamp_value(i, &v);
		if (write(p[1], &v, 8) != 8 || read(p[0], base + i * PAGE, 8) != 8)
			return printf("error kernel write: %s\n", strerror(errno));
		memcpy(base + i * PAGE + PAGE - 8, &v, 8);
		close(p[0]);
		close(p[1]);
		return printf("ok\n");
	}
	if (!strncmp(line, "zap ", 4)) {
		long i, j;
		sscanf(arg, "%ld %ld", &i, &j);
		if (madvise(base + i * PAGE, (j - i) * PAGE, MADV_DONTNEED) < 0)
			return printf("error madvise: %s\n", strerror(errno));
		for (long k = i; k < j; k++)
			gen[k] = 0;
		return printf("ok\n");
	}
	if (!strncmp(line, "map ", 4)) {
		long n = atol(arg);
		uint8_t *p = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return printf("error mmap: %s\n", strerror(errno));
		touch(p, n);
		return printf("ok %lx\n", (unsigned long)p);
	}
	if (!strncmp(line, "unmap ", 6)) {
		unsigned long a;
		long n;
		sscanf(arg, "%lx %ld", &a, &n);
		if (munmap((void *)a, n * PAGE) < 0)
			return printf("error munmap: %s\n", strerror(errno));
		return printf("ok\n");
	}
	if (!strncmp(line, "mremap ", 7)) {
		unsigned long a;
		long n;
		sscanf(arg, "%lx %ld", &a, &n);
		// A place of the same size, reserved so the move lands there.
		void *to = mmap(NULL, n * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (to == MAP_FAILED)
			return printf("error mmap: %s\n", strerror(errno));
		void *p = mremap((void *)a, n * PAGE, n * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, to);
		if (p == MAP_FAILED)
			return printf("error mremap: %s\n", strerror(errno));
		return printf("ok %lx\n", (unsigned long)p);
	}
	if (!strncmp(line, "brk ", 4)) {
		long n = atol(arg);
		uint8_t *old = sbrk(0);
		if (sbrk(n * PAGE) == (void *)-1)
			return printf("error sbrk: %s\n", strerror(errno));
		touch(old, n);
		return printf("ok %lx %lx\n", (unsigned long)old, (unsigned long)sbrk(0));
	}
	if (!strncmp(line, "uffd ", 5)) {
		unsigned long a;
		long n;
		sscanf(arg, "%lx %ld", &a, &n);
		int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
		if (fd < 0)
			return printf("error userfaultfd: %s\n", strerror(errno));
		struct uffdio_api api = {.api = UFFD_API};
		if (ioctl(fd, UFFDIO_API, &api) < 0)
			return printf("error UFFDIO_API: %s\n", strerror(errno));
		struct uffdio_register reg = {
		    .range = {.start = a, .len = n * PAGE},
		    .mode = UFFDIO_REGISTER_MODE_MISSING,
		};
		if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0)
			return printf("error UFFDIO_REGISTER: %s\n", strerror(errno));
		return printf("ok %d\n", fd);
	}
	if (!strcmp(line, "check")) {
		for (long i = 0; i < npages; i++) {
			uint64_t want, a, b;
			stamp_value(i, &want);
			memcpy(&a, base + i * PAGE, 8);
			memcpy(&b, base + i * PAGE + PAGE - 8, 8);
			if (a != want || b != want)
				return printf("error page %ld holds %lx/%lx, want %lx\n", i,
					      (unsigned long)a, (unsigned long)b,
					      (unsigned long)want);
		}
		return printf("ok\n");
	}
	if (!strcmp(line, "exec")) {
		fflush(stdout);
		execv("/proc/self/exe", args);
		return printf("error execv: %s\n", strerror(errno));
	}
	if (!strcmp(line, "quit"))
		exit(0);
	return printf("error unknown command %s\n", line);
}

int main(int argc, char **argv) {
	if (argc != 2) {
		fprintf(stderr, "usage: toucher MIB\n");
		return 2;
	}
	args = argv;
	npages = atol(argv[1]) * 256;
	base = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	gen = calloc(npages, sizeof *gen);
	if (base == MAP_FAILED || !gen) {
		perror("toucher: map");
		return 1;
	}
	for (long i = 0; i < npages; i++) {
		gen[i] = 1;
		stamp(i);
	}
	printf("ready %lx %ld\n", (unsigned long)base, npages);
	fflush(stdout);

	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	while ((n = getline(&line, &cap, stdin)) > 0) {
		if (line[n - 1] == '\n')
			line[n - 1] = 0;
		cmd(line);
		fflush(stdout);
	}
	return 0;
}
