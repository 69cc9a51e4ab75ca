package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCheckpointInterrupted signals `cryo checkpoint` at random moments of its
// run, again and again, and checks that the process it checkpoints never pays
// for it. The process is `syscallwait read`, blocked in read(2) on a pipe the
// test holds (every checkpoint stops it in the middle of that call and runs
// system calls inside it); the moments are spread over a whole checkpoint's
// wall time, so that they fall before, during and after the frozen part.
//
// SIGINT, SIGTERM and SIGHUP (every other try with --kill) must leave the
// process running as it was, not traced, not stopped, not killed: cryo either
// finishes (exit 0 and a snapshot id) or gives the checkpoint up (exit
// 128+signal, saying it was interrupted), or, signalled before it began, dies
// of the signal. The store then holds the earlier snapshot and exactly those
// of the runs that finished.
//
// SIGKILL cannot be caught: the process must either run on as well or, when cryo
// died while a system call ran inside it, be killed by SIGKILL
// (PTRACE_O_EXITKILL), and never die any other way (it used to crash with
// SIGSEGV, run on with the registers of the injected call). A killed process
// is replaced by a new one.
//
// Last, the process still running reads a line written to its pipe and exits 0:
// its interrupted read resumed as if nothing had happened. `cryo verify` finds
// the store whole.
func TestCheckpointInterrupted(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	dir := t.TempDir()
	target := startReader(t, dir)

	first := checkpoint(t, store, target.pid)
	ids := []string{first}
	// The moments to signal cryo at: up to a little past a whole checkpoint.
	var span time.Duration
	for range 3 {
		r := cryo(t, store, "checkpoint", strconv.Itoa(target.pid))
		if r.exit != 0 {
			t.Fatalf("cryo checkpoint: exit %d\n%s", r.exit, r.stderr)
		}
		ids = append(ids, strings.TrimSpace(r.stdout))
		span = max(span, r.took)
	}
	span += span / 4
	t.Logf("a checkpoint takes up to %v: signals come 1 ms to %v after cryo starts", span,
		span)

	var interrupted, finished, before int
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP} {
		name := sigName(sig)
		for try := range 12 {
			kill := try%2 == 1
			r := signalCheckpoint(t, store, target.pid, kill, sig, span)
			what := fmt.Sprintf("%s after %v (exit %d)", name, r.after, r.exit)
			if r.id != "" {
				ids = append(ids, r.id)
			}
			switch {
			case r.exit == 0:
				finished++
			case r.exit == 128+int(sig):
				interrupted++
				if !strings.Contains(r.stderr, "interrupted by "+name) ||
					!strings.Contains(r.stderr, "no snapshot taken") {
					t.Errorf("cryo checkpoint given up by %s printed:\n%s\nwant it to say "+
						"it was interrupted by %s and took no snapshot", name, r.stderr, name)
				}
			case r.signaled == sig:
				before++ // before cryo began to listen: it had not touched the process
			default:
				t.Fatalf("cryo checkpoint sent %s: exit %d, signal %v\n%s", what, r.exit,
					r.signaled, r.stderr)
			}
			if r.id == "" || !kill {
				requireUnharmed(t, target, what)
				continue
			}
			// Finished with --kill: the process was meant to die.
			if code := target.wait(t, 30*time.Second); code != -1 {
				t.Fatalf("%s: checkpoint --kill finished, the process exited %d", what, code)
			}
			target = startReader(t, dir)
		}
	}
	t.Logf("SIGINT, SIGTERM, SIGHUP: %d checkpoints interrupted, %d finished, %d signalled "+
		"before they began", interrupted, finished, before)
	if interrupted == 0 {
		t.Errorf("no checkpoint was interrupted while under way: the test tested nothing")
	}
	if got := listSnapshots(t, store); !sameSet(got, ids) {
		t.Errorf("after interrupted checkpoints the store lists %q, want exactly the "+
			"snapshots of the runs that finished, %q", got, ids)
	}

	// SIGKILL: the process runs on, or is killed (by PTRACE_O_EXITKILL, or by
	// cryo itself for a --kill that got that far).
	var exitKilled, ranOn int
	for try := range 30 {
		r := signalCheckpoint(t, store, target.pid, try%2 == 1, syscall.SIGKILL, span)
		what := fmt.Sprintf("SIGKILL after %v (exit %d)", r.after, r.exit)
		if r.id != "" {
			ids = append(ids, r.id)
		}
		if settle(t, target) {
			ranOn++
			requireUnharmed(t, target, what)
			continue
		}
		ws := target.state.Sys().(syscall.WaitStatus)
		if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("cryo checkpoint sent %s: the process it checkpointed ended with %v, "+
				"want running on or killed by SIGKILL; its output:\n%s", what, target.state,
				target.out)
		}
		if r.id == "" || try%2 == 0 {
			exitKilled++ // not by a --kill that finished
		}
		target = startReader(t, dir)
	}
	t.Logf("SIGKILL: the process ran on %d times, was killed with cryo %d times", ranOn,
		exitKilled)

	// The process last standing resumes its read as if nothing had happened.
	line := "after the interruptions"
	if _, err := target.stdin.Write([]byte(line + "\n")); err != nil {
		t.Fatal(err)
	}
	if code := target.wait(t, readyTimeout); code != 0 {
		t.Fatalf("syscallwait read exited %d:\n%s", code, target.out)
	}
	want := fmt.Sprintf("ready\nread %d bytes: %s \nOK\n", len(line)+1, line)
	if got := target.out.String(); got != want {
		t.Errorf("syscallwait read printed %q, want %q", got, want)
	}

	// A cryo killed between commit and printing the id leaves a snapshot the
	// test does not know: the ids printed must be there, others may be.
	if got := listSnapshots(t, store); !subset(ids, got) {
		t.Errorf("the store lists %q, which lacks some of the finished snapshots %q", got,
			ids)
	}
	if r := cryo(t, store, "verify"); r.exit != 0 {
		t.Errorf("cryo verify after interrupted checkpoints: exit %d\n%s%s", r.exit,
			r.stdout, r.stderr)
	}
}

