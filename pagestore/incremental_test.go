package pagestore

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
)

// model is the expected page map of a snapshot: address -> content.
type model map[uint64][]byte

func TestCarryErrors(t *testing.T) {
	s := openTest(t, t.TempDir())
	w, err := s.NewWriter("")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Carry([]Run{{0, PageSize}}); !errors.Is(err, ErrNoParent) {
		t.Fatalf("carry without parent: %v", err)
	}
	w.Abort()

	_, err = s.NewWriter("nosuchsnap")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "nosuchsnap") {
		t.Fatalf("new writer with a missing parent: %v", err)
	}

	p := commit(t, s, "", []testRange{{0x400000, zeroPage}})
	w, err = s.NewWriter(p.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	for _, r := range []Run{{1, PageSize}, {0, 100}, {2 * PageSize, PageSize}} {
		if err := w.Carry([]Run{r}); err == nil {
			t.Fatalf("carry %+v: no error", r)
		}
	}
	if err := w.Carry([]Run{{PageSize, PageSize}}); err != nil {
		t.Fatalf("empty run: %v", err)
	}
}

// TestCarrySemantics checks each rule of Carry on one window and that windows
// carried whole are shared with the parent without being read.
func TestCarrySemantics(t *testing.T) {
	s := openTest(t, t.TempDir())
	r := rand.New(rand.NewPCG(7, 7))
	const w0, w1, w2 = 0x7f0000000000, 0x7f0000200000, 0x7f0000400000
	a, b, c := randomPage(r), randomPage(r), randomPage(r)
	full := func(p []byte) []byte { return bytes.Repeat(p, windowSlots) }
	parent := commit(t, s, "", []testRange{
		{w0, append(append([]byte{}, a...), zeroPage...)}, // data, zero
		{w1, full(b)}, // whole window, carried untouched
		{w2, full(c)}, // whole window, dropped
	})

	w, err := s.NewWriter(parent.ID)
	if err != nil {
		t.Fatal(err)
	}
	// In w0: the data page becomes zero and the zero page becomes data.
	if err := w.AddPages(w0, append(append([]byte{}, zeroPage...), b...)); err != nil {
		t.Fatal(err)
	}
	if err := w.Carry([]Run{{w1, w1 + windowSize}, {w0, w0 + PageSize}}); err != nil {
		t.Fatal(err)
	}
	if err := w.AddPages(w0+2*PageSize, c); err != nil { // outside any run: new page
		t.Fatal(err)
	}
	info, err := w.Commit(Meta{})
	if err != nil {
		t.Fatal(err)
	}
	// w0 is merged; w2 is dropped, read only to count what it held; w1 is unread.
	if w.parentBlocksRead != 2 {
		t.Fatalf("commit read %d parent blocks, want 2 (w0 and w2)", w.parentBlocksRead)
	}
	want := model{w0: zeroPage, w0 + PageSize: b, w0 + 2*PageSize: c}
	for i := range uint64(windowSlots) {
		want[w1+i*PageSize] = b
	}
	checkSnapshot(t, s, info.ID, want)
	st := info.Stats
	if info.Parent != parent.ID || st.Pages != int64(len(want)) ||
		st.CarriedPages != windowSlots || st.ZeroPages != 1 || st.NewPages != 0 {
		t.Fatalf("info %+v", info)
	}
	m, err := s.readManifest(info.ID)
	if err != nil {
		t.Fatal(err)
	}
	pm, _ := s.readManifest(parent.ID)
	if len(m.Windows) != 2 || m.Windows[1] != pm.Windows[1] {
		t.Fatalf("windows %v, parent's %v", m.Windows, pm.Windows)
	}

	// Carrying everything and adding the same content shares every block.
	w, err = s.NewWriter(info.ID)
	if err != nil {
		t.Fatal(err)
	}
	w.AddPages(w0+PageSize, b)
	w.Carry([]Run{{0, 1 << 62}})
	same, err := w.Commit(Meta{})
	if err != nil {
		t.Fatal(err)
	}
	if same.Stats.StoredBytes != 0 || same.Stats.CarriedPages != int64(len(want))-1 {
		t.Fatalf("unchanged snapshot: %+v", same.Stats)
	}
	checkSnapshot(t, s, same.ID, want)
}

