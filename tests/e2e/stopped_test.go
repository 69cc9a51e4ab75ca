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
// stopped and untraced after the checkpoint, and prints nothing. Then it is
// killed and restored, eagerly and lazily (whose guard must let go of a stopped
// process once every page is in), and comes back stopped (state T) and silent
// until SIGCONT, after which it carries on: `syscallwait sleep`, stopped in
// nanosleep, must finish its sleep without EINTR or a garbage result.
//
// It is checkpointed once (TestSyscallSleepTwice checkpoints a sleep twice). A
// busy Go program is left out: a SIGURG its runtime sent as it was being stopped
// stays pending until SIGCONT, which cryo refuses (a stopped process with a
// signal on its way).
func TestCheckpointStopped(t *testing.T) {
	requireE2E(t)
	for _, mode := range []string{"eager", "lazy"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			p := start(t, spawn{argv: []string{filepath.Join(binDir, "syscallwait"), "sleep",
				"3"}, stdoutFile: filepath.Join(dir, "stdout")})
			waitOutput(t, p.out, "ready\n", readyTimeout)
			waitSyscall(t, p.pid, sysNanosleep, sysClockNanoslep)
			var flags []string
			if mode == "eager" {
				flags = append(flags, "--eager")
			}
			r := checkpointStopped(t, p, flags...)
			syscall.Kill(p.pid, syscall.SIGCONT)
			r.restoreOK(t, p.out)
			if got := p.out.String(); !regexp.MustCompile(`^ready\nslept eintr=0\nOK\n$`).
				MatchString(got) {
				t.Errorf("syscallwait sleep after restore and SIGCONT printed %q, want "+
					"ready, slept eintr=0, OK", got)
			}
		})
	}
}

// checkpointStopped stops p with SIGSTOP, checkpoints it, checking that it
// stays stopped and prints nothing, kills it and restores it with the
// restore flags given. It returns the restore once the restored process is
// stopped and untraced, having checked that it prints nothing for a while.
func checkpointStopped(t *testing.T, p *proc, flags ...string) *restoreRun {
	t.Helper()
	if err := syscall.Kill(p.pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitState(t, p.pid, "T")
	store := newStore(t)
	before := p.out.String()
	checkpoint(t, store, p.pid)
	requireStopped(t, p.pid, "after its checkpoint")
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
