package engine

import (
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	// Descriptors this test binary inherited without close-on-exec would leak into
	// the workloads and make their checkpoints refuse them.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		fmt.Fprintf(os.Stderr, "engine: mark inherited fds close-on-exec: %v\n", err)
		os.Exit(2)
	}
	os.Exit(m.Run())
}
