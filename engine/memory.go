package engine

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
	"github.com/cryo-dev/cryo/engine/track"
	"github.com/cryo-dev/cryo/internal/pagemap"
	"github.com/cryo-dev/cryo/internal/procfs"
	"github.com/cryo-dev/cryo/pagestore"
)

// pageRun is a run of consecutive pages to copy.
type pageRun struct {
	addr  uint64
	pages uint64
}

// Bits of a /proc/PID/pagemap entry (Documentation/admin-guide/mm/pagemap.rst).
const (
	pmPresent = 1 << 63
	pmSwapped = 1 << 62
	pmFile    = 1 << 61 // a page of a file or of shared anonymous memory
	pmPFNMask = 1<<55 - 1
)

// pagemapChunk is how many pagemap entries planCopy reads at a time (4 MiB).
const pagemapChunk = 512 * 1024

// copyPlan says what a checkpoint copies and what it takes from its parent.
type copyPlan struct {
	parent   string          // the snapshot the new one is incremental on, or ""
	copy     []pageRun       // pages to copy now, ascending, split at range bounds
	carry    []pagestore.Run // pages whose parent entries still hold
	fallback string          // why the whole memory is copied, when it is
}

// planCopy decides which pages of the stopped process the snapshot takes anew:
// the present or swapped pages of private anonymous ranges, every page of shared
// anonymous ranges (the data may live in the shared object without being mapped
// here), and the copied-on-write pages of private file mappings. Clean file pages
// come back from the file, and pages mapping the shared zero page read as zero.
//
// In a range the tracker tracked, only the written pages are copied; the other
// present pages are carried from the parent. A page neither written nor present
// (discarded since) is neither: it reads as zero.
func (s *Session) planCopy(im *image.Image, dirty *track.Dirty, fallback string) (
	*copyPlan, error) {

	plan := &copyPlan{parent: s.parent, fallback: fallback}
	tracked := map[track.Range]bool{}
	var written []uint64
	if dirty != nil && fallback == "" && s.parent != "" {
		for _, r := range dirty.Tracked {
			tracked[r] = true
		}
		written = slices.Clone(dirty.Pages)
		slices.Sort(written)
		written = slices.Compact(written)
	}

	pm, err := os.Open(procfs.Path(s.pid, "pagemap"))
	if err != nil {
		return nil, fmt.Errorf("open pagemap: %w", err)
	}
	defer pm.Close()
	scan := usePagemapScan()

	b := planBuilder{plan: plan, written: written}
	for _, v := range im.VMAs {
		if !v.Pages {
			continue
		}
		b.first = len(plan.copy)
		if v.Kind == image.VMAAnon && v.Shared {
			plan.copy = append(plan.copy, pageRun{addr: v.Start, pages: v.Len() / pageSize})
			continue
		}
		b.tracked = tracked[track.Range{Start: v.Start, End: v.End}]
		if scan {
			err = b.scanRange(pm, v)
		} else {
			err = b.readRange(pm, v)
		}
		if err != nil {
			return nil, err
		}
	}
	return plan, nil
}

// usePagemapScan reports whether planCopy finds the pages that hold data with
// the PAGEMAP_SCAN ioctl (Linux 6.7+) or, without it, by reading a pagemap entry
// a page. The tests force the second on kernels that have the first.
var usePagemapScan = func() bool { return pagemap.Supported() == nil }

// planBuilder sorts the pages that hold data into those copied now and those
// carried from the parent.
type planBuilder struct {
	plan    *copyPlan
	written []uint64 // pages the tracker reports written, ascending
	tracked bool     // the current range is tracked
	first   int      // runs before this index belong to earlier ranges
	buf     []byte
}

// keep records that the pages [start, end) hold data: in a tracked range the
// written ones are copied and the others carried, elsewhere all are copied.
func (b *planBuilder) keep(start, end uint64) {
	if !b.tracked {
		b.add(start, end)
		return
	}
	w := b.written
	i := sort.Search(len(w), func(i int) bool { return w[i] >= start })
	at := start
	for ; i < len(w) && w[i] < end; i++ {
		b.carry(at, w[i])
		b.add(w[i], w[i]+pageSize)
		at = w[i] + pageSize
	}
	b.carry(at, end)
}

// add appends the pages [start, end) to the copy, joining the previous run of the
// same range when they follow it.
func (b *planBuilder) add(start, end uint64) {
	if start >= end {
		return
	}
	runs := b.plan.copy
	pages := (end - start) / pageSize
	if n := len(runs); n > b.first && runs[n-1].addr+runs[n-1].pages*pageSize == start {
		runs[n-1].pages += pages
		return
	}
	b.plan.copy = append(runs, pageRun{addr: start, pages: pages})
}

