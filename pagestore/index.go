package pagestore

import (
	"encoding/binary"
	"runtime"
	"sort"
	"sync"
)

// loc is the in-memory index entry of one page or block: 40 bytes with padding
// (the budget is 64), so ten million pages take 400 MB. Entries of all packs live
// in one slice sorted by id; lookups are binary searches. Each pack index is
// already sorted on disk, so opening a store merges runs instead of sorting.
type loc struct {
	id   PageID
	off  uint64 // frame offset in the pack
	flen uint32 // frame size on disk
	pack uint32 // number of the pack in Store.packs
	slot uint8
	kind uint8
}

func locsOf(pack uint32, entries []indexEntry) []loc {
	out := make([]loc, len(entries))
	for i, e := range entries {
		out[i] = loc{id: e.ID, off: e.Off, flen: e.FrameLen, pack: pack, slot: e.Slot,
			kind: e.Kind}
	}
	return out
}

// search returns the position of the first entry with id >= id.
func search(index []loc, id PageID) int {
	// sort.Search with bytes.Compare, written out: this is on the path of every
	// page read, and the closure and the call showed in restore profiles.
	lo, hi := 0, len(index)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if idLess(&index[mid].id, &id) {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// idLess reports whether a sorts before b, comparing ids as two big-endian
// words (the same order as bytes.Compare, without its call).
func idLess(a, b *PageID) bool {
	ah, bh := binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(b[:8])
	if ah != bh {
		return ah < bh
	}
	return binary.BigEndian.Uint64(a[8:]) < binary.BigEndian.Uint64(b[8:])
}

// mergeRuns merges runs sorted by id into one new sorted slice. Ids are hashes,
// spread evenly, so the id space is cut into one part per CPU at even points;
// each part (the matching slice of every run, found by binary search) is
// merged on its own goroutine into its place in the output. Entries with equal
// ids keep the order of their runs.
func mergeRuns(runs [][]loc) []loc {
	total := 0
	for _, r := range runs {
		total += len(r)
	}
	out := make([]loc, total)
	parts := runtime.GOMAXPROCS(0)
	if total < 1<<16 {
		parts = 1
	}
	var wg sync.WaitGroup
	off := 0
	for p := range parts {
		sub := make([][]loc, len(runs))
		n := 0
		for i, r := range runs {
			end := len(r)
			if p < parts-1 {
				cut := ^uint64(0) / uint64(parts) * uint64(p+1)
				end = sort.Search(len(r), func(k int) bool {
					return binary.BigEndian.Uint64(r[k].id[:8]) >= cut
				})
			}
			sub[i], runs[i] = r[:end], r[end:]
			n += end
		}
		dst := out[off : off+n]
		wg.Go(func() { mergeInto(dst, sub) })
		off += n
	}
	wg.Wait()
	return out
}

// mergeInto merges runs sorted by id into out, which holds exactly their
// entries: a k-way merge through a binary heap of run heads.
func mergeInto(out []loc, runs [][]loc) {
	var h []int // heap of run numbers, by head id then run number
	for i, r := range runs {
		if len(r) > 0 {
			h = append(h, i)
		}
	}
	less := func(x, y int) bool {
		a, b := &runs[h[x]][0].id, &runs[h[y]][0].id
		if *a == *b {
			return h[x] < h[y]
		}
		return idLess(a, b)
	}
	down := func(i int) {
		for {
			c := 2*i + 1
			if c >= len(h) {
				return
			}
			if c+1 < len(h) && less(c+1, c) {
				c++
			}
			if !less(c, i) {
				return
			}
			h[i], h[c] = h[c], h[i]
			i = c
		}
	}
	for i := len(h)/2 - 1; i >= 0; i-- {
		down(i)
	}
	if len(h) == 1 {
		copy(out, runs[h[0]])
		return
	}
	for k := range out {
		r := h[0]
		out[k] = runs[r][0]
		runs[r] = runs[r][1:]
		if len(runs[r]) == 0 {
			h[0] = h[len(h)-1]
			h = h[:len(h)-1]
		}
		if len(h) == 1 {
			copy(out[k+1:], runs[h[0]])
			return
		}
		down(0)
	}
}
