package track

import (
	"errors"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/internal/pagemap"
	"github.com/cryo-dev/cryo/internal/procfs"
	"github.com/cryo-dev/cryo/internal/testenv"
)

const pageSize = pagemap.PageSize

// requireTracker fails for a tracker the kernel must run (testenv.Trackers:
// uffd-wp and scan on the build machines, soft-dirty and scan in the test VM)
// and does not, and skips, saying loudly why, for another tracker the kernel
// lacks.
func requireTracker(t *testing.T, kind string) {
	t.Helper()
	err := Probe(kind)
	if err == nil {
		return
	}
	if !testenv.TrackerRequired(kind) && errors.Is(err, ErrNotSupported) {
		t.Logf("WARNING: tracker %s UNAVAILABLE, not tested on this kernel: %v", kind, err)
		t.Skipf("SKIP %s: UNAVAILABLE on this kernel: %v", kind, err)
	}
	t.Fatalf("tracker %s must run on this kernel (CRYO_TRACKERS=%s): %v", kind,
		strings.Join(testenv.Trackers(), ","), err)
}

func TestProbe(t *testing.T) {
	for _, k := range append([]string{KindAuto}, testenv.Trackers()...) {
		if err := Probe(k); err != nil {
			t.Errorf("Probe(%q) = %v, want nil: this kernel must run it", k, err)
		}
	}
	for _, k := range []string{KindUffdWP, KindSoftDirty} {
		err := Probe(k)
		t.Logf("Probe(%s) = %v", k, err)
		if err != nil && !errors.Is(err, ErrNotSupported) {
			t.Errorf("Probe(%s) = %v, want nil or ErrNotSupported", k, err)
		}
	}
	if err := Probe("bogus"); err == nil || errors.Is(err, ErrNotSupported) {
		t.Errorf("Probe(bogus) = %v, want an error that is not ErrNotSupported", err)
	}
	if _, err := New("bogus", 1); err == nil {
		t.Error("New(bogus) succeeded")
	}
	tr, err := New(KindAuto, os.Getpid())
	if err != nil || tr.Name() != testenv.AutoTracker() {
		t.Fatalf("New(auto) = %v, %v; want the %s tracker", tr, err, testenv.AutoTracker())
	}
	t.Logf("New(auto) picks %s", tr.Name())
	tr.Close()
}

func TestNotSupportedError(t *testing.T) {
	e := error(&NotSupportedError{Tracker: KindUffdWP, Feature: "UFFD_FEATURE_WP_ASYNC",
		Version: "6.7"})
	if got, want := e.Error(), "uffd-wp tracker: UFFD_FEATURE_WP_ASYNC needs Linux 6.7"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	e = &NotSupportedError{Tracker: KindSoftDirty, Feature: "CONFIG_MEM_SOFT_DIRTY"}
	if got, want := e.Error(),
		"soft-dirty tracker: CONFIG_MEM_SOFT_DIRTY is off in this kernel"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(e, ErrNotSupported) {
		t.Error("NotSupportedError does not match ErrNotSupported")
	}
}

// TestTruth writes known pages of a live process between two Collects and checks
// that each tracker reports every one of them, for three rounds, one of them
// with writes from the kernel (read(2) into the page). Then the process checks
// its own memory: a write to a page the tracker re-protected must have landed.
func TestTruth(t *testing.T) {
	for _, kind := range []string{KindUffdWP, KindSoftDirty, KindScan} {
		t.Run(kind, func(t *testing.T) {
			runtime.LockOSThread()
			requireTracker(t, kind)
			c := startToucher(t, 64)
			tr, err := New(kind, c.pid)
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()

			ranges, d := c.collect(t, tr)
			if len(d.Tracked) != 0 || len(d.Pages) != 0 {
				t.Errorf("first Collect tracked %d ranges", len(d.Tracked))
			}
			rng := rand.New(rand.NewPCG(1, uint64(len(kind))))
			for round := 0; round < 3; round++ {
				set := map[int]bool{0: true, c.pages - 1: true}
				for len(set) < c.pages/100 {
					set[rng.IntN(c.pages)] = true
				}
				run := rng.IntN(c.pages - 300)
				for i := run; i < run+300; i++ {
					set[i] = true
				}
				written := make([]int, 0, len(set))
				for i := range set {
					written = append(written, i)
				}
				slices.Sort(written)
				c.write(t, written)
				if round == 1 {
					for _, i := range []int{7, c.pages / 2} {
						c.do(t, "kw %d", i)
						if !set[i] {
							written = append(written, i)
						}
					}
				}

				ranges, d = c.collect(t, tr)
				region := Range{c.base, c.base + uint64(c.pages)*pageSize}
				if kind != KindScan && rangeOf(d.Tracked, c.base) < 0 {
					t.Fatalf("round %d: the region %#x-%#x is not tracked", round,
						region.Start, region.End)
				}
				missed := 0
				for _, i := range written {
					if !covered(ranges, d, c.base+uint64(i)*pageSize) {
						missed++
					}
				}
				if missed > 0 {
					t.Errorf("round %d: tracker %s missed %d of %d written pages", round,
						kind, missed, len(written))
				}
				reported := 0
				for i := 0; i < c.pages; i++ {
					if covered(ranges, d, c.base+uint64(i)*pageSize) {
						reported++
					}
				}
				t.Logf("tracker %s: %d written, %d reported, %d extra (round %d; "+
					"%d pages reported in the whole process)", kind, len(written), reported,
					reported-len(written), round, len(d.Pages))
			}
			c.do(t, "check")
		})
	}
}

