package lazy

import (
	"testing"
)

// pendingSet lists the live address and snapshot address of every pending
// page of sp.
func pendingSet(sp *space) map[uint64]uint64 {
	out := map[uint64]uint64{}
	n := 0
	for _, e := range sp.exts {
		for i := 0; i < e.pages; i++ {
			if e.isPending(i) {
				out[e.start+uint64(i)*pageSize] = e.src + uint64(i)*pageSize
				n++
			}
		}
	}
	if n != sp.pending {
		panic("pending count out of step")
	}
	return out
}

func TestSpace(t *testing.T) {
	const P = pageSize
	every := func(r Range) []uint64 {
		var out []uint64
		for a := r.Start; a < r.End; a += P {
			out = append(out, a)
		}
		return out
	}
	r1, r2 := Range{100 * P, 200 * P}, Range{300 * P, 310 * P}
	sp := newSpace([]Range{r2, r1}, append(every(r1), every(r2)...))
	if sp.pending != 110 {
		t.Fatalf("pending %d, want 110", sp.pending)
	}

	// REMOVE [150, 160): gone for good.
	if n := sp.drop(150*P, 160*P); n != 10 {
		t.Fatalf("drop: %d", n)
	}
	// REMAP [120, 130) to [500, 510): same sources, new addresses.
	sp.move(120*P, 500*P, 10*P)
	// UNMAP [305, 400): half of r2.
	if n := sp.cut(305*P, 400*P); n != 5 {
		t.Fatalf("cut: %d", n)
	}
	child := sp.clone()
	// REMAP over a pending range: what was there is lost.
	if n := sp.move(500*P, 100*P, 10*P); n != 10 {
		t.Fatalf("move over [100, 110): lost %d, want 10", n)
	}

	got := pendingSet(sp)
	for a := uint64(100); a < 320; a++ {
		src, ok := got[a*P]
		var want uint64
		switch {
		case a < 110:
			want = (a + 20) * P // moved twice: from 120.. via 500..
		case a >= 110 && a < 120, a >= 130 && a < 150, a >= 160 && a < 200, a >= 300 && a < 305:
			want = a * P
		}
		if want == 0 && ok || want != 0 && src != want {
			t.Errorf("page %d: pending %v src %#x, want src %#x", a, ok, src/P, want/P)
		}
	}
	if c := pendingSet(child); c[500*P] != 120*P || len(c) != 110-10-5 {
		t.Errorf("fork child: %d pending, page 500 from %d", len(c), c[500*P]/P)
	}
	ei, pi, ok := sp.next(0)
	if !ok || sp.exts[ei].start+uint64(pi)*P != 100*P {
		t.Errorf("next(0) = %v %v %v", ei, pi, ok)
	}
	if ei, pi, ok := sp.lookupSrc(125 * P); !ok || sp.exts[ei].start+uint64(pi)*P != 105*P {
		t.Errorf("lookupSrc(125) = %v %v %v", ei, pi, ok)
	}
}

// TestSpacePages: newSpace marks exactly the listed pages that fall in a range,
// whether the list ascends (one walk) or not (each page out of order looked up),
// and skips those between and beyond the ranges.
func TestSpacePages(t *testing.T) {
	const P = pageSize
	ranges := []Range{{10 * P, 20 * P}, {40 * P, 42 * P}, {50 * P, 60 * P}}
	sorted := []uint64{1 * P, 10 * P, 13 * P, 19 * P, 20 * P, 30 * P, 41 * P, 50 * P, 59 * P,
		70 * P}
	want := map[uint64]bool{10 * P: true, 13 * P: true, 19 * P: true, 41 * P: true,
		50 * P: true, 59 * P: true}
	shuffled := []uint64{59 * P, 70 * P, 10 * P, 41 * P, 1 * P, 19 * P, 50 * P, 30 * P,
		13 * P, 20 * P}
	for name, pages := range map[string][]uint64{"ascending": sorted, "shuffled": shuffled} {
		got := pendingSet(newSpace(ranges, pages))
		if len(got) != len(want) {
			t.Errorf("%s: %d pages pending, want %d", name, len(got), len(want))
		}
		for a := range want {
			if _, ok := got[a]; !ok {
				t.Errorf("%s: page %d not pending", name, a/P)
			}
		}
	}
}
