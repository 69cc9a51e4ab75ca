/*
 * memfill: fills N MiB with pages of known, mixed content, waits, and checks
 * every page is still what it wrote.
 *
 * Usage: memfill MIB TRIGGER [MIX [DUP]]
 *
 * The region is one anonymous private mapping of MIB MiB. MIX chooses the
 * share of each class of page:
 *   zero, text or random: every page of that class (zero pages are written,
 *   then zeroed again); DUP (0 to 100, default 0) makes that percentage of
 *   the pages, the first DUP of every hundred, duplicates instead;
 *   quarters (the default), page i by i % 8:
 *     0     never touched (not even present; reads as zero)
 *     1     written, then zeroed again (present, all zero)
 *     2, 3  text: a line naming the page, repeated (distinct, compressible)
 *     4, 5  random: xorshift output seeded from the page number (incompressible)
 *     6, 7  duplicate: a copy of one of DUP_TEMPLATES random template pages
 *   so a quarter each is zero, text, random and duplicates of only
 *   DUP_TEMPLATES distinct contents;
 *   target, page i by i % 10 (the mix of issue 9's snapshot-size target):
 *     0, 1 untouched, 2, 3 zeroed, 4-6 text, 7, 8 random, 9 duplicate
 *   so 40% zero, 30% text, 30% random of which a third (10% of all pages)
 *   duplicates.
 *
 * It prints "pages N zero Z text T random R dup D templates K", then
 * "checksum <hex>" and "ready", then polls every 10 ms for TRIGGER to exist.
 * After the trigger it recomputes the checksum ("checksum <hex>"), checks
 * every page against its generator (printing "page <i> (<class>) differs"
 * for the first few that do not match) and prints "OK" (exit 0) or "FAILED"
 * (exit 1).
 *
 * With MEMFILL_TOUCH_STRIDE=K in its environment, memfill first reads one byte
 * of every K-th page after the trigger, timing each read, then does the same on
 * a fresh anonymous mapping of the same size, and prints
 * "touch n <N> p50 <ns> p99 <ns> p999 <ns>" and "anon n <N> p50 ..." before it
 * checks. After a lazy restore without prefetch, with K larger than the pages
 * the page server installs around a fault, each timed read is one page fault
 * served over userfaultfd, as the restored process sees it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define DUP_TEMPLATES 16

static unsigned char *region;
static size_t npages;

static uint64_t splitmix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static void fill_random(unsigned char *p, uint64_t seed)
{
	uint64_t s = splitmix(seed) | 1;
	uint64_t *w = (uint64_t *)p;
	for (int i = 0; i < PAGE / 8; i++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		w[i] = s;
	}
}

static void fill_text(unsigned char *p, size_t page)
{
	char line[96];
	int n = snprintf(line, sizeof line, "memfill text page %zu: the quick brown fox.\n", page);
	for (int off = 0; off < PAGE; off += n)
		memcpy(p + off, line, (size_t)(PAGE - off) < (size_t)n ? (size_t)(PAGE - off) : (size_t)n);
}

enum class { UNTOUCHED, ZEROED, TEXT, RANDOM, DUP, NCLASS };

static const char *class_names[NCLASS] = {"untouched zero", "zeroed", "text", "random",
					  "duplicate"};

/* The MIX and DUP arguments; see the usage above. */
enum mix { QUARTERS, TARGET, ALL_ZERO, ALL_TEXT, ALL_RANDOM };
static enum mix mix;
static unsigned dup_pct;

static enum class class_of(size_t i)
{
	static const enum class quarters[8] = {UNTOUCHED, ZEROED, TEXT, TEXT,
					       RANDOM, RANDOM, DUP, DUP};
	static const enum class target[10] = {UNTOUCHED, UNTOUCHED, ZEROED, ZEROED, TEXT,
					      TEXT, TEXT, RANDOM, RANDOM, DUP};
	switch (mix) {
	case QUARTERS:
		return quarters[i % 8];
	case TARGET:
		return target[i % 10];
	default:
		break;
	}
	if (i % 100 < dup_pct)
		return DUP;
	return mix == ALL_ZERO ? ZEROED : mix == ALL_TEXT ? TEXT : RANDOM;
}

/* template_of is the duplicate template page i copies. */
static uint64_t template_of(size_t i)
{
	size_t t = mix == QUARTERS ? i / 8 * 2 + i % 2 : mix == TARGET ? i / 10 : i / 100 + i;
	return 0xd0d0d0d0ULL + t % DUP_TEMPLATES;
}