// reader is `syscallwait read` with its stdin a pipe the test writes to.
type reader struct {
	*proc
	stdin *os.File
}

// startReader starts a reader and waits until it blocks in read.
func startReader(t *testing.T, dir string) reader {
	t.Helper()
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdinW.Close() })
	out := filepath.Join(dir, fmt.Sprintf("stdout-%d", time.Now().UnixNano()))
	p := start(t, spawn{argv: []string{filepath.Join(binDir, "syscallwait"), "read"},
		stdin: stdinR, stdoutFile: out})
	stdinR.Close()
	waitOutput(t, p.out, "ready\n", readyTimeout)
	waitSyscall(t, p.pid, sysRead)
	return reader{p, stdinW}
}

// signalled is how a `cryo checkpoint` sent a signal ended.
type signalled struct {
	id, stderr string         // the snapshot id it printed, if any; its stderr
	exit       int            // exit status, -1 when killed by a signal
	signaled   syscall.Signal // the signal that killed it, or 0
	after      time.Duration  // when the signal was sent, after cryo started
}

// signalCheckpoint starts `cryo checkpoint pid`, sends it sig after a random
// moment of up to span, and waits for it.
func signalCheckpoint(t *testing.T, store string, pid int, kill bool,
	sig syscall.Signal, span time.Duration) signalled {
	t.Helper()
	args := []string{"--store", store, "checkpoint", strconv.Itoa(pid)}
	if kill {
		args = append(args, "--kill")
	}
	cmd := exec.Command(cryoBin, args...)
	cmd.Env = cryoEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	after := time.Millisecond + rand.N(span)
	time.Sleep(after)
	cmd.Process.Signal(sig)

	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(cryoTimeout):
		cmd.Process.Kill()
		t.Fatalf("cryo checkpoint still runs %v after %v", cryoTimeout, sigName(sig))
	}
	r := signalled{id: strings.TrimSpace(stdout.String()), stderr: stderr.String(),
		after: after}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.exit = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			r.signaled = ws.Signal()
		}
	} else if err != nil {
		t.Fatal(err)
	}
	return r
}

// requireUnharmed checks that the reader runs on as before: alive, neither
// traced nor stopped, blocked in its read again.
func requireUnharmed(t *testing.T, p reader, what string) {
	t.Helper()
	if !settle(t, p) {
		t.Fatalf("%s: the process checkpointed ended (%v); its output:\n%s", what,
			p.state, p.out)
	}
	waitSyscall(t, p.pid, sysRead)
}

// settle waits until the reader has ended (false) or sleeps again, not traced
// (true). A process that cryo left traced or stopped fails the test.
func settle(t *testing.T, p reader) bool {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		select {
		case <-p.waited:
			return false
		default:
		}
		st, err := procState(p.pid)
		tracer, terr := statusField(p.pid, "TracerPid")
		if err == nil && terr == nil && st == "S" && tracer == 0 {
			return true
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d is in state %s (%v), traced by %d (%v) 5 s after cryo "+
				"ended, want sleeping in its read, untraced", p.pid, st, err, tracer, terr)
		}
		time.Sleep(time.Millisecond)
	}
}

func sigName(sig syscall.Signal) string {
	return map[syscall.Signal]string{syscall.SIGINT: "SIGINT", syscall.SIGTERM: "SIGTERM",
		syscall.SIGHUP: "SIGHUP", syscall.SIGKILL: "SIGKILL"}[sig]
}

// sameSet reports whether a and b hold the same strings.
func sameSet(a, b []string) bool {
	return subset(a, b) && subset(b, a)
}

// subset reports whether every string of a is in b.
func subset(a, b []string) bool {
	in := map[string]bool{}
	for _, s := range b {
		in[s] = true
	}
	for _, s := range a {
		if !in[s] {
			return false
		}
	}
	return true
}
