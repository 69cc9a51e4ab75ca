package pagestore

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/zstd"
)

// Meta is what the engine stores with a snapshot besides its pages.
type Meta struct {
	// Image is an opaque description of the process (JSON from the engine).
	Image []byte
	// Labels are short key/value facts such as "pid", "comm" or "tracker".
	Labels map[string]string
}

// Stats count the pages of one snapshot and what storing them cost. ZeroPages,
// NewPages and DedupPages count only the pages given to AddPages; CarriedPages
// counts the entries taken from the parent, so that Pages is the sum of
// CarriedPages and the pages added.
type Stats struct {
	Pages        int64 // pages in the page map, zero pages included
	ZeroPages    int64 // added pages that read as zero: recorded, never stored
	NewPages     int64 // pages stored by this snapshot
	DedupPages   int64 // added non-zero pages already stored or repeated in this snapshot
	LogicalBytes int64 // Pages * PageSize
	StoredBytes  int64 // bytes this snapshot appended to packs: page and page-map frames
	CarriedPages int64 // page-map entries (data or zero) taken from the parent
}

// Run is a range of page-aligned addresses [Start, End).
type Run struct{ Start, End uint64 }

// SnapshotInfo describes a committed snapshot.
type SnapshotInfo struct {
	ID, Parent string
	Created    time.Time
	Labels     map[string]string
	Stats      Stats
}

// Writer writes one snapshot. It holds the store lock exclusively from NewWriter
// until Commit or Abort returns. AddPages, Commit and Abort must be called from one
// goroutine; hashing and compression run on Options.Workers goroutines inside.
type Writer struct {
	s      *Store
	parent *manifest // nil without a parent
	carry  []Run     // as given to Carry, unsorted
	start  time.Time

	// parentBlocksRead counts the parent's page-map blocks Commit decoded; tests
	// check that windows carried whole are not among them.
	parentBlocksRead int

	jobs    chan job
	wg      sync.WaitGroup
	windows map[uint64]*window // written by the caller's goroutine (AddPages) only
	pages   int64
	done    bool

	mu      sync.Mutex // guards err, pending and stats
	err     error      // first error of a worker; sticky
	pending map[PageID]struct{}
	stats   Stats

	pmu    sync.Mutex // guards the pack being written
	pw     *packWriter
	sealed []*packWriter
}

// window is the page map of one 2 MiB window while a snapshot is written. The
// caller's goroutine owns added; each slot's state and id are written by the one
// worker that processes it, and read only after the workers have finished.
type window struct {
	added [windowSlots / 64]uint64
	state [windowSlots]uint8
	ids   [windowSlots]PageID
}

const (
	slotAbsent = iota
	slotPending
	slotZero
	slotData
)

type job struct {
	win  *window
	slot int
	data []byte
}

// packWriter appends frames to one unsealed pack.
type packWriter struct {
	name    string
	f       *os.File
	off     int64
	entries []indexEntry
}

var zeroPage = make([]byte, PageSize)

// NewWriter starts a snapshot whose parent is the snapshot parent refers to ("" for
// none; see Resolve for the forms of a reference). A parent that does not exist
// gives an error naming it and matching ErrNotFound. It takes the store lock
// exclusively, or fails with a *LockedError naming the holder; holding it keeps
// the parent from being removed until Commit or Abort.
//
// With a parent, the snapshot starts empty like any other: Carry says which
// ranges keep the parent's entries, AddPages gives the pages that changed.
func (s *Store) NewWriter(parent string) (*Writer, error) {
	if err := s.acquire(true); err != nil {
		return nil, fmt.Errorf("new writer: %w", err)
	}
	var pm *manifest
	if parent != "" {
		id, err := s.resolveLocked(parent)
		if err == nil {
			pm, err = s.readManifest(id)
		}
		if err != nil {
			s.release(true)
			return nil, fmt.Errorf("new writer: parent snapshot %q: %w", parent, err)
		}
	}
	w := &Writer{s: s, parent: pm, start: time.Now(),
		jobs:    make(chan job, 2*s.opts.Workers),
		windows: map[uint64]*window{}, pending: map[PageID]struct{}{}}
	for range s.opts.Workers {
		enc, err := newEncoder()
		if err != nil {
			close(w.jobs)
			w.wg.Wait()
			s.release(true)
			return nil, fmt.Errorf("new writer: %w", err)
		}
		w.wg.Add(1)
		go w.work(enc)
	}
	return w, nil
}

func newEncoder() (*zstd.Encoder, error) {
	return zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false),
		zstd.WithWindowSize(maxFramePages*PageSize))
}

