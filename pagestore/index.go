package pagestore

import (
	"bytes"
	"sort"
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
	return sort.Search(len(index), func(i int) bool {
		return bytes.Compare(index[i].id[:], id[:]) >= 0
	})
}

// mergeLocs merges two slices sorted by id into a new sorted slice.
func mergeLocs(a, b []loc) []loc {
	out := make([]loc, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		if bytes.Compare(b[0].id[:], a[0].id[:]) < 0 {
			out = append(out, b[0])
			b = b[1:]
		} else {
			out = append(out, a[0])
			a = a[1:]
		}
	}
	out = append(out, a...)
	return append(out, b...)
}

// mergeRuns merges sorted runs pairwise, O(n log runs).
func mergeRuns(runs [][]loc) []loc {
	if len(runs) == 0 {
		return nil
	}
	for len(runs) > 1 {
		next := runs[:0:0]
		for i := 0; i < len(runs); i += 2 {
			if i+1 == len(runs) {
				next = append(next, runs[i])
			} else {
				next = append(next, mergeLocs(runs[i], runs[i+1]))
			}
		}
		runs = next
	}
	return runs[0]
}
