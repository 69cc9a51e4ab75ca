package pagestore

import (
	"container/list"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Snapshot is an open, committed snapshot. It holds the store lock shared until
// Close, so GC and Remove (in any process) wait for it; writers do too. Its methods
// are safe for concurrent use.
type Snapshot struct {
	s      *Store
	m      *manifest
	blocks []*block // parallel to m.Windows

	mu     sync.Mutex
	closed bool
}

// PageEntry is one page of a snapshot's page map.
type PageEntry struct {
	Addr uint64 // virtual address, page-aligned
	Zero bool   // the page reads as zero and is not stored
	ID   PageID // the page's id; zero when Zero is set
}

// OpenSnapshot opens the snapshot ref names (see Resolve) and loads its page map.
// A missing snapshot gives an error matching ErrNotFound; a damaged manifest or
// page-map block gives a *CorruptionError naming the snapshot.
func (s *Store) OpenSnapshot(ref string) (*Snapshot, error) {
	if err := s.acquire(false); err != nil {
		return nil, fmt.Errorf("open snapshot %s: %w", ref, err)
	}
	sn, err := s.openSnapshot(ref)
	if err != nil {
		s.release(false)
		return nil, fmt.Errorf("open snapshot %s: %w", ref, err)
	}
	return sn, nil
}

// SnapshotImage returns the process description stored with the snapshot ref
// names, reading only its manifest, not its page map.
func (s *Store) SnapshotImage(ref string) ([]byte, error) {
	if err := s.acquire(false); err != nil {
		return nil, fmt.Errorf("read image of snapshot %s: %w", ref, err)
	}
	defer s.release(false)
	id, err := s.resolveLocked(ref)
	if err != nil {
		return nil, fmt.Errorf("read image of snapshot %s: %w", ref, err)
	}
	m, err := s.readManifest(id)
	if err != nil {
		return nil, fmt.Errorf("read image of snapshot %s: %w", ref, err)
	}
	return m.Image, nil
}

func (s *Store) openSnapshot(ref string) (*Snapshot, error) {
	id, err := s.resolveLocked(ref)
	if err != nil {
		return nil, err
	}
	m, err := s.readManifest(id)
	if err != nil {
		return nil, err
	}
	sn := &Snapshot{s: s, m: m, blocks: make([]*block, len(m.Windows))}
	if err := s.readBlocks(m, sn.blocks); err != nil {
		return nil, err
	}
	return sn, nil
}

// readBlocks reads the page-map block of every window of m into blocks. A restore
// waits on this before its process can run, and a 1 GiB snapshot has 512 blocks
// to read, decompress and verify, so the windows are shared among the CPUs. Of
// several damaged blocks, the error names the one of the lowest address.
func (s *Store) readBlocks(m *manifest, blocks []*block) error {
	workers := min(runtime.GOMAXPROCS(0), 4, len(m.Windows))
	errs := make([]error, len(m.Windows))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(m.Windows) {
					return
				}
				w := m.Windows[i]
				blocks[i], errs[i] = s.readBlock(w.Block, m.ID, w.Base)
				if errs[i] != nil {
					// The others stop at their next window.
					next.Store(int64(len(m.Windows)))
					return
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// readManifest reads and decodes the manifest of snapshot id.
func (s *Store) readManifest(id string) (*manifest, error) {
	path := filepath.Join(s.dir, snapsDir, id)
	b, err := readFileLimited(path, maxManifestSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read manifest of snapshot %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read manifest of snapshot %s: %w", id, err)
	}
	m, err := decodeManifest(b)
	if err == nil && m.ID != id {
		err = formatErr("manifest names snapshot %q", m.ID)
	}
	if err != nil {
		return nil, &CorruptionError{Path: path, Offset: -1, Snapshot: id,
			Err: err}
	}
	return m, nil
}

// readBlock reads and decodes the page-map block id of window base of snapshot
// snap. A delta block comes back applied to its base, with the base named in
// the block's baseID and base fields.
func (s *Store) readBlock(id PageID, snap string, base uint64) (*block, error) {
	raw, bad, err := s.readBlockRaw(id, snap, base)
	if err != nil {
		return nil, err
	}
	if blockKind(raw) != blockKindDelta {
		b, err := decodeBlock(raw)
		if err != nil {
			return nil, bad(err)
		}
		return b, nil
	}
	d, err := decodeDelta(raw)
	if err != nil {
		return nil, bad(err)
	}
	baseRaw, baseBad, err := s.readBlockRaw(d.Base, snap, base)
	if err != nil {
		return nil, fmt.Errorf("base of delta block %s: %w", id, err)
	}
	if blockKind(baseRaw) == blockKindDelta {
		return nil, baseBad(formatErr("base of delta block %s is itself a delta", id))
	}
	full, err := decodeBlock(baseRaw)
	if err != nil {
		return nil, baseBad(err)
	}
	b := applyDelta(full, d)
	b.baseID, b.base = d.Base, full
	return b, nil
}

// readBlockRaw reads the verified bytes of block id, and returns with them a
// function that wraps a decoding error as the damage it is.
func (s *Store) readBlockRaw(id PageID, snap string, base uint64) ([]byte,
	func(error) error, error) {

	fr, l, err := s.readFrameOf(id, kindBlock, snap)
	if err != nil {
		return nil, nil, fmt.Errorf("read page map of window %#x: %w", base, err)
	}
	bad := func(err error) error {
		return &CorruptionError{Path: s.packPath(s.packName(l.pack), packExt),
			Pack: s.packName(l.pack), Offset: int64(l.off), Snapshot: snap, Page: id,
			Addr: base, Reason: "page-map block", Err: err}
	}
	return fr.raw, bad, nil
}

// Info describes the snapshot.
func (sn *Snapshot) Info() SnapshotInfo { return sn.m.info() }

// Image returns the process description stored with the snapshot. The caller must
// not modify it.
func (sn *Snapshot) Image() []byte { return sn.m.Image }

// PageMap returns every page of the snapshot in ascending address order.
func (sn *Snapshot) PageMap() ([]PageEntry, error) {
	out := make([]PageEntry, 0, sn.m.Stats.Pages)
	for e := range sn.Pages() {
		out = append(out, e)
	}
	return out, nil
}

// Pages yields every page of the snapshot in ascending address order, as PageMap
// lists them, without building the list: a restore that sorts the pages into its
// own tables saves a copy of the whole map (tens of bytes a page).
func (sn *Snapshot) Pages() iter.Seq[PageEntry] {
	return func(yield func(PageEntry) bool) {
		for i, w := range sn.m.Windows {
			b := sn.blocks[i]
			next := 0
			for slot := range windowSlots {
				if !b.present(slot) {
					continue
				}
				e := PageEntry{Addr: w.Base + uint64(slot)*PageSize, Zero: b.zero(slot)}
				if !e.Zero {
					e.ID = b.IDs[next]
					next++
				}
				if !yield(e) {
					return
				}
			}
		}
	}
}

// ReadPage fills dst, which must hold at least PageSize bytes, with the page id,
// verified against its hash. The zero PageID reads as a zero page. Neighbouring
// pages of one frame cost one decompression: decompressed frames are cached.
// A page the store lacks gives an error matching ErrNotFound; damage gives a
// *CorruptionError naming the pack, offset, snapshot and page.
func (sn *Snapshot) ReadPage(id PageID, dst []byte) error {
	if len(dst) < PageSize {
		return fmt.Errorf("read page %s: buffer of %d bytes", id, len(dst))
	}
	sn.mu.Lock()
	closed := sn.closed
	sn.mu.Unlock()
	if closed {
		return fmt.Errorf("read page %s of snapshot %s: %w", id, sn.m.ID, ErrClosed)
	}
	if id == (PageID{}) {
		clear(dst[:PageSize])
		return nil
	}
	fr, l, err := sn.s.readFrameOf(id, kindPages, sn.m.ID)
	if err != nil {
		return fmt.Errorf("read page: %w", err)
	}
	copy(dst, fr.raw[int(l.slot)*PageSize:(int(l.slot)+1)*PageSize])
	return nil
}

// Close releases the snapshot and its share of the store lock.
func (sn *Snapshot) Close() error {
	sn.mu.Lock()
	defer sn.mu.Unlock()
	if sn.closed {
		return nil
	}
	sn.closed = true
	sn.s.release(false)
	return nil
}

func (m *manifest) info() SnapshotInfo {
	return SnapshotInfo{ID: m.ID, Parent: m.Parent, Created: time.Unix(0, m.Created),
		Labels: m.Labels, Stats: m.Stats}
}

// List returns every snapshot, oldest first. If some manifests cannot be read
// (damaged, or an I/O error) it returns the others together with an error that
// wraps an errors.Join of one error a snapshot, each naming it. Any other error
// comes with no snapshots.
func (s *Store) List() ([]SnapshotInfo, error) {
	if err := s.acquire(false); err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	defer s.release(false)
	ids, err := s.snapshotIDs()
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	var out []SnapshotInfo
	var errs []error
	for _, id := range ids {
		m, err := s.readManifest(id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, m.info())
	}
	if err := errors.Join(errs...); err != nil {
		return out, fmt.Errorf("list snapshots: %w", err)
	}
	return out, nil
}

// Resolve returns the id of the snapshot ref names: "latest" (the newest), a full
// id, or a prefix matching exactly one id.
func (s *Store) Resolve(ref string) (string, error) {
	if err := s.acquire(false); err != nil {
		return "", fmt.Errorf("resolve snapshot %q: %w", ref, err)
	}
	defer s.release(false)
	return s.resolveLocked(ref)
}

// resolveLocked is Resolve for a caller holding the store lock.
func (s *Store) resolveLocked(ref string) (string, error) {
	ids, err := s.snapshotIDs()
	if err != nil {
		return "", fmt.Errorf("resolve snapshot %q: %w", ref, err)
	}
	if ref == "latest" {
		if len(ids) == 0 {
			return "", fmt.Errorf("resolve snapshot %q: store has no snapshots: %w", ref,
				ErrNotFound)
		}
		return ids[len(ids)-1], nil
	}
	if ref == "" {
		return "", fmt.Errorf("resolve snapshot %q: empty reference: %w", ref, ErrNotFound)
	}
	var match []string
	for _, id := range ids {
		if id == ref {
			return id, nil
		}
		if strings.HasPrefix(id, ref) {
			match = append(match, id)
		}
	}
	switch len(match) {
	case 0:
		return "", fmt.Errorf("resolve snapshot %q: %w", ref, ErrNotFound)
	case 1:
		return match[0], nil
	}
	return "", fmt.Errorf("resolve snapshot %q: matches %s: %w", ref,
		strings.Join(match, ", "), ErrAmbiguous)
}

// snapshotIDs lists the ids of committed snapshots, oldest first.
func (s *Store) snapshotIDs() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, snapsDir))
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range ents {
		if !e.IsDir() && !strings.HasPrefix(e.Name(), tmpPrefix) {
			ids = append(ids, e.Name())
		}
	}
	slices.Sort(ids)
	return ids, nil
}