// step is one random incremental snapshot: the runs carried and pages added.
type step struct {
	runs []Run
	adds []testRange
}

// randomStep draws carried runs (dropping about a fifth of the space) and added
// ranges (new, zero, repeated and unchanged content) over the windows at base.
func randomStep(r *rand.Rand, base uint64, windows int, prev model, pool [][]byte) step {
	var st step
	end := base + uint64(windows)*windowSize
	for a := base; a < end; {
		n := uint64(1+r.IntN(3*windowSlots)) * PageSize
		if r.IntN(5) > 0 {
			st.runs = append(st.runs, Run{a, min(a+n, end)})
		}
		a += n
	}
	r.Shuffle(len(st.runs), func(i, j int) { st.runs[i], st.runs[j] = st.runs[j], st.runs[i] })
	taken := map[uint64]bool{}
	for range 40 {
		a := base + uint64(r.IntN(windows*windowSlots))*PageSize
		n := 1 + r.IntN(24)
		var data []byte
		for i := range n {
			p := a + uint64(i)*PageSize
			if p >= end || taken[p] {
				break
			}
			taken[p] = true
			switch r.IntN(4) {
			case 0:
				data = append(data, randomPage(r)...)
			case 1:
				data = append(data, zeroPage...)
			case 2:
				data = append(data, pool[r.IntN(len(pool))]...)
			case 3:
				if old, ok := prev[p]; ok {
					data = append(data, old...)
				} else {
					data = append(data, textPage(r)...)
				}
			}
		}
		if len(data) > 0 {
			st.adds = append(st.adds, testRange{a, data})
		}
	}
	return st
}

// apply returns the model after st and the number of entries carried.
func (st step) apply(prev model) (model, int64) {
	next := model{}
	var carried int64
	for a, p := range prev {
		for _, r := range st.runs {
			if a >= r.Start && a < r.End {
				next[a] = p
				carried++
				break
			}
		}
	}
	for _, ar := range st.adds {
		for i := 0; i < len(ar.data); i += PageSize {
			a := ar.addr + uint64(i)
			if _, ok := next[a]; ok {
				carried--
			}
			next[a] = ar.data[i : i+PageSize]
		}
	}
	return next, carried
}