// carry appends the pages [start, end) to the runs carried from the parent.
func (b *planBuilder) carry(start, end uint64) {
	if start >= end {
		return
	}
	runs := b.plan.carry
	if n := len(runs); n > 0 && runs[n-1].End == start {
		runs[n-1].End = end
		return
	}
	b.plan.carry = append(runs, pagestore.Run{Start: start, End: end})
}

// scanRange finds the pages of v that hold data with the PAGEMAP_SCAN ioctl
// (Linux 6.7+), which reports runs of alike pages instead of one entry a page.
// The questions are chosen for speed (measured over 1 GiB all present): pages
// neither present nor swapped take about 1.3 ms to find, pages mapping the zero
// page 5 ms, present pages 14 ms, and every category at once about 38 ms.
func (b *planBuilder) scanRange(pm *os.File, v image.VMA) error {
	fd := int(pm.Fd())
	scan := func(mask, anyof, inverted, ret uint64) ([]pagemap.Region, error) {
		r, _, err := pagemap.Scan(fd, v.Start, v.End, 0, mask, anyof, inverted, ret,
			make([]pagemap.Region, 256))
		if err != nil {
			return nil, fmt.Errorf("scan pagemap of %#x-%#x: %w", v.Start, v.End, err)
		}
		return r, nil
	}
	const (
		present = pagemap.PAGE_IS_PRESENT
		swapped = pagemap.PAGE_IS_SWAPPED
		file    = pagemap.PAGE_IS_FILE
		zero    = pagemap.PAGE_IS_PFNZERO
	)

	if v.Kind == image.VMAFile {
		// Private file mappings are small: one pass with every category.
		regions, err := scan(0, present|swapped, 0, present|swapped|file|zero)
		if err != nil {
			return err
		}
		for _, r := range regions {
			c := r.Categories
			if c&swapped == 0 && c&(file|zero) != 0 {
				continue // clean pages of the file, or the zero page
			}
			b.keep(r.Start, r.End)
		}
		return nil
	}

	// Anonymous memory: the shared zero page holds no data.
	zeros, err := scan(zero, 0, 0, zero)
	if err != nil {
		return err
	}
	if b.tracked {
		// Everything holds data but the pages discarded or never touched, and
		// those mapping the zero page.
		holes, err := scan(present|swapped, 0, present|swapped, present)
		if err != nil {
			return err
		}
		gone := append(holes, zeros...)
		slices.SortFunc(gone, func(a, b pagemap.Region) int { return cmp.Compare(a.Start, b.Start) })
		b.keepExcept(v.Start, v.End, gone)
		return nil
	}
	regions, err := scan(0, present|swapped, 0, present|swapped)
	if err != nil {
		return err
	}
	for _, r := range regions {
		b.keepExcept(r.Start, r.End, zeros)
	}
	return nil
}

// keepExcept keeps the pages of [start, end) outside the ascending regions ex.
func (b *planBuilder) keepExcept(start, end uint64, ex []pagemap.Region) {
	at := start
	for _, r := range ex {
		if r.End <= at {
			continue
		}
		if r.Start >= end {
			break
		}
		b.keep(at, min(r.Start, end))
		at = max(at, r.End)
	}
	b.keep(at, end)
}

// readRange finds the pages of v that hold data from its pagemap entries, for
// kernels without PAGEMAP_SCAN.
func (b *planBuilder) readRange(pm *os.File, v image.VMA) error {
	if b.buf == nil {
		b.buf = make([]byte, 8*pagemapChunk)
	}
	zero := zeroPFN()
	fileBacked := v.Kind == image.VMAFile
	for addr := v.Start; addr < v.End; {
		n := min((v.End-addr)/pageSize, pagemapChunk)
		buf := b.buf[:n*8]
		if _, err := pm.ReadAt(buf, int64(addr/pageSize*8)); err != nil {
			return fmt.Errorf("read pagemap at %#x: %w", addr, err)
		}
		for i := uint64(0); i < n; i++ {
			e := binary.LittleEndian.Uint64(buf[i*8:])
			page := addr + i*pageSize
			switch {
			case e&pmSwapped == 0 && e&pmPresent == 0:
				continue // never touched, or discarded: reads as zero
			case e&pmSwapped == 0 && fileBacked && e&pmFile != 0:
				continue // a clean page of the file itself
			case e&pmSwapped == 0 && zero != 0 && e&pmPFNMask == zero:
				continue // read, never written: the shared zero page
			}
			b.keep(page, page+pageSize)
		}
		addr += n * pageSize
	}
	return nil
}

