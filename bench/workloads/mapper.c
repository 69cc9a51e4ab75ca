/*
 * mapper: changes its memory layout in known steps, so that checkpoints taken
 * between the steps see ranges created, grown, shrunk, moved, split, unmapped,
 * re-protected, zapped and brk grown and shrunk; and checks, on demand, that
 * its layout and every page are what its own bookkeeping says.
 *
 * Usage: mapper STEPFILE TRIGGER
 *
 * Every 10 ms it reads the number in STEPFILE, then looks for TRIGGER: once it
 * exists it verifies and exits (0 when all is well, 1 otherwise). Otherwise it
 * runs the steps up to the number read (1 to LAST_STEP), printing
 * "step K ready" after each.
 *
 * The bookkeeping (a table of regions, each page's content tag and
 * protection, the ranges unmapped, brk) lives in the process's static memory,
 * so a snapshot holds it together with the pages: a restored process checks
 * the state of the step it was checkpointed in. A page's content is derived
 * from its tag; tag 0 is a page never written, which must read as zeros.
 *
 * The verification compares /proc/self/maps with the table (every page mapped
 * with its protection; no page of an unmapped range mapped again unless a
 * live region took it), then every page's content, then brk. It prints
 * "verify ok step K regions R pages P" or "verify FAIL ..." for the first
 * differences.
 *
 * It neither mallocs nor buffers stdout, so that only its own sbrk calls move
 * brk.
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

#define PAGE 4096UL
#define MAXR 16	  /* region slots */
#define MAXP 1024 /* pages per region */
#define MAXDEAD 16
#define LAST_STEP 6
#define HEAP 0 /* the slot of the brk heap */

/* region is one range the program mapped (or the brk heap, slot HEAP). */
struct region {
	int live;
	uintptr_t addr;
	size_t npages;
	uint64_t tag[MAXP];	/* content of each page; 0 = never written */
	unsigned char prot[MAXP]; /* PROT_* of each page */
};

static struct region R[MAXR];
static struct {
	uintptr_t addr;
	size_t npages;
} dead[MAXDEAD];
static int ndead;
static int step;
static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof buf - 1)
		n = sizeof buf - 1;
	if (write(1, buf, n) < 0)
		_exit(3);
}

static void die(const char *what)
{
	say("FAIL: step %d: %s\n", step, what);
	_exit(2);
}

static uint64_t splitmix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* fill writes the content of tag into p: the tag, 512 random bytes, a pattern. */
static void fill(unsigned char *p, uint64_t tag)
{
	uint64_t *w = (uint64_t *)p;
	if (tag == 0) {
		memset(p, 0, PAGE);
		return;
	}
	w[0] = tag;
	uint64_t s = splitmix(tag);
	for (int k = 1; k < 65; k++)
		w[k] = s = splitmix(s);
	for (size_t k = 65; k < PAGE / 8; k++)
		w[k] = tag ^ (k * 0x0101010101010101ULL);
}

/* newtag is a tag unique to (step, slot, page, salt). */
static uint64_t newtag(int slot, size_t page)
{
	static uint32_t salt;
	return (uint64_t)step << 56 | (uint64_t)slot << 48 | (uint64_t)page << 24 | ++salt;
}

static unsigned char *pageaddr(int slot, size_t j)
{
	return (unsigned char *)(R[slot].addr + j * PAGE);
}

/* write_page gives page j of slot a new tag and content (it must be writable). */
static void write_page(int slot, size_t j)
{
	R[slot].tag[j] = newtag(slot, j);
	fill(pageaddr(slot, j), R[slot].tag[j]);
}

/* map_region maps npages at hint (0: anywhere) into slot and writes every
 * page, or only the even ones when sparse. */
static void map_region(int slot, size_t npages, uintptr_t hint, int sparse)
{
	int flags = MAP_PRIVATE | MAP_ANONYMOUS | (hint ? MAP_FIXED_NOREPLACE : 0);
	void *p = mmap((void *)hint, npages * PAGE, PROT_READ | PROT_WRITE, flags, -1, 0);
	if (p == MAP_FAILED || (hint && (uintptr_t)p != hint))
		die("mmap");
	R[slot].live = 1;
	R[slot].addr = (uintptr_t)p;
	R[slot].npages = npages;
	for (size_t j = 0; j < npages; j++) {
		R[slot].prot[j] = PROT_READ | PROT_WRITE;
		R[slot].tag[j] = 0;
		if (!sparse || j % 2 == 0)
			write_page(slot, j);
	}
}

