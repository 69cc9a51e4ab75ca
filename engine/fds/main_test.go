package fds

import (
	"fmt"
	"os"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/internal/procfs"
)

// TestMain keeps the test's children clean and checks for leaked descriptors.
// Descriptors the test binary inherited without O_CLOEXEC (from a shell or a CI
// runner) would pass on to every child and show up in their dumps: they get
// FD_CLOEXEC first.
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