/* expected writes the content page i must hold into p. */
static void expected(unsigned char *p, size_t i)
{
	switch (class_of(i)) {
	case UNTOUCHED:
	case ZEROED:
		memset(p, 0, PAGE);
		break;
	case TEXT:
		fill_text(p, i);
		break;
	case RANDOM:
		fill_random(p, i);
		break;
	default:
		fill_random(p, template_of(i));
		break;
	}
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* time_touches reads one byte of every stride-th page of mem, timing each, and
 * prints the percentiles under label. */
static void time_touches(const char *label, volatile unsigned char *mem, size_t stride)
{
	size_t n = (npages + stride - 1) / stride;
	uint64_t *lat = malloc(n * sizeof *lat);
	if (lat == NULL)
		return;
	/* Fault the array itself in first, so that only mem's faults are timed. */
	memset(lat, 0, n * sizeof *lat);
	for (size_t k = 0; k < n; k++) {
		uint64_t t0 = now_ns();
		(void)mem[k * stride * PAGE];
		lat[k] = now_ns() - t0;
	}
	qsort(lat, n, sizeof *lat, cmp_u64);
	say("%s n %zu p50 %llu p99 %llu p999 %llu\n", label, n,
	    (unsigned long long)lat[n / 2], (unsigned long long)lat[n * 99 / 100],
	    (unsigned long long)lat[n * 999 / 1000]);
	free(lat);
}

/* checksum is FNV-1a over 64-bit words of every page, in order. */
static uint64_t checksum(void)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	const uint64_t *w = (const uint64_t *)region;
	size_t n = npages * PAGE / 8;
	for (size_t i = 0; i < n; i++) {
		h ^= w[i];
		h *= 0x100000001b3ULL;
	}
	return h;
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

int main(int argc, char **argv)
{
	static const char *mixes[] = {"quarters", "target", "zero", "text", "random"};
	int ok = argc >= 3 && argc <= 5;
	if (ok && argc >= 4) {
		ok = 0;
		for (size_t k = 0; k < sizeof mixes / sizeof mixes[0]; k++)
			if (strcmp(argv[3], mixes[k]) == 0) {
				mix = (enum mix)k;
				ok = 1;
			}
	}
	if (ok && argc == 5) {
		char *end;
		unsigned long d = strtoul(argv[4], &end, 10);
		ok = *end == '\0' && d <= 100 && mix != QUARTERS && mix != TARGET;
		dup_pct = (unsigned)d;
	}
	if (!ok) {
		fprintf(stderr, "usage: memfill MIB TRIGGER [quarters|target|zero|text|random "
				"[DUP_PERCENT]] (DUP only with zero, text, random)\n");
		return 2;
	}
	size_t mib = strtoul(argv[1], NULL, 10);
	npages = mib * 1024 * 1024 / PAGE;
	region = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		      -1, 0);
	if (region == MAP_FAILED) {
		perror("mmap");
		return 2;
	}

	size_t counts[NCLASS] = {0};
	for (size_t i = 0; i < npages; i++) {
		unsigned char *p = region + i * PAGE;
		enum class c = class_of(i);
		counts[c]++;
		if (c == UNTOUCHED)
			continue;
		if (c == ZEROED) {
			memset(p, 0x5a, PAGE);
			memset(p, 0, PAGE);
			continue;
		}
		expected(p, i);
	}
	say("pages %zu zero %zu text %zu random %zu dup %zu templates %d\n", npages,
	    counts[UNTOUCHED] + counts[ZEROED], counts[TEXT], counts[RANDOM], counts[DUP],
	    DUP_TEMPLATES);
	uint64_t before = checksum();
	say("checksum %016llx\n", (unsigned long long)before);
	say("ready\n");

	struct timespec tick = {0, 10 * 1000 * 1000};
	while (access(argv[2], F_OK) != 0)
		nanosleep(&tick, NULL);

	const char *stride_env = getenv("MEMFILL_TOUCH_STRIDE");
	size_t stride = stride_env ? strtoul(stride_env, NULL, 10) : 0;
	if (stride > 0) {
		time_touches("touch", region, stride);
		unsigned char *fresh = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE,
					    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (fresh != MAP_FAILED) {
			time_touches("anon", fresh, stride);
			munmap(fresh, npages * PAGE);
		}
	}

	uint64_t after = checksum();
	say("checksum %016llx\n", (unsigned long long)after);
	int bad = 0;
	unsigned char *want = malloc(PAGE);
	for (size_t i = 0; i < npages; i++) {
		expected(want, i);
		if (memcmp(want, region + i * PAGE, PAGE) != 0) {
			if (bad < 10)
				say("page %zu (%s) differs\n", i, class_names[class_of(i)]);
			bad++;
		}
	}
	if (bad || after != before) {
		say("FAILED: %d pages differ, checksum %016llx want %016llx\n", bad,
		    (unsigned long long)after, (unsigned long long)before);
		return 1;
	}
	say("OK\n");
	return 0;
}
