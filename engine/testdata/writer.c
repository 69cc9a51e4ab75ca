/* writer: fills a region, then at each step file writes a known set of pages and
 * frees others, so that a test can compare incremental snapshots with full ones.
 *
 * usage: writer MIB   (a byte on stdin starts a step; "done N" on stdout ends it)
 *
 * Between steps it blocks in read(2), so that it writes no memory at all while a
 * test takes two checkpoints in a row. It stays on CPU 0: the kernel rewrites the
 * rseq area (cpu_id) when a resumed process lands on another CPU, which would make
 * two snapshots taken one after the other differ legitimately. */
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
	cpu_set_t cpus;
	CPU_ZERO(&cpus);
	CPU_SET(0, &cpus);
	if (sched_setaffinity(0, sizeof cpus, &cpus) != 0) return 3;
	size_t mib = strtoul(argv[1], 0, 10), n = mib << 8;
	unsigned char *m = mmap(0, n << 12, PROT_READ | PROT_WRITE,
	                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) return 2;
	for (size_t i = 0; i < n; i++) memset(m + (i << 12), (int)(i * 7 + 1), 4096);
	char c;
	uint64_t x = 88172645463325252ull;
	printf("ready\n");
	fflush(stdout);
	for (int step = 1;; step++) {
		if (read(0, &c, 1) != 1) return 0;
		for (int k = 0; k < 200; k++) { /* 200 random pages rewritten */
			x ^= x << 13; x ^= x >> 7; x ^= x << 17;
			size_t i = x % n;
			memset(m + (i << 12), (int)(x >> 32), 4096);
		}
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		madvise(m + ((x % n) << 12), 8 << 12 > (n << 12) ? 4096 : 8 << 12, MADV_DONTNEED);
		if (step == 2) { /* a new mapping and a grown heap */
			char *q = mmap(0, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			memset(q, 0x5a, 1 << 20);
			char *b = sbrk(1 << 20);
			memset(b, 0x6b, 1 << 20);
		}
		printf("done %d\n", step);
		fflush(stdout);
	}
}
