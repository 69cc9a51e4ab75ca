package pagestore

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	flag.Parse()
	before := runtime.NumGoroutine()
	code := m.Run()
	// The fuzzing engine leaves its own goroutines (signal handling) behind.
	if fz := flag.Lookup("test.fuzz"); code == 0 && (fz == nil || fz.Value.String() == "") {
		deadline := time.Now().Add(2 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<16)
			fmt.Fprintf(os.Stderr, "leaked %d goroutines:\n%s\n", n-before,
				buf[:runtime.Stack(buf, true)])
			code = 1
		}
	}
	os.Exit(code)
}

// page kinds for test data
func randomPage(r *rand.Rand) []byte {
	p := make([]byte, PageSize)
	for i := 0; i < PageSize; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			p[i+j] = byte(v >> (8 * j))
		}
	}
	return p
}

func textPage(r *rand.Rand) []byte {
	words := []string{"checkpoint ", "restore ", "page ", "frame ", "pack ", "lazy ",
		"kernel ", "process ", "memory ", "snapshot\n"}
	var b bytes.Buffer
	for b.Len() < PageSize {
		b.WriteString(words[r.IntN(len(words))])
	}
	return b.Bytes()[:PageSize]
}

func openTest(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

type testRange struct {
	addr uint64
	data []byte
}

func commit(t *testing.T, s *Store, parent string, ranges []testRange) SnapshotInfo {
	t.Helper()
	w, err := s.NewWriter(parent)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range ranges {
		if err := w.AddPages(r.addr, r.data); err != nil {
			t.Fatal(err)
		}
	}
	info, err := w.Commit(Meta{Image: []byte(`{"pid":1}`), Labels: map[string]string{
		"comm": "test"}})
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// checkSnapshot reads every page of snapshot id and compares it with want.
func checkSnapshot(t *testing.T, s *Store, id string, want map[uint64][]byte) {
	t.Helper()
	sn, err := s.OpenSnapshot(id)
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	pm, err := sn.PageMap()
	if err != nil {
		t.Fatal(err)
	}
	if len(pm) != len(want) {
		t.Fatalf("page map has %d pages, want %d", len(pm), len(want))
	}
	buf := make([]byte, PageSize)
	for i, e := range pm {
		if i > 0 && pm[i-1].Addr >= e.Addr {
			t.Fatalf("page map not ascending at %#x", e.Addr)
		}
		w, ok := want[e.Addr]
		if !ok {
			t.Fatalf("unexpected page %#x", e.Addr)
		}
		if e.Zero != bytes.Equal(w, zeroPage) {
			t.Fatalf("page %#x: zero=%v", e.Addr, e.Zero)
		}
		if err := sn.ReadPage(e.ID, buf); err != nil {
			t.Fatalf("read page %#x: %v", e.Addr, err)
		}
		if !bytes.Equal(buf, w) {
			t.Fatalf("page %#x differs", e.Addr)
		}
	}
}

// sampleRanges builds a snapshot of random, zero, duplicate and text pages over a
// few windows, returning the ranges and the expected content per address.
func sampleRanges(seed uint64) ([]testRange, map[uint64][]byte, int) {
	r := rand.New(rand.NewPCG(seed, 1))
	want := map[uint64][]byte{}
	var ranges []testRange
	dup := randomPage(r)
	distinct := 1 // dup
	// Range 1: 40 pages crossing a 2 MiB boundary, mixed.
	addr := uint64(0x7f0000000000 - 20*PageSize)
	var data []byte
	for i := range 40 {
		var p []byte
		switch i % 4 {
		case 0:
			p = randomPage(r)
			distinct++
		case 1:
			p = zeroPage
		case 2:
			p = dup
		case 3:
			p = textPage(r)
			distinct++
		}
		want[addr+uint64(i)*PageSize] = p
		data = append(data, p...)
	}
	ranges = append(ranges, testRange{addr, data})
	// Range 2, added out of order: low addresses, all duplicates of dup.
	addr = 0x400000
	data = nil
	for i := range 5 {
		want[addr+uint64(i)*PageSize] = dup
		data = append(data, dup...)
	}
	ranges = append(ranges, testRange{addr, data})
	return ranges, want, distinct
}

func TestRoundTrip(t *testing.T) {
	s := openTest(t, t.TempDir())
	ranges, want, distinct := sampleRanges(1)
	info := commit(t, s, "", ranges)
	st := info.Stats
	if st.Pages != 45 || st.ZeroPages != 10 || st.NewPages != int64(distinct) ||
		st.DedupPages != 45-10-int64(distinct) || st.LogicalBytes != 45*PageSize {
		t.Fatalf("stats %+v, want 45 pages, 10 zero, %d new", st, distinct)
	}
	if st.StoredBytes <= 0 || st.StoredBytes > int64(distinct+4)*PageSize {
		t.Fatalf("stored %d bytes for %d distinct pages", st.StoredBytes, distinct)
	}
	checkSnapshot(t, s, info.ID, want)

	// Metadata survives a reopen.
	s.Close()
	s = openTest(t, s.Dir())
	sn, err := s.OpenSnapshot("latest")
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	if got := sn.Info(); got.ID != info.ID || got.Labels["comm"] != "test" ||
		got.Stats != st || !got.Created.Equal(info.Created) {
		t.Fatalf("info %+v, want %+v", got, info)
	}
	if string(sn.Image()) != `{"pid":1}` {
		t.Fatalf("image %q", sn.Image())
	}
	if im, err := s.SnapshotImage(info.ID); err != nil || string(im) != `{"pid":1}` {
		t.Fatalf("SnapshotImage: %q, %v", im, err)
	}
	checkSnapshotOpen(t, sn, want)
}

func checkSnapshotOpen(t *testing.T, sn *Snapshot, want map[uint64][]byte) {
	t.Helper()
	pm, _ := sn.PageMap()
	buf := make([]byte, PageSize)
	for _, e := range pm {
		if err := sn.ReadPage(e.ID, buf); err != nil || !bytes.Equal(buf, want[e.Addr]) {
			t.Fatalf("page %#x: %v", e.Addr, err)
		}
	}
}

func TestDedupAcrossSnapshots(t *testing.T) {
	s := openTest(t, t.TempDir())
	ranges, want, _ := sampleRanges(2)
	first := commit(t, s, "", ranges)
	second := commit(t, s, first.ID, ranges)
	st := second.Stats
	if st.NewPages != 0 || st.DedupPages != 35 || st.ZeroPages != 10 {
		t.Fatalf("second snapshot stats %+v: want every page deduplicated", st)
	}
	if st.StoredBytes != 0 {
		t.Fatalf("second snapshot stored %d bytes, want 0 (same page-map blocks)",
			st.StoredBytes)
	}
	if second.Parent != first.ID {
		t.Fatalf("parent %q, want %q", second.Parent, first.ID)
	}
	checkSnapshot(t, s, second.ID, want)

	list, err := s.List()
	if err != nil || len(list) != 2 || list[0].ID != first.ID || list[1].ID != second.ID {
		t.Fatalf("list %v, %v", list, err)
	}
	if id, err := s.Resolve(second.ID[:12]); err != nil || id != second.ID {
		t.Fatalf("resolve prefix: %q, %v", id, err)
	}
	if _, err := s.Resolve("zzz"); !errors.Is(err, ErrNotFound) ||
		!strings.Contains(err.Error(), `"zzz"`) {
		t.Fatalf("resolve missing: %v", err)
	}
	if _, err := s.Resolve(""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("resolve empty: %v", err)
	}
	if _, err := s.Resolve(first.ID[:1]); !errors.Is(err, ErrAmbiguous) {
		t.Fatalf("resolve ambiguous: %v", err)
	}
}

func TestAddPagesErrors(t *testing.T) {
	s := openTest(t, t.TempDir())
	w, err := s.NewWriter("")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	if err := w.AddPages(1, make([]byte, PageSize)); err == nil {
		t.Fatal("unaligned address accepted")
	}
	if err := w.AddPages(0, make([]byte, 100)); err == nil {
		t.Fatal("partial page accepted")
	}
	if err := w.AddPages(PageSize, make([]byte, 2*PageSize)); err != nil {
		t.Fatal(err)
	}
	if err := w.AddPages(2*PageSize, make([]byte, PageSize)); err == nil {
		t.Fatal("page added twice accepted")
	}
	if _, err := s.NewWriter("nosuch"); !errors.Is(err, ErrLocked) {
		t.Fatalf("second writer: %v", err)
	}
}

func TestAbortLeavesEarlierSnapshots(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	ranges, want, _ := sampleRanges(3)
	first := commit(t, s, "", ranges)

	w, err := s.NewWriter(first.ID)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(9, 9))
	var data []byte
	for range 64 {
		data = append(data, randomPage(r)...)
	}
	if err := w.AddPages(0x10000000, data); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(Meta{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("commit after abort: %v", err)
	}
	list, err := s.List()
	if err != nil || len(list) != 1 {
		t.Fatalf("list after abort: %v %v", list, err)
	}
	checkSnapshot(t, s, first.ID, want)
	ents, _ := os.ReadDir(filepath.Join(dir, packsDir))
	if len(ents) != 2 {
		t.Fatalf("packs dir after abort holds %d files, want the first snapshot's 2", len(ents))
	}
}

func TestGCAfterRemove(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{PackSize: 64 << 10}) // several packs per snapshot
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := rand.New(rand.NewPCG(4, 4))
	mk := func(n int) []byte {
		var d []byte
		for range n {
			d = append(d, randomPage(r)...)
		}
		return d
	}
	shared := mk(16)
	a := commit(t, s, "", []testRange{{0x1000000, shared}, {0x2000000, mk(64)}})
	b := commit(t, s, "", []testRange{{0x1000000, shared}, {0x3000000, mk(64)}})

	// Crash leftovers: an unsealed pack and a temp manifest.
	os.WriteFile(filepath.Join(dir, packsDir, "crashed"+packExt), []byte("CRYOPACK"), 0o600)
	os.WriteFile(filepath.Join(dir, snapsDir, tmpPrefix+"x"), nil, 0o600)

	st, err := s.GC()
	if err != nil {
		t.Fatal(err)
	}
	if st.PacksRemoved != 0 || st.UnsealedPacks != 1 || st.TempFiles != 1 {
		t.Fatalf("gc with both snapshots: %+v", st)
	}
	before := dirSize(t, filepath.Join(dir, packsDir))
	if err := s.Remove(a.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.OpenSnapshot(a.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("open removed snapshot: %v", err)
	}
	st, err = s.GC()
	if err != nil {
		t.Fatal(err)
	}
	after := dirSize(t, filepath.Join(dir, packsDir))
	if st.PacksRemoved == 0 || st.BytesReclaimed <= 0 || after >= before {
		t.Fatalf("gc after remove: %+v, packs %d -> %d bytes", st, before, after)
	}
	rep, err := s.Verify()
	if err != nil || !rep.OK() {
		t.Fatalf("verify after gc: %v\n%v", err, rep)
	}
	sn, err := s.OpenSnapshot(b.ID)
	if err != nil {
		t.Fatal(err)
	}
	pm, _ := sn.PageMap()
	buf := make([]byte, PageSize)
	for _, e := range pm {
		if err := sn.ReadPage(e.ID, buf); err != nil {
			t.Fatal(err)
		}
	}
	sn.Close()

	// A second process view (fresh Store) agrees.
	s2 := openTest(t, dir)
	if rep, err := s2.Verify(); err != nil || !rep.OK() || rep.Snapshots != 1 {
		t.Fatalf("verify from fresh store: %v %v", rep, err)
	}
}

func dirSize(t *testing.T, dir string) int64 {
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		fi, _ := e.Info()
		n += fi.Size()
	}
	return n
}

func TestFileModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	s := openTest(t, dir)
	ranges, _, _ := sampleRanges(5)
	commit(t, s, "", ranges)
	err := filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		want := os.FileMode(fileMode)
		if fi.IsDir() {
			want = dirMode | os.ModeDir
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestNewerVersionRefused(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	s.Close()
	os.WriteFile(filepath.Join(dir, versionFile), []byte(versionMagic+"2\n"), 0o600)
	_, err := Open(dir, Options{})
	if !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), "version 2") {
		t.Fatalf("open newer store: %v", err)
	}

	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "something"), nil, 0o600)
	if _, err := Open(other, Options{}); err == nil {
		t.Fatal("opened a non-empty directory that is not a store")
	}
}

