/*
 * lazyfork: checks madvise(MADV_DONTNEED) and fork() in a lazily restored
 * process.
 *
 * Usage: lazyfork MIB TRIGGER
 *
 * It fills a MIB MiB anonymous mapping, page i with a pattern derived from i,
 * prints "ready" and polls every 10 ms for TRIGGER to exist. A test
 * checkpoints it while it waits, kills it, restores it lazily and creates
 * TRIGGER. None of the region has been touched since the restore. Then:
 *
 *   1. quarter 2 is dropped with madvise(MADV_DONTNEED) without touching it
 *      first, and must read back as zeros (never as the snapshot's data);
 *   2. the process forks without touching quarters 3 and 4; the child checks
 *      quarters 1, 3 and 4 hold their patterns and quarter 2 is zero, then
 *      scribbles over quarter 4 and exits 0 or 1;
 *   3. the parent waits, then checks the same itself (quarter 4 must not show
 *      the child's writes).
 *
 * It prints one line per step ("dontneed ok", "child ok", "parent ok") or
 * "FAIL <step>: <detail>", and finally "OK" (exit 0) or "FAILED" (exit 1).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096

static unsigned char *region;
static size_t npages;

static uint64_t word(size_t page, size_t k)
{
	uint64_t x = page * 0x9e3779b97f4a7c15ULL + k * 0xbf58476d1ce4e5b9ULL + 1;
	return x ^ (x >> 29);
}

static void fill(size_t page)
{
	uint64_t *w = (uint64_t *)(region + page * PAGE);
	for (size_t k = 0; k < PAGE / 8; k++)
		w[k] = word(page, k);
}

/* check_pattern returns the first page in [from, to) not holding its
 * pattern, or to. */
static size_t check_pattern(size_t from, size_t to)
{
	for (size_t p = from; p < to; p++) {
		const uint64_t *w = (const uint64_t *)(region + p * PAGE);
		for (size_t k = 0; k < PAGE / 8; k++)
			if (w[k] != word(p, k))
				return p;
	}
	return to;
}

/* check_zero returns the first page in [from, to) not all zero, or to. */
static size_t check_zero(size_t from, size_t to)
{
	for (size_t p = from; p < to; p++) {
		const uint64_t *w = (const uint64_t *)(region + p * PAGE);
		for (size_t k = 0; k < PAGE / 8; k++)
			if (w[k] != 0)
				return p;
	}
	return to;
}

static void say(const char *s)
{
	fputs(s, stdout);
	fflush(stdout);
}

/* verify checks all four quarters as they must be after step 1; who names
 * the checker in messages. It returns the number of failures. */
static int verify(const char *who)
{
	size_t q = npages / 4, bad;
	int fails = 0;
	if ((bad = check_pattern(0, q)) != q) {
		printf("FAIL %s: quarter 1 page %zu lost its pattern\n", who, bad);
		fails++;
	}
	if ((bad = check_zero(q, 2 * q)) != 2 * q) {
		printf("FAIL %s: quarter 2 page %zu not zero after MADV_DONTNEED\n", who, bad);
		fails++;
	}
	if ((bad = check_pattern(2 * q, npages)) != npages) {
		printf("FAIL %s: page %zu (quarter %zu) lost its pattern\n", who, bad,
		       bad / q + 1);
		fails++;
	}
	fflush(stdout);
	return fails;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: lazyfork MIB TRIGGER\n");
		return 2;
	}
	npages = strtoul(argv[1], NULL, 10) * 1024 * 1024 / PAGE;
	npages -= npages % 4;
	size_t q = npages / 4;
	region = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		      -1, 0);
	if (region == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	for (size_t p = 0; p < npages; p++)
		fill(p);
	say("ready\n");

	struct timespec tick = {0, 10 * 1000 * 1000};
	while (access(argv[2], F_OK) != 0)
		nanosleep(&tick, NULL);

	/* Step 1: drop quarter 2 before anything reads it. */
	int fails = 0;
	if (madvise(region + q * PAGE, q * PAGE, MADV_DONTNEED) != 0) {
		perror("madvise");
		return 2;
	}
	size_t bad = check_zero(q, 2 * q);
	if (bad != 2 * q) {
		printf("FAIL dontneed: page %zu reads old data after MADV_DONTNEED\n", bad);
		fails++;
	} else {
		say("dontneed ok\n");
	}

	/* Step 2: fork with quarters 3 and 4 untouched since the restore. */
	fflush(stdout);
	pid_t child = fork();
	if (child < 0) {
		perror("fork");
		return 2;
	}
	if (child == 0) {
		int f = verify("child");
		memset(region + 3 * q * PAGE, 0xee, q * PAGE);
		if (!f)
			say("child ok\n");
		_exit(f ? 1 : 0);
	}
	int status;
	if (waitpid(child, &status, 0) != child) {
		perror("waitpid");
		return 2;
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		printf("FAIL child: status %#x\n", status);
		fails++;
	}

	/* Step 3: the parent's view, untouched by the child's writes. */
	int pf = verify("parent");
	if (!pf)
		say("parent ok\n");
	fails += pf;

	if (fails) {
		printf("FAILED\n");
		return 1;
	}
	say("OK\n");
	return 0;
}
