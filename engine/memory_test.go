package engine

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/cryo-dev/cryo/internal/pagemap"
	"github.com/cryo-dev/cryo/internal/testenv"
	"github.com/cryo-dev/cryo/pagestore"
)

// TestPagemapReadMatchesScan checks the fallback of kernels without PAGEMAP_SCAN
// (before 6.7), which reads one pagemap entry a page, against the ioctl: full
// checkpoints taken both ways at the same moments of a process that rewrites,
// discards and maps memory must hold the same data at every address. On a
// kernel without the ioctl only the fallback runs (the test VM, Linux 6.1),
// and the end-to-end tests there exercise it.
func TestPagemapReadMatchesScan(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: ptrace and process_vm_readv of another process")
	}
	if err := pagemap.Supported(); err != nil {
		t.Skipf("SKIP: this kernel has no PAGEMAP_SCAN to compare the fallback with: %v", err)
	}
	bin, ok, err := testenv.Prebuilt("writer")
	if !ok {
		bin = filepath.Join(t.TempDir(), "writer")
		gcc := exec.Command("gcc", "-O2", "-o", bin, "testdata/writer.c")
		if out, err := gcc.CombinedOutput(); err != nil {
			t.Fatalf("build writer: %v\n%s", err, out)
		}
	} else if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "16")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	out := bufio.NewReader(stdout)
	if line, _ := out.ReadString('\n'); line != "ready\n" {
		t.Fatalf("writer said %q", line)
	}
	pid := cmd.Process.Pid

	store, err := pagestore.Open(filepath.Join(t.TempDir(), "store"), pagestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	defer func(f func() bool) { usePagemapScan = f }(usePagemapScan)
	checkpoint := func(step int, scan bool) *Result {
		t.Helper()
		usePagemapScan = func() bool { return scan }
		r, err := Checkpoint(context.Background(), store, pid, CheckpointOptions{Tracker: "scan", Parent: ""})
		if err != nil {
			t.Fatalf("step %d: checkpoint (PAGEMAP_SCAN %v): %v", step, scan, err)
		}
		return r
	}
	for step := 0; step <= 3; step++ {
		if step > 0 {
			stdin.Write([]byte{'g'})
			if line, _ := out.ReadString('\n'); line != fmt.Sprintf("done %d\n", step) {
				t.Fatalf("step %d: writer said %q", step, line)
			}
		}
		scanned, read := checkpoint(step, true), checkpoint(step, false)
		t.Logf("step %d: %d pages copied found with PAGEMAP_SCAN, %d reading pagemap",
			step, scanned.DirtyPages, read.DirtyPages)
		if scanned.DirtyPages != read.DirtyPages {
			t.Errorf("step %d: %d pages copied with PAGEMAP_SCAN, %d reading pagemap", step,
				scanned.DirtyPages, read.DirtyPages)
		}
		comparePageMaps(t, store, read.Snapshot.ID, scanned.Snapshot.ID)
	}
}