func TestLockNamesHolder(t *testing.T) {
	dir := t.TempDir()
	a := openTest(t, dir)
	b := openTest(t, dir) // another open file description: behaves like another process
	w, err := a.NewWriter("")
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.NewWriter("")
	var le *LockedError
	if !errors.As(err, &le) || !errors.Is(err, ErrLocked) ||
		!strings.Contains(err.Error(), fmt.Sprint(os.Getpid())) {
		t.Fatalf("second writer: %v", err)
	}
	if _, err := b.List(); !errors.Is(err, ErrLocked) {
		t.Fatalf("reader during write: %v", err)
	}
	if _, err := w.Commit(Meta{}); err != nil {
		t.Fatal(err)
	}
	if list, err := b.List(); err != nil || len(list) != 1 {
		t.Fatalf("list after commit: %v %v", list, err)
	}
}

// TestWriterSeesOtherStores checks that a Store notices packs sealed through
// another Store (another process) and deduplicates against them.
func TestWriterSeesOtherStores(t *testing.T) {
	dir := t.TempDir()
	a := openTest(t, dir)
	b := openTest(t, dir)
	ranges, want, _ := sampleRanges(6)
	commit(t, a, "", ranges)
	info := commit(t, b, "", ranges)
	if info.Stats.NewPages != 0 {
		t.Fatalf("second store stored %d pages again", info.Stats.NewPages)
	}
	checkSnapshot(t, b, info.ID, want)
}

