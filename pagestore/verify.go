package pagestore

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// VerifyReport is the outcome of Verify. The store is sound when Problems is
// empty.
type VerifyReport struct {
	Packs     int // sealed packs checked
	Frames    int // frames read, checksummed, decompressed and hashed
	Pages     int // pages (and blocks) whose hash was checked
	Snapshots int // manifests whose every reference was resolved
	Problems  []Problem
}

// Problem is one piece of damage found by Verify. Pack and Offset locate it on
// disk; Snapshot, Start and End (address range [Start, End)) say what it breaks.
type Problem struct {
	Pack     string
	Offset   int64 // -1 when not about one place
	Snapshot string
	Start    uint64
	End      uint64
	Err      error
}

func (p Problem) String() string {
	var parts []string
	if p.Snapshot != "" {
		parts = append(parts, "snapshot "+p.Snapshot)
		if p.End > p.Start {
			parts = append(parts, fmt.Sprintf("pages %#x-%#x", p.Start, p.End))
		}
	}
	if p.Pack != "" {
		s := "pack " + p.Pack
		if p.Offset >= 0 {
			s += fmt.Sprintf(" offset %d", p.Offset)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ") + ": " + p.Err.Error()
}

// OK reports whether no damage was found.
func (r *VerifyReport) OK() bool { return len(r.Problems) == 0 }

// String summarises the report, one problem a line.
func (r *VerifyReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d packs, %d frames, %d pages, %d snapshots: %d problems\n", r.Packs,
		r.Frames, r.Pages, r.Snapshots, len(r.Problems))
	for _, p := range r.Problems {
		b.WriteString(p.String() + "\n")
	}
	return b.String()
}

// Verify reads every frame of every sealed pack and checks its checksum and the
// hash of every page in it, then checks that every page-map block and page each
// snapshot references resolves to an intact frame. It takes the store lock shared.
// The error is for failures to run the check; damage goes in the report.
func (s *Store) Verify() (*VerifyReport, error) {
	if err := s.acquire(false); err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	defer s.release(false)
	start := time.Now()
	r := &VerifyReport{}

	// Packs: each distinct frame the index names, read without the cache.
	bad := map[PageID]Problem{} // id -> damage of the frame holding it
	s.mu.RLock()
	packs := slices.Clone(s.packs)
	byFrame := map[frameKey][]loc{}
	for _, l := range s.index {
		k := frameKey{pack: l.pack, off: l.off}
		byFrame[k] = append(byFrame[k], l)
	}
	s.mu.RUnlock()
	for _, p := range packs {
		if p.gone {
			continue
		}
		r.Packs++
		switch {
		case p.damaged != nil:
			r.Problems = append(r.Problems, Problem{Pack: p.name, Offset: -1, Err: p.damaged})
		case p.missing:
			r.Problems = append(r.Problems, Problem{Pack: p.name, Offset: -1,
				Err: fmt.Errorf("pack file missing: %w", ErrNotFound)})
		}
	}
	keys := make([]frameKey, 0, len(byFrame))
	for k := range byFrame {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b frameKey) int {
		if c := cmp.Compare(a.pack, b.pack); c != 0 {
			return c
		}
		return cmp.Compare(a.off, b.off)
	})
	for _, k := range keys {
		locs := byFrame[k]
		p := packs[k.pack]
		if p.missing {
			for _, l := range locs {
				bad[l.id] = Problem{Pack: p.name, Offset: -1, Err: ErrNotFound}
			}
			continue
		}
		r.Frames++
		fr, err := s.loadFrame(p, locs[0])
		if err == nil {
			for _, l := range locs {
				if int(l.slot) >= len(fr.ids) || fr.ids[l.slot] != l.id {
					err = &CorruptionError{Pack: p.name, Offset: int64(l.off), Page: l.id,
						Reason: "index entry does not match the frame"}
					break
				}
			}
		}
		if err != nil {
			prob := Problem{Pack: p.name, Offset: int64(k.off), Err: err}
			r.Problems = append(r.Problems, prob)
			for _, l := range locs {
				bad[l.id] = prob
			}
			continue
		}
		r.Pages += len(fr.ids)
	}

	// Snapshots: every reference resolves to an intact frame.
	ids, err := s.snapshotIDs()
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	for _, id := range ids {
		if s.verifySnapshot(r, id, bad) {
			r.Snapshots++
		}
	}
	s.log.Info("verify done", "packs", r.Packs, "frames", r.Frames, "pages", r.Pages,
		"snapshots", r.Snapshots, "problems", len(r.Problems), "duration", time.Since(start))
	return r, nil
}