// TestLayoutChanges changes the toucher's mappings between Collects: a new
// mapping, a moved one, an unmapped one, a grown heap and a range owned by a
// userfaultfd of the toucher's own must never come back tracked with pages
// missing, and never as an error. The uffd-wp tracker reports them untracked.
// The soft-dirty tracker may report tracked a new range that has the bounds of
// one it armed (the kernel reuses addresses), since the kernel marks a new
// mapping soft-dirty whole; every present page of it must then be reported.
// And a new mapping next to an armed range may merge with it (the kernel
// ignores the soft-dirty flag when merging), which changes the armed range's
// bounds: it is then untracked, not tracked with pages missing.
func TestLayoutChanges(t *testing.T) {
	for _, kind := range []string{KindUffdWP, KindSoftDirty} {
		t.Run(kind, func(t *testing.T) {
			runtime.LockOSThread()
			requireTracker(t, kind)
			c := startToucher(t, 4)
			tr, err := New(kind, c.pid)
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			c.collect(t, tr)

			// untracked checks that what is at addrs, new since the previous
			// Collect, is untracked, or for soft-dirty reported whole.
			untracked := func(ranges []Range, d Dirty, what string, addrs ...uint64) {
				t.Helper()
				if kind == KindSoftDirty {
					requireWhole(t, c.pid, ranges, d, what, addrs...)
				} else {
					requireUntracked(t, d, what, addrs...)
				}
			}

			// A new mapping, and heap growth.
			prev := c.prev
			a := hexArg(t, c.do(t, "map 16")[0])
			brk := c.do(t, "brk 64")
			oldBrk, newBrk := hexArg(t, brk[0]), hexArg(t, brk[1])
			ranges, d := c.collect(t, tr)
			untracked(ranges, d, "new mapping", a)
			untracked(ranges, d, "grown heap", oldBrk, newBrk-pageSize)
			if i, j := rangeOf(ranges, c.base), rangeOf(prev, c.base); ranges[i] != prev[j] {
				t.Logf("the region %#x-%#x is now %#x-%#x: a new mapping merged with it",
					prev[j].Start, prev[j].End, ranges[i].Start, ranges[i].End)
				requireUntracked(t, d, "region merged with a new mapping", c.base)
			} else if rangeOf(d.Tracked, c.base) < 0 {
				t.Error("the unchanged region is not tracked")
			}

			// Moved, unmapped and foreign-userfaultfd ranges.
			moved := hexArg(t, c.do(t, "mremap %x 16", a)[0])
			b := hexArg(t, c.do(t, "map 8")[0])
			c.do(t, "unmap %x 8", b)
			u := hexArg(t, c.do(t, "map 8")[0])
			c.do(t, "uffd %x 8", u)
			ranges, d = c.collect(t, tr)
			untracked(ranges, d, "moved mapping", moved)
			if rangeOf(ranges, b) >= 0 && b != u {
				t.Errorf("unmapped range %#x still listed", b)
			}
			untracked(ranges, d, "range of another userfaultfd", u)
			if kind == KindUffdWP {
				i := rangeOf(ranges, u)
				if err := d.Refused[ranges[i]]; !errors.Is(err, unix.EBUSY) {
					t.Errorf("range of another userfaultfd refused with %v, want EBUSY", err)
				}
			}

			// Next time the moved mapping is tracked at its new place; the other
			// userfaultfd's range stays untracked by uffd-wp, which cannot arm it
			// (soft-dirty tracks it like any other); the heap, if its bounds
			// held, is tracked.
			c.do(t, "w 3")
			ranges, d = c.collect(t, tr)
			if rangeOf(d.Tracked, moved) < 0 {
				t.Error("moved mapping not tracked at its new place on the next Collect")
			}
			if kind == KindUffdWP {
				requireUntracked(t, d, "range of another userfaultfd", u)
			}
			if !covered(ranges, d, c.base+3*pageSize) {
				t.Error("written page 3 not reported")
			}
			c.do(t, "check")
		})
	}
}

