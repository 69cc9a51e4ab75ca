package pagestore

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// Errors returned by the store. Match them with errors.Is.
var (
	// ErrNotFound means a snapshot, page, block or pack does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAmbiguous means a snapshot reference matches more than one snapshot.
	ErrAmbiguous = errors.New("ambiguous reference")
	// ErrLocked means another process (or a conflicting user of this Store) holds
	// the store lock. The error is a *LockedError naming the holder.
	ErrLocked = errors.New("store is locked")
	// ErrVersion means the store on disk was written by a newer format version.
	ErrVersion = errors.New("unsupported store format version")
	// ErrNoParent means Writer.Carry was called on a Writer started without a
	// parent snapshot: there is nothing to carry.
	ErrNoParent = errors.New("writer has no parent snapshot")
	// ErrClosed means the Store, Writer or Snapshot was already closed.
	ErrClosed = errors.New("closed")
	// ErrInterrupted means a wait for another process's lock ended because
	// Options.Interrupt was closed.
	ErrInterrupted = errors.New("interrupted while waiting for the store lock")
)

// CorruptionError reports damage found in a file of the store: a checksum or hash
// that does not match, a truncated or malformed structure, or a file that a sealed
// structure references but that is missing. It names as much as is known of the
// pack, offset, snapshot and page; unknown fields are zero (Offset is -1).
type CorruptionError struct {
	Path     string // file that holds the damage
	Pack     string // pack name, when the damage is in or about a pack
	Offset   int64  // byte offset in Path, or -1 when unknown
	Snapshot string // snapshot whose data is affected, when known
	Page     PageID // page (or page-map block) affected, zero when unknown
	Addr     uint64 // virtual address of the page in Snapshot, 0 when unknown
	Reason   string // what is wrong, lowercase
	Err      error  // underlying cause, if any
}

func (e *CorruptionError) Error() string {
	var b strings.Builder
	b.WriteString("corrupt ")
	switch {
	case e.Pack != "":
		b.WriteString("pack " + e.Pack)
	case e.Path != "":
		b.WriteString("file " + filepath.Base(e.Path))
	default:
		b.WriteString("store")
	}
	if e.Offset >= 0 {
		b.WriteString(" at offset " + strconv.FormatInt(e.Offset, 10))
	}
	var ctx []string
	if e.Snapshot != "" {
		ctx = append(ctx, "snapshot "+e.Snapshot)
	}
	if e.Page != (PageID{}) {
		ctx = append(ctx, "page "+e.Page.String())
	}
	if e.Addr != 0 {
		ctx = append(ctx, fmt.Sprintf("address %#x", e.Addr))
	}
	if len(ctx) > 0 {
		b.WriteString(" (" + strings.Join(ctx, ", ") + ")")
	}
	if e.Reason != "" {
		b.WriteString(": " + e.Reason)
	}
	if e.Err != nil {
		b.WriteString(": " + e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the underlying cause.
func (e *CorruptionError) Unwrap() error { return e.Err }

// LockedError reports that the store lock is held by someone else. It matches
// ErrLocked with errors.Is.
type LockedError struct {
	Dir       string // store directory
	PIDs      []int  // processes holding the lock, when they could be found
	Exclusive bool   // whether the holder writes (true) or reads (false)
	Local     string // set when the conflict is inside this process
}

func (e *LockedError) Error() string {
	if e.Local != "" {
		return fmt.Sprintf("page store %s is locked by this process (%s)", e.Dir, e.Local)
	}
	if len(e.PIDs) == 0 {
		return fmt.Sprintf("page store %s is locked by another process (%s)", e.Dir,
			e.mode())
	}
	return fmt.Sprintf("page store %s is locked by %s (%s)", e.Dir, e.holder(), e.mode())
}

// holder names the processes holding the lock: "pid 4242", "pid 4242, 4243", or
// "another process" when they could not be found.
func (e *LockedError) holder() string {
	if len(e.PIDs) == 0 {
		return "another process"
	}
	pids := make([]string, len(e.PIDs))
	for i, p := range e.PIDs {
		pids[i] = strconv.Itoa(p)
	}
	return "pid " + strings.Join(pids, ", ")
}

// mode says what the holder does with the store: "reading" or "writing".
func (e *LockedError) mode() string {
	if e.Exclusive {
		return "writing"
	}
	return "reading"
}

// Is reports whether target is ErrLocked.
func (e *LockedError) Is(target error) bool { return target == ErrLocked }

// errFormat is the cause of decoding failures; decoders wrap it with the detail.
var errFormat = errors.New("malformed data")

func formatErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errFormat}, args...)...)
}