// verifySnapshot checks the references of one snapshot, adding a problem per run
// of damaged pages. It reports whether the snapshot is intact.
func (s *Store) verifySnapshot(r *VerifyReport, id string, bad map[PageID]Problem) bool {
	m, err := s.readManifest(id)
	if errors.Is(err, ErrNotFound) {
		return true // removed meanwhile: cannot happen under the lock, but harmless
	}
	if err != nil {
		r.Problems = append(r.Problems, Problem{Snapshot: id, Offset: -1, Err: err})
		return false
	}
	ok := true
	var run *Problem // current run of damaged pages
	flush := func() {
		if run != nil {
			r.Problems = append(r.Problems, *run)
			run = nil
		}
	}
	damage := func(addr uint64, p Problem) {
		ok = false
		if run != nil && run.End == addr && run.Pack == p.Pack {
			run.End += PageSize
			return
		}
		flush()
		p.Snapshot, p.Start, p.End = id, addr, addr+PageSize
		run = &p
	}
	for _, w := range m.Windows {
		b, err := s.readBlock(w.Block, id, w.Base)
		if err != nil {
			damage(w.Base, Problem{Offset: -1, Err: err})
			run.End = w.Base + windowSize
			continue
		}
		next := 0
		for slot := range windowSlots {
			if !b.present(slot) || b.zero(slot) {
				continue
			}
			pid := b.IDs[next]
			next++
			addr := w.Base + uint64(slot)*PageSize
			if p, isBad := bad[pid]; isBad {
				damage(addr, p)
				continue
			}
			s.mu.RLock()
			_, found := s.lookupLocked(pid)
			s.mu.RUnlock()
			if !found {
				damage(addr, Problem{Offset: -1,
					Err: fmt.Errorf("page %s: %w", pid, ErrNotFound)})
			}
		}
	}
	flush()
	return ok
}

// checkPackFrames walks a pack of size bytes from its header to its end and checks
// the structure and checksum of every frame.
func checkPackFrames(r io.ReaderAt, size int64) error {
	hdr := make([]byte, packHeaderSize)
	if _, err := r.ReadAt(hdr, 0); err != nil {
		return fmt.Errorf("read pack header: %w", err)
	}
	if err := decodePackHeader(hdr); err != nil {
		return err
	}
	var buf []byte
	for off := int64(packHeaderSize); off < size; {
		fh := make([]byte, frameHeaderSize)
		if _, err := r.ReadAt(fh, off); err != nil {
			return fmt.Errorf("read frame at %d: %w", off, err)
		}
		h, err := decodeFrameHeader(fh)
		if err != nil {
			return fmt.Errorf("frame at %d: %w", off, err)
		}
		if h.size() > size-off {
			return formatErr("frame at %d: %d bytes past the end", off, h.size()-(size-off))
		}
		buf = slices.Grow(buf[:0], int(h.size()))[:h.size()]
		if _, err := r.ReadAt(buf, off); err != nil {
			return fmt.Errorf("read frame at %d: %w", off, err)
		}
		if _, err := checkFrameSum(buf, h); err != nil {
			return fmt.Errorf("frame at %d: %w", off, err)
		}
		off += h.size()
	}
	return nil
}