static void protect(int slot, size_t from, size_t to, int prot)
{
	if (mprotect(pageaddr(slot, from), (to - from) * PAGE, prot) != 0)
		die("mprotect");
	for (size_t j = from; j < to; j++)
		R[slot].prot[j] = prot;
}

static void bury(uintptr_t addr, size_t npages)
{
	if (ndead == MAXDEAD)
		die("too many unmapped ranges");
	dead[ndead].addr = addr;
	dead[ndead].npages = npages;
	ndead++;
}

static void unmap_region(int slot)
{
	if (munmap((void *)R[slot].addr, R[slot].npages * PAGE) != 0)
		die("munmap");
	bury(R[slot].addr, R[slot].npages);
	R[slot].live = 0;
}

/* remap resizes slot to npages, moving it if it must (or to fixed, if set),
 * and writes the pages it grew by. */
static void remap(int slot, size_t npages, uintptr_t fixed)
{
	struct region *r = &R[slot];
	int flags = MREMAP_MAYMOVE | (fixed ? MREMAP_FIXED : 0);
	void *p = mremap((void *)r->addr, r->npages * PAGE, npages * PAGE, flags, (void *)fixed);
	if (p == MAP_FAILED)
		die("mremap");
	if ((uintptr_t)p != r->addr)
		bury(r->addr, r->npages);
	else if (npages < r->npages)
		bury(r->addr + npages * PAGE, r->npages - npages);
	r->addr = (uintptr_t)p;
	size_t old = r->npages;
	r->npages = npages;
	for (size_t j = old; j < npages; j++) {
		r->prot[j] = r->prot[old - 1];
		write_page(slot, j);
	}
}

/* heap_grow moves brk by n pages (n < 0 shrinks) and writes the new pages. */
static void heap_grow(long n)
{
	struct region *h = &R[HEAP];
	if (!h->live) {
		uintptr_t b = (uintptr_t)sbrk(0);
		if (b % PAGE && sbrk(PAGE - b % PAGE) == (void *)-1)
			die("sbrk align");
		h->live = 1;
		h->addr = (uintptr_t)sbrk(0);
		h->npages = 0;
	}
	if (sbrk(n * (long)PAGE) == (void *)-1)
		die("sbrk");
	if (n < 0) {
		bury(h->addr + (h->npages + n) * PAGE, -n);
		h->npages += n;
		return;
	}
	for (long k = 0; k < n; k++) {
		h->prot[h->npages] = PROT_READ | PROT_WRITE;
		write_page(HEAP, h->npages++);
	}
}

/* scribble rewrites n random writable pages across every live region. */
static void scribble(int n)
{
	for (int done = 0, tries = 0; done < n && tries < 100000; tries++) {
		rng = splitmix(rng);
		int slot = rng % MAXR;
		if (!R[slot].live || R[slot].npages == 0)
			continue;
		size_t j = (rng >> 16) % R[slot].npages;
		if (R[slot].prot[j] & PROT_WRITE) {
			write_page(slot, j);
			done++;
		}
	}
}

/* The slots of the regions. */
enum { A = 1, B, C, D, T, G, A2, E, F, CRES };

