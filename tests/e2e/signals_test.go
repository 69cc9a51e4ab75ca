package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSignalHandlersRestored: a python3 program's handlers survive a checkpoint
// and restore: SIGUSR1 runs its handler, SIGTERM stays ignored, and SIGINT raises
// KeyboardInterrupt (Python's own handler), which makes it exit 3.
func TestSignalHandlersRestored(t *testing.T) {
	requireE2E(t)
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 is needed: %v", err)
	}
	const prog = `import signal, sys, time
got = []
signal.signal(signal.SIGUSR1, lambda s, f: got.append("usr1"))
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
try:
    while True:
        time.sleep(0.02)
        if got:
            print("handled", got.pop(), flush=True)
except KeyboardInterrupt:
    print("keyboard interrupt", flush=True)
    sys.exit(3)
`
	store := newStore(t)
	dir := t.TempDir()
	p := start(t, spawn{argv: []string{python, "-c", prog},
		stdoutFile: filepath.Join(dir, "stdout")})
	waitOutput(t, p.out, "ready\n", readyTimeout)
	checkpoint(t, store, p.pid)
	p.kill(t)

	r := startRestore(t, store, "latest")
	r.waitRunning(t, p.pid)
	syscall.Kill(p.pid, syscall.SIGUSR1)
	waitOutput(t, p.out, "handled usr1\n", readyTimeout)
	syscall.Kill(p.pid, syscall.SIGTERM)
	time.Sleep(200 * time.Millisecond)
	syscall.Kill(p.pid, syscall.SIGINT)
	if code := r.wait(t, readyTimeout); code != 3 {
		t.Errorf("restored program exited %d, want 3 (KeyboardInterrupt); output:\n%s",
			code, p.out.String())
	}
	if out := p.out.String(); !strings.HasSuffix(out, "keyboard interrupt\n") {
		t.Errorf("restored program's output:\n%s", out)
	}
}
