package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The tests of this file check what the cryo command prints, returns and
// leaves behind in the corner cases of its commands.

// promptly is how long a cryo command may take to let go of the caller's
// pipes once it has exited: no work is left for it, so anything near this
// bound is a descriptor held by a process that outlives the command.
const promptly = 10 * time.Second

// TestDetachLetsGoOfStdio checks `pid=$(cryo restore --detach --no-prefetch
// ...)` returns as soon as the pid is printed: stdout and stderr of cryo reach
// end of file while the restored process, and the background page server
// serving it, still run.
func TestDetachLetsGoOfStdio(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	m := startMemfill(t, 8)
	checkpoint(t, store, m.p.pid)
	m.p.kill(t)
	t.Cleanup(func() { syscall.Kill(m.p.pid, syscall.SIGKILL) })
	logFile := detachedLog(t, m.p.pid)

	stdio := filepath.Join(t.TempDir(), "stdio")
	cmd := exec.Command(cryoBin, "--store", store, "restore", "latest", "--detach",
		"--no-prefetch", "--stdout", stdio, "--stderr", stdio)
	cmd.Env = cryoEnv()
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	began := time.Now()
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		t.Fatal(err)
	}
	stdout, stderr := drainPipe(outR), drainPipe(errR)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("cryo restore --detach: %v; stderr:\n%s", err, stderr)
	}
	exited := time.Since(began)

	// What the caller of pid=$(cryo restore --detach) waits for.
	for _, p := range []struct {
		name string
		out  *pipeOutput
	}{{"stdout", stdout}, {"stderr", stderr}} {
		select {
		case <-p.out.done:
		case <-time.After(time.Until(began.Add(exited + promptly))):
			t.Fatalf("cryo restore --detach exited after %v, but its %s is not at end of "+
				"file %v later (restored pid %d alive: %v): another process holds it; "+
				"stdout %q, stderr %q", exited, p.name, promptly, m.p.pid,
				processAlive(m.p.pid), stdout, stderr)
		}
	}
	t.Logf("timing: cryo restore --detach exited after %v, its stdout and stderr at end "+
		"of file after %v", exited, time.Since(began))
	if got := strings.TrimSpace(stdout.String()); got != strconv.Itoa(m.p.pid) {
		t.Fatalf("cryo restore --detach printed %q, want the pid %d", got, m.p.pid)
	}
	if !processAlive(m.p.pid) {
		t.Fatalf("restored pid %d is not running after its pid was printed", m.p.pid)
	}
	if len(procsRunning(cryoBin)) == 0 {
		t.Fatalf("no background page server runs: the test cannot tell it let go of the " +
			"caller's stdio (did --no-prefetch serve every page already?)")
	}

	touch(t, m.trigger)
	waitOutput(t, m.p.out, "OK\n", restoreTimeout)
	waitNoCryo(t)
	if b, err := os.ReadFile(logFile); err == nil {
		t.Errorf("the page server left %s behind; it holds:\n%s\nwant it removed "+
			"when the server has logged nothing", logFile, b)
	}
}

// TestDetachErrorOnce checks an error of `cryo restore --detach` (here: the
// pid is in use) is printed once, by the foreground, not also by the
// background copy that found it.
func TestDetachErrorOnce(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	m := startMemfill(t, 8)
	checkpoint(t, store, m.p.pid)

	r := cryo(t, store, "restore", "latest", "--detach")
	t.Logf("restore --detach with pid %d in use: exit %d, stderr:\n%s", m.p.pid, r.exit,
		r.stderr)
	if r.exit == 0 || r.stdout != "" {
		t.Fatalf("restore --detach with pid %d in use: exit %d, stdout %q; want a failure "+
			"and no pid", m.p.pid, r.exit, r.stdout)
	}
	if n := strings.Count(r.stderr, "pid is in use"); n != 1 {
		t.Errorf("restore --detach printed the error %d times, want once:\n%s", n, r.stderr)
	}
	waitNoCryo(t)
	requireFree(t, m.p.pid)
}

