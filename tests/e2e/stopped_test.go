package e2e

import (
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCheckpointStopped checkpoints a process stopped by SIGSTOP (a group stop,
// which every system call run inside the process has to step through): it stays
// stopped and untraced after each checkpoint, and prints nothing. Then it is
// killed and restored, and comes back stopped (state T) and silent until
// SIGCONT, after which it carries on and passes its own check:
//
//   - sleep: `syscallwait sleep`, one thread stopped in nanosleep, checkpointed
//     once and restored eagerly; it must finish its sleep without EINTR or a
//     garbage result. (Checkpointed twice, it would see EINTR: the first
//     checkpoint leaves the thread to resume its sleep with restart_syscall,
//     whose restart block the second cannot read.)
//   - goroutines: the Go workload, dozens of threads, checkpointed twice and
//     restored lazily; its counter must not move while it is stopped, and move
//     after SIGCONT, and its check of the map, the counter and the blocked
//     goroutines must pass.
func TestCheckpointStopped(t *testing.T) {
	requireE2E(t)
	t.Run("sleep", func(t *testing.T) {
		dir := t.TempDir()
		p := start(t, spawn{argv: []string{filepath.Join(binDir, "syscallwait"), "sleep", "3"},
			stdoutFile: filepath.Join(dir, "stdout")})
		waitOutput(t, p.out, "ready\n", readyTimeout)
		waitSyscall(t, p.pid, sysNanosleep, sysClockNanoslep)
		r := checkpointStopped(t, p, 1, "--eager")
		syscall.Kill(p.pid, syscall.SIGCONT)
		r.restoreOK(t, p.out)
		if got := p.out.String(); !regexp.MustCompile(`^ready\nslept eintr=0\nOK\n$`).
			MatchString(got) {
			t.Errorf("syscallwait sleep after restore and SIGCONT printed %q, want ready, "+
				"slept eintr=0, OK", got)
		}
	})
	t.Run("goroutines", func(t *testing.T) {
		trigger := filepath.Join(t.TempDir(), "trigger")
		p := start(t, spawn{argv: []string{filepath.Join(binDir, "goroutines"), trigger}})
		waitOutput(t, p.out, "ready\n", readyTimeout)
		r := checkpointStopped(t, p, 2)

		last := lastCounter(r.stdout.String())
		syscall.Kill(p.pid, syscall.SIGCONT)
		deadline := time.Now().Add(readyTimeout)
		for lastCounter(r.stdout.String()) <= last {
			if time.Now().After(deadline) {
				t.Fatalf("the counter did not move past %d after SIGCONT; output:\n%s\n"+
					"cryo stderr:\n%s", last, r.stdout, r.stderr)
			}
			time.Sleep(10 * time.Millisecond)
		}
		touch(t, trigger)
		r.restoreOK(t, r.stdout)
		if got := r.stdout.String(); lastLine(got) != "OK" {
			t.Errorf("goroutines after restore and SIGCONT did not end with OK:\n%s", got)
		}
	})
}

// checkpointStopped stops p with SIGSTOP, checkpoints it n times, checking that
// it stays stopped and prints nothing, kills it and restores it with the
// restore flags given. It returns the restore once the restored process is
// stopped and untraced, having checked that it prints nothing for a while.
func checkpointStopped(t *testing.T, p *proc, n int, flags ...string) *restoreRun {
	t.Helper()
	if err := syscall.Kill(p.pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitState(t, p.pid, "T")
	store := newStore(t)
	before := p.out.String()
	for range n {
		checkpoint(t, store, p.pid)
		requireStopped(t, p.pid, "after its checkpoint")
	}
	if got := p.out.String(); got != before {
		t.Fatalf("the stopped process printed %q while it was checkpointed",
			strings.TrimPrefix(got, before))
	}
	p.kill(t)

	r := startRestore(t, store, append([]string{"latest"}, flags...)...)
	r.waitRunning(t, p.pid)
	waitUntraced(t, p.pid, restoreTimeout) // a lazy restore, once every page is in
	requireStopped(t, p.pid, "restored")
	out := func() string { return p.out.String() + r.stdout.String() }
	quiet := out()
	time.Sleep(500 * time.Millisecond)
	requireStopped(t, p.pid, "restored, half a second later")
	if got := out(); got != quiet {
		t.Fatalf("the process restored stopped printed %q", strings.TrimPrefix(got, quiet))
	}
	return r
}

// requireStopped checks that every thread of pid is in a job-control stop,
// state T, and that nothing traces the process.
func requireStopped(t *testing.T, pid int, what string) {
	t.Helper()
	for _, tid := range taskList(t, pid) {
		if st, err := procState(tid); err != nil || st != "T" {
			t.Fatalf("%s: tid %d of pid %d is in state %s (%v), want T (stopped)", what,
				tid, pid, st, err)
		}
	}
	if tracer, err := statusField(pid, "TracerPid"); err != nil || tracer != 0 {
		t.Fatalf("%s: pid %d is traced by pid %d (%v)", what, pid, tracer, err)
	}
}

// waitState waits until pid is in state st.
func waitState(t *testing.T, pid int, st string) {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for {
		got, err := procState(pid)
		if err == nil && got == st {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d in state %s (%v), want %s", pid, got, err, st)
		}
		time.Sleep(time.Millisecond)
	}
}