// AddPages records the pages [addr, addr+len(data)) of the snapshot. addr must be
// page-aligned and len(data) a multiple of PageSize; each address may be added
// once. Ranges may come in any order.
//
// The Writer keeps a reference to data and reads it on its worker goroutines:
// the caller must not modify data until Commit or Abort has returned.
func (w *Writer) AddPages(addr uint64, data []byte) error {
	if w.done {
		return fmt.Errorf("add pages at %#x: %w", addr, ErrClosed)
	}
	if err := w.failed(); err != nil {
		return fmt.Errorf("add pages at %#x: %w", addr, err)
	}
	if addr%PageSize != 0 || len(data)%PageSize != 0 {
		return fmt.Errorf("add pages at %#x: address or length %d not page-aligned", addr,
			len(data))
	}
	if end := addr + uint64(len(data)); end < addr {
		return fmt.Errorf("add pages at %#x: range of %d bytes wraps", addr, len(data))
	}
	for len(data) > 0 {
		base := addr &^ (windowSize - 1)
		slot := int((addr - base) / PageSize)
		n := min(maxFramePages, windowSlots-slot, len(data)/PageSize)
		win := w.windows[base]
		if win == nil {
			win = &window{}
			w.windows[base] = win
		}
		for i := slot; i < slot+n; i++ {
			if win.added[i/64]&(1<<(i%64)) != 0 {
				return fmt.Errorf("add pages at %#x: page %#x added twice", addr,
					base+uint64(i)*PageSize)
			}
		}
		for i := slot; i < slot+n; i++ {
			win.added[i/64] |= 1 << (i % 64)
		}
		w.pages += int64(n)
		w.jobs <- job{win: win, slot: slot, data: data[:n*PageSize]}
		addr += uint64(n) * PageSize
		data = data[n*PageSize:]
	}
	return nil
}

// Carry makes the snapshot keep the parent's page-map entries (data or zero) at
// every address inside runs, except where AddPages gives the page anew. Entries
// of the parent outside every carried run and not added are dropped (the range
// was unmapped, moved or emptied). Carry may be called several times, before
// Commit, in any order relative to AddPages; runs may overlap and come in any
// order. Addresses must be page-aligned; an empty run is ignored.
//
// A window (2 MiB, aligned) that is carried whole and where nothing is added
// costs nothing at Commit: its page-map block is shared with the parent without
// being read. Other windows the parent has are read and re-encoded.
//
// Carry fails with an error matching ErrNoParent when the Writer has no parent.
func (w *Writer) Carry(runs []Run) error {
	if w.done {
		return fmt.Errorf("carry pages: %w", ErrClosed)
	}
	if w.parent == nil {
		return fmt.Errorf("carry pages: %w", ErrNoParent)
	}
	for _, r := range runs {
		if r.Start%PageSize != 0 || r.End%PageSize != 0 || r.End < r.Start {
			return fmt.Errorf("carry pages of snapshot %s: bad run [%#x, %#x)", w.parent.ID,
				r.Start, r.End)
		}
	}
	for _, r := range runs {
		if r.End > r.Start {
			w.carry = append(w.carry, r)
		}
	}
	return nil
}

func (w *Writer) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *Writer) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = err
	}
}

// work hashes, deduplicates, compresses and appends the pages of each job.
func (w *Writer) work(enc *zstd.Encoder) {
	defer w.wg.Done()
	defer enc.Close()
	raw := make([]byte, 0, maxFramePages*PageSize)
	var frame []byte
	for j := range w.jobs {
		if w.failed() != nil {
			continue // drain
		}
		n := len(j.data) / PageSize
		var ids [maxFramePages]PageID
		var isData [maxFramePages]bool
		for i := range n {
			p := j.data[i*PageSize : (i+1)*PageSize]
			if bytes.Equal(p, zeroPage) {
				j.win.state[j.slot+i] = slotZero
				continue
			}
			ids[i] = HashPage(p)
			isData[i] = true
			j.win.ids[j.slot+i] = ids[i]
			j.win.state[j.slot+i] = slotData
		}

		// Decide which pages are new. The first worker to claim an id stores it.
		var fresh []PageID
		raw = raw[:0]
		w.mu.Lock()
		for i := range n {
			if !isData[i] {
				w.stats.ZeroPages++
				continue
			}
			if _, ok := w.pending[ids[i]]; ok || w.s.has(ids[i]) {
				w.stats.DedupPages++
				continue
			}
			w.pending[ids[i]] = struct{}{}
			w.stats.NewPages++
			fresh = append(fresh, ids[i])
			raw = append(raw, j.data[i*PageSize:(i+1)*PageSize]...)
		}
		w.mu.Unlock()
		if len(fresh) == 0 {
			continue
		}

		frame = buildFrame(enc, frame[:0], kindPages, fresh, raw)
		if err := w.appendFrame(frame, kindPages, fresh); err != nil {
			w.fail(err)
		}
	}
}

