package track

import (
	"fmt"

	"github.com/cryo-dev/cryo/internal/pagemap"
)

// softDirty is the "soft-dirty" tracker (CONFIG_MEM_SOFT_DIRTY). Writing "4" to
// /proc/PID/clear_refs clears the soft-dirty bit of every pte of the process and
// write-protects it; the next write to a page sets the bit again (pagemap bit
// 55). A mapping created after the clear carries VM_SOFTDIRTY, which makes
// pagemap report all its pages soft-dirty, so a range unmapped and mapped again
// with the same bounds reports every page: nothing is missed.
//
// Clearing acts on the whole process at once, so every range is armed together.
type softDirty struct {
	pid   int
	armed map[Range]bool // ranges as they were at the previous clear
	buf   []pagemap.Entry
}

// Name is "soft-dirty".
func (t *softDirty) Name() string { return KindSoftDirty }

// Reset forgets what was armed.
func (t *softDirty) Reset() { t.armed = nil }

// Close releases nothing: the bits live in the target's page tables.
func (t *softDirty) Close() error { return nil }

// Collect reads the soft-dirty bits of the ranges that existed with the same
// bounds at the previous Collect, then clears the bits of the whole process.
//
// Preconditions: p is stopped; the tracker runs no system call in it.
func (t *softDirty) Collect(p Process, ranges []Range) (Dirty, error) {
	if p.Pid() != t.pid {
		return Dirty{}, fmt.Errorf("collect soft-dirty pid %d: given process %d", t.pid,
			p.Pid())
	}
	var d Dirty
	if t.armed != nil {
		pm, err := pagemap.Open(t.pid)
		if err != nil {
			return Dirty{}, fmt.Errorf("collect soft-dirty pid %d: %w", t.pid, err)
		}
		d, err = softDirtyPages(ranges, t.armed, func(r Range) ([]pagemap.Entry, error) {
			t.buf, err = pagemap.ReadEntries(pm, r.Start, r.End, t.buf)
			return t.buf, err
		})
		pm.Close()
		if err != nil {
			return Dirty{}, fmt.Errorf("collect soft-dirty pid %d: %w", t.pid, err)
		}
	}
	if err := clearSoftDirty(t.pid); err != nil {
		return Dirty{}, fmt.Errorf("collect soft-dirty pid %d: %w", t.pid, err)
	}
	t.armed = make(map[Range]bool, len(ranges))
	for _, r := range ranges {
		t.armed[r] = true
	}
	return d, nil
}

// softDirtyPages is the pure part of Collect: given the ranges armed at the
// previous clear and a reader of pagemap entries, it reports as tracked the
// ranges armed with the same bounds, and as written their present or swapped
// pages that are soft-dirty. A page neither present nor swapped holds zeros (or
// clean file data) whatever its history, so it is not reported.
func softDirtyPages(ranges []Range, armed map[Range]bool,
	read func(Range) ([]pagemap.Entry, error)) (Dirty, error) {
	var d Dirty
	for _, r := range ranges {
		if !armed[r] {
			continue
		}
		entries, err := read(r)
		if err != nil {
			return Dirty{}, err
		}
		if len(entries) != int((r.End-r.Start)/pagemap.PageSize) {
			return Dirty{}, fmt.Errorf("read pagemap %#x-%#x: %d entries for %d pages",
				r.Start, r.End, len(entries), (r.End-r.Start)/pagemap.PageSize)
		}
		d.Tracked = append(d.Tracked, r)
		for i, e := range entries {
			if e.SoftDirty() && (e.Present() || e.Swapped()) {
				d.Pages = append(d.Pages, r.Start+uint64(i)*pagemap.PageSize)
			}
		}
	}
	return d, nil
}