// TestIncrementalChain writes a chain of incremental snapshots with random
// carries, drops and adds, compares each with a model, then removes the middle
// and the root, GCs, and checks every remaining snapshot reads back exactly.
func TestIncrementalChain(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{PackSize: 256 << 10}) // many packs, so GC can free some
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := rand.New(rand.NewPCG(11, 12))
	const base, windows = 0x7f1234400000, 8
	pool := [][]byte{randomPage(r), textPage(r), randomPage(r)}

	// Root: about a third of the space, in ranges.
	root := model{}
	var ranges []testRange
	for a := uint64(base); a < base+windows*windowSize; a += 48 * PageSize {
		var data []byte
		for i := range 16 {
			p := randomPage(r)
			if i%5 == 0 {
				p = zeroPage
			}
			root[a+uint64(i)*PageSize] = p
			data = append(data, p...)
		}
		ranges = append(ranges, testRange{a, data})
	}
	info := commit(t, s, "", ranges)
	ids, models := []string{info.ID}, []model{root}

	// A snapshot of its own, of 1 MiB that nothing else holds: removed, its packs
	// are all dead, so GC must reclaim at least that much. How the chain's pages
	// fall into packs depends on which worker compresses what first, so the
	// chain alone need not leave a pack wholly dead.
	var lone []byte
	for range 256 {
		lone = append(lone, randomPage(r)...)
	}
	loneID := commit(t, s, "", []testRange{{base, lone}}).ID

	for i := 1; i < 5; i++ {
		prev := models[i-1]
		st := randomStep(r, base, windows, prev, pool)
		want, carried := st.apply(prev)
		w, err := s.NewWriter(ids[i-1])
		if err != nil {
			t.Fatal(err)
		}
		// Interleave Carry calls (in pieces, unsorted) with AddPages.
		for k, ar := range st.adds {
			if k < len(st.runs) {
				if err := w.Carry(st.runs[k : k+1]); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.AddPages(ar.addr, ar.data); err != nil {
				t.Fatal(err)
			}
		}
		if len(st.runs) > len(st.adds) {
			if err := w.Carry(st.runs[len(st.adds):]); err != nil {
				t.Fatal(err)
			}
		}
		info, err := w.Commit(Meta{})
		if err != nil {
			t.Fatal(err)
		}
		if info.Stats.Pages != int64(len(want)) || info.Stats.CarriedPages != carried ||
			info.Parent != ids[i-1] {
			t.Fatalf("snapshot %d: %+v, want %d pages, %d carried", i, info, len(want),
				carried)
		}
		checkSnapshot(t, s, info.ID, want)
		if m, err := s.readManifest(info.ID); err != nil || m.Stats != info.Stats {
			t.Fatalf("stats read back %+v, committed %+v (%v)", m.Stats, info.Stats, err)
		}
		ids, models = append(ids, info.ID), append(models, want)
	}

	// Remove the middle and the root, then the parent of the last one.
	check := func(alive ...int) {
		t.Helper()
		st, err := s.GC()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("gc: %+v", st)
		for _, i := range alive {
			checkSnapshot(t, s, ids[i], models[i])
		}
		fresh := openTest(t, dir) // another process's view
		for _, i := range alive {
			checkSnapshot(t, fresh, ids[i], models[i])
		}
		if rep, err := fresh.Verify(); err != nil || !rep.OK() || rep.Snapshots != len(alive) {
			t.Fatalf("verify: %v %v", rep, err)
		}
		fresh.Close()
	}
	before := dirSize(t, filepath.Join(dir, packsDir))
	if err := s.Remove(loneID); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{2, 0} {
		if err := s.Remove(ids[i]); err != nil {
			t.Fatal(err)
		}
	}
	check(1, 3, 4)
	if err := s.Remove(ids[3]); err != nil {
		t.Fatal(err)
	}
	check(1, 4)
	if after := dirSize(t, filepath.Join(dir, packsDir)); before-after < int64(len(lone)) {
		t.Fatalf("gc reclaimed %d bytes (%d -> %d), want at least the %d of the removed "+
			"snapshot that shared no page", before-after, before, after, len(lone))
	}

	// A child of a removed parent can itself be a parent.
	w, err := s.NewWriter(ids[4])
	if err != nil {
		t.Fatal(err)
	}
	w.Carry([]Run{{base, base + windows*windowSize}})
	last, err := w.Commit(Meta{})
	if err != nil {
		t.Fatal(err)
	}
	checkSnapshot(t, s, last.ID, models[4])
	if _, err := s.NewWriter(ids[3]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("writer on a removed parent: %v", err)
	}
}

// storeBytes is the size of every file of the store.
func storeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	return dirSize(t, filepath.Join(dir, packsDir)) + dirSize(t, filepath.Join(dir, snapsDir))
}

