package pagestore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCorruption damages a store in one way per case and checks that every read
// path reports it as a typed error naming what is damaged, and never returns
// wrong data.
func TestCorruption(t *testing.T) {
	type env struct {
		dir, snap, pack string
	}
	packFile := func(e env) string { return filepath.Join(e.dir, packsDir, e.pack+packExt) }
	tests := []struct {
		name     string
		damage   func(t *testing.T, e env)
		openErr  bool // OpenSnapshot fails (else some ReadPage fails)
		notFound bool // the error matches ErrNotFound
		names    func(e env) []string
	}{
		{
			name: "flip byte in page frame",
			damage: func(t *testing.T, e env) {
				b, _ := os.ReadFile(packFile(e))
				count := int(b[packHeaderSize+6])
				b[packHeaderSize+frameHeaderSize+16*count+5] ^= 0x40
				os.WriteFile(packFile(e), b, 0o600)
			},
			names: func(e env) []string { return []string{e.pack, e.snap, "offset 16"} },
		},
		{
			name: "flip byte in frame ids",
			damage: func(t *testing.T, e env) {
				b, _ := os.ReadFile(packFile(e))
				b[packHeaderSize+frameHeaderSize+3] ^= 1
				os.WriteFile(packFile(e), b, 0o600)
			},
			names: func(e env) []string { return []string{e.pack, e.snap} },
		},
		{
			name: "truncate pack",
			damage: func(t *testing.T, e env) {
				fi, _ := os.Stat(packFile(e))
				os.Truncate(packFile(e), fi.Size()/2)
			},
			openErr: true, // page-map blocks are written last
			names:   func(e env) []string { return []string{e.pack, e.snap, "truncated"} },
		},
		{
			name: "truncate manifest",
			damage: func(t *testing.T, e env) {
				p := filepath.Join(e.dir, snapsDir, e.snap)
				fi, _ := os.Stat(p)
				os.Truncate(p, fi.Size()-3)
			},
			openErr: true,
			names:   func(e env) []string { return []string{e.snap, "manifest"} },
		},
		{
			name:     "delete pack",
			damage:   func(t *testing.T, e env) { os.Remove(packFile(e)) },
			openErr:  true,
			notFound: true,
			names:    func(e env) []string { return []string{e.pack, e.snap, "missing"} },
		},
		{
			name: "damage pack index",
			damage: func(t *testing.T, e env) {
				p := filepath.Join(e.dir, packsDir, e.pack+indexExt)
				b, _ := os.ReadFile(p)
				b[indexHeaderSize+1] ^= 1
				os.WriteFile(p, b, 0o600)
			},
			openErr:  true,
			notFound: true,
			names:    func(e env) []string { return []string{e.snap} },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir, Options{})
			if err != nil {
				t.Fatal(err)
			}
			ranges, want, _ := sampleRanges(7)
			info := commit(t, s, "", ranges)
			s.Close()
			ents, _ := os.ReadDir(filepath.Join(dir, packsDir))
			e := env{dir: dir, snap: info.ID,
				pack: strings.TrimSuffix(ents[0].Name(), filepath.Ext(ents[0].Name()))}
			tc.damage(t, e)

			s = openTest(t, dir)
			err = readAll(s, info.ID, want)
			if err == nil {
				t.Fatal("damage went unnoticed")
			}
			t.Logf("read: %v", err)
			var ce *CorruptionError
			if !errors.As(err, &ce) {
				t.Fatalf("error is not a *CorruptionError: %v", err)
			}
			if tc.notFound != errors.Is(err, ErrNotFound) {
				t.Errorf("errors.Is(ErrNotFound) = %v: %v", !tc.notFound, err)
			}
			if isOpen := strings.HasPrefix(err.Error(), "open"); isOpen != tc.openErr {
				t.Errorf("failed in open = %v, want %v: %v", isOpen, tc.openErr, err)
			}
			for _, n := range tc.names(e) {
				if !strings.Contains(err.Error(), n) {
					t.Errorf("error does not name %q: %v", n, err)
				}
			}

			rep, err := s.Verify()
			if err != nil {
				t.Fatal(err)
			}
			if rep.OK() {
				t.Fatalf("verify found nothing: %v", rep)
			}
			text := rep.String()
			t.Logf("verify: %s", text)
			if !strings.Contains(text, e.snap) {
				t.Errorf("verify report does not name snapshot %s:\n%s", e.snap, text)
			}
			if tc.name != "truncate manifest" && !strings.Contains(text, e.pack) {
				t.Errorf("verify report does not name pack %s:\n%s", e.pack, text)
			}
			if _, err := s.GC(); tc.openErr && err == nil {
				t.Errorf("gc ran over an unreadable snapshot")
			}
		})
	}
}

// readAll opens snapshot id and reads every page, comparing with want. It returns
// the first error; wrong data is a test failure, never an error.
func readAll(s *Store, id string, want map[uint64][]byte) error {
	sn, err := s.OpenSnapshot(id)
	if err != nil {
		return err
	}
	defer sn.Close()
	pm, err := sn.PageMap()
	if err != nil {
		return err
	}
	buf := make([]byte, PageSize)
	var first error
	for _, e := range pm {
		if err := sn.ReadPage(e.ID, buf); err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		if string(buf) != string(want[e.Addr]) {
			panic("wrong data returned for " + e.ID.String())
		}
	}
	return first
}

// TestListSkipsDamaged checks List returns the snapshots it can read when one
// manifest is damaged, with an error that wraps one error a damaged snapshot,
// each a CorruptionError naming it (cryo ls relies on that shape).
func TestListSkipsDamaged(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	ranges, _, _ := sampleRanges(3)
	var ids []string
	for range 3 {
		ids = append(ids, commit(t, s, "", ranges).ID)
	}
	p := filepath.Join(dir, snapsDir, ids[1])
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, fi.Size()/2); err != nil {
		t.Fatal(err)
	}

	list, err := s.List()
	if len(list) != 2 || list[0].ID != ids[0] || list[1].ID != ids[2] {
		t.Errorf("list %v, want %s and %s", list, ids[0], ids[2])
	}
	j, ok := errors.Unwrap(err).(interface{ Unwrap() []error })
	if !ok || len(j.Unwrap()) != 1 {
		t.Fatalf("list error %v (%T), want one wrapping one error a damaged snapshot", err,
			errors.Unwrap(err))
	}
	var ce *CorruptionError
	if e := j.Unwrap()[0]; !errors.As(e, &ce) || ce.Snapshot != ids[1] ||
		!strings.Contains(e.Error(), ids[1]) {
		t.Errorf("error for the damaged snapshot: %v, want a CorruptionError naming %s",
			e, ids[1])
	}
}