// TestRestorePidfileUnwritable checks a --pidfile that cannot be written fails
// the restore before any process is made, naming the path, in the foreground
// and detached.
func TestRestorePidfileUnwritable(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	m := startMemfill(t, 8)
	checkpoint(t, store, m.p.pid)
	m.p.kill(t)
	t.Cleanup(func() { syscall.Kill(m.p.pid, syscall.SIGKILL) })

	pidfile := filepath.Join(t.TempDir(), "nonexistent", "restored.pid")
	for _, mode := range [][]string{nil, {"--detach"}} {
		args := append([]string{"restore", "latest", "--pidfile", pidfile}, mode...)
		seen := watchPid(m.p.pid)
		r := cryo(t, store, args...)
		made := seen()
		t.Logf("cryo %s: exit %d, stderr:\n%s", strings.Join(args, " "), r.exit, r.stderr)
		if r.exit == 0 || !strings.Contains(r.stderr, pidfile) {
			t.Errorf("cryo %s: exit %d, stderr %q; want a failure naming %s",
				strings.Join(args, " "), r.exit, r.stderr, pidfile)
		}
		if made {
			t.Errorf("cryo %s: pid %d existed while it ran, want no process made",
				strings.Join(args, " "), m.p.pid)
		}
		if st, err := procState(m.p.pid); err == nil {
			t.Errorf("cryo %s: pid %d exists (state %s), want no process made",
				strings.Join(args, " "), m.p.pid, st)
		}
		requireNoProcess(t, "memfill", m.p.pid)
	}
}

// watchPid polls for /proc/PID every millisecond until the function it returns
// is called, which says whether pid existed meanwhile. A restored process
// lives tens of milliseconds at least (the restore itself), so it is seen.
func watchPid(pid int) func() bool {
	stop, done := make(chan struct{}), make(chan bool)
	path := fmt.Sprintf("/proc/%d", pid)
	go func() {
		seen := false
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			if _, err := os.Stat(path); err == nil {
				seen = true
			}
			select {
			case <-stop:
				done <- seen
				return
			case <-tick.C:
			}
		}
	}()
	return func() bool {
		close(stop)
		return <-done
	}
}

// TestLsDamagedManifest checks `cryo ls` on a store where one of three
// manifests is damaged lists the other two, names the damaged one on stderr
// with the reason, and exits 1.
func TestLsDamagedManifest(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	m := startMemfill(t, 8)
	var ids []string
	for range 3 {
		ids = append(ids, checkpoint(t, store, m.p.pid))
	}

	copied := filepath.Join(t.TempDir(), "store")
	if out, err := exec.Command("cp", "-a", store, copied).CombinedOutput(); err != nil {
		t.Fatalf("copy the store: %v\n%s", err, out)
	}
	bad := ids[1]
	path := manifestFile(t, copied, bad)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
	t.Logf("truncated %s from %d to %d bytes", path, fi.Size(), fi.Size()/2)

	r := cryo(t, copied, "ls")
	t.Logf("cryo ls: exit %d\nstdout:\n%s\nstderr:\n%s", r.exit, r.stdout, r.stderr)
	var listed []string
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] != "SNAPSHOT" {
			listed = append(listed, f[0])
		}
	}
	if len(listed) != 2 || listed[0] != ids[0] || listed[1] != ids[2] {
		t.Errorf("cryo ls listed %q, want the undamaged %s and %s", listed, ids[0], ids[2])
	}
	var flagged []string
	for _, line := range strings.Split(r.stderr, "\n") {
		if strings.Contains(line, bad) {
			flagged = append(flagged, line)
		}
	}
	if len(flagged) != 1 || !corruptRE.MatchString(flagged[0]) {
		t.Errorf("cryo ls stderr lines naming %s: %q, want one saying it is damaged", bad,
			flagged)
	}
	if r.exit != 1 {
		t.Errorf("cryo ls exited %d, want 1 (a snapshot could not be listed)", r.exit)
	}
	if got := listSnapshots(t, store); len(got) != 3 {
		t.Errorf("cryo ls on the undamaged original lists %q, want 3 snapshots", got)
	}
}

