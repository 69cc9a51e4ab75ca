package lazy

import (
	"math/bits"
	"slices"
)

const pageSize = 4096

// extent is a stretch of an mm's address space whose pages are still backed
// by one contiguous stretch of the snapshot: the page at start+i*pageSize
// reads from src+i*pageSize. A set bit marks a page of the snapshot that has
// data and is not in the process yet.
type extent struct {
	start   uint64 // live address in the process
	src     uint64 // snapshot address of start
	pages   int
	bits    []uint64
	pending int
}

func (e *extent) end() uint64 { return e.start + uint64(e.pages)*pageSize }

func (e *extent) isPending(i int) bool { return e.bits[i>>6]&(1<<(i&63)) != 0 }

func (e *extent) set(i int) {
	if !e.isPending(i) {
		e.bits[i>>6] |= 1 << (i & 63)
		e.pending++
	}
}

// clear unmarks pages [i, i+n) and returns how many were pending.
func (e *extent) clear(i, n int) int {
	was := 0
	for k := i; k < i+n; k++ {
		if e.isPending(k) {
			e.bits[k>>6] &^= 1 << (k & 63)
			was++
		}
	}
	e.pending -= was
	return was
}

// nextPending returns the first pending page at or after i, or -1.
func (e *extent) nextPending(i int) int {
	for i < e.pages {
		w := e.bits[i>>6] >> (i & 63)
		if w != 0 {
			j := i + bits.TrailingZeros64(w)
			if j < e.pages {
				return j
			}
			return -1
		}
		i = (i | 63) + 1
	}
	return -1
}

// slice returns a new extent of pages [i, i+n) of e.
func (e *extent) slice(i, n int) extent {
	x := extent{
		start: e.start + uint64(i)*pageSize,
		src:   e.src + uint64(i)*pageSize,
		pages: n,
		bits:  make([]uint64, (n+63)/64),
	}
	for k := 0; k < n; k++ {
		if e.isPending(i + k) {
			x.set(k)
		}
	}
	return x
}

// space is what the server knows of one mm: which pages are still to
// install and where in the snapshot each one reads from. Pages not pending
// read as zero if they fault: either they are in the process already (the
// kernel then answers UFFDIO_ZEROPAGE with EEXIST) or the process dropped
// them (MADV_DONTNEED), after which they are zero.
type space struct {
	exts    []extent // ascending by start, not overlapping
	pending int
}

