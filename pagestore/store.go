package pagestore

import (
	"crypto/rand"
	"errors"
	"fmt"
	"golang.org/x/sys/unix"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Options tune a Store. The zero value is ready to use.
type Options struct {
	// Logger receives phase-boundary information (Info), degraded outcomes (Warn)
	// and detail (Debug). Nil means silent.
	Logger *slog.Logger
	// Workers is the number of goroutines that hash and compress pages while a
	// snapshot is written. Zero means GOMAXPROCS.
	Workers int
	// PackSize is the size after which a writer seals its pack and starts another.
	// Smaller packs let GC reclaim space sooner. Zero means 256 MiB.
	PackSize int64
	// CacheFrames is the number of decompressed frames kept for ReadPage. Zero
	// means 64 (at most 4 MiB).
	CacheFrames int
	// LockWait is how long an operation waits for another process that holds
	// the store (a checkpoint being written, a restore reading) before it fails
	// with a LockedError naming that process. Zero fails at once. A caller that
	// has to wait logs it once, at Warn, naming the holder and its mode.
	LockWait time.Duration
	// Interrupt, once closed, ends any wait for another process's lock at once,
	// with an error matching ErrInterrupted: a command that catches SIGINT closes
	// it, so that Ctrl-C never sits out LockWait.
	Interrupt <-chan struct{}
	// NoCreate refuses to create a store where there is none (ErrNotFound):
	// for commands that only read, where a mistyped path must not look like an
	// empty store.
	NoCreate bool
}

// Store is an open page store. Its methods are safe for concurrent use.
type Store struct {
	dir  string
	opts Options
	log  *slog.Logger
	lk   *storeLock
	dec  *zstd.Decoder

	cache *frameCache

	mu     sync.RWMutex
	packs  []*pack           // by number; removed packs stay as tombstones
	byName map[string]uint32 // pack name -> number
	index  []loc             // every entry of every loaded pack, sorted by id
	closed bool
}

// pack is one sealed pack known to the store.
type pack struct {
	name    string
	size    int64 // size recorded in the index
	missing bool  // pack file absent although its index exists
	damaged error // index unreadable: no entries loaded
	gone    bool  // removed (by GC here or in another process)

	mu sync.Mutex
	f  *os.File // opened on first read
}

const (
	versionFile  = "VERSION"
	lockFile     = "lock"
	packsDir     = "packs"
	snapsDir     = "snapshots"
	versionMagic = "cryo pagestore format "
	packExt      = ".pack"
	indexExt     = ".idx"
)

// Open opens the page store in dir, creating it (mode 0700) if it does not exist.
// It loads the index of every sealed pack; packs without an index (left by a
// writer that crashed or is still running) are ignored. A store written by a newer
// format version is refused with an error matching ErrVersion.
func Open(dir string, opts Options) (*Store, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	if opts.PackSize <= 0 {
		opts.PackSize = 256 << 20
	}
	if opts.CacheFrames <= 0 {
		opts.CacheFrames = 64
	}
	start := time.Now()
	if err := initDir(dir, !opts.NoCreate); err != nil {
		return nil, fmt.Errorf("open page store %s: %w", dir, err)
	}
	lk, err := openLock(dir, filepath.Join(dir, lockFile))
	if err != nil {
		return nil, fmt.Errorf("open page store %s: %w", dir, err)
	}
	lk.wait, lk.log, lk.interrupt = opts.LockWait, opts.Logger, opts.Interrupt
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(opts.Workers),
		zstd.WithDecoderMaxMemory(1<<20))
	if err != nil {
		lk.close()
		return nil, fmt.Errorf("open page store %s: create decoder: %w", dir, err)
	}
	s := &Store{dir: dir, opts: opts, log: opts.Logger, lk: lk, dec: dec,
		byName: map[string]uint32{}, cache: newFrameCache(opts.CacheFrames)}
	if err := s.refresh(); err != nil {
		s.Close()
		return nil, fmt.Errorf("open page store %s: %w", dir, err)
	}
	s.log.Info("opened page store", "dir", dir, "packs", len(s.packs),
		"entries", len(s.index), "duration", time.Since(start))
	return s, nil
}