static void run_step(void)
{
	step++;
	switch (step) {
	case 1:
		map_region(A, 64, 0, 0);
		map_region(B, 32, 0, 0);
		map_region(C, 96, 0, 0);
		map_region(D, 16, 0, 0);
		protect(D, 0, 16, PROT_READ);
		map_region(G, 8, 0, 1); /* odd pages never touched */
		heap_grow(16);
		{
			/* T: 4 MiB on a 2 MiB boundary, for transparent huge pages. */
			size_t len = 4 << 20, align = 2 << 20;
			unsigned char *p = mmap(NULL, len + align, PROT_READ | PROT_WRITE,
						MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (p == MAP_FAILED)
				die("mmap huge");
			uintptr_t a = ((uintptr_t)p + align - 1) & ~(align - 1);
			if (a > (uintptr_t)p)
				munmap(p, a - (uintptr_t)p);
			munmap((void *)(a + len), (uintptr_t)p + align - a);
			madvise((void *)a, len, MADV_HUGEPAGE);
			R[T].live = 1;
			R[T].addr = a;
			R[T].npages = len / PAGE;
			for (size_t j = 0; j < R[T].npages; j++) {
				R[T].prot[j] = PROT_READ | PROT_WRITE;
				write_page(T, j);
			}
		}
		break;
	case 2:
		unmap_region(B);
		remap(A, 160, 0); /* grow, in place or moved */
		for (size_t j = 0; j < R[C].npages; j += 3)
			write_page(C, j);
		protect(D, 0, 16, PROT_READ | PROT_WRITE);
		for (size_t j = 0; j < 4; j++)
			write_page(D, j);
		protect(D, 0, 16, PROT_READ);
		heap_grow(32);
		write_page(T, 1);
		write_page(T, 511);
		write_page(T, 512);
		write_page(T, 1000);
		break;
	case 3: {
		/* Move C to a place of our choosing: reserve it, then mremap onto it. */
		void *to = mmap(NULL, R[C].npages * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
				-1, 0);
		if (to == MAP_FAILED)
			die("mmap reserve");
		remap(C, R[C].npages, (uintptr_t)to);
		write_page(C, 0);

		/* Punch a hole in A: pages 40..59 go, 60..159 become region A2. */
		if (munmap(pageaddr(A, 40), 20 * PAGE) != 0)
			die("munmap hole");
		bury(R[A].addr + 40 * PAGE, 20);
		R[A2].live = 1;
		R[A2].addr = R[A].addr + 60 * PAGE;
		R[A2].npages = R[A].npages - 60;
		memcpy(R[A2].tag, R[A].tag + 60, R[A2].npages * sizeof R[A].tag[0]);
		memcpy(R[A2].prot, R[A].prot + 60, R[A2].npages);
		R[A].npages = 40;

		heap_grow(-8);
		map_region(E, 48, 0, 0);
		for (size_t j = 1; j < R[G].npages; j += 2)
			write_page(G, j);
		break;
	}
	case 4:
		protect(C, 32, 64, PROT_NONE);
		remap(E, 20, 0); /* shrink */
		remap(A2, 200, 0);
		protect(D, 0, 16, PROT_READ | PROT_WRITE);
		write_page(D, 15);
		heap_grow(64);
		break;
	case 5: {
		/* Unmap E and map a new region F in exactly its place. */
		uintptr_t at = R[E].addr;
		unmap_region(E);
		map_region(F, 20, at, 0);

		protect(C, 32, 64, PROT_READ | PROT_WRITE);
		for (size_t j = 40; j < 48; j++)
			write_page(C, j);
		protect(C, 0, 8, PROT_READ);
		scribble(50);

		/* Zap half of T: those pages read as zeros again. */
		if (madvise(pageaddr(T, 256), 512 * PAGE, MADV_DONTNEED) != 0)
			die("madvise dontneed");
		for (size_t j = 256; j < 768; j++)
			R[T].tag[j] = 0;
		break;
	}
	case 6:
		heap_grow(16);
		remap(F, 40, 0);
		unmap_region(D);
		write_page(T, 300); /* a zapped page written again */
		scribble(50);
		break;
	default:
		die("no such step");
	}
	say("step %d ready\n", step);
}

static char maps[1 << 20];

/* mapped returns the permission string of the mapping holding addr, or NULL. */
static const char *mapped(uintptr_t addr)
{
	for (char *line = maps; *line;) {
		unsigned long lo, hi;
		char perms[5];
		if (sscanf(line, "%lx-%lx %4s", &lo, &hi, perms) == 3 && lo <= addr && addr < hi) {
			static char out[5];
			memcpy(out, perms, 5);
			return out;
		}
		char *nl = strchr(line, '\n');
		if (!nl)
			break;
		line = nl + 1;
	}
	return NULL;
}

static void read_maps(void)
{
	int fd = open("/proc/self/maps", O_RDONLY);
	if (fd < 0)
		die("open maps");
	size_t n = 0;
	for (ssize_t k; (k = read(fd, maps + n, sizeof maps - 1 - n)) > 0;)
		n += k;
	maps[n] = 0;
	close(fd);
}

static int owned(uintptr_t addr)
{
	for (int s = 0; s < MAXR; s++)
		if (R[s].live && R[s].addr <= addr && addr < R[s].addr + R[s].npages * PAGE)
			return 1;
	return 0;
}

static int verify(void)
{
	int bad = 0, regions = 0;
	size_t pages = 0;
	static unsigned char want[PAGE];

	/* brk first: nothing below may move it, but be sure. */
	uintptr_t brk = (uintptr_t)sbrk(0);
	if (R[HEAP].live && brk != R[HEAP].addr + R[HEAP].npages * PAGE) {
		say("verify FAIL: brk is %lx, want %lx\n", (unsigned long)brk,
		    (unsigned long)(R[HEAP].addr + R[HEAP].npages * PAGE));
		bad++;
	}

	read_maps();
	for (int s = 0; s < MAXR; s++) {
		if (!R[s].live)
			continue;
		regions++;
		for (size_t j = 0; j < R[s].npages; j++) {
			uintptr_t a = R[s].addr + j * PAGE;
			const char *p = mapped(a);
			int prot = R[s].prot[j];
			char perms[3] = {prot & PROT_READ ? 'r' : '-', prot & PROT_WRITE ? 'w' : '-', 0};
			if (!p || strncmp(p, perms, 2) != 0) {
				if (bad++ < 5)
					say("verify FAIL: slot %d page %zu at %lx: mapped %s, want %s\n",
					    s, j, (unsigned long)a, p ? p : "not at all", perms);
			}
		}
	}
	for (int d = 0; d < ndead; d++)
		for (size_t j = 0; j < dead[d].npages; j++) {
			uintptr_t a = dead[d].addr + j * PAGE;
			if (!owned(a) && mapped(a) && bad++ < 5)
				say("verify FAIL: %lx was unmapped, is mapped %s\n", (unsigned long)a,
				    mapped(a));
		}
	if (bad) {
		say("verify FAIL: step %d: %d layout differences\n", step, bad);
		return 1;
	}

	for (int s = 0; s < MAXR; s++) {
		if (!R[s].live)
			continue;
		for (size_t j = 0; j < R[s].npages; j++) {
			if (!(R[s].prot[j] & PROT_READ) && mprotect(pageaddr(s, j), PAGE, PROT_READ))
				die("mprotect for reading");
			fill(want, R[s].tag[j]);
			if (memcmp(want, pageaddr(s, j), PAGE) != 0) {
				if (bad++ < 5)
					say("verify FAIL: slot %d page %zu at %lx: holds tag %016llx, "
					    "want %016llx\n", s, j, (unsigned long)R[s].addr + j * PAGE,
					    (unsigned long long)*(uint64_t *)pageaddr(s, j),
					    (unsigned long long)R[s].tag[j]);
			}
			pages++;
		}
	}
	if (bad) {
		say("verify FAIL: step %d: %d pages differ\n", step, bad);
		return 1;
	}
	say("verify ok step %d regions %d pages %zu\n", step, regions, pages);
	return 0;
}

/* target reads the step number in path; 0 when it has none. */
static int target(const char *path)
{
	char buf[32];
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	return atoi(buf);
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: mapper STEPFILE TRIGGER\n");
		return 2;
	}
	say("step 0 ready\n");
	struct timespec tick = {0, 10 * 1000 * 1000};
	for (;;) {
		/*
		 * The step file is read before the trigger is looked for: a process
		 * checkpointed between the two and restored once the trigger exists
		 * then verifies the step it was checkpointed in, rather than run on
		 * to the step the file says by then.
		 */
		int want = target(argv[1]);
		if (access(argv[2], F_OK) == 0)
			return verify();
		if (want > LAST_STEP)
			want = LAST_STEP;
		while (step < want)
			run_step();
		nanosleep(&tick, NULL);
	}
}
