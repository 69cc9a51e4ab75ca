package pagestore

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// windowBlock returns the decoded block of window base of snapshot id and the
// kind of the block stored for it.
func windowBlock(t *testing.T, s *Store, id string, base uint64) (*block, int64) {
	t.Helper()
	m, err := s.readManifest(id)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range m.Windows {
		if w.Base != base {
			continue
		}
		raw, _, err := s.readBlockRaw(w.Block, id, base)
		if err != nil {
			t.Fatal(err)
		}
		b, err := s.readBlock(w.Block, id, base)
		if err != nil {
			t.Fatal(err)
		}
		return b, blockKind(raw)
	}
	t.Fatalf("snapshot %s has no window %#x", id, base)
	return nil, 0
}

// TestDeltaBlocks rewrites a few pages of two full windows in each of many
// incremental snapshots: the page map must read back exactly every time, be
// stored as small delta blocks on the first full block, turn into a full block
// again once the changes add up, and survive the removal and collection of
// every snapshot but the last.
func TestDeltaBlocks(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{PackSize: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := rand.New(rand.NewPCG(5, 9))
	const w0, w1 = 0x7f5500000000, 0x7f5500200000

	want := model{}
	var data []byte
	for i := range 2 * windowSlots {
		p := randomPage(r)
		want[w0+uint64(i)*PageSize] = p
		data = append(data, p...)
	}
	root := commit(t, s, "", []testRange{{w0, data}})
	ids := []string{root.ID}

	sawDelta, sawFullAgain := false, false
	for step := 1; step <= 45; step++ {
		w, err := s.NewWriter(ids[len(ids)-1])
		if err != nil {
			t.Fatal(err)
		}
		next := model{}
		for a, p := range want {
			next[a] = p
		}
		// Three pages a window rewritten, and in window 1 one page zeroed and
		// one dropped (not carried, not added: absent from then on).
		var carry []Run
		at := uint64(w0)
		changed := map[uint64]bool{}
		for _, base := range []uint64{w0, w1} {
			for range 3 {
				changed[base+uint64(r.IntN(windowSlots))*PageSize] = true
			}
		}
		zeroAt := uint64(w1) + uint64(r.IntN(windowSlots))*PageSize
		dropAt := uint64(w1) + uint64(r.IntN(windowSlots))*PageSize
		for a := uint64(w0); a < w0+2*windowSize; a += PageSize {
			switch {
			case a == dropAt:
				delete(next, a)
			case a == zeroAt:
				next[a] = zeroPage
			case changed[a]:
				next[a] = randomPage(r)
			default:
				continue
			}
			carry = append(carry, Run{at, a})
			at = a + PageSize
			if p, ok := next[a]; ok {
				if err := w.AddPages(a, p); err != nil {
					t.Fatal(err)
				}
			}
		}
		carry = append(carry, Run{at, w0 + 2*windowSize})
		if err := w.Carry(carry); err != nil {
			t.Fatal(err)
		}
		info, err := w.Commit(Meta{})
		if err != nil {
			t.Fatal(err)
		}
		want = next
		ids = append(ids, info.ID)
		checkSnapshot(t, s, info.ID, want)

		b, kind := windowBlock(t, s, info.ID, w0)
		switch {
		case kind == blockKindDelta:
			sawDelta = true
			if b.base == nil {
				t.Fatalf("step %d: delta block read without its base", step)
			}
			// A delta step stores its few pages and two small blocks, not
			// two full blocks of 8 KiB.
			if step == 1 && info.Stats.StoredBytes > 9*PageSize+2*1024 {
				t.Errorf("step 1 stored %d bytes", info.Stats.StoredBytes)
			}
		case sawDelta:
			sawFullAgain = true
		}
	}
	if !sawDelta || !sawFullAgain {
		t.Fatalf("delta blocks seen %v, a full block again after them %v: want both",
			sawDelta, sawFullAgain)
	}

	// Keep a snapshot whose blocks are deltas on a removed snapshot's blocks.
	keep := -1
	for i := len(ids) - 1; i > 0; i-- {
		if _, kind := windowBlock(t, s, ids[i], w0); kind == blockKindDelta {
			keep = i
			break
		}
	}
	if keep < 0 {
		t.Fatal("no snapshot with a delta block to keep")
	}
	sn, err := s.OpenSnapshot(ids[keep])
	if err != nil {
		t.Fatal(err)
	}
	pm, err := sn.PageMap()
	sn.Close()
	if err != nil {
		t.Fatal(err)
	}
	keptModel := model{}
	buf := make([]byte, PageSize)
	for _, e := range pm {
		sn, _ := s.OpenSnapshot(ids[keep])
		if err := sn.ReadPage(e.ID, buf); err != nil {
			t.Fatal(err)
		}
		sn.Close()
		keptModel[e.Addr] = bytes.Clone(buf)
	}
	for i, id := range ids {
		if i != keep {
			if err := s.Remove(id); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := s.GC(); err != nil {
		t.Fatal(err)
	}
	fresh := openTest(t, dir)
	checkSnapshot(t, fresh, ids[keep], keptModel)
	if rep, err := fresh.Verify(); err != nil || !rep.OK() || rep.Snapshots != 1 {
		t.Fatalf("verify after gc: %+v %v", rep, err)
	}
}

// TestDeltaCodec checks delta blocks encode, decode and apply as they should,
// and that a delta is refused where a full block is due.
func TestDeltaCodec(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	base := &block{}
	for i := range 100 {
		base.Present[i/64] |= 1 << (i % 64)
		if i%10 == 0 {
			base.Zero[i/64] |= 1 << (i % 64)
			continue
		}
		var id PageID
		id[0], id[1] = byte(i), byte(r.Uint32())
		base.IDs = append(base.IDs, id)
	}
	state, ids := base.slots()
	state[3], ids[3] = slotAbsent, PageID{}  // dropped
	state[10], ids[10] = slotData, PageID{7} // zero to data
	state[11], ids[11] = slotZero, PageID{}  // data to zero
	state[200], ids[200] = slotData, PageID{8}
	b := packSlots(&state, &ids)

	d := diffBlocks(PageID{42}, base, b)
	if d.changedSlots() != 4 {
		t.Fatalf("delta changes %d slots, want 4", d.changedSlots())
	}
	raw := encodeDelta(d)
	if blockKind(raw) != blockKindDelta {
		t.Fatalf("kind %d", blockKind(raw))
	}
	got, err := decodeDelta(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(encodeDelta(got), raw) {
		t.Fatal("delta does not re-encode to its input")
	}
	if applied := applyDelta(base, got); !bytes.Equal(encodeBlock(applied), encodeBlock(b)) {
		t.Fatal("applied delta differs from the block it was made from")
	}
	if !deltaWorthIt(d, b) {
		t.Error("a 4-slot delta of a 100-slot block is not worth storing")
	}
	if _, err := decodeBlock(raw); err == nil {
		t.Error("decodeBlock accepted a delta block")
	}
	bad := bytes.Clone(raw)
	bad[24+64] |= 1 << 5 // present bit on a slot the delta does not change
	if _, err := decodeDelta(bad); err == nil {
		t.Error("decodeDelta accepted a present slot outside changed")
	}
}