// initDir creates the store layout if dir is new, and checks the format version.
func initDir(dir string, create bool) error {
	if !create {
		if _, err := os.Stat(filepath.Join(dir, versionFile)); err != nil {
			return fmt.Errorf("no page store here (%w): %w", err, ErrNotFound)
		}
	}
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return err
	}
	// The folder holds process memory: keep it private even if it was made
	// by someone else.
	if st, err := os.Stat(dir); err == nil && st.Mode().Perm()&^dirMode != 0 {
		if err := os.Chmod(dir, dirMode); err != nil {
			return fmt.Errorf("make the store private: %w", err)
		}
	}

	// Two cryo processes may create the same store at once: the first to hold
	// the folder's flock creates it, the other then finds it made.
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := flockRetry(int(d.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s to create the store: %w", dir, err)
	}
	defer unix.Flock(int(d.Fd()), unix.LOCK_UN)

	b, err := readFileLimited(filepath.Join(dir, versionFile), 4096)
	if errors.Is(err, fs.ErrNotExist) {
		if err := checkUnfinished(dir); err != nil {
			return err
		}
		for _, sub := range []string{packsDir, snapsDir} {
			if err := os.Mkdir(filepath.Join(dir, sub), dirMode); err != nil &&
				!errors.Is(err, fs.ErrExist) {
				return err
			}
		}
		v := versionMagic + strconv.Itoa(formatVersion) + "\n"
		return writeFileDurable(dir, versionFile, []byte(v))
	}
	if err != nil {
		return fmt.Errorf("read version: %w", err)
	}
	s, ok := strings.CutPrefix(strings.TrimSpace(string(b)), versionMagic)
	v, err := strconv.Atoi(s)
	if !ok || err != nil {
		return &CorruptionError{Path: filepath.Join(dir, versionFile), Offset: -1,
			Reason: fmt.Sprintf("version file holds %q", b)}
	}
	if v > formatVersion {
		return fmt.Errorf("store format version %d is newer than this cryo supports (%d); "+
			"use a newer cryo: %w", v, formatVersion, ErrVersion)
	}
	if v < 1 {
		return fmt.Errorf("store format version %d: %w", v, ErrVersion)
	}
	return nil
}

// checkUnfinished accepts a folder without VERSION only if it is empty or holds
// what an interrupted creation leaves (the empty packs and snapshots folders,
// the lock, temporary files): anything else is not a store, and is not touched.
func checkUnfinished(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		name := e.Name()
		switch {
		case name == lockFile, strings.HasPrefix(name, ".tmp-"):
			continue
		case name == packsDir || name == snapsDir:
			sub, err := os.ReadDir(filepath.Join(dir, name))
			if err == nil && len(sub) == 0 {
				continue
			}
		}
		return fmt.Errorf("%s is not empty and has no %s file: not a page store", dir,
			versionFile)
	}
	return nil
}