// TestLockWaitNamesHolder checks a checkpoint into a store a lazy
// --no-prefetch restore is reading says, at cryo's default log level, that it
// waits and for which process, and goes ahead once the restore is done.
func TestLockWaitNamesHolder(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	m := startMemfill(t, 8)
	id := checkpoint(t, store, m.p.pid)
	m.p.kill(t)
	rr := startRestore(t, store, id, "--no-prefetch")
	rr.waitRunning(t, m.p.pid)

	other := startMemfill(t, 8)
	cmd := exec.Command(cryoBin, "--store", store, "checkpoint", strconv.Itoa(other.p.pid))
	cmd.Env = cryoEnv()
	var stdout bytes.Buffer
	errR, errW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = &stdout, errW
	err = cmd.Start()
	errW.Close()
	if err != nil {
		t.Fatal(err)
	}
	stderr := drainPipe(errR)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })

	// The wait lasts up to a minute: the line must come well before that.
	waitOutput(t, stderr, "waiting for the store lock", 20*time.Second)
	time.Sleep(200 * time.Millisecond) // would a second line follow?
	line := ""
	for _, l := range strings.Split(stderr.String(), "\n") {
		if strings.Contains(l, "waiting for the store lock") {
			if line != "" {
				t.Errorf("a second line about the wait: %q", l)
			}
			line = l
		}
	}
	t.Logf("checkpoint while a lazy restore (cryo pid %d) reads: %s", rr.cmd.Process.Pid,
		line)
	if !strings.Contains(line, fmt.Sprintf("pid %d", rr.cmd.Process.Pid)) ||
		!strings.Contains(line, "reading") {
		t.Errorf("the wait is logged as %q, want the holder, pid %d, and that it is reading",
			line, rr.cmd.Process.Pid)
	}

	touch(t, m.trigger)
	m.checkRestored(t, rr)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("checkpoint after the restore let go of the store: %v; stderr:\n%s", err,
				stderr)
		}
	case <-time.After(cryoTimeout):
		t.Fatalf("checkpoint still waits %v after the restore ended; stderr:\n%s",
			cryoTimeout, stderr)
	}
	t.Logf("the waiting checkpoint made snapshot %s", strings.TrimSpace(stdout.String()))
}

// TestCheckpointNoParentWording checks the first checkpoint of a process says
// it had no parent, and the second that it was scanned against its parent.
func TestCheckpointNoParentWording(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	m := startMemfill(t, 8)
	for i, want := range []string{"no parent", "against the parent"} {
		r := cryo(t, store, "checkpoint", strconv.Itoa(m.p.pid))
		if r.exit != 0 {
			t.Fatalf("checkpoint %d: exit %d; stderr:\n%s", i+1, r.exit, r.stderr)
		}
		line := ""
		for _, l := range strings.Split(r.stderr, "\n") {
			if strings.Contains(l, "whole memory scanned") {
				line = l
			}
		}
		t.Logf("checkpoint %d: %s", i+1, line)
		if !strings.Contains(line, want) {
			t.Errorf("checkpoint %d says %q, want it to say %q", i+1, line, want)
		}
	}
}

// waitNoCryo waits until no process runs the cryo binary under test: a
// background page server or a restore host left over.
func waitNoCryo(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for len(procsRunning(cryoBin)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("cryo processes %v still running after %v", procsRunning(cryoBin),
				readyTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// detachedLog returns the log file of the page server of a detached restore
// of pid (see README, "Detached restores"), and removes it when t ends.
func detachedLog(t *testing.T, pid int) string {
	t.Helper()
	path := fmt.Sprintf("/run/cryo/restore-%d.log", pid)
	t.Cleanup(func() { os.Remove(path) })
	return path
}

// TestCheckpointKernelThread checks a kernel thread (kthreadd, pid 2) is refused
// by name before anything is tried on it, and the store is left empty.
func TestCheckpointKernelThread(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	r := cryo(t, store, "checkpoint", "2")
	t.Logf("cryo checkpoint 2 (exit %d): %s", r.exit, strings.TrimSpace(r.stderr))
	if r.exit != 1 || !strings.Contains(r.stderr, "pid 2: kthreadd is a kernel thread") {
		t.Errorf("checkpoint of kthreadd: exit %d, stderr %q; want exit 1 and an error "+
			"saying pid 2 is a kernel thread", r.exit, r.stderr)
	}
	if ids := listSnapshots(t, store); len(ids) != 0 {
		t.Errorf("store holds %v after a refused checkpoint", ids)
	}
}