// buildFrame appends a complete frame (header, ids, payload) to dst. The payload
// is raw compressed with zstd, or raw itself when compression does not shrink it.
func buildFrame(enc *zstd.Encoder, dst []byte, kind uint8, ids []PageID, raw []byte) []byte {
	h := frameHeader{Kind: kind, Codec: codecZstd, Count: uint8(len(ids)),
		RawLen: uint32(len(raw))}
	start := len(dst)
	dst = appendFrameHeader(dst, h)
	for _, id := range ids {
		dst = append(dst, id[:]...)
	}
	pstart := len(dst)
	dst = enc.EncodeAll(raw, dst)
	if len(dst)-pstart >= len(raw) {
		h.Codec = codecRaw
		dst = append(dst[:pstart], raw...)
	}
	h.CompLen = uint32(len(dst) - pstart)
	h.Sum = xxhash.Sum64(dst[pstart:])
	appendFrameHeader(dst[start:start], h) // rewrite in place, same size
	return dst
}

// appendFrame writes a frame to the current pack, starting a new pack when there
// is none or the current one is full.
func (w *Writer) appendFrame(frame []byte, kind uint8, ids []PageID) error {
	w.pmu.Lock()
	defer w.pmu.Unlock()
	if w.pw != nil && w.pw.off >= w.s.opts.PackSize {
		if err := w.s.sealPack(w.pw); err != nil {
			return err
		}
		w.sealed = append(w.sealed, w.pw)
		w.pw = nil
	}
	if w.pw == nil {
		pw, err := w.s.createPack()
		if err != nil {
			return err
		}
		w.pw = pw
	}
	pw := w.pw
	n, err := pw.f.Write(frame)
	if err == nil && n != len(frame) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("write pack %s: %w", pw.name, err)
	}
	for i, id := range ids {
		pw.entries = append(pw.entries, indexEntry{ID: id, Off: uint64(pw.off),
			FrameLen: uint32(len(frame)), Slot: uint8(i), Kind: kind})
	}
	pw.off += int64(len(frame))
	w.mu.Lock()
	w.stats.StoredBytes += int64(len(frame))
	w.mu.Unlock()
	return nil
}

// Commit stores the page map, seals the packs and writes the manifest. When it
// returns nil the snapshot is durable. Whatever the outcome, the Writer is done
// and the store lock is released; on error nothing written is referenced.
func (w *Writer) Commit(meta Meta) (SnapshotInfo, error) {
	if w.done {
		return SnapshotInfo{}, fmt.Errorf("commit snapshot: %w", ErrClosed)
	}
	w.done = true
	close(w.jobs)
	w.wg.Wait()
	defer w.s.release(true)

	info, err := w.commit(meta)
	if err != nil {
		w.discard()
		return SnapshotInfo{}, fmt.Errorf("commit snapshot: %w", err)
	}
	dur := time.Since(w.start)
	w.s.log.Info("committed snapshot", "id", info.ID, "parent", info.Parent,
		"pages", info.Stats.Pages, "carried", info.Stats.CarriedPages,
		"new", info.Stats.NewPages, "dedup", info.Stats.DedupPages,
		"zero", info.Stats.ZeroPages, "stored_bytes", info.Stats.StoredBytes,
		"duration", dur, "MBps", float64(info.Stats.LogicalBytes)/dur.Seconds()/1e6)
	return info, nil
}

