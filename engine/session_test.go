package engine

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/cryo-dev/cryo/engine/image"
	"github.com/cryo-dev/cryo/engine/track"
	"github.com/cryo-dev/cryo/internal/testenv"
	"github.com/cryo-dev/cryo/pagestore"
)

// TestSessionIncrementalMatchesFull checks the incremental snapshots of a session
// against full scans taken at the same moments: every page must be the same. The
// workload rewrites random pages, discards some (MADV_DONTNEED) and maps new memory
// between checkpoints, and sits idle while it is checkpointed. It runs with each
// incremental tracker: one the kernel must run (testenv.Trackers) fails when it
// cannot; another the kernel lacks is skipped, saying so loudly.
func TestSessionIncrementalMatchesFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: ptrace, process_vm_readv and userfaultfd of another process")
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
	for _, kind := range []string{track.KindUffdWP, track.KindSoftDirty} {
		t.Run(kind, func(t *testing.T) {
			if err := track.Probe(kind); err != nil {
				if testenv.TrackerRequired(kind) {
					t.Fatalf("tracker %s must run on this kernel: %v", kind, err)
				}
				t.Logf("WARNING: tracker %s UNAVAILABLE, not tested on this kernel: %v",
					kind, err)
				t.Skipf("SKIP %s: UNAVAILABLE on this kernel: %v", kind, err)
			}
			sessionMatchesFull(t, bin, kind)
		})
	}
}

func sessionMatchesFull(t *testing.T, bin, tracker string) {
	dir := t.TempDir()
	cmd := exec.Command(bin, "32")
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

	store, err := pagestore.Open(filepath.Join(dir, "store"), pagestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	s, err := NewSession(store, pid, CheckpointOptions{Tracker: tracker})
	if err != nil {
		t.Fatalf("new session with tracker %s: %v", tracker, err)
	}
	defer s.Close()

	var first int64
	for step := 0; step <= 3; step++ {
		if step > 0 {
			stdin.Write([]byte{'g'})
			if line, _ := out.ReadString('\n'); line != fmt.Sprintf("done %d\n", step) {
				t.Fatalf("step %d: writer said %q", step, line)
			}
		}
		inc, err := s.Checkpoint(context.Background(), false)
		if err != nil {
			t.Fatalf("step %d: incremental checkpoint: %v", step, err)
		}
		full, err := Checkpoint(context.Background(), store, pid, CheckpointOptions{Tracker: "scan", Parent: ""})
		if err != nil {
			t.Fatalf("step %d: full checkpoint: %v", step, err)
		}
		t.Logf("step %d: tracker %s: incremental copied %d pages (fallback %q), full %d",
			step, inc.Tracker, inc.DirtyPages, inc.Fallback, full.DirtyPages)
		if inc.Tracker != tracker {
			t.Errorf("step %d: checkpoint used tracker %q, want %s", step, inc.Tracker,
				tracker)
		}
		if step == 0 {
			first = inc.DirtyPages
		} else if tracker == track.KindSoftDirty && step == 2 {
			// The new mapping of step 2 lands next to the region and merges
			// with it (the kernel ignores the soft-dirty flag when merging),
			// and the merged mapping is soft-dirty whole: the kernel itself no
			// longer knows which old pages were written, so all are copied.
			t.Logf("step 2: soft-dirty copied %d pages of %d: a new mapping merged with "+
				"the region, which the kernel then reports written whole", inc.DirtyPages,
				first)
		} else if inc.DirtyPages > first/4 {
			t.Errorf("step %d: incremental checkpoint copied %d pages of %d: not incremental",
				step, inc.DirtyPages, first)
		}
		if inc.Snapshot.Parent == "" && step > 0 {
			t.Errorf("step %d: incremental snapshot has no parent", step)
		}
		comparePageMaps(t, store, inc.Snapshot.ID, full.Snapshot.ID)
	}
}

// comparePageMaps fails unless both snapshots hold the same data at every address
// (a page recorded as zero equals a page not recorded).
func comparePageMaps(t *testing.T, store *pagestore.Store, a, b string) {
	t.Helper()
	load := func(id string) map[uint64]pagestore.PageID {
		sn, err := store.OpenSnapshot(id)
		if err != nil {
			t.Fatal(err)
		}
		defer sn.Close()
		pm, err := sn.PageMap()
		if err != nil {
			t.Fatal(err)
		}
		m := map[uint64]pagestore.PageID{}
		for _, e := range pm {
			if !e.Zero {
				m[e.Addr] = e.ID
			}
		}
		return m
	}
	ma, mb := load(a), load(b)
	bad := 0
	for addr, id := range ma {
		if mb[addr] != id {
			bad++
			if bad < 5 {
				t.Errorf("page %#x (%s): incremental %s has %v, full %s has %v", addr,
					rangeOf(t, store, b, addr), a, id, b, mb[addr])
			}
		}
	}
	for addr, id := range mb {
		if _, ok := ma[addr]; !ok {
			bad++
			if bad < 5 {
				t.Errorf("page %#x: missing from incremental %s (full has %v)", addr, a, id)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d pages differ between incremental %s and full %s", bad, a, b)
	}
}

// rangeOf names the range of snapshot id that holds addr, for messages.
func rangeOf(t *testing.T, store *pagestore.Store, id string, addr uint64) string {
	sn, err := store.OpenSnapshot(id)
	if err != nil {
		return err.Error()
	}
	defer sn.Close()
	im, err := image.Unmarshal(sn.Image())
	if err != nil {
		return err.Error()
	}
	for _, v := range im.VMAs {
		if v.Start <= addr && addr < v.End {
			return fmt.Sprintf("%#x-%#x %s %s prot %d", v.Start, v.End, v.Kind, v.Name, v.Prot)
		}
	}
	return "no range"
}
