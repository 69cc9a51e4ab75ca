package e2e

import (
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestPageServerDeathKills checks the promise of a lazy restore when cryo itself
// dies before every page is in: the restored process must not run on with zero
// pages where its data was, so the kernel kills it (cryo keeps it seized with
// PTRACE_O_EXITKILL until its memory is complete).
func TestPageServerDeathKills(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	dir := t.TempDir()
	trigger := filepath.Join(dir, "trigger")
	p := start(t, spawn{argv: []string{filepath.Join(binDir, "memfill"), "256", trigger},
		stdoutFile: filepath.Join(dir, "stdout")})
	waitOutput(t, p.out, "ready\n", readyTimeout)
	checkpoint(t, store, p.pid)
	p.kill(t)

	// Without prefetch the 256 MiB stay out until the process touches them.
	r := startRestore(t, store, "latest", "--no-prefetch")
	r.waitRunning(t, p.pid)
	time.Sleep(200 * time.Millisecond)
	if !processAlive(p.pid) {
		t.Fatalf("restored pid %d died before cryo did", p.pid)
	}

	r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.waited
	deadline := time.Now().Add(5 * time.Second)
	for processAlive(p.pid) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if processAlive(p.pid) {
		t.Fatalf("restored pid %d still runs after its page server was killed", p.pid)
	}

	// Had it lived on, the trigger would make it verify (and report) its memory.
	touch(t, trigger)
	time.Sleep(300 * time.Millisecond)
	if out := p.out.String(); lastLine(out) == "OK" || lastLine(out) == "FAILED" {
		t.Fatalf("restored process ran on after its page server died:\n%s", out)
	}
}
