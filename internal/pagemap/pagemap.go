// Package pagemap reads /proc/PID/pagemap: one 64-bit entry per virtual page
// (Documentation/admin-guide/mm/pagemap.rst), and the PAGEMAP_SCAN ioctl
// (Linux 6.7+) that walks a range of page tables, reports the pages of chosen
// categories as regions and, with PM_SCAN_WP_MATCHING, write-protects the
// matching pages of a range registered with an asynchronous write-protect
// userfaultfd in the same walk.
//
// Constants keep their C names from linux/fs.h and the pagemap documentation.
// The kernel headers on the build machines are older than the kernel, so they
// are defined here and tested against the running kernel.
package pagemap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/internal/procfs"
)

// PageSize is the base page size pagemap entries and PAGEMAP_SCAN work in on the
// supported architectures.
const PageSize = 4096

// Bits of a pagemap entry (Documentation/admin-guide/mm/pagemap.rst).
const (
	PM_PFRAME_MASK    = 1<<55 - 1 // bits 0-54: PFN when present (zero without CAP_SYS_ADMIN)
	PM_SOFT_DIRTY     = 1 << 55   // pte is soft-dirty (CONFIG_MEM_SOFT_DIRTY)
	PM_MMAP_EXCLUSIVE = 1 << 56   // page is exclusively mapped (4.2)
	PM_UFFD_WP        = 1 << 57   // pte is uffd-wp write-protected (5.13)
	PM_GUARD_REGION   = 1 << 58   // page is in a guard region (6.15)
	PM_FILE           = 1 << 61   // page is a file page or shared anonymous (3.5)
	PM_SWAP           = 1 << 62   // page is swapped
	PM_PRESENT        = 1 << 63   // page is present
)

// PAGEMAP_SCAN flags (pm_scan_arg.flags).
const (
	PM_SCAN_WP_MATCHING   = 1 << 0 // write-protect the pages that match
	PM_SCAN_CHECK_WPASYNC = 1 << 1 // fail with EPERM on a page without async WP
)

// Page categories of PAGEMAP_SCAN: the masks of pm_scan_arg and the categories of
// page_region.
const (
	PAGE_IS_WPALLOWED  = 1 << 0 // asynchronous write-protection is enabled
	PAGE_IS_WRITTEN    = 1 << 1 // written since it was write-protected
	PAGE_IS_FILE       = 1 << 2 // file-backed
	PAGE_IS_PRESENT    = 1 << 3 // present in memory
	PAGE_IS_SWAPPED    = 1 << 4 // swapped out
	PAGE_IS_PFNZERO    = 1 << 5 // maps the zero page
	PAGE_IS_HUGE       = 1 << 6 // THP or hugetlb backed
	PAGE_IS_SOFT_DIRTY = 1 << 7 // soft-dirty (CONFIG_MEM_SOFT_DIRTY)
	PAGE_IS_GUARD      = 1 << 8 // guard region (6.15)
)

// Sizes of the ioctl structures (checked against unsafe.Sizeof in the tests).
const (
	sizeofPmScanArg  = 96
	sizeofPageRegion = 24
)

// PAGEMAP_SCAN is _IOWR('f', 16, struct pm_scan_arg) (Linux 6.7).
const PAGEMAP_SCAN = 3<<30 | sizeofPmScanArg<<16 | 0x66<<8 | 16 // 0x66 is 'f'

// Region is struct page_region: the pages [Start, End) share Categories (masked
// with the scan's return mask).
type Region struct {
	Start, End uint64
	Categories uint64
}

// Pages is the number of pages in r.
func (r Region) Pages() uint64 { return (r.End - r.Start) / PageSize }

