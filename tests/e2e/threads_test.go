package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestMultithreadedRefused: a process with threads is refused with an error that
// names its thread count, and it is left running, neither stopped nor traced.
func TestMultithreadedRefused(t *testing.T) {
	requireE2E(t)
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 is needed: %v", err)
	}
	store := newStore(t)
	const prog = `import threading, time
for _ in range(3):
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
print("ready", flush=True)
n = 0
while True:
    n += 1
    print("tick", n, flush=True)
    time.sleep(0.05)
`
	p := start(t, spawn{argv: []string{python, "-c", prog}})
	waitOutput(t, p.out, "ready\n", readyTimeout)

	r := cryo(t, store, "checkpoint", fmt.Sprint(p.pid))
	if r.exit == 0 {
		t.Fatalf("checkpoint of a 4-thread process succeeded: %q", r.stdout)
	}
	if !strings.Contains(r.stderr, "4 threads") || !strings.Contains(r.stderr, fmt.Sprint(p.pid)) {
		t.Errorf("error does not name the pid and its 4 threads: %q", r.stderr)
	}
	if ids := listSnapshots(t, store); len(ids) != 0 {
		t.Errorf("store holds %v after a refused checkpoint", ids)
	}

	if tracer, err := statusField(p.pid, "TracerPid"); err != nil || tracer != 0 {
		t.Errorf("process is traced by %d (%v) after the refusal", tracer, err)
	}
	before := strings.Count(p.out.String(), "tick")
	time.Sleep(300 * time.Millisecond)
	if after := strings.Count(p.out.String(), "tick"); after <= before {
		t.Errorf("process stopped running after the refusal: %d ticks, then %d", before, after)
	}
}