func (w *Writer) commit(meta Meta) (SnapshotInfo, error) {
	if err := w.failed(); err != nil {
		return SnapshotInfo{}, err
	}

	// Page-map blocks, one per window, stored like pages (and deduplicated).
	enc, err := newEncoder()
	if err != nil {
		return SnapshotInfo{}, err
	}
	defer enc.Close()
	refs, carried, err := w.pageMap(enc)
	if err != nil {
		return SnapshotInfo{}, err
	}

	// Packs (and their indexes) are durable before the manifest that needs them.
	if w.pw != nil {
		if err := w.s.sealPack(w.pw); err != nil {
			return SnapshotInfo{}, err
		}
		w.sealed = append(w.sealed, w.pw)
		w.pw = nil
	}

	st := w.stats
	st.CarriedPages = carried
	st.Pages = w.pages + carried
	st.LogicalBytes = st.Pages * PageSize
	parent := ""
	if w.parent != nil {
		parent = w.parent.ID
	}
	m := &manifest{ID: newID(), Parent: parent, Created: time.Now().UnixNano(),
		Stats: st, Labels: meta.Labels, Image: meta.Image, Windows: refs}
	dir := filepath.Join(w.s.dir, snapsDir)
	if err := writeFileDurable(dir, m.ID, encodeManifest(m)); err != nil {
		if _, serr := os.Stat(filepath.Join(dir, m.ID)); serr == nil {
			// Renamed in place but not known durable: the snapshot may exist, so
			// its packs must stay.
			w.s.addPacks(w.sealed)
			w.sealed = nil
		}
		return SnapshotInfo{}, fmt.Errorf("write manifest %s: %w", m.ID, err)
	}
	w.s.addPacks(w.sealed)
	w.sealed = nil
	return m.info(), nil
}

// Abort discards the snapshot: packs written so far are removed (a pack that
// cannot be removed is unreferenced and GC reclaims it). Earlier snapshots are
// untouched. Abort after Commit is a no-op.
func (w *Writer) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	close(w.jobs)
	w.wg.Wait()
	defer w.s.release(true)
	return w.discard()
}

// discard removes every pack of the writer, index first so that a crash in
// between leaves an unsealed pack, which is ignored.
func (w *Writer) discard() error {
	var errs []error
	if w.pw != nil {
		w.pw.f.Close()
		errs = append(errs, os.Remove(w.s.packPath(w.pw.name, packExt)))
		w.pw = nil
	}
	for _, pw := range w.sealed {
		errs = append(errs, w.s.removePackFiles(pw.name))
	}
	w.sealed = nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("discard snapshot: %w", err)
	}
	return nil
}

// createPack creates a new, empty, unsealed pack.
func (s *Store) createPack() (*packWriter, error) {
	name := newID()
	path := s.packPath(name, packExt)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode)
	if err != nil {
		return nil, fmt.Errorf("create pack: %w", err)
	}
	if _, err := f.Write(appendPackHeader(nil)); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("write pack %s: %w", name, err)
	}
	return &packWriter{name: name, f: f, off: packHeaderSize}, nil
}

// sealPack makes a pack durable and immutable: fsync and close the pack, read it
// back to check every frame against what was written, then write its index
// durably (which also fsyncs the packs directory, making the pack's own directory
// entry durable).
func (s *Store) sealPack(pw *packWriter) error {
	if err := pw.f.Sync(); err != nil {
		return fmt.Errorf("fsync pack %s: %w", pw.name, err)
	}
	if err := pw.f.Close(); err != nil {
		return fmt.Errorf("close pack %s: %w", pw.name, err)
	}
	slices.SortFunc(pw.entries, cmpEntry)
	if err := s.checkSealed(pw); err != nil {
		return fmt.Errorf("seal pack %s: %w", pw.name, err)
	}
	idx := encodeIndex(pw.entries, uint64(pw.off))
	if err := writeFileDurable(filepath.Join(s.dir, packsDir), pw.name+indexExt,
		idx); err != nil {
		return fmt.Errorf("seal pack %s: %w", pw.name, err)
	}
	return nil
}

// checkSealed reads a just-written pack back and checks its size and every frame
// checksum, so that a write the kernel acknowledged but did not keep is caught
// before a manifest can depend on it.
func (s *Store) checkSealed(pw *packWriter) error {
	path := s.packPath(pw.name, packExt)
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return checkPackFrames(f, pw.off)
}

// addPacks makes freshly sealed packs visible to readers of this Store.
func (s *Store) addPacks(pws []*packWriter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	runs := [][]loc{s.index}
	for _, pw := range pws {
		n := uint32(len(s.packs))
		s.packs = append(s.packs, &pack{name: pw.name, size: pw.off})
		s.byName[pw.name] = n
		runs = append(runs, locsOf(n, pw.entries))
	}
	s.index = mergeRuns(runs)
}

// removePackFiles deletes a pack: its index first, so that a crash between the
// two leaves an unsealed pack (ignored, and removed by the next GC), then the
// pack, then fsyncs the directory.
func (s *Store) removePackFiles(name string) error {
	if err := os.Remove(s.packPath(name, indexExt)); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove pack %s: %w", name, err)
	}
	if err := os.Remove(s.packPath(name, packExt)); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove pack %s: %w", name, err)
	}
	return syncDir(filepath.Join(s.dir, packsDir))
}
