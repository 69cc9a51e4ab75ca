package e2e

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestCheckpointSignalRace checkpoints a busy Go program ten times in a row with
// one-shot `cryo checkpoint`s, and every one must succeed. The program is the
// goroutines workload with four goroutines more that spin without a function
// call (GOROUTINES_SPIN=4), which its runtime can only preempt with SIGURG, sent
// every 10 ms: such a signal often arrives for a thread that cryo has stopped
// while it stops the others, and is about to be delivered. The engine gives
// such a try up, lets the process go untouched and tries again; it fails only
// when a signal wins every try (it used to fail at once, about one checkpoint
// in three). The last snapshot is then restored, and the program's own check
// passes.
func TestCheckpointSignalRace(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	trigger := filepath.Join(t.TempDir(), "trigger")
	p := start(t, spawn{argv: []string{filepath.Join(binDir, "goroutines"), trigger},
		env: []string{"GOROUTINES_SPIN=4"}})
	waitOutput(t, p.out, "ready\n", readyTimeout)

	retried := 0
	for i := range 10 {
		r := cryo(t, store, "--log-level", "debug", "checkpoint", strconv.Itoa(p.pid))
		if r.exit != 0 {
			t.Fatalf("checkpoint %d of the busy Go program: exit %d\n%s", i+1, r.exit,
				lastLines(r.stderr, 5))
		}
		n := strings.Count(r.stderr, "signal arrived while stopping the process; trying again")
		t.Logf("checkpoint %d: %d tries given up to a signal", i+1, n)
		retried += n
	}
	t.Logf("%d tries given up to a signal over 10 checkpoints", retried)
	requireFree(t, p.pid)

	r := cryo(t, store, "checkpoint", "--kill", strconv.Itoa(p.pid))
	if r.exit != 0 {
		t.Fatalf("cryo checkpoint --kill: exit %d\n%s", r.exit, lastLines(r.stderr, 5))
	}
	if code := p.wait(t, 30*time.Second); code != -1 {
		t.Fatalf("the program exited %d after checkpoint --kill, want killed", code)
	}
	rr := startRestore(t, store, "latest", "--eager")
	rr.waitRunning(t, p.pid)
	touch(t, trigger)
	rr.restoreOK(t, rr.stdout)
	if got := rr.stdout.String(); lastLine(got) != "OK" {
		t.Errorf("the busy Go program after restore did not end with OK:\n%s", got)
	}
}
