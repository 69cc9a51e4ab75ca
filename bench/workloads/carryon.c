/*
 * carryon: holds MIB MiB of known pages, rewrites a known random set of them
 * when told, and checks that exactly that set holds the new content.
 *
 * Usage: carryon MIB WRITEFILE TRIGGER
 *
 * Page i holds generation 0 of its content at the start (a header naming page
 * and generation, 256 random bytes seeded from both, then a repeated line).
 * It prints "ready pages N" and then, every 5 ms:
 *
 *   - once TRIGGER exists, it verifies and exits (0 when all is well);
 *   - the first time WRITEFILE exists, it reads "SEED COUNT BURSTS GAP_MS"
 *     from it, picks COUNT distinct pages with a PRNG seeded by SEED, and
 *     writes generation 1 into them in BURSTS bursts GAP_MS apart, recording
 *     in its own memory what it did; it prints "writing COUNT pages" before
 *     and "wrote W pages in T ms" after.
 *
 * The verification computes the set again from WRITEFILE (when it exists),
 * independently of what the process's memory recorded, and checks that the
 * process recorded doing exactly those writes, that every page of the set
 * holds generation 1 and every other page generation 0. It prints "verify ok
 * pages N written W" (W = 0 when there is no WRITEFILE) or "verify FAIL ..."
 * for the first differences.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define MAGIC 0x4e4f595252414300ULL /* "\0CARRYON" */

/* done is what the process did, in its own memory. */
static struct {
	int applied;
	unsigned long long seed, count;
	size_t written;
} done;

static unsigned char *region;
static unsigned char *written; /* 1 for each page it rewrote */
static size_t npages;

static uint64_t splitmix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static void fill(unsigned char *p, uint64_t i, uint64_t g)
{
	uint64_t *w = (uint64_t *)p;
	w[0] = MAGIC;
	w[1] = i;
	w[2] = g;
	uint64_t s = splitmix(i << 8 | g);
	for (int k = 3; k < 35; k++)
		w[k] = s = splitmix(s);
	char line[64];
	int n = snprintf(line, sizeof line, "carryon page %llu generation %llu\n",
			 (unsigned long long)i, (unsigned long long)g);
	for (int off = 35 * 8; off < PAGE; off += n)
		memcpy(p + off, line, PAGE - off < n ? PAGE - off : n);
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

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* readplan reads WRITEFILE; 0 when it does not exist or is incomplete. */
static int readplan(const char *path, unsigned long long *seed, unsigned long long *count,
		    unsigned *bursts, unsigned *gap)
{
	char buf[128];
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	return sscanf(buf, "%llu %llu %u %u", seed, count, bursts, gap) == 4;
}

/* pick marks in set the count distinct pages seed chooses, in *order. */
static void pick(unsigned long long seed, unsigned long long count, unsigned char *set,
		 size_t *order)
{
	uint64_t s = seed;
	for (size_t k = 0; k < count;) {
		s = splitmix(s);
		size_t i = s % npages;
		if (set[i])
			continue;
		set[i] = 1;
		if (order)
			order[k] = i;
		k++;
	}
}

static int verify(const char *writefile)
{
	unsigned long long seed = 0, count = 0;
	unsigned bursts, gap;
	int planned = readplan(writefile, &seed, &count, &bursts, &gap);
	unsigned char *want = calloc(npages, 1);
	if (planned)
		pick(seed, count, want, NULL);

	if (planned != done.applied || (planned && (seed != done.seed || count != done.count ||
						    done.written != count))) {
		say("verify FAIL: the plan says %d seed %llu count %llu; the process recorded "
		    "%d seed %llu count %llu written %zu\n", planned, seed, count, done.applied,
		    done.seed, done.count, done.written);
		return 1;
	}
	static unsigned char page[PAGE];
	size_t bad = 0;
	for (size_t i = 0; i < npages; i++) {
		if (want[i] != written[i] && bad < 5)
			say("verify FAIL: page %zu: the plan says written %d, the process's record "
			    "%d\n", i, want[i], written[i]);
		fill(page, i, want[i]);
		if (want[i] != written[i] || memcmp(page, region + (size_t)i * PAGE, PAGE) != 0) {
			const uint64_t *w = (const uint64_t *)(region + (size_t)i * PAGE);
			if (bad < 5)
				say("verify FAIL: page %zu (%s): holds page %llu generation %llu, "
				    "want generation %d\n", i, want[i] ? "written" : "not written",
				    (unsigned long long)w[1], (unsigned long long)w[2], want[i]);
			bad++;
		}
	}
	if (bad) {
		say("verify FAIL: %zu of %zu pages differ\n", bad, npages);
		return 1;
	}
	say("verify ok pages %zu written %zu\n", npages, done.written);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: carryon MIB WRITEFILE TRIGGER\n");
		return 2;
	}
	const char *writefile = argv[2], *trigger = argv[3];
	npages = strtoull(argv[1], NULL, 10) * 1024 * 1024 / PAGE;
	region = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		      -1, 0);
	written = mmap(NULL, npages, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (npages == 0 || region == MAP_FAILED || written == MAP_FAILED) {
		fprintf(stderr, "carryon: cannot map %s MiB\n", argv[1]);
		return 2;
	}
	for (size_t i = 0; i < npages; i++)
		fill(region + i * PAGE, i, 0);
	say("ready pages %zu\n", npages);

	struct timespec tick = {0, 5 * 1000 * 1000};
	for (;;) {
		if (access(trigger, F_OK) == 0)
			return verify(writefile);

		unsigned long long seed, count;
		unsigned bursts, gap;
		if (!done.applied && readplan(writefile, &seed, &count, &bursts, &gap)) {
			if (count > npages / 2 || bursts == 0) {
				say("FAIL: bad plan %llu %llu %u %u\n", seed, count, bursts, gap);
				return 2;
			}
			int64_t t0 = now_ms();
			size_t *order = calloc(count, sizeof *order);
			unsigned char *set = calloc(npages, 1);
			pick(seed, count, set, order);
			say("writing %llu pages\n", count);
			done.applied = 1;
			done.seed = seed;
			done.count = count;
			for (unsigned b = 0; b < bursts; b++) {
				if (b > 0) {
					struct timespec g = {gap / 1000, (gap % 1000) * 1000000L};
					nanosleep(&g, NULL);
				}
				for (size_t k = b * count / bursts; k < (b + 1) * count / bursts; k++) {
					size_t i = order[k];
					fill(region + i * PAGE, i, 1);
					written[i] = 1;
					done.written++;
				}
			}
			free(order);
			free(set);
			say("wrote %zu pages in %lld ms\n", done.written, (long long)(now_ms() - t0));
		}
		nanosleep(&tick, NULL);
	}
}
