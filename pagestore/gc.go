package pagestore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// GCStats reports what GC did.
type GCStats struct {
	Snapshots      int   // snapshots whose references were followed
	PacksKept      int   // sealed packs still referenced (possibly only in part)
	PacksRemoved   int   // sealed packs no snapshot references
	UnsealedPacks  int   // packs without an index (left by a crashed writer) removed
	TempFiles      int   // temporary files of interrupted writes removed
	BytesReclaimed int64 // bytes of the files removed
}

// Remove deletes the snapshot ref names. Its pages stay until GC finds them
// unreferenced. It takes the store lock exclusively.
func (s *Store) Remove(ref string) error {
	if err := s.acquire(true); err != nil {
		return fmt.Errorf("remove snapshot %s: %w", ref, err)
	}
	defer s.release(true)
	id, err := s.resolveLocked(ref)
	if err != nil {
		return fmt.Errorf("remove snapshot: %w", err)
	}
	dir := filepath.Join(s.dir, snapsDir)
	if err := os.Remove(filepath.Join(dir, id)); err != nil {
		return fmt.Errorf("remove snapshot %s: %w", id, err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("remove snapshot %s: %w", id, err)
	}
	s.log.Info("removed snapshot", "id", id)
	return nil
}

// GC removes every pack that no snapshot references, packs left unsealed by a
// writer that crashed, and temporary files. It takes the store lock exclusively,
// so no writer or reader is active in any process.
//
// GC refuses to run (and removes nothing) when a manifest or page-map block
// cannot be read, since it could not tell which pages that snapshot needs. Packs
// whose index is damaged are kept for repair.
//
// Shortcoming: a pack is reclaimed only when none of its pages is referenced; a
// pack with a few live pages is kept whole. Rewriting such packs (copying the live
// frames to a new pack, then removing the old one) would lift this.
func (s *Store) GC() (GCStats, error) {
	var st GCStats
	if err := s.acquire(true); err != nil {
		return st, fmt.Errorf("gc: %w", err)
	}
	defer s.release(true)
	start := time.Now()

	// Mark: every block and page reachable from a manifest. Each manifest is a
	// root of its own: a snapshot's parent plays no part, so removing a parent
	// keeps whatever its children still name. A block shared by several
	// snapshots (an incremental one reuses its parent's unchanged windows) is
	// read once.
	s.mu.RLock()
	live := make([]bool, len(s.packs))
	s.mu.RUnlock()
	mark := func(id PageID) {
		s.mu.RLock()
		defer s.mu.RUnlock()
		for i := search(s.index, id); i < len(s.index) && s.index[i].id == id; i++ {
			live[s.index[i].pack] = true
		}
	}
	ids, err := s.snapshotIDs()
	if err != nil {
		return st, fmt.Errorf("gc: %w", err)
	}
	seen := map[PageID]bool{}
	for _, id := range ids {
		m, err := s.readManifest(id)
		if err != nil {
			return st, fmt.Errorf("gc: %w", err)
		}
		for _, w := range m.Windows {
			if seen[w.Block] {
				continue
			}
			seen[w.Block] = true
			mark(w.Block)
			b, err := s.readBlock(w.Block, id, w.Base)
			if err != nil {
				return st, fmt.Errorf("gc: %w", err)
			}
			if b.base != nil {
				mark(b.baseID) // a delta block needs its base
			}
			for _, pid := range b.IDs {
				mark(pid)
			}
		}
		st.Snapshots++
	}

	// Sweep. Indexes go first and are made durable before any pack is removed, so
	// a crash can leave an unsealed pack (ignored, removed next time) but never an
	// index whose pack is gone.
	var dead []uint32
	var deadNames []string
	s.mu.RLock()
	for n, p := range s.packs {
		switch {
		case p.gone:
		case live[n] || p.damaged != nil:
			st.PacksKept++
		default:
			dead = append(dead, uint32(n))
			deadNames = append(deadNames, p.name)
		}
	}
	s.mu.RUnlock()
	pdir := filepath.Join(s.dir, packsDir)
	for _, name := range deadNames {
		st.BytesReclaimed += fileSize(s.packPath(name, indexExt))
		if err := os.Remove(s.packPath(name, indexExt)); err != nil &&
			!errors.Is(err, os.ErrNotExist) {
			return st, fmt.Errorf("gc: remove index of pack %s: %w", name, err)
		}
	}
	if err := syncDir(pdir); err != nil {
		return st, fmt.Errorf("gc: %w", err)
	}
	s.mu.Lock()
	s.dropLocked(dead)
	s.mu.Unlock()

	// Every .pack without an index is now garbage: dead packs just unsealed, and
	// packs of writers that crashed (no writer can be running: we hold the lock).
	ents, err := os.ReadDir(pdir)
	if err != nil {
		return st, fmt.Errorf("gc: %w", err)
	}
	deadSet := map[string]bool{}
	for _, n := range deadNames {
		deadSet[n] = true
	}
	listed := map[string]bool{}
	for _, e := range ents {
		listed[e.Name()] = true
	}
	for _, e := range ents {
		name := e.Name()
		path := filepath.Join(pdir, name)
		switch {
		case strings.HasPrefix(name, tmpPrefix):
			st.TempFiles++
		case strings.HasSuffix(name, packExt):
			base := strings.TrimSuffix(name, packExt)
			if fileExists(s.packPath(base, indexExt)) {
				continue
			}
			if deadSet[base] {
				st.PacksRemoved++
			} else {
				st.UnsealedPacks++
			}
		default:
			continue
		}
		st.BytesReclaimed += fileSize(path)
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return st, fmt.Errorf("gc: remove %s: %w", name, err)
		}
	}
	for _, n := range deadNames {
		if !fileExists(s.packPath(n, packExt)) && !listed[n+packExt] {
			st.PacksRemoved++ // index without pack file
		}
	}
	if err := syncDir(pdir); err != nil {
		return st, fmt.Errorf("gc: %w", err)
	}
	n, err := removeTemps(filepath.Join(s.dir, snapsDir))
	st.TempFiles += n
	if err != nil {
		return st, fmt.Errorf("gc: %w", err)
	}
	s.log.Info("gc done", "snapshots", st.Snapshots, "packs_removed", st.PacksRemoved,
		"packs_kept", st.PacksKept, "unsealed_removed", st.UnsealedPacks,
		"bytes_reclaimed", st.BytesReclaimed, "duration", time.Since(start))
	return st, nil
}

func removeTemps(dir string) (int, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return n, err
			}
			n++
		}
	}
	if n > 0 {
		return n, syncDir(dir)
	}
	return 0, nil
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