// Scan runs PAGEMAP_SCAN (Linux 6.7+) on fd, an open /proc/PID/pagemap, over
// [start, end). A page matches when its categories, XORed with inverted, include
// all of categoryMask and, if anyof is not zero, one of anyof. Matching pages come
// back as regions whose categories are masked with returnMask; flags are
// PM_SCAN_*: with PM_SCAN_WP_MATCHING the matching pages are write-protected in
// the same walk (the range must be registered with a userfaultfd in
// UFFD_FEATURE_WP_ASYNC mode), so no write between the report and the
// protection is lost.
//
// vec is the buffer the kernel fills; it must not be empty. When it fills up
// before end, Scan calls again from where the kernel stopped (walk_end), so the
// regions cover the whole range: regions is vec[:n] when one call was enough and
// a new slice otherwise. walkEnd is where the walk ended (end on success).
func Scan(fd int, start, end, flags, categoryMask, anyof, inverted, returnMask uint64,
	vec []Region) (regions []Region, walkEnd uint64, err error) {
	if len(vec) == 0 {
		return nil, start, fmt.Errorf("pagemap_scan %#x-%#x: empty region buffer", start, end)
	}
	arg := pmScanArg{
		Size:              sizeofPmScanArg,
		Flags:             flags,
		End:               end,
		VecLen:            uint64(len(vec)),
		CategoryInverted:  inverted,
		CategoryMask:      categoryMask,
		CategoryAnyofMask: anyof,
		ReturnMask:        returnMask,
	}
	var out []Region
	for at := start; ; {
		arg.Start = at
		n, err := scan(fd, &arg, vec)
		if err != nil {
			return out, arg.WalkEnd, fmt.Errorf("pagemap_scan %#x-%#x at %#x: %w",
				start, end, at, err)
		}
		got := vec[:n]
		if arg.WalkEnd >= end {
			if out == nil {
				return got, arg.WalkEnd, nil
			}
			return append(out, got...), arg.WalkEnd, nil
		}
		// The walk stopped early: the kernel ends a walk when the rest of the
		// vector may not hold the regions of its next chunk, so the vector need
		// not be full. Keep what came and go on from walk_end, where the first
		// region that did not fit starts; only a walk that made no progress is
		// an error.
		if arg.WalkEnd <= at {
			return append(out, got...), arg.WalkEnd, fmt.Errorf(
				"pagemap_scan %#x-%#x at %#x: walk stopped at %#x with %d of %d regions",
				start, end, at, arg.WalkEnd, n, len(vec))
		}
		out = append(out, got...)
		at = arg.WalkEnd
	}
}

// Supported returns nil if the kernel has PAGEMAP_SCAN (Linux 6.7+), found once
// by a scan of the calling process. Without it the error matches unix.ENOTTY.
func Supported() error { return supported() }

var supported = sync.OnceValue(func() error {
	f, err := os.Open(procfs.Path(os.Getpid(), "pagemap"))
	if err != nil {
		return fmt.Errorf("probe pagemap_scan: %w", err)
	}
	defer f.Close()
	vec := make([]Region, 1)
	if _, _, err := Scan(int(f.Fd()), 0, PageSize, 0, 0, 0, 0, PAGE_IS_PRESENT,
		vec); err != nil {
		return fmt.Errorf("probe pagemap_scan: %w", err)
	}
	return nil
})

// Entry is one pagemap entry.
type Entry uint64

// Present reports whether the page is in memory (bit 63).
func (e Entry) Present() bool { return e&PM_PRESENT != 0 }

// Swapped reports whether the page is in swap (bit 62).
func (e Entry) Swapped() bool { return e&PM_SWAP != 0 }

// File reports whether the page is a file page or shared anonymous (bit 61).
func (e Entry) File() bool { return e&PM_FILE != 0 }

// SoftDirty reports whether the pte is soft-dirty (bit 55). It is never set by a
// kernel built without CONFIG_MEM_SOFT_DIRTY.
func (e Entry) SoftDirty() bool { return e&PM_SOFT_DIRTY != 0 }

// Exclusive reports whether the page is mapped by this process only (bit 56).
func (e Entry) Exclusive() bool { return e&PM_MMAP_EXCLUSIVE != 0 }

// UffdWP reports whether the pte is write-protected by userfaultfd (bit 57).
func (e Entry) UffdWP() bool { return e&PM_UFFD_WP != 0 }

// PFN is the page frame number of a present page (bits 0-54); zero for readers
// without CAP_SYS_ADMIN.
func (e Entry) PFN() uint64 { return uint64(e) & PM_PFRAME_MASK }

// Open opens /proc/PID/pagemap. Opening needs PTRACE_MODE_READ over pid; the file
// then keeps reading the mm pid had when it was opened.
func Open(pid int) (*os.File, error) {
	return os.Open(procfs.Path(pid, "pagemap"))
}

// ReadEntries reads the entries of the pages [start, end) from f, an open
// /proc/PID/pagemap, into dst (reused when large enough). start and end must be
// page aligned.
func ReadEntries(f io.ReaderAt, start, end uint64, dst []Entry) ([]Entry, error) {
	if start%PageSize != 0 || end%PageSize != 0 || end < start {
		return dst[:0], fmt.Errorf("read pagemap %#x-%#x: %w", start, end, unix.EINVAL)
	}
	n := int((end - start) / PageSize)
	if cap(dst) < n {
		dst = make([]Entry, n)
	}
	dst = dst[:n]
	buf := make([]byte, 8*min(n, 64*1024))
	for i := 0; i < n; {
		k := min(n-i, len(buf)/8)
		off := int64((start/PageSize + uint64(i)) * 8)
		got, err := f.ReadAt(buf[:8*k], off)
		if got != 8*k {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return dst[:0], fmt.Errorf("read pagemap %#x-%#x at %#x: %w",
				start, end, start+uint64(i)*PageSize, err)
		}
		for j := 0; j < k; j++ {
			dst[i+j] = Entry(binary.LittleEndian.Uint64(buf[8*j:]))
		}
		i += k
	}
	return dst, nil
}
