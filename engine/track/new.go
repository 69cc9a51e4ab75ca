package track

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/internal/pagemap"
	"github.com/cryo-dev/cryo/internal/procfs"
	"github.com/cryo-dev/cryo/internal/uffd"
)

// Tracker kinds, as New takes them and Tracker.Name returns them.
const (
	KindAuto      = "auto"
	KindUffdWP    = "uffd-wp"
	KindSoftDirty = "soft-dirty"
	KindScan      = "scan"
)

// New returns a tracker of kind for process pid. "auto" picks the first of
// "uffd-wp", "soft-dirty" and "scan" that this kernel runs. An explicit kind
// the kernel cannot run is an error matching ErrNotSupported that names the
// missing feature.
//
// New touches neither the process nor the kernel beyond the cached probes; the
// tracker arms itself at its first Collect.
func New(kind string, pid int) (Tracker, error) {
	if kind == KindAuto {
		for _, k := range []string{KindUffdWP, KindSoftDirty} {
			if Probe(k) == nil {
				return New(k, pid)
			}
		}
		return New(KindScan, pid)
	}
	if err := Probe(kind); err != nil {
		return nil, fmt.Errorf("new tracker for pid %d: %w", pid, err)
	}
	switch kind {
	case KindUffdWP:
		return newUffdWP(pid), nil
	case KindSoftDirty:
		return &softDirty{pid: pid}, nil
	default:
		return scanTracker{}, nil
	}
}

// Probe returns nil if this kernel runs trackers of kind, and otherwise an error
// matching ErrNotSupported (or, for an unknown kind, an error that does not).
// Each probe runs once per process; later calls return its cached result.
//
//   - "uffd-wp" needs UFFD_FEATURE_WP_UNPOPULATED (Linux 6.4),
//     UFFD_FEATURE_WP_ASYNC and the PAGEMAP_SCAN ioctl (Linux 6.7).
//   - "soft-dirty" needs CONFIG_MEM_SOFT_DIRTY and CONFIG_PROC_PAGE_MONITOR.
//   - "scan" needs nothing.
func Probe(kind string) error {
	switch kind {
	case KindUffdWP:
		return probeUffdWP()
	case KindSoftDirty:
		return probeSoftDirty()
	case KindScan, KindAuto:
		return nil
	}
	return fmt.Errorf("probe tracker %q: unknown kind (want %s, %s, %s or %s)",
		kind, KindAuto, KindUffdWP, KindSoftDirty, KindScan)
}

// uffdWPFeatures are the userfaultfd features the uffd-wp tracker asks for:
// asynchronous write-protection, resolved by the kernel without a message
// (6.7), and protection of pages not yet populated (6.4), so that a first write
// to a page that did not exist at arming is seen.
const uffdWPFeatures = uffd.UFFD_FEATURE_WP_ASYNC | uffd.UFFD_FEATURE_WP_UNPOPULATED

var probeUffdWP = sync.OnceValue(func() error {
	have, err := uffd.Supported()
	if err != nil {
		return &NotSupportedError{Tracker: KindUffdWP, Feature: "userfaultfd",
			Version: "4.3", Err: err}
	}
	if err := uffd.Missing(have, uffdWPFeatures); err != nil {
		var fe *uffd.FeatureError
		if errors.As(err, &fe) {
			return &NotSupportedError{Tracker: KindUffdWP, Feature: fe.Feature,
				Version: fe.Version}
		}
		return fmt.Errorf("probe uffd-wp tracker: %w", err)
	}
	if err := pagemap.Supported(); err != nil {
		if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL) {
			return &NotSupportedError{Tracker: KindUffdWP, Feature: "PAGEMAP_SCAN",
				Version: "6.7", Err: err}
		}
		return fmt.Errorf("probe uffd-wp tracker: %w", err)
	}
	return nil
})

// probeSoftDirty clears the soft-dirty bits of this process, writes one page of
// its own and reads the page's pagemap entry: a kernel without
// CONFIG_MEM_SOFT_DIRTY accepts the clear (it also clears the referenced bits)
// but never sets bit 55.
var probeSoftDirty = sync.OnceValue(func() error {
	notSupported := func(err error) error {
		return &NotSupportedError{Tracker: KindSoftDirty, Feature: "CONFIG_MEM_SOFT_DIRTY",
			Err: err}
	}
	mem, err := unix.Mmap(-1, 0, pagemap.PageSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("probe soft-dirty tracker: map a page: %w", err)
	}
	defer unix.Munmap(mem)
	mem[0] = 1

	pid := os.Getpid()
	if err := clearSoftDirty(pid); err != nil {
		return notSupported(err)
	}
	mem[0] = 2

	f, err := pagemap.Open(pid)
	if err != nil {
		return notSupported(err)
	}
	defer f.Close()
	start := uint64(uffd.Addr(mem))
	e, err := pagemap.ReadEntries(f, start, start+pagemap.PageSize, nil)
	if err != nil {
		return fmt.Errorf("probe soft-dirty tracker: %w", err)
	}
	if !e[0].Present() {
		return fmt.Errorf("probe soft-dirty tracker: page %#x just written is not present",
			start)
	}
	if !e[0].SoftDirty() {
		return notSupported(nil)
	}
	return nil
})

// clearSoftDirty writes "4" to /proc/PID/clear_refs: the soft-dirty bits of
// every page of the process are cleared and its ptes write-protected, so the
// next write to each page sets the bit again.
func clearSoftDirty(pid int) error {
	p := procfs.Path(pid, "clear_refs")
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("clear soft-dirty bits: %w", err)
	}
	if _, err := f.WriteString("4"); err != nil {
		f.Close()
		return fmt.Errorf("clear soft-dirty bits: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("clear soft-dirty bits: %w", err)
	}
	return nil
}

// scanTracker tracks nothing: every range is reported untracked, so the engine
// copies every present page and the page store keeps only those that changed.
type scanTracker struct{}

func (scanTracker) Name() string { return KindScan }

func (scanTracker) Collect(Process, []Range) (Dirty, error) { return Dirty{}, nil }

func (scanTracker) Reset() {}

func (scanTracker) Close() error { return nil }
