package pagestore

import (
	"encoding/binary"
	"math/bits"
)

// Delta blocks. A periodic checkpoint that rewrites a few pages of every window
// would store a whole new block (up to 8 KiB) per window for a few changed
// entries: for 1 GiB with 1% of pages rewritten a second, about 4 MiB of
// page-map blocks per checkpoint against about 1 MiB of changed pages. A delta
// block instead names a full block, its base, and holds only the slots that
// differ from it. Deltas are cumulative (always on a full block, never on
// another delta), so a window costs at most two block reads; the writer stores
// a full block again once the delta would grow past a quarter of one.

const (
	blockKindFull  = 0
	blockKindDelta = 1

	// deltaHeaderSize is magic, kind, base id, then the changed, present and
	// zero bitmaps.
	deltaHeaderSize = 8 + 16 + 3*windowSlots/8
	maxDeltaSize    = deltaHeaderSize + windowSlots*16
)

// delta is the decoded form of a delta block: the slots in Changed take the
// state given by Present and Zero (absent, zero, or data with the next id of
// IDs, in slot order); the others keep the base's entry.
type delta struct {
	Base    PageID
	Changed [windowSlots / 64]uint64
	Present [windowSlots / 64]uint64
	Zero    [windowSlots / 64]uint64
	IDs     []PageID
}

func encodeDelta(d *delta) []byte {
	out := make([]byte, 0, deltaHeaderSize+16*len(d.IDs))
	out = append(out, blockMagic...)
	out = binary.LittleEndian.AppendUint32(out, blockKindDelta)
	out = append(out, d.Base[:]...)
	for _, set := range [][windowSlots / 64]uint64{d.Changed, d.Present, d.Zero} {
		for _, w := range set {
			out = binary.LittleEndian.AppendUint64(out, w)
		}
	}
	for _, id := range d.IDs {
		out = append(out, id[:]...)
	}
	return out
}

func decodeDelta(p []byte) (*delta, error) {
	if len(p) < deltaHeaderSize || len(p) > maxDeltaSize {
		return nil, formatErr("page-map delta block: %d bytes", len(p))
	}
	if string(p[:4]) != blockMagic || binary.LittleEndian.Uint32(p[4:]) != blockKindDelta {
		return nil, formatErr("page-map delta block: bad magic")
	}
	d := &delta{}
	copy(d.Base[:], p[8:24])
	n := 0
	for i := range d.Changed {
		d.Changed[i] = binary.LittleEndian.Uint64(p[24+8*i:])
		d.Present[i] = binary.LittleEndian.Uint64(p[24+64+8*i:])
		d.Zero[i] = binary.LittleEndian.Uint64(p[24+128+8*i:])
		if d.Present[i]&^d.Changed[i] != 0 || d.Zero[i]&^d.Present[i] != 0 {
			return nil, formatErr("page-map delta block: present slot not changed, or " +
				"zero slot not present")
		}
		n += bits.OnesCount64(d.Present[i] &^ d.Zero[i])
	}
	if len(p) != deltaHeaderSize+16*n {
		return nil, formatErr("page-map delta block: %d bytes for %d ids", len(p), n)
	}
	d.IDs = make([]PageID, n)
	for i := range d.IDs {
		copy(d.IDs[i][:], p[deltaHeaderSize+16*i:])
	}
	return d, nil
}

// blockKind returns the kind field of an encoded block, or -1 when p is too
// short to hold one.
func blockKind(p []byte) int64 {
	if len(p) < 8 {
		return -1
	}
	return int64(binary.LittleEndian.Uint32(p[4:]))
}

// slots expands a block into one state and id per slot.
func (b *block) slots() (state [windowSlots]uint8, ids [windowSlots]PageID) {
	next := 0
	for i := range windowSlots {
		switch {
		case !b.present(i):
			state[i] = slotAbsent
		case b.zero(i):
			state[i] = slotZero
		default:
			state[i], ids[i] = slotData, b.IDs[next]
			next++
		}
	}
	return state, ids
}

// packSlots is the inverse of slots.
func packSlots(state *[windowSlots]uint8, ids *[windowSlots]PageID) *block {
	b := &block{}
	for i := range windowSlots {
		switch state[i] {
		case slotZero:
			b.Present[i/64] |= 1 << (i % 64)
			b.Zero[i/64] |= 1 << (i % 64)
		case slotData:
			b.Present[i/64] |= 1 << (i % 64)
			b.IDs = append(b.IDs, ids[i])
		}
	}
	return b
}

// applyDelta returns the block that d makes of its base.
func applyDelta(base *block, d *delta) *block {
	state, ids := base.slots()
	next := 0
	for i := range windowSlots {
		bit := uint64(1) << (i % 64)
		if d.Changed[i/64]&bit == 0 {
			continue
		}
		switch {
		case d.Present[i/64]&bit == 0:
			state[i], ids[i] = slotAbsent, PageID{}
		case d.Zero[i/64]&bit != 0:
			state[i], ids[i] = slotZero, PageID{}
		default:
			state[i], ids[i] = slotData, d.IDs[next]
			next++
		}
	}
	return packSlots(&state, &ids)
}

// diffBlocks returns the delta that turns base (stored as baseID) into b.
func diffBlocks(baseID PageID, base, b *block) *delta {
	bs, bids := base.slots()
	ns, nids := b.slots()
	d := &delta{Base: baseID}
	for i := range windowSlots {
		if bs[i] == ns[i] && bids[i] == nids[i] {
			continue
		}
		bit := uint64(1) << (i % 64)
		d.Changed[i/64] |= bit
		switch ns[i] {
		case slotZero:
			d.Present[i/64] |= bit
			d.Zero[i/64] |= bit
		case slotData:
			d.Present[i/64] |= bit
			d.IDs = append(d.IDs, nids[i])
		}
	}
	return d
}

// changedSlots counts the slots a delta changes.
func (d *delta) changedSlots() int {
	n := 0
	for _, w := range d.Changed {
		n += bits.OnesCount64(w)
	}
	return n
}

// deltaWorthIt reports whether storing d beats storing the full block b: the
// delta must stay under a quarter of the full block's size, so that a chain of
// growing deltas is cut off by a new full block long before it costs more
// than it saves.
func deltaWorthIt(d *delta, b *block) bool {
	return deltaHeaderSize+16*len(d.IDs) < (blockHeaderSize+16*len(b.IDs))/4
}
