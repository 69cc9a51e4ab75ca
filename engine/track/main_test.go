package track

import (
	"fmt"
	"os"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/internal/procfs"
)

// TestMain checks for leaked descriptors (a userfaultfd a tracker forgot).
// Descriptors the test binary inherited without O_CLOEXEC get FD_CLOEXEC first,
// so that they do not reach the children.
func TestMain(m *testing.M) {
	before, err := procfs.ReadFDs(os.Getpid())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for _, n := range before {
		if n > 2 {
			unix.FcntlInt(uintptr(n), unix.F_SETFD, unix.FD_CLOEXEC)
		}
	}

	code := m.Run()

	after, err := procfs.ReadFDs(os.Getpid())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for _, n := range after {
		if !slices.Contains(before, n) {
			link, _ := os.Readlink(procfs.Path(os.Getpid(), "fd", fmt.Sprint(n)))
			fmt.Fprintf(os.Stderr, "leaked fd %d: %s\n", n, link)
			code = 1
		}
	}
	os.Exit(code)
}
