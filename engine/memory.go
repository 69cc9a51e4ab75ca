package engine

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
	"github.com/cryo-dev/cryo/engine/track"
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
	var written map[uint64]bool
	if dirty != nil && fallback == "" && s.parent != "" {
		for _, r := range dirty.Tracked {
			tracked[r] = true
		}
		written = make(map[uint64]bool, len(dirty.Pages))
		for _, a := range dirty.Pages {
			written[a] = true
		}
	}

	pm, err := os.Open(procfs.Path(s.pid, "pagemap"))
	if err != nil {
		return nil, fmt.Errorf("open pagemap: %w", err)
	}
	defer pm.Close()

	first := 0 // runs before this index belong to earlier ranges and never grow
	add := func(addr uint64) {
		runs := plan.copy
		if n := len(runs); n > first && runs[n-1].addr+runs[n-1].pages*pageSize == addr {
			runs[n-1].pages++
			return
		}
		plan.copy = append(runs, pageRun{addr: addr, pages: 1})
	}
	carry := func(addr uint64) {
		runs := plan.carry
		if n := len(runs); n > 0 && runs[n-1].End == addr {
			runs[n-1].End += pageSize
			return
		}
		plan.carry = append(runs, pagestore.Run{Start: addr, End: addr + pageSize})
	}

	buf := make([]byte, 8*pagemapChunk)
	zero := zeroPFN()
	for _, v := range im.VMAs {
		if !v.Pages {
			continue
		}
		first = len(plan.copy)
		if v.Kind == image.VMAAnon && v.Shared {
			plan.copy = append(plan.copy, pageRun{addr: v.Start, pages: v.Len() / pageSize})
			continue
		}
		fileBacked := v.Kind == image.VMAFile
		isTracked := tracked[track.Range{Start: v.Start, End: v.End}]
		for addr := v.Start; addr < v.End; {
			n := min((v.End-addr)/pageSize, pagemapChunk)
			b := buf[:n*8]
			if _, err := pm.ReadAt(b, int64(addr/pageSize*8)); err != nil {
				return nil, fmt.Errorf("read pagemap at %#x: %w", addr, err)
			}
			for i := uint64(0); i < n; i++ {
				e := binary.LittleEndian.Uint64(b[i*8:])
				page := addr + i*pageSize
				switch {
				case e&pmSwapped == 0 && e&pmPresent == 0:
					continue // never touched, or discarded: reads as zero
				case e&pmSwapped == 0 && fileBacked && e&pmFile != 0:
					continue // a clean page of the file itself
				case e&pmSwapped == 0 && zero != 0 && e&pmPFNMask == zero:
					continue // read, never written: the shared zero page
				}
				if isTracked && !written[page] {
					carry(page)
				} else {
					add(page)
				}
			}
			addr += n * pageSize
		}
	}
	return plan, nil
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
