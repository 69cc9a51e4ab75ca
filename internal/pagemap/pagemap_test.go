package pagemap

import (
	"errors"
	"os"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/internal/uffd"
)

func TestStructSizes(t *testing.T) {
	for name, s := range structSizes() {
		if s[0] != s[1] {
			t.Errorf("sizeof(struct %s) = %d, constant says %d", name, s[0], s[1])
		}
	}
	// _IOWR('f', 16, struct pm_scan_arg), worked out by hand from _IOC.
	if PAGEMAP_SCAN != 0xc0606610 {
		t.Errorf("PAGEMAP_SCAN = %#x, want 0xc0606610", PAGEMAP_SCAN)
	}
}

// requireScan fails where PAGEMAP_SCAN must exist: every kernel cryo runs on is
// 6.7 or later.
func requireScan(t *testing.T) {
	t.Helper()
	if err := Supported(); err != nil {
		t.Fatalf("PAGEMAP_SCAN (Linux 6.7+) unavailable: %v", err)
	}
}

func mapPages(t *testing.T, pages int) ([]byte, uint64) {
	t.Helper()
	mem, err := unix.Mmap(-1, 0, pages*PageSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	// No huge pages: the tests count 4 KiB pages.
	if err := unix.Madvise(mem, unix.MADV_NOHUGEPAGE); err != nil {
		t.Fatal(err)
	}
	return mem, uint64(uffd.Addr(mem))
}

func openSelf(t *testing.T) *os.File {
	t.Helper()
	f, err := Open(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestScanPresent checks the ABI against the kernel: a wrong pm_scan_arg size or
// layout makes the call fail with EINVAL or report the wrong pages. A buffer of
// one region makes Scan loop over walk_end.
func TestScanPresent(t *testing.T) {
	requireScan(t)
	mem, base := mapPages(t, 16)
	touched := []int{0, 1, 2, 5, 9, 15}
	for _, i := range touched {
		mem[i*PageSize] = 1
	}
	f := openSelf(t)
	end := base + 16*PageSize
	for _, vecLen := range []int{1, 2, 64} {
		vec := make([]Region, vecLen)
		regions, walkEnd, err := Scan(int(f.Fd()), base, end, 0, PAGE_IS_PRESENT, 0, 0,
			PAGE_IS_PRESENT, vec)
		if err != nil {
			t.Fatalf("vec %d: %v", vecLen, err)
		}
		if walkEnd != end {
			t.Errorf("vec %d: walk_end %#x, want %#x", vecLen, walkEnd, end)
		}
		var got []int
		for _, r := range regions {
			if r.Categories != PAGE_IS_PRESENT {
				t.Errorf("vec %d: region %+v: categories %#x", vecLen, r, r.Categories)
			}
			for a := r.Start; a < r.End; a += PageSize {
				got = append(got, int((a-base)/PageSize))
			}
		}
		if !slices.Equal(got, touched) {
			t.Errorf("vec %d: present pages %v, want %v", vecLen, got, touched)
		}
	}
	if _, _, err := Scan(int(f.Fd()), base, end, 0, 0, 0, 0, PAGE_IS_PRESENT,
		nil); err == nil {
		t.Error("Scan with no buffer succeeded")
	}
}

// TestScanWriteProtect tracks writes to a region of this process through an
// asynchronous write-protect userfaultfd: written pages are reported once and
// write-protected again in the same call; the pagemap entries show PM_UFFD_WP.
func TestScanWriteProtect(t *testing.T) {
	requireScan(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root for a userfaultfd handling kernel faults")
	}
	fd, err := uffd.Create(unix.O_CLOEXEC | unix.O_NONBLOCK | uffd.UFFD_USER_MODE_ONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, _, err := uffd.API(fd, uffd.UFFD_FEATURE_WP_ASYNC|
		uffd.UFFD_FEATURE_WP_UNPOPULATED); err != nil {
		t.Fatalf("kernel lacks UFFD_FEATURE_WP_ASYNC (6.7): %v", err)
	}
	mem, base := mapPages(t, 32)
	end := base + 32*PageSize
	for i := 0; i < 16; i++ { // half populated, half not
		mem[i*PageSize] = 1
	}
	if _, err := uffd.Register(fd, base, 32*PageSize, uffd.UFFDIO_REGISTER_MODE_WP); err != nil {
		t.Fatal(err)
	}
	if err := uffd.WriteProtect(fd, base, 32*PageSize,
		uffd.UFFDIO_WRITEPROTECT_MODE_WP); err != nil {
		t.Fatal(err)
	}
	f := openSelf(t)
	entries, err := ReadEntries(f, base, end, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range entries[:16] {
		if !e.Present() || !e.UffdWP() || e.Swapped() || e.File() {
			t.Errorf("page %d after arming: entry %#x, want present and uffd-wp", i, e)
		}
	}

	written := []int{3, 4, 17, 31}
	for _, i := range written {
		mem[i*PageSize+7] = 2
	}
	entries, err = ReadEntries(f, base, end, entries)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range written {
		if e := entries[i]; !e.Present() || e.UffdWP() {
			t.Errorf("written page %d: entry %#x, want present without uffd-wp", i, e)
		}
	}

	vec := make([]Region, 2)
	scanWritten := func() []int {
		t.Helper()
		regions, _, err := Scan(int(f.Fd()), base, end,
			PM_SCAN_WP_MATCHING|PM_SCAN_CHECK_WPASYNC, PAGE_IS_WRITTEN, 0, 0,
			PAGE_IS_WRITTEN, vec)
		if err != nil {
			t.Fatal(err)
		}
		var got []int
		for _, r := range regions {
			for a := r.Start; a < r.End; a += PageSize {
				got = append(got, int((a-base)/PageSize))
			}
		}
		return got
	}
	if got := scanWritten(); !slices.Equal(got, written) {
		t.Errorf("written pages %v, want %v", got, written)
	}
	if got := scanWritten(); len(got) != 0 {
		t.Errorf("written pages after re-arming %v, want none", got)
	}
	mem[20*PageSize] = 3
	if got := scanWritten(); !slices.Equal(got, []int{20}) {
		t.Errorf("written pages %v, want [20]", got)
	}

	// A range without async write-protection fails the check with EPERM.
	_, other := mapPages(t, 4)
	_, _, err = Scan(int(f.Fd()), other, other+4*PageSize,
		PM_SCAN_WP_MATCHING|PM_SCAN_CHECK_WPASYNC, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN, vec)
	if !errors.Is(err, unix.EPERM) {
		t.Errorf("scan of an unregistered range: %v, want EPERM", err)
	}
}

func TestReadEntriesErrors(t *testing.T) {
	f := openSelf(t)
	if _, err := ReadEntries(f, 1, PageSize, nil); !errors.Is(err, unix.EINVAL) {
		t.Errorf("unaligned start: %v, want EINVAL", err)
	}
	_, base := mapPages(t, 2)
	got, err := ReadEntries(f, base, base, nil)
	if err != nil || len(got) != 0 {
		t.Errorf("empty range: %v, %v", got, err)
	}
}

func TestEntryBits(t *testing.T) {
	e := Entry(PM_PRESENT | PM_SOFT_DIRTY | PM_MMAP_EXCLUSIVE | 0x1234)
	if !e.Present() || !e.SoftDirty() || !e.Exclusive() || e.Swapped() || e.File() ||
		e.UffdWP() || e.PFN() != 0x1234 {
		t.Errorf("entry %#x decoded wrong", uint64(e))
	}
	e = Entry(PM_SWAP | PM_FILE | PM_UFFD_WP)
	if e.Present() || !e.Swapped() || !e.File() || !e.UffdWP() || e.SoftDirty() {
		t.Errorf("entry %#x decoded wrong", uint64(e))
	}
}
