// Package testmain is the TestMain of the packages whose tests start real
// processes: it keeps descriptors the test binary inherited out of those
// processes, and fails the run when a test leaks a descriptor.
package testmain

import (
	"fmt"
	"os"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/internal/procfs"
)

// Run runs the tests and returns the exit code for os.Exit. Descriptors the test
// binary inherited without O_CLOEXEC (from a shell or a CI runner) get FD_CLOEXEC
// first: passed on to a workload they would make its checkpoint refuse them. A
// descriptor open after the tests that was not open before is a leak and fails
// the run.
func Run(m *testing.M) int {
	before, err := procfs.ReadFDs(os.Getpid())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		fmt.Fprintf(os.Stderr, "mark inherited fds close-on-exec: %v\n", err)
		return 2
	}

	code := m.Run()

	after, err := procfs.ReadFDs(os.Getpid())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	for _, n := range after {
		if !slices.Contains(before, n) {
			link, _ := os.Readlink(procfs.Path(os.Getpid(), "fd", fmt.Sprint(n)))
			fmt.Fprintf(os.Stderr, "leaked fd %d: %s\n", n, link)
			code = 1
		}
	}
	return code
}