// TestIncrementalCost measures what an incremental snapshot writes when 1% of
// a 1 GiB page map (eight regions of 128 MiB far apart) changes, scattered or
// in clusters, and when nothing changes. The parent's windows all share one
// 2 MiB buffer, so building it costs hashing, not storage.
func TestIncrementalCost(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short mode: hashes 1 GiB")
	}
	dir := t.TempDir()
	s := openTest(t, dir)
	r := rand.New(rand.NewPCG(21, 22))
	var buf []byte
	for range windowSlots {
		buf = append(buf, randomPage(r)...)
	}
	const regions, regionWindows = 8, 64 // 8 * 64 * 2 MiB = 1 GiB
	regionBase := func(i int) uint64 { return 0x10000000000 + uint64(i)<<36 }
	var runs []Run
	w, err := s.NewWriter("")
	if err != nil {
		t.Fatal(err)
	}
	for i := range regions {
		for k := range regionWindows {
			if err := w.AddPages(regionBase(i)+uint64(k)*windowSize, buf); err != nil {
				t.Fatal(err)
			}
		}
		runs = append(runs, Run{regionBase(i), regionBase(i) + regionWindows*windowSize})
	}
	parent, err := w.Commit(Meta{})
	if err != nil {
		t.Fatal(err)
	}
	const total = regions * regionWindows * windowSlots
	if parent.Stats.Pages != total {
		t.Fatalf("parent has %d pages", parent.Stats.Pages)
	}

	changed := total / 100
	pageAt := func(n int) uint64 { // n-th page of the map
		win := n / windowSlots
		return regionBase(win/regionWindows) + uint64(win%regionWindows)*windowSize +
			uint64(n%windowSlots)*PageSize
	}
	cases := []struct {
		name      string
		cluster   int   // pages per changed run
		maxMeta   int64 // bytes written beyond the pages themselves
		changeCnt int   // pages to change, rounded up to whole clusters
	}{
		{"unchanged", 1, 16 << 10, 0},
		{"clustered", 64, 1 << 20, changed},
		{"scattered", 1, 6 << 20, changed},
	}
	for _, c := range cases {
		taken := map[int]bool{}
		windows := map[int]bool{}
		var adds []testRange
		for n := 0; n < c.changeCnt; n += c.cluster {
			first := r.IntN(total/c.cluster) * c.cluster
			if taken[first] {
				n -= c.cluster
				continue
			}
			taken[first] = true
			windows[first/windowSlots] = true
			var data []byte
			for range c.cluster {
				data = append(data, randomPage(r)...)
			}
			adds = append(adds, testRange{pageAt(first), data})
		}
		nchanged := 0
		for _, a := range adds {
			nchanged += len(a.data) / PageSize
		}
		before := storeBytes(t, dir)
		w, err := s.NewWriter(parent.ID)
		if err != nil {
			t.Fatal(err)
		}
		w.Carry(runs)
		for _, a := range adds {
			if err := w.AddPages(a.addr, a.data); err != nil {
				t.Fatal(err)
			}
		}
		info, err := w.Commit(Meta{})
		if err != nil {
			t.Fatal(err)
		}
		written := storeBytes(t, dir) - before
		meta := written - info.Stats.NewPages*PageSize
		mf := fileSize(filepath.Join(dir, snapsDir, info.ID))
		t.Logf("%s: %d pages changed in %d windows: wrote %d bytes: %d of pages, %d more "+
			"(%d in packs: frame headers, ids and page-map blocks; manifest %d; "+
			"pack indexes)", c.name, nchanged, len(windows), written,
			info.Stats.NewPages*PageSize, meta,
			info.Stats.StoredBytes-info.Stats.NewPages*PageSize, mf)
		if info.Stats.Pages != total || info.Stats.CarriedPages != int64(total-nchanged) {
			t.Fatalf("%s: stats %+v", c.name, info.Stats)
		}
		if w.parentBlocksRead != len(windows) {
			t.Fatalf("%s: read %d parent blocks for %d changed windows", c.name,
				w.parentBlocksRead, len(windows))
		}
		if meta > c.maxMeta {
			t.Fatalf("%s: %d bytes of metadata, want at most %d", c.name, meta, c.maxMeta)
		}
	}
}