// TestLockWaitSaysSo checks a caller that has to wait for the store lock says
// so once, at Warn (cryo's default level shows it), naming what the holder
// does, before it gives up with the LockedError.
func TestLockWaitSaysSo(t *testing.T) {
	dir := t.TempDir()
	a := openTest(t, dir)
	w, err := a.NewWriter("")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(Meta{}); err != nil {
		t.Fatal(err)
	}
	snaps, err := a.List()
	if err != nil {
		t.Fatal(err)
	}
	sn, err := a.OpenSnapshot(snaps[0].ID) // holds a read lock until closed
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()

	var logged bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelWarn}))
	b, err := Open(dir, Options{Logger: log, LockWait: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	start := time.Now()
	_, err = b.NewWriter("")
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "(reading)") {
		t.Fatalf("writer while a snapshot is open: %v, want a LockedError naming a reader", err)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("writer gave up after %v, want it to wait the 300ms LockWait", took)
	}
	out := logged.String()
	t.Logf("log: %s", out)
	if n := strings.Count(out, "waiting for the store lock"); n != 1 ||
		!strings.Contains(out, "level=WARN") || !strings.Contains(out, "mode=reading") ||
		!strings.Contains(out, "holder=") {
		t.Errorf("log while waiting:\n%s\nwant one Warn line naming the holder and its "+
			"mode (reading)", out)
	}
}