// flockRetry is flock(2), retried on EINTR.
func flockRetry(fd, how int) error {
	for {
		err := unix.Flock(fd, how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// Dir returns the directory of the store.
func (s *Store) Dir() string { return s.dir }

// Close releases the store. Writers and snapshots still open must be finished
// first; their later calls fail.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for _, p := range s.packs {
		p.closeFile()
	}
	s.mu.Unlock()
	s.dec.Close()
	return s.lk.close()
}

// acquire takes the store lock and, if this process did not hold it already,
// brings the in-memory index up to date with packs sealed or removed by others.
func (s *Store) acquire(exclusive bool) error {
	first, err := s.lk.lock(exclusive)
	if err != nil {
		return err
	}
	if first {
		if err := s.refresh(); err != nil {
			s.lk.unlock(exclusive)
			return err
		}
	}
	return nil
}

func (s *Store) release(exclusive bool) { s.lk.unlock(exclusive) }

func (s *Store) packPath(name, ext string) string {
	return filepath.Join(s.dir, packsDir, name+ext)
}

// refresh loads the indexes of sealed packs not yet known and forgets packs whose
// index has disappeared.
func (s *Store) refresh() error {
	ents, err := os.ReadDir(filepath.Join(s.dir, packsDir))
	if err != nil {
		return fmt.Errorf("list packs: %w", err)
	}
	sealed := map[string]bool{}
	for _, e := range ents {
		if name, ok := strings.CutSuffix(e.Name(), indexExt); ok && !e.IsDir() &&
			!strings.HasPrefix(name, tmpPrefix) {
			sealed[name] = true
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("refresh: %w", ErrClosed)
	}
	var gone []uint32
	for name, n := range s.byName {
		if !sealed[name] {
			gone = append(gone, n)
		}
		delete(sealed, name)
	}
	s.dropLocked(gone)

	names := make([]string, 0, len(sealed))
	for name := range sealed {
		names = append(names, name)
	}
	slices.Sort(names)
	// Indexes are read and decoded in parallel, at most one goroutine per CPU;
	// pack numbers follow name order whatever finishes first.
	loaded := make([]*pack, len(names))
	runs := make([][]loc, 1+len(names))
	runs[0] = s.index
	first := uint32(len(s.packs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for i, name := range names {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			loaded[i], runs[1+i] = s.loadPack(name, first+uint32(i))
		})
	}
	wg.Wait()
	for i, p := range loaded {
		if p == nil { // vanished while we looked: a tombstone keeps the numbering
			p = &pack{name: names[i], gone: true}
		} else {
			s.byName[p.name] = uint32(len(s.packs))
		}
		s.packs = append(s.packs, p)
	}
	s.index = mergeRuns(runs)
	return nil
}

// loadPack reads the index of a sealed pack, to be pack number n. Damage is
// recorded on the pack (and reported by Verify and by reads) rather than failing
// the whole store.
func (s *Store) loadPack(name string, n uint32) (*pack, []loc) {
	p := &pack{name: name}
	path := s.packPath(name, indexExt)
	b, err := readFileLimited(path, indexHeaderSize+indexEntrySize*(1<<32)+8)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	var entries []loc
	var size uint64
	if err == nil {
		entries, size, err = decodeIndex(b, n)
		if err != nil {
			err = &CorruptionError{Path: path, Pack: name, Offset: -1, Reason: "index", Err: err}
		}
	}
	if err != nil {
		p.damaged = fmt.Errorf("load index of pack %s: %w", name, err)
		s.log.Warn("pack index unreadable; its pages are unavailable", "pack", name,
			"err", err)
		return p, nil
	}
	p.size = int64(size)
	if fi, err := os.Stat(s.packPath(name, packExt)); err != nil {
		p.missing = true
		s.log.Warn("pack file missing; its pages are unavailable", "pack", name)
	} else if fi.Size() != p.size {
		s.log.Warn("pack file size differs from its index", "pack", name, "size", fi.Size(),
			"want", p.size)
	}
	return p, entries
}

// dropLocked forgets packs and their index entries. s.mu must be held.
func (s *Store) dropLocked(nums []uint32) {
	if len(nums) == 0 {
		return
	}
	for _, n := range nums {
		p := s.packs[n]
		p.gone = true
		p.closeFile()
		delete(s.byName, p.name)
		s.cache.dropPack(n)
	}
	s.index = slices.DeleteFunc(s.index, func(l loc) bool { return s.packs[l.pack].gone })
}

// has reports whether a readable copy of id is in the store, for deduplication.
func (s *Store) has(id PageID) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.lookupLocked(id)
	return ok
}

// lookupLocked finds id in a pack that is present; failing that it returns the
// entry in a missing pack (so errors can name it) and false.
func (s *Store) lookupLocked(id PageID) (loc, bool) {
	var fallback loc
	found := false
	for i := search(s.index, id); i < len(s.index) && s.index[i].id == id; i++ {
		l := s.index[i]
		if !s.packs[l.pack].missing {
			return l, true
		}
		fallback, found = l, true
	}
	if found {
		return fallback, false
	}
	return loc{pack: ^uint32(0)}, false
}

func (p *pack) file(path string) (*os.File, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.f == nil {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		p.f = f
	}
	return p.f, nil
}

func (p *pack) closeFile() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.f != nil {
		p.f.Close()
		p.f = nil
	}
}

var idState struct {
	sync.Mutex
	last int64
}

// newID returns a short id that sorts by creation time: ten base32hex digits of
// the Unix time in milliseconds (strictly increasing within this process) and four
// random digits, so that concurrent processes do not collide.
func newID() string {
	idState.Lock()
	ms := time.Now().UnixMilli()
	if ms <= idState.last {
		ms = idState.last + 1
	}
	idState.last = ms
	idState.Unlock()

	const digits = "0123456789abcdefghijklmnopqrstuv" // base32hex: sorts like the number
	var b [14]byte
	for i := 9; i >= 0; i-- {
		b[i] = digits[ms&31]
		ms >>= 5
	}
	var r [4]byte
	rand.Read(r[:])
	for i := range 4 {
		b[10+i] = digits[r[i]&31]
	}
	return string(b[:])
}
