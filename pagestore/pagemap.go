package pagestore

import (
	"cmp"
	"fmt"
	"math/bits"
	"slices"

	"github.com/klauspost/compress/zstd"
)

// This file builds the page map of a snapshot at Commit: the pages added, over
// the parent's entries in the carried runs. The cost follows what changed: a
// window of the parent carried whole with nothing added in it keeps the parent's
// block id and is neither read nor encoded; only windows with added pages, or
// carried in part, or dropped, are decoded and (when they differ) stored anew.

// carryMask is the set of slots of one window inside some carried run.
type carryMask [windowSlots / 64]uint64

func (c *carryMask) has(i int) bool { return c[i/64]&(1<<(i%64)) != 0 }

func (c *carryMask) full() bool {
	for _, w := range c {
		if w != ^uint64(0) {
			return false
		}
	}
	return true
}

func (c *carryMask) empty() bool { return *c == carryMask{} }

// setRange marks the slots [from, to) of the window.
func (c *carryMask) setRange(from, to int) {
	for i := from; i < to; {
		if i%64 == 0 && to-i >= 64 {
			c[i/64] = ^uint64(0)
			i += 64
			continue
		}
		c[i/64] |= 1 << (i % 64)
		i++
	}
}

// normalizeRuns sorts runs and joins those that overlap or touch.
func normalizeRuns(runs []Run) []Run {
	runs = slices.Clone(runs)
	slices.SortFunc(runs, func(a, b Run) int { return cmp.Compare(a.Start, b.Start) })
	out := runs[:0]
	for _, r := range runs {
		if n := len(out); n > 0 && r.Start <= out[n-1].End {
			out[n-1].End = max(out[n-1].End, r.End)
			continue
		}
		out = append(out, r)
	}
	return out
}

// carryPlan pairs each window of the parent with the slots carried in it.
type carryPlan struct {
	ref  windowRef
	mask carryMask
}

// planCarry computes the carried slots of every parent window, walking the
// windows and the normalized runs together: O(windows + runs).
func planCarry(parent []windowRef, runs []Run) []carryPlan {
	out := make([]carryPlan, len(parent))
	i := 0
	for k, ref := range parent {
		out[k].ref = ref
		lo, hi := ref.Base, ref.Base+windowSize // hi wraps to 0 only for the last window
		for i < len(runs) && runs[i].End <= lo {
			i++
		}
		for j := i; j < len(runs) && (hi == 0 || runs[j].Start < hi); j++ {
			from := max(runs[j].Start, lo)
			to := runs[j].End
			if hi != 0 {
				to = min(to, hi)
			}
			out[k].mask.setRange(int((from-lo)/PageSize), int((to-lo)/PageSize))
			if hi != 0 && runs[j].End > hi {
				break
			}
		}
	}
	return out
}

// pageMap builds, stores (when new) and returns the window list of the
// snapshot, ascending, and the number of entries taken from the parent.
func (w *Writer) pageMap(enc *zstd.Encoder) ([]windowRef, int64, error) {
	var plans []carryPlan
	if w.parent != nil {
		plans = planCarry(w.parent.Windows, normalizeRuns(w.carry))
	}
	added := make([]uint64, 0, len(w.windows))
	for base := range w.windows {
		added = append(added, base)
	}
	slices.Sort(added)

	refs := make([]windowRef, 0, max(len(added), len(plans)))
	var parentRead, carried int64
	var frame []byte
	for len(added) > 0 || len(plans) > 0 {
		// Next window in address order, from either list (or both).
		var base uint64
		var plan *carryPlan
		var win *window
		switch {
		case len(plans) == 0 || len(added) > 0 && added[0] < plans[0].ref.Base:
			base, win = added[0], w.windows[added[0]]
			added = added[1:]
		default:
			plan = &plans[0]
			plans = plans[1:]
			base = plan.ref.Base
			if len(added) > 0 && added[0] == base {
				win = w.windows[base]
				added = added[1:]
			}
		}

		if plan != nil && win == nil && plan.mask.full() {
			refs = append(refs, plan.ref) // shared whole, unread
			continue
		}
		var pb *block
		if plan != nil {
			var err error
			pb, err = w.s.readBlock(plan.ref.Block, w.parent.ID, base)
			if err != nil {
				return nil, 0, fmt.Errorf("read parent snapshot %s: %w", w.parent.ID, err)
			}
			w.parentBlocksRead++
			parentRead += int64(pb.count())
		}
		b, n := mergeWindow(win, pb, plan)
		carried += n
		if b.count() == 0 {
			continue // the window was dropped or emptied
		}
		raw := encodeBlock(b)
		id := HashPage(raw)
		if pb != nil {
			// Against the full block under the parent's (the parent's own
			// block when it is full): a delta when it is small enough.
			baseID, full := plan.ref.Block, pb
			if pb.base != nil {
				baseID, full = pb.baseID, pb.base
			}
			if d := diffBlocks(baseID, full, b); d.changedSlots() == 0 {
				raw, id = nil, baseID // back to the base block exactly
			} else if deltaWorthIt(d, b) {
				raw = encodeDelta(d)
				id = HashPage(raw)
			}
		}
		refs = append(refs, windowRef{Base: base, Block: id})
		if plan != nil && id == plan.ref.Block {
			continue // same entries as the parent's window
		}
		if raw == nil {
			continue // the base block, stored already
		}
		if _, ok := w.pending[id]; ok || w.s.has(id) {
			continue
		}
		w.pending[id] = struct{}{}
		frame = buildFrame(enc, frame[:0], kindBlock, []PageID{id}, raw)
		if err := w.appendFrame(frame, kindBlock, []PageID{id}); err != nil {
			return nil, 0, err
		}
	}

	// Windows shared whole hold the parent's entries not in the windows read.
	if w.parent != nil {
		whole := w.parent.Stats.Pages - parentRead
		if whole < 0 {
			return nil, 0, &CorruptionError{Offset: -1, Snapshot: w.parent.ID,
				Reason: fmt.Sprintf("manifest counts %d pages, its blocks hold more",
					w.parent.Stats.Pages)}
		}
		carried += whole
	}
	return refs, carried, nil
}

// mergeWindow returns the final block of one window: the slots added in win
// (which may be nil) over the parent's slots in pb carried by plan (both nil
// without a parent window), and the number of entries taken from the parent.
func mergeWindow(win *window, pb *block, plan *carryPlan) (*block, int64) {
	b := &block{}
	var carried int64
	next := 0 // index in pb.IDs
	for i := range windowSlots {
		var fromParent, parentZero bool
		var parentID PageID
		if pb != nil && pb.present(i) {
			parentZero = pb.zero(i)
			if !parentZero {
				parentID = pb.IDs[next]
				next++
			}
			fromParent = plan.mask.has(i)
		}
		state, id := uint8(slotAbsent), PageID{}
		switch {
		case win != nil && win.state[i] != slotAbsent:
			state, id = win.state[i], win.ids[i]
		case fromParent && parentZero:
			state = slotZero
			carried++
		case fromParent:
			state, id = slotData, parentID
			carried++
		}
		switch state {
		case slotZero:
			b.Present[i/64] |= 1 << (i % 64)
			b.Zero[i/64] |= 1 << (i % 64)
		case slotData:
			b.Present[i/64] |= 1 << (i % 64)
			b.IDs = append(b.IDs, id)
		case slotPending:
			panic("pagestore: page of a finished writer still pending")
		}
	}
	return b, carried
}

// count returns the number of entries (data and zero) of the block.
func (b *block) count() int {
	n := 0
	for _, w := range b.Present {
		n += bits.OnesCount64(w)
	}
	return n
}