func (s *Store) packName(n uint32) string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if int(n) < len(s.packs) {
		return s.packs[n].name
	}
	return ""
}

// frame is a decompressed, verified frame.
type frame struct {
	raw []byte
	ids []PageID
}

// readFrameOf finds id and returns its verified frame, through the cache.
func (s *Store) readFrameOf(id PageID, kind uint8, snap string) (*frame, loc, error) {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return nil, loc{}, fmt.Errorf("read %s: %w", id, ErrClosed)
	}
	l, ok := s.lookupLocked(id)
	var p *pack
	if int(l.pack) < len(s.packs) {
		p = s.packs[l.pack]
	}
	s.mu.RUnlock()
	what := "page"
	if kind == kindBlock {
		what = "page-map block"
	}
	if !ok && p != nil {
		return nil, l, &CorruptionError{Path: s.packPath(p.name, packExt), Pack: p.name,
			Offset: -1, Snapshot: snap, Page: id, Reason: what + " in missing pack file",
			Err: ErrNotFound}
	}
	if !ok {
		return nil, l, &CorruptionError{Offset: -1, Snapshot: snap, Page: id,
			Reason: what + " in no pack", Err: ErrNotFound}
	}
	if l.kind != kind {
		return nil, l, &CorruptionError{Pack: p.name, Offset: int64(l.off), Snapshot: snap,
			Page: id, Reason: fmt.Sprintf("index entry of kind %d, want %d", l.kind, kind)}
	}
	key := frameKey{pack: l.pack, off: l.off}
	if fr := s.cache.get(key); fr != nil {
		return fr, l, nil
	}
	fr, err := s.loadFrame(p, l)
	if err != nil {
		var ce *CorruptionError
		if errors.As(err, &ce) {
			ce.Snapshot, ce.Page = snap, id
		}
		return nil, l, err
	}
	if fr.ids[l.slot] != id {
		return nil, l, &CorruptionError{Path: s.packPath(p.name, packExt), Pack: p.name,
			Offset: int64(l.off), Snapshot: snap, Page: id,
			Reason: fmt.Sprintf("frame holds %s in slot %d", fr.ids[l.slot], l.slot)}
	}
	s.cache.put(key, fr)
	return fr, l, nil
}

