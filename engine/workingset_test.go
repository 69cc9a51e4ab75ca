package engine

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cryo-dev/cryo/pagestore"
)

// TestWorkingSet records working sets for a snapshot: the faulted pages come
// first, the earlier set's others after them; damaged files read as no set;
// sets of removed snapshots are pruned.
func TestWorkingSet(t *testing.T) {
	dir := t.TempDir()
	store, err := pagestore.Open(dir, pagestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	commit := func() string {
		w, err := store.NewWriter("")
		if err != nil {
			t.Fatal(err)
		}
		if err := w.AddPages(0x10000, make([]byte, pageSize)); err != nil {
			t.Fatal(err)
		}
		info, err := w.Commit(pagestore.Meta{})
		if err != nil {
			t.Fatal(err)
		}
		return info.ID
	}
	a, b := commit(), commit()

	if got := loadWorkingSet(store, a); got != nil {
		t.Fatalf("no set recorded yet, loaded %v", got)
	}
	first := []uint64{0x7f0000003000, 0x400000, 0x7f0000003123, 0x401000}
	if err := saveWorkingSet(store, a, first); err != nil {
		t.Fatal(err)
	}
	want := []uint64{0x7f0000003000, 0x400000, 0x401000}
	if got := loadWorkingSet(store, a); !slices.Equal(got, want) {
		t.Fatalf("loaded %#x, want %#x", got, want)
	}
	if err := saveWorkingSet(store, a, []uint64{0x401000, 0x500000}); err != nil {
		t.Fatal(err)
	}
	want = []uint64{0x401000, 0x500000, 0x7f0000003000, 0x400000}
	if got := loadWorkingSet(store, a); !slices.Equal(got, want) {
		t.Fatalf("after a second restore loaded %#x, want %#x", got, want)
	}

	path := filepath.Join(dir, workingSetDir, a)
	data, _ := os.ReadFile(path)
	for _, bad := range [][]byte{data[:len(data)-1], append(data, 0), []byte("CRYOWSET")} {
		os.WriteFile(path, bad, 0o600)
		if got := loadWorkingSet(store, a); got != nil {
			t.Errorf("damaged set %q loaded as %#x", bad, got)
		}
	}

	if err := store.Remove(a); err != nil {
		t.Fatal(err)
	}
	if err := saveWorkingSet(store, b, []uint64{0x1000}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("set of removed snapshot %s still there: %v", a, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, workingSetDir, b)); err != nil ||
		fi.Mode().Perm() != 0o600 {
		t.Errorf("set of %s: %v %v, want mode 0600", b, fi, err)
	}
}