// TestLockWaitInterrupted checks that closing Options.Interrupt ends a wait for
// another holder's lock at once, with ErrInterrupted, and that the holder's
// snapshot is untouched.
func TestLockWaitInterrupted(t *testing.T) {
	dir := t.TempDir()
	a := openTest(t, dir)
	w, err := a.NewWriter("")
	if err != nil {
		t.Fatal(err)
	}
	info, err := w.Commit(Meta{})
	if err != nil {
		t.Fatal(err)
	}
	sn, err := a.OpenSnapshot(info.ID) // holds a read lock until closed
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()

	interrupt := make(chan struct{})
	b, err := Open(dir, Options{LockWait: time.Minute, Interrupt: interrupt})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	time.AfterFunc(200*time.Millisecond, func() { close(interrupt) })
	start := time.Now()
	_, err = b.NewWriter("")
	took := time.Since(start)
	if !errors.Is(err, ErrInterrupted) {
		t.Fatalf("writer while a snapshot is open, interrupted: %v, want ErrInterrupted", err)
	}
	if took > 10*time.Second {
		t.Errorf("the interrupted wait lasted %v, want it to end when Interrupt closed", took)
	}
	again, err := a.OpenSnapshot(info.ID)
	if err != nil {
		t.Fatalf("snapshot %s after the interrupted wait: %v", info.ID, err)
	}
	again.Close()
}
