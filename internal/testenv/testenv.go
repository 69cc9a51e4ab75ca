// Package testenv tells tests what the machine they run on must be able to do,
// and where prebuilt test programs are, from the environment. The tests run on
// the build machines as they are, and inside the test VM (tests/vm), whose
// kernel has other dirty-page trackers and which has no compiler:
//
//   - CRYO_TRACKERS lists the dirty-page trackers the kernel must run, comma
//     separated, the first being the one "--tracker auto" must pick. Unset, it
//     is "uffd-wp,scan": the build machines run Linux 6.7 or later without
//     CONFIG_MEM_SOFT_DIRTY. A tracker not listed is tested where the kernel
//     runs it and reported unavailable, loudly, where it does not.
//   - CRYO_PREBUILT names a folder of prebuilt test programs, each named after
//     its C source without the ".c", or after the folder of its Go package;
//     tests then build none.
package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// defaultTrackers are the trackers the build machines' kernels run.
const defaultTrackers = "uffd-wp,scan"

// Trackers returns the trackers the kernel must run, the one auto picks first.
func Trackers() []string {
	s := os.Getenv("CRYO_TRACKERS")
	if s == "" {
		s = defaultTrackers
	}
	var kinds []string
	for _, k := range strings.Split(s, ",") {
		if k = strings.TrimSpace(k); k != "" {
			kinds = append(kinds, k)
		}
	}
	return kinds
}

// TrackerRequired reports whether the kernel must run tracker kind.
func TrackerRequired(kind string) bool { return slices.Contains(Trackers(), kind) }

// AutoTracker is the tracker "--tracker auto" must pick on this kernel.
func AutoTracker() string { return Trackers()[0] }

// Prebuilt returns the path of the prebuilt program name (the base name of its
// C source without ".c", or of its Go package's folder) when CRYO_PREBUILT is
// set, and ok false when it is not. A program missing from the folder is an
// error: the caller cannot build it either, since the folder is set where no
// compiler is.
func Prebuilt(name string) (path string, ok bool, err error) {
	dir := os.Getenv("CRYO_PREBUILT")
	if dir == "" {
		return "", false, nil
	}
	path = filepath.Join(dir, name)
	if _, err := os.Stat(path); err != nil {
		return "", true, fmt.Errorf("prebuilt program %s (CRYO_PREBUILT=%s): %w", name, dir,
			err)
	}
	return path, true, nil
}
