// Package track finds the pages a process wrote between two checkpoints.
//
// A Tracker is armed at one checkpoint and asked at the next which pages were
// written since. Three kinds exist: "uffd-wp" (a userfaultfd in write-protect async
// mode, read and re-armed with the PAGEMAP_SCAN ioctl; Linux 6.7+), "soft-dirty"
// (pagemap bit 55, cleared through /proc/PID/clear_refs; CONFIG_MEM_SOFT_DIRTY) and
// "scan", which tracks nothing: the engine copies every present page and the page
// store's deduplication keeps only what changed.
package track

import (
	"errors"
	"fmt"
)

// Process is a stopped, ptrace-seized process in which a tracker may run system
// calls (engine/remote.Borrowed implements it). Its methods must be called from the
// tracer thread.
type Process interface {
	Pid() int
	Syscall(nr uintptr, args ...uint64) (uint64, error)
}

// Range is a page-aligned memory range [Start, End).
type Range struct{ Start, End uint64 }

// Dirty is what Collect found.
type Dirty struct {
	// Tracked lists the ranges, exactly as the caller gave them, whose writes since
	// the previous Collect are all in Pages. Any other range must be copied whole:
	// it is new, changed shape, or could not be tracked.
	Tracked []Range

	// Pages are the addresses of the pages written in the Tracked ranges since the
	// previous Collect, ascending. A tracker may report more pages than were written
	// (never fewer).
	Pages []uint64

	// Refused gives, for the ranges the tracker tried and failed to arm, why (an
	// errno such as EBUSY when another userfaultfd owns the range), for logs. Such
	// ranges are not in Tracked now and will not be next time. Ranges that are
	// merely new are not listed.
	Refused map[Range]error
}

// Tracker finds written pages. Its methods are called with the process stopped,
// from the tracer thread.
type Tracker interface {
	// Name is "uffd-wp", "soft-dirty" or "scan".
	Name() string

	// Collect returns the pages written since the previous Collect in the ranges
	// it tracked then and that still exist with the same bounds, and arms tracking
	// of every range in ranges for the next call. The first call reports no
	// tracked range. ranges are ascending and do not overlap.
	Collect(p Process, ranges []Range) (Dirty, error)

	// Reset forgets what was armed: the next Collect reports no range tracked.
	// Call it when the checkpoint that used the last Collect's pages was not
	// kept, since Collect re-arms the pages it reports.
	Reset()

	// Close releases what the tracker holds (a userfaultfd). The process need not
	// be stopped.
	Close() error
}

// ErrNotSupported matches errors of trackers this kernel cannot run; they name the
// kernel feature missing and the version that brought it.
var ErrNotSupported = errors.New("not supported by this kernel")

// NotSupportedError reports a tracker this kernel cannot run. It matches
// ErrNotSupported.
type NotSupportedError struct {
	Tracker string // "uffd-wp", "soft-dirty"
	Feature string // C name of the feature, e.g. "UFFD_FEATURE_WP_ASYNC"

	// Version is the Linux version that brought Feature, or "" for a build
	// option (CONFIG_MEM_SOFT_DIRTY) the kernel was built without.
	Version string

	Err error // what the probe saw, if anything
}

// Error names the tracker and the missing feature: "uffd-wp tracker:
// UFFD_FEATURE_WP_ASYNC needs Linux 6.7".
func (e *NotSupportedError) Error() string {
	var s string
	if e.Version != "" {
		s = fmt.Sprintf("%s tracker: %s needs Linux %s", e.Tracker, e.Feature, e.Version)
	} else {
		s = fmt.Sprintf("%s tracker: %s is off in this kernel", e.Tracker, e.Feature)
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Is makes a NotSupportedError match ErrNotSupported.
func (e *NotSupportedError) Is(target error) bool { return target == ErrNotSupported }

// Unwrap returns what the probe saw.
func (e *NotSupportedError) Unwrap() error { return e.Err }
