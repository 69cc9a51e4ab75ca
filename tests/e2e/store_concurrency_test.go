package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Sizes of TestStoreConcurrency: long enough for the writers to contend for
// the store lock many times, short enough for a test run.
const (
	concurrentFor      = 60 * time.Second // how long both cryo runs go on
	concurrentMiB      = 64               // each rewriter's memory
	concurrentMinSnaps = 20               // snapshots each run must produce
)

// snapshotLineRE is the line cryo run prints on stderr for each snapshot.
var snapshotLineRE = regexp.MustCompile(`(?m)^cryo: snapshot (\S+)$`)

// TestStoreConcurrency is acceptance item 4 of issue 4: two `cryo run
// --interval 1s`, each over its own rewriter, share one store for a minute.
// Meanwhile a third workload (memfill) is checkpointed into the same store,
// killed, and restored lazily, its pages served while the runs write; it must
// find its memory intact. Each run must produce snapshots steadily (waiting
// for the store lock rather than failing), cryo verify must find the store
// clean afterwards, and the first, middle and last snapshot of each run must
// restore (eagerly) to memory rewriter verifies; verify vouches for the rest.
func TestStoreConcurrency(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	began := time.Now()
	runs := [2]*concurrentRun{}
	for i := range runs {
		runs[i] = startConcurrentRun(t, store, i)
	}
	t.Logf("timing: both rewriters ready %v after the first cryo run started",
		time.Since(began).Round(time.Millisecond))

	// A third process, checkpointed and restored lazily in the middle of the runs.
	time.Sleep(concurrentFor / 4)
	m := startMemfill(t, 32)
	id := checkpoint(t, store, m.p.pid)
	m.p.kill(t)
	lazyAt := time.Now()
	rr := startRestore(t, store, id)
	ran := rr.waitRunning(t, m.p.pid)
	time.Sleep(2 * time.Second) // run on while the page server and the writers share the store
	touch(t, m.trigger)
	m.checkRestored(t, rr)
	t.Logf("timing: lazy restore of memfill (%s) %v after the start: running after %v, "+
		"verified after %v", id, lazyAt.Sub(began).Round(time.Millisecond),
		ran.Round(time.Millisecond), rr.took.Round(time.Millisecond))

	// Let the runs go on, then end them: each rewriter checks its live memory.
	time.Sleep(time.Until(began.Add(concurrentFor)))
	for _, r := range runs {
		stopRun(t, r.run, r.pid, r.trigger, false)
		r.collect(t)
	}
	t.Logf("timing: both runs ended %v after the start", time.Since(began).Round(
		time.Millisecond))
	total := 1
	for i, r := range runs {
		total += len(r.ids)
		t.Logf("run %d (rewriter pid %d): %d snapshots in %v, %.2f a second; waited for "+
			"the store lock %d times, %d checkpoint failures logged", i, r.pid, len(r.ids),
			r.ran.Round(time.Millisecond), float64(len(r.ids))/r.ran.Seconds(),
			strings.Count(r.log(), "waiting for the store lock"),
			strings.Count(r.log(), "level=ERROR")+strings.Count(r.log(), "level=WARN"))
		if len(r.ids) < concurrentMinSnaps {
			t.Errorf("run %d produced %d snapshots in %v, want at least %d; its log:\n%s", i,
				len(r.ids), r.ran, concurrentMinSnaps, lastLines(r.log(), 30))
		}
	}
	if ids := listSnapshots(t, store); len(ids) != total {
		t.Errorf("cryo ls lists %d snapshots, want %d (both runs and memfill)", len(ids), total)
	}

	v := cryo(t, store, "verify")
	t.Logf("timing: cryo verify of %d snapshots took %v; stdout:\n%s", total,
		v.took.Round(time.Millisecond), lastLines(v.stdout, 10))
	if v.exit != 0 {
		t.Errorf("cryo verify exited %d after the concurrent runs; stderr:\n%s", v.exit,
			v.stderr)
	}

	restoresAt := time.Now()
	n := 0
	for _, r := range runs {
		if len(r.ids) == 0 {
			continue
		}
		for _, id := range []string{r.ids[0], r.ids[len(r.ids)/2], r.ids[len(r.ids)-1]} {
			restoreVerified(t, store, id, true, r.pid)
			n++
		}
	}
	t.Logf("timing: %d eager restores of %d MiB verified in %v; the test took %v", n,
		concurrentMiB, time.Since(restoresAt).Round(time.Millisecond),
		time.Since(began).Round(time.Millisecond))
}

// concurrentRun is one `cryo run --interval 1s -- rewriter` of
// TestStoreConcurrency.
type concurrentRun struct {
	run     *proc
	pid     int // the rewriter's
	trigger string
	logPath string
	started time.Time
	ran     time.Duration
	ids     []string // the snapshots it printed, in order
}

// startConcurrentRun starts cryo run over a rewriter of concurrentMiB on store
// and waits until the rewriter is ready. t.Cleanup kills the rewriter.
func startConcurrentRun(t *testing.T, store string, i int) *concurrentRun {
	t.Helper()
	dir := t.TempDir()
	r := &concurrentRun{trigger: filepath.Join(dir, "trigger"),
		logPath: filepath.Join(dir, "run.log"), started: time.Now()}
	argv := []string{cryoBin, "--store", store, "--log-level", "info", "run", "--interval",
		"1s", "--", filepath.Join(binDir, "rewriter"), fmt.Sprint(concurrentMiB),
		fmt.Sprint(rewriterPercent), r.trigger}
	r.run = start(t, spawn{argv: argv, stderrFile: r.logPath})
	waitOutput(t, r.run.out, "ready pages", readyTimeout)
	r.pid = descendantNamed(t, r.run.pid, "rewriter")
	t.Cleanup(func() {
		if processAlive(r.pid) && commOf(r.pid) == "rewriter" {
			syscall.Kill(r.pid, syscall.SIGKILL)
		}
	})
	t.Logf("run %d: rewriter pid %d under cryo run pid %d", i, r.pid, r.run.pid)
	return r
}

// collect reads the snapshot ids the ended run printed.
func (r *concurrentRun) collect(t *testing.T) {
	t.Helper()
	r.ran = time.Since(r.started)
	for _, m := range snapshotLineRE.FindAllStringSubmatch(r.log(), -1) {
		r.ids = append(r.ids, m[1])
	}
}

func (r *concurrentRun) log() string {
	b, _ := os.ReadFile(r.logPath)
	return string(b)
}