// loadFrame reads the frame at l from pack p and verifies its checksum and the
// hash of everything in it.
func (s *Store) loadFrame(p *pack, l loc) (*frame, error) {
	path := s.packPath(p.name, packExt)
	bad := func(reason string, err error) error {
		return &CorruptionError{Path: path, Pack: p.name, Offset: int64(l.off),
			Reason: reason, Err: err}
	}
	f, err := p.file(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, bad("pack file missing", ErrNotFound)
		}
		return nil, fmt.Errorf("open pack %s: %w", p.name, err)
	}
	buf := make([]byte, l.flen)
	if _, err := f.ReadAt(buf, int64(l.off)); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, bad("frame cut short (truncated pack)", err)
		}
		return nil, fmt.Errorf("read pack %s at %d: %w", p.name, l.off, err)
	}
	fr, err := s.decodeFrame(buf)
	if err != nil {
		return nil, bad("frame", err)
	}
	if int(l.slot) >= len(fr.ids) {
		return nil, bad(fmt.Sprintf("slot %d of a frame of %d", l.slot, len(fr.ids)), nil)
	}
	return fr, nil
}

// decodeFrame checks a whole frame, decompresses it and verifies the hash of every
// page (or block) in it against the ids in its header.
func (s *Store) decodeFrame(b []byte) (*frame, error) {
	h, err := decodeFrameHeader(b)
	if err != nil {
		return nil, err
	}
	payload, err := checkFrameSum(b, h)
	if err != nil {
		return nil, err
	}
	fr := &frame{ids: frameIDs(b, h)}
	if h.Codec == codecRaw {
		fr.raw = payload
	} else {
		fr.raw, err = s.dec.DecodeAll(payload, make([]byte, 0, h.RawLen))
		if err != nil {
			return nil, fmt.Errorf("decompress: %w", err)
		}
		if len(fr.raw) != int(h.RawLen) {
			return nil, formatErr("decompressed %d bytes, want %d", len(fr.raw), h.RawLen)
		}
	}
	if h.Kind == kindBlock {
		if HashPage(fr.raw) != fr.ids[0] {
			return nil, formatErr("block hash does not match its id %s", fr.ids[0])
		}
		return fr, nil
	}
	for i, id := range fr.ids {
		if HashPage(fr.raw[i*PageSize:(i+1)*PageSize]) != id {
			return nil, formatErr("page %d hash does not match its id %s", i, id)
		}
	}
	return fr, nil
}

type frameKey struct {
	pack uint32
	off  uint64
}

// frameCache is a small LRU of verified frames shared by every snapshot of a store.
type frameCache struct {
	mu  sync.Mutex
	max int
	ll  *list.List // of *cacheItem, most recent first
	m   map[frameKey]*list.Element
}

type cacheItem struct {
	key frameKey
	fr  *frame
}

func newFrameCache(n int) *frameCache {
	return &frameCache{max: n, ll: list.New(), m: map[frameKey]*list.Element{}}
}

func (c *frameCache) get(k frameKey) *frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[k]; ok {
		c.ll.MoveToFront(e)
		return e.Value.(*cacheItem).fr
	}
	return nil
}

func (c *frameCache) put(k frameKey, fr *frame) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; ok {
		return
	}
	c.m[k] = c.ll.PushFront(&cacheItem{key: k, fr: fr})
	for c.ll.Len() > c.max {
		e := c.ll.Back()
		c.ll.Remove(e)
		delete(c.m, e.Value.(*cacheItem).key)
	}
}

func (c *frameCache) dropPack(n uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.m {
		if k.pack == n {
			c.ll.Remove(e)
			delete(c.m, k)
		}
	}
}
