/*
 * rewriter: holds MIB MiB of pages of known content, rewrites PERCENT% of them
 * every second, and can check at any moment that every page holds what its
 * generation table says.
 *
 * Usage: rewriter MIB PERCENT_PER_SEC TRIGGER
 *
 * Page i at generation g holds: a 32-byte header (magic, i, g, a check word),
 * 256 bytes of xorshift output seeded from (i, g), and a line naming i and g
 * repeated to the end of the page: every page is distinct and compresses to
 * roughly a tenth of its size.
 *
 * Every page starts at generation 0. The generation table (an anonymous
 * mapping), the page-choosing PRNG and the counters live in the process's own
 * memory, so a checkpoint takes them together with the pages: whatever moment
 * a snapshot holds, the restored process finds its pages consistent with its
 * table.
 *
 * The main loop runs a step every 10 ms: it rewrites its share of the pages
 * (chosen by the PRNG, generation + 1), then spends the rest of the step
 * checking random pages against the table (reads only, so they dirty nothing).
 * Every second it prints "rate R checks C": pages rewritten and pages checked
 * per second; C is the workload's throughput, which anything slowing the
 * process (stops, a competing checkpointer) lowers. A mismatch found while
 * running prints "FAIL ..." and exits 1.
 *
 * It prints "ready pages N" once filled. Before every step it looks for
 * TRIGGER; once it exists it checks every page against the table and the
 * table against its rewrite counter, prints "verify ok pages N rewrites R"
 * (exit 0) or "verify FAIL ..." for the first mismatches (exit 1).
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define MAGIC 0x5245575249544552ULL /* "REWRITER" */
#define RANDOM_WORDS 32
#define STEP_NS (10 * 1000 * 1000LL)

/* state is everything the process needs to go on, in its own memory. */
static struct {
	size_t npages;
	uint64_t rng;	   /* chooses the pages to rewrite */
	uint64_t rewrites; /* pages rewritten since the start */
	double per_step;   /* pages to rewrite per 10 ms step */
	double carry;	   /* fractional page owed to the next step */
} st;

static unsigned char *region;
static uint32_t *gen;

static uint64_t splitmix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

/* fill writes the content of page i at generation g into p. */
static void fill(unsigned char *p, uint64_t i, uint32_t g)
{
	uint64_t *w = (uint64_t *)p;
	w[0] = MAGIC;
	w[1] = i;
	w[2] = g;
	w[3] = ~(i ^ ((uint64_t)g << 40));

	uint64_t s = splitmix(i * 0x100000001b3ULL ^ ((uint64_t)g << 44)) | 1;
	for (int k = 0; k < RANDOM_WORDS; k++)
		w[4 + k] = xorshift(&s);

	char line[64];
	int n = snprintf(line, sizeof line, "rewriter page %08llx generation %08x\n",
			 (unsigned long long)i, g);
	for (int off = 32 + RANDOM_WORDS * 8; off < PAGE; off += n) {
		int m = PAGE - off < n ? PAGE - off : n;
		memcpy(p + off, line, m);
	}
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fflush(stdout);
}

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* describe says how page i differs from generation g. */
static void describe(const char *what, uint64_t i, uint32_t g)
{
	const uint64_t *w = (const uint64_t *)(region + i * PAGE);
	if (w[0] != MAGIC)
		say("%s page %llu: no header (first word %016llx), want generation %u\n", what,
		    (unsigned long long)i, (unsigned long long)w[0], g);
	else
		say("%s page %llu: holds page %llu generation %llu, want generation %u\n", what,
		    (unsigned long long)i, (unsigned long long)w[1], (unsigned long long)w[2], g);
}

/* verify checks every page against the table, and the table against the counter. */
static int verify(void)
{
	static unsigned char want[PAGE];
	uint64_t sum = 0;
	size_t bad = 0;
	for (size_t i = 0; i < st.npages; i++) {
		sum += gen[i];
		fill(want, i, gen[i]);
		if (memcmp(want, region + i * PAGE, PAGE) != 0) {
			if (bad < 5)
				describe("verify FAIL", i, gen[i]);
			bad++;
		}
	}
	if (bad) {
		say("verify FAIL: %zu of %zu pages differ\n", bad, st.npages);
		return 1;
	}
	if (sum != st.rewrites) {
		say("verify FAIL: the generation table sums to %llu, the counter says %llu "
		    "rewrites\n", (unsigned long long)sum, (unsigned long long)st.rewrites);
		return 1;
	}
	say("verify ok pages %zu rewrites %llu\n", st.npages, (unsigned long long)st.rewrites);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: rewriter MIB PERCENT_PER_SEC TRIGGER\n");
		return 2;
	}
	const char *trigger = argv[3];
	st.npages = strtoull(argv[1], NULL, 10) * 1024 * 1024 / PAGE;
	st.per_step = st.npages * strtod(argv[2], NULL) / 100.0 / 100.0;
	st.rng = 0x853c49e6748fea9bULL;
	if (st.npages == 0) {
		fprintf(stderr, "rewriter: MIB must be positive\n");
		return 2;
	}

	region = mmap(NULL, st.npages * PAGE, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	gen = mmap(NULL, st.npages * sizeof *gen, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (region == MAP_FAILED || gen == MAP_FAILED) {
		perror("rewriter: mmap");
		return 2;
	}
	for (size_t i = 0; i < st.npages; i++)
		fill(region + i * PAGE, i, 0);
	say("ready pages %zu\n", st.npages);

	/* check is a private PRNG: which pages the checks read does not matter. */
	uint64_t check = 0x2545f4914f6cdd1dULL;
	static unsigned char want[PAGE];
	uint64_t rewrites = 0, checks = 0;
	int64_t next = now_ns(), last = next;
	for (;;) {
		if (access(trigger, F_OK) == 0)
			return verify();

		st.carry += st.per_step;
		size_t n = (size_t)st.carry;
		st.carry -= n;
		for (size_t k = 0; k < n; k++) {
			size_t i = xorshift(&st.rng) % st.npages;
			fill(region + i * PAGE, i, gen[i] + 1);
			gen[i]++;
			st.rewrites++;
		}
		rewrites += n;

		/* After a long stop (a restore), start the schedule again from now. */
		next += STEP_NS;
		int64_t now = now_ns();
		if (now - next > 1000000000LL)
			next = now;
		while (now < next) {
			for (int k = 0; k < 8; k++) {
				size_t i = xorshift(&check) % st.npages;
				fill(want, i, gen[i]);
				if (memcmp(want, region + i * PAGE, PAGE) != 0) {
					describe("FAIL: while running,", i, gen[i]);
					return 1;
				}
			}
			checks += 8;
			now = now_ns();
		}

		if (now - last >= 1000000000LL) {
			double secs = (now - last) / 1e9;
			say("rate %.0f checks %.0f\n", rewrites / secs, checks / secs);
			rewrites = checks = 0;
			last = now;
		}
	}
}