// iovMax is IOV_MAX: the most iovecs process_vm_readv takes in one call.
const iovMax = 1024

// copyPages copies the runs of the stopped process into one buffer, in order: pre,
// when it is large enough (allocated before the process stopped), else a new one.
// Even on error it returns the buffer it holds, for the caller to free.
// Ranges the process cannot read itself (PROT_NONE, write-only) go through
// /proc/PID/mem, which reads them as a debugger would.
func copyPages(pid int, vmas []image.VMA, runs []pageRun, pre []byte) ([]byte, error) {
	var total uint64
	for _, r := range runs {
		total += r.pages * pageSize
	}
	buf := pre
	if uint64(len(pre)) < total {
		freeBuffer(pre)
		var err error
		if buf, err = allocBuffer(int(total)); err != nil {
			return nil, err
		}
		pre = buf
	}
	buf = buf[:total]

	var mem *os.File
	defer func() {
		if mem != nil {
			mem.Close()
		}
	}()

	var local []unix.Iovec
	var remote []unix.RemoteIovec
	flush := func() error {
		if len(remote) == 0 {
			return nil
		}
		want := 0
		for _, r := range remote {
			want += r.Len
		}
		n, err := unix.ProcessVMReadv(pid, local, remote, 0)
		if err != nil {
			return fmt.Errorf("read memory at %#x: %w", remote[0].Base, err)
		}
		if n != want {
			return fmt.Errorf("read memory at %#x: got %d of %d bytes", remote[0].Base, n, want)
		}
		local, remote = local[:0], remote[:0]
		return nil
	}

	off := uint64(0)
	vi := 0
	for _, r := range runs {
		for vi < len(vmas) && vmas[vi].End <= r.addr {
			vi++
		}
		n := r.pages * pageSize
		dst := buf[off : off+n]
		off += n
		if vi < len(vmas) && vmas[vi].Prot&unix.PROT_READ == 0 {
			if mem == nil {
				var err error
				if mem, err = os.Open(procfs.Path(pid, "mem")); err != nil {
					return pre, fmt.Errorf("open memory: %w", err)
				}
			}
			if _, err := mem.ReadAt(dst, int64(r.addr)); err != nil {
				return pre, fmt.Errorf("read memory at %#x: %w", r.addr, err)
			}
			continue
		}
		iov := unix.Iovec{Base: &dst[0]}
		iov.SetLen(len(dst))
		local = append(local, iov)
		remote = append(remote, unix.RemoteIovec{Base: uintptr(r.addr), Len: int(n)})
		if len(remote) == iovMax {
			if err := flush(); err != nil {
				return pre, err
			}
		}
	}
	if err := flush(); err != nil {
		return pre, err
	}
	return buf, nil
}

// allocBuffer returns zeroed memory for n bytes of copied pages, already faulted in
// (MAP_POPULATE): the copy then runs at memory speed instead of taking a page fault
// per page while the process is stopped. Release it with freeBuffer.
func allocBuffer(n int) ([]byte, error) {
	if n == 0 {
		return nil, nil
	}
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("allocate %d bytes for pages: %w", n, err)
	}
	return b, nil
}

// freeBuffer returns a buffer from allocBuffer to the system.
func freeBuffer(b []byte) {
	if cap(b) > 0 {
		unix.Munmap(b[:cap(b)])
	}
}

// preallocate allocates, before the process stops, a buffer for about as many
// pages as it has resident in anonymous memory (RssAnon + RssShmem), plus a
// margin for what it maps until it stops. A wrong guess costs time, not
// correctness: copyPages allocates again if the buffer is too small.
func preallocate(pid int) []byte {
	st, err := os.ReadFile(procfs.Path(pid, "status"))
	if err != nil {
		return nil
	}
	var kib int
	for _, line := range strings.Split(string(st), "\n") {
		for _, field := range []string{"RssAnon:", "RssShmem:"} {
			if rest, ok := strings.CutPrefix(line, field); ok {
				n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(rest, "kB")))
				kib += n
			}
		}
	}
	n := kib*1024 + kib*1024/16 + 4<<20
	buf, err := allocBuffer(n)
	if err != nil {
		return nil
	}
	return buf
}
