package engine

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cryo-dev/cryo/pagestore"
)

// A restored process is a new process (a new start time) whose memory is its
// snapshot's. So that its next checkpoint is incremental on that snapshot, restore
// records the pair in the store's lineage folder: a file named PID-STARTTIME holding
// the snapshot id. The files are tiny, written durably, and read only to pick a
// parent: a missing or stale one costs a full checkpoint, never a wrong one,
// because the parent's pages are only carried where the tracker vouches for them.
const lineageDir = "lineage"

// findParent returns the snapshot the next checkpoint of process (pid, start) is
// incremental on: its own latest snapshot, else the snapshot it was restored from,
// else "".
func findParent(store *pagestore.Store, pid int, start uint64) string {
	snaps, err := store.List()
	if err != nil {
		return ""
	}
	p, s := fmt.Sprint(pid), fmt.Sprint(start)
	for i := len(snaps) - 1; i >= 0; i-- {
		if snaps[i].Labels["pid"] == p && snaps[i].Labels["starttime"] == s {
			return snaps[i].ID
		}
	}
	b, err := os.ReadFile(filepath.Join(store.Dir(), lineageDir, p+"-"+s))
	if err != nil {
		return ""
	}
	id, err := store.Resolve(strings.TrimSpace(string(b)))
	if err != nil {
		return "" // retired since: start afresh
	}
	return id
}

// recordLineage notes that process (pid, start) was restored from snapshot id.
func recordLineage(store *pagestore.Store, pid int, start uint64, id string) error {
	dir := filepath.Join(store.Dir(), lineageDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("record lineage of pid %d: %w", pid, err)
	}
	base := fmt.Sprintf("%d-%d", pid, start)
	name := filepath.Join(dir, base)
	tmp := filepath.Join(dir, ".tmp-"+base)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("record lineage of pid %d: %w", pid, err)
	}
	_, err = f.WriteString(id + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, name)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("record lineage of pid %d: %w", pid, err)
	}
	return nil
}

// syncDir makes the entries of folder dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