func requireUntracked(t *testing.T, d Dirty, what string, addrs ...uint64) {
	t.Helper()
	for _, a := range addrs {
		if i := rangeOf(d.Tracked, a); i >= 0 {
			t.Errorf("%s at %#x reported tracked (range %#x-%#x)", what, a,
				d.Tracked[i].Start, d.Tracked[i].End)
		}
	}
}

// requireWhole checks that the ranges at addrs are untracked or, if tracked,
// have every present or swapped page reported: what a soft-dirty kernel
// reports for a mapping made since the last clear.
func requireWhole(t *testing.T, pid int, ranges []Range, d Dirty, what string,
	addrs ...uint64) {
	t.Helper()
	pm, err := pagemap.Open(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	for _, a := range addrs {
		i := rangeOf(d.Tracked, a)
		if i < 0 {
			continue
		}
		r := d.Tracked[i]
		entries, err := pagemap.ReadEntries(pm, r.Start, r.End, nil)
		if err != nil {
			t.Fatal(err)
		}
		missed := 0
		for k, e := range entries {
			if (e.Present() || e.Swapped()) && !covered(ranges, d, r.Start+uint64(k)*pageSize) {
				missed++
			}
		}
		t.Logf("%s at %#x reported tracked (range %#x-%#x, bounds of an armed range)",
			what, a, r.Start, r.End)
		if missed > 0 {
			t.Errorf("%s at %#x tracked with %d present pages not reported", what, a, missed)
		}
	}
}

// TestDontNeed zaps pages of a tracked region, written and unwritten, and writes
// some of them again: every page whose content changed must be reported or no
// longer present (the engine takes a page neither reported nor present for a
// zero page).
func TestDontNeed(t *testing.T) {
	for _, kind := range []string{KindUffdWP, KindSoftDirty} {
		t.Run(kind, func(t *testing.T) {
			runtime.LockOSThread()
			requireTracker(t, kind)
			c := startToucher(t, 4)
			tr, err := New(kind, c.pid)
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			c.collect(t, tr)

			changed := map[int]bool{}
			c.write(t, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
			c.do(t, "zap 5 16")
			c.write(t, []int{12, 13})
			c.do(t, "kw 14")
			for i := 0; i < 16; i++ {
				changed[i] = true
			}
			for round := 0; round < 2; round++ {
				ranges, d := c.collect(t, tr)
				pm, err := pagemap.Open(c.pid)
				if err != nil {
					t.Fatal(err)
				}
				entries, err := pagemap.ReadEntries(pm, c.base, c.base+64*pageSize, nil)
				pm.Close()
				if err != nil {
					t.Fatal(err)
				}
				for i := range changed {
					a := c.base + uint64(i)*pageSize
					e := entries[i]
					if !covered(ranges, d, a) && (e.Present() || e.Swapped()) {
						t.Errorf("round %d: page %d changed, is present (%#x) and not reported",
							round, i, uint64(e))
					}
				}
				// Write zapped pages again: they must be reported next time.
				changed = map[int]bool{6: true, 10: true, 13: true}
				c.write(t, []int{6, 10, 13})
			}
			_, d := c.collect(t, tr)
			for _, i := range []int{6, 10, 13} {
				if _, ok := slices.BinarySearch(d.Pages, c.base+uint64(i)*pageSize); !ok {
					t.Errorf("page %d written after a zap not reported", i)
				}
			}
			c.do(t, "check")
		})
	}
}

// TestUffdWPDescriptors checks that the userfaultfd is created in the target,
// that the target's copy is closed, and that Close releases cryo's copy and the
// target's registrations.
func TestUffdWPDescriptors(t *testing.T) {
	runtime.LockOSThread()
	requireTracker(t, KindUffdWP)
	c := startToucher(t, 4)
	mine, err := procfs.ReadFDs(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := procfs.ReadFDs(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := New(KindUffdWP, c.pid)
	if err != nil {
		t.Fatal(err)
	}
	c.collect(t, tr)
	if after, _ := procfs.ReadFDs(c.pid); !slices.Equal(after, theirs) {
		t.Errorf("target descriptors %v after Collect, %v before", after, theirs)
	}
	if after, _ := procfs.ReadFDs(os.Getpid()); len(after) != len(mine)+1 {
		t.Errorf("tracker holds %d descriptors, want 1", len(after)-len(mine))
	}
	smaps, err := procfs.ReadSmaps(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	if i := vmaOf(smaps, c.base); i < 0 || !smaps[i].VmFlags.Has(procfs.VmUffdWP) {
		t.Error("region not registered for write-protection after the first Collect")
	}

	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if after, _ := procfs.ReadFDs(os.Getpid()); !slices.Equal(after, mine) {
		t.Errorf("descriptors %v after Close, %v before", after, mine)
	}
	smaps, err = procfs.ReadSmaps(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range smaps {
		if v.VmFlags.Has(procfs.VmUffdWP) {
			t.Errorf("range %#x-%#x still registered after Close", v.Start, v.End)
		}
	}
	c.write(t, []int{1, 2})
	c.do(t, "check")
}

func vmaOf(vmas []procfs.VMA, addr uint64) int {
	for i, v := range vmas {
		if v.Start <= addr && addr < v.End {
			return i
		}
	}
	return -1
}

// TestUffdWPExec lets the target execve between Collects: the userfaultfd of the
// old mm is dead, so the tracker takes a new one from the target, reports
// everything untracked once, and tracks the new image from then on.
func TestUffdWPExec(t *testing.T) {
	runtime.LockOSThread()
	requireTracker(t, KindUffdWP)
	c := startToucher(t, 4)
	tr, err := New(KindUffdWP, c.pid)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c.collect(t, tr)
	c.collect(t, tr)

	if _, err := c.in.Write([]byte("exec\n")); err != nil {
		t.Fatal(err)
	}
	f := c.reply(t, "ready")
	c.base = hexArg(t, f[0])
	_, d := c.collect(t, tr)
	if len(d.Tracked) != 0 {
		// Bounds may repeat across an exec (no ASLR): a range of the new image
		// with the bounds of an old one must still not be tracked.
		t.Errorf("after execve %d ranges tracked, want none", len(d.Tracked))
	}
	c.write(t, []int{5})
	ranges, d := c.collect(t, tr)
	if rangeOf(d.Tracked, c.base) < 0 || !covered(ranges, d, c.base+5*pageSize) {
		t.Errorf("new image not tracked after execve: tracked %x, refused %v", d.Tracked, d.Refused)
	}
	if after, _ := procfs.ReadFDs(c.pid); len(after) != 3 {
		t.Errorf("target holds descriptors %v, want 0, 1, 2", after)
	}
	c.do(t, "check")
}

// TestReset drops what was armed, as when a checkpoint is abandoned: the next
// Collect tracks nothing, and the one after tracks again.
func TestReset(t *testing.T) {
	runtime.LockOSThread()
	requireTracker(t, KindUffdWP)
	c := startToucher(t, 4)
	tr, err := New(KindUffdWP, c.pid)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c.collect(t, tr)
	c.write(t, []int{1})
	tr.Reset()
	if _, d := c.collect(t, tr); len(d.Tracked) != 0 {
		t.Errorf("Collect after Reset tracked %d ranges", len(d.Tracked))
	}
	c.write(t, []int{2})
	_, d := c.collect(t, tr)
	if _, ok := slices.BinarySearch(d.Pages, c.base+2*pageSize); !ok {
		t.Error("page written after Reset not reported")
	}
	if _, ok := slices.BinarySearch(d.Pages, c.base+1*pageSize); ok {
		t.Error("page written before Reset reported again")
	}
	c.do(t, "check")
}