// newSpace builds the pending set of ranges from pages (ascending).
func newSpace(ranges []Range, pages []uint64) *space {
	sp := &space{}
	for _, r := range ranges {
		n := int((r.End - r.Start) / pageSize)
		sp.exts = append(sp.exts, extent{start: r.Start, src: r.Start, pages: n,
			bits: make([]uint64, (n+63)/64)})
	}
	slices.SortFunc(sp.exts, func(a, b extent) int { return cmpU64(a.start, b.start) })
	// pages ascend, so one walk along the extents places them all; an address
	// outside every extent (the source may list pages of ranges not registered)
	// is skipped. Should a source break the order, the page out of order is
	// looked up rather than lost, and the walk goes on from it.
	ei := 0
	var prev uint64
	for _, p := range pages {
		if p < prev {
			var ok bool
			if ei, _, ok = sp.lookup(p); !ok {
				ei = 0
			}
		}
		prev = p
		for ei < len(sp.exts) && sp.exts[ei].end() <= p {
			ei++
		}
		if ei == len(sp.exts) {
			continue
		}
		if e := &sp.exts[ei]; p >= e.start {
			e.set(int((p - e.start) / pageSize))
		}
	}
	for i := range sp.exts {
		sp.pending += sp.exts[i].pending
	}
	return sp
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// lookup finds the extent and page index of the live address addr.
func (sp *space) lookup(addr uint64) (ei, pi int, ok bool) {
	i, _ := slices.BinarySearchFunc(sp.exts, addr, func(e extent, a uint64) int {
		if e.end() <= a {
			return -1
		}
		if e.start > a {
			return 1
		}
		return 0
	})
	if i < len(sp.exts) && sp.exts[i].start <= addr && addr < sp.exts[i].end() {
		return i, int((addr - sp.exts[i].start) / pageSize), true
	}
	return 0, 0, false
}

// lookupSrc finds the live page that reads from the snapshot address src.
func (sp *space) lookupSrc(src uint64) (ei, pi int, ok bool) {
	for i := range sp.exts {
		e := &sp.exts[i]
		if e.src <= src && src < e.src+uint64(e.pages)*pageSize {
			return i, int((src - e.src) / pageSize), true
		}
	}
	return 0, 0, false
}

// drop unmarks every pending page in [start, end) and returns how many
// there were (UFFD_EVENT_REMOVE: they read as zero from now on).
func (sp *space) drop(start, end uint64) int {
	n := 0
	for i := range sp.exts {
		e := &sp.exts[i]
		lo, hi := max(start, e.start), min(end, e.end())
		if lo < hi {
			n += e.clear(int((lo-e.start)/pageSize), int((hi-lo)/pageSize))
		}
	}
	sp.pending -= n
	return n
}

// split makes addr an extent boundary.
func (sp *space) split(addr uint64) {
	ei, pi, ok := sp.lookup(addr)
	if !ok || pi == 0 {
		return
	}
	e := sp.exts[ei]
	a, b := e.slice(0, pi), e.slice(pi, e.pages-pi)
	sp.exts = slices.Replace(sp.exts, ei, ei+1, a, b)
}

// cut forgets [start, end) entirely (UFFD_EVENT_UNMAP) and returns the
// pending pages it held.
func (sp *space) cut(start, end uint64) int {
	n := sp.drop(start, end)
	sp.split(start)
	sp.split(end)
	sp.exts = slices.DeleteFunc(sp.exts, func(e extent) bool {
		return e.start >= start && e.end() <= end
	})
	return n
}

// move records that mremap moved [from, from+length) to [to, to+length)
// (UFFD_EVENT_REMAP). What was mapped at the destination is gone; the pages
// keep their snapshot addresses and take their new live addresses.
func (sp *space) move(from, to, length uint64) int {
	sp.split(from)
	sp.split(from + length)
	var moved []extent
	sp.exts = slices.DeleteFunc(sp.exts, func(e extent) bool {
		if e.start >= from && e.end() <= from+length {
			moved = append(moved, e)
			return true
		}
		return false
	})
	lost := sp.cut(to, to+length)
	for i := range moved {
		moved[i].start = moved[i].start - from + to
	}
	sp.exts = append(sp.exts, moved...)
	slices.SortFunc(sp.exts, func(a, b extent) int { return cmpU64(a.start, b.start) })
	return lost
}

// clone returns a deep copy (UFFD_EVENT_FORK: the child starts with the
// parent's pending set).
func (sp *space) clone() *space {
	c := &space{exts: make([]extent, len(sp.exts)), pending: sp.pending}
	for i, e := range sp.exts {
		e.bits = slices.Clone(e.bits)
		c.exts[i] = e
	}
	return c
}

// compact drops extents with nothing pending; it keeps lookups short after
// most pages are in.
func (sp *space) compact() {
	sp.exts = slices.DeleteFunc(sp.exts, func(e extent) bool { return e.pending == 0 })
}

// next returns the first pending page at or after the live address from,
// wrapping around once, as an extent and page index.
func (sp *space) next(from uint64) (ei, pi int, ok bool) {
	if sp.pending == 0 {
		return 0, 0, false
	}
	start, _ := slices.BinarySearchFunc(sp.exts, from, func(e extent, a uint64) int {
		if e.end() <= a {
			return -1
		}
		if e.start > a {
			return 1
		}
		return 0
	})
	for k := 0; k <= len(sp.exts); k++ {
		i := (start + k) % len(sp.exts)
		e := &sp.exts[i]
		if e.pending == 0 {
			continue
		}
		first := 0
		if k == 0 && e.start <= from && from < e.end() {
			first = int((from - e.start) / pageSize)
		}
		if j := e.nextPending(first); j >= 0 {
			return i, j, true
		}
	}
	return 0, 0, false
}
