package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Syscall numbers on x86-64, as /proc/PID/syscall shows them.
const (
	sysRead          = 0
	sysNanosleep     = 35
	sysClockNanoslep = 230
)

// TestSyscallRead checks a process checkpointed while blocked in read(0) on
// an outside pipe resumes its read after restore, and the stdio rule with
// --stdin: the restored stdin is the file given, so the interrupted read
// returns exactly that file's data.
func TestSyscallRead(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	dir := t.TempDir()
	p := startBlockedReader(t, dir)

	checkpoint(t, store, p.pid)
	p.kill(t)

	data := "hello from after the restore\n"
	input := filepath.Join(dir, "input")
	if err := os.WriteFile(input, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	r := startRestore(t, store, "latest", "--stdin", input)
	r.waitRunning(t, p.pid)
	r.restoreOK(t, p.out)
	want := "ready\nread 29 bytes: hello from after the restore \nOK\n"
	if got := p.out.String(); got != want {
		t.Errorf("syscallwait read after restore printed %q, want %q", got, want)
	}
	if strings.Contains(r.stdout.String(), "read") {
		t.Errorf("restored stdout was a file but output reached cryo's stdout: %q", r.stdout)
	}
}

// startBlockedReader starts `syscallwait read` with stdin an outside pipe
// nobody writes to, stdout a file in dir, and waits until it blocks in read.
func startBlockedReader(t *testing.T, dir string) *proc {
	t.Helper()
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdinW.Close() })
	p := start(t, spawn{argv: []string{filepath.Join(binDir, "syscallwait"), "read"},
		stdin: stdinR, stdoutFile: filepath.Join(dir, "stdout")})
	stdinR.Close()
	waitOutput(t, p.out, "ready\n", readyTimeout)
	waitSyscall(t, p.pid, sysRead)
	return p
}

// TestSyscallSleep checks a process checkpointed inside nanosleep (relative:
// restore rebuilds its restart block from the time left, which the kernel wrote
// for the caller) or clock_nanosleep with TIMER_ABSTIME (rewound and restarted)
// finishes its sleep as it would have without the checkpoint: no EINTR, no
// garbage result, not before its deadline.
func TestSyscallSleep(t *testing.T) {
	requireE2E(t)
	for _, mode := range []string{"sleep", "abssleep"} {
		t.Run(mode, func(t *testing.T) {
			store := newStore(t)
			dir := t.TempDir()
			p := start(t, spawn{argv: []string{filepath.Join(binDir, "syscallwait"), mode, "6"},
				stdoutFile: filepath.Join(dir, "stdout")})
			waitOutput(t, p.out, "ready\n", readyTimeout)
			waitSyscall(t, p.pid, sysNanosleep, sysClockNanoslep)

			checkpoint(t, store, p.pid)
			p.kill(t)

			r := startRestore(t, store, "latest")
			r.waitRunning(t, p.pid)
			r.restoreOK(t, p.out)
			got := p.out.String()
			if !regexp.MustCompile(`^ready\nslept eintr=0\nOK\n$`).MatchString(got) {
				t.Errorf("syscallwait %s after restore printed %q, want ready, "+
					"slept eintr=0, OK", mode, got)
			}
			t.Logf("syscallwait %s: %q", mode, got)
		})
	}
}

// TestExitStatus checks cryo restore exits with the restored process's
// status: 1 when it exits 1, 128+9 when it is killed by SIGKILL.
func TestExitStatus(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	dir := t.TempDir()
	p := startBlockedReader(t, dir)
	id := checkpoint(t, store, p.pid)
	p.kill(t)

	// An empty stdin: the resumed read returns 0 and syscallwait exits 1.
	empty := filepath.Join(dir, "empty")
	touch(t, empty)
	r := startRestore(t, store, id, "--stdin", empty)
	r.waitRunning(t, p.pid)
	if code := r.wait(t, restoreTimeout); code != 1 {
		t.Errorf("restored process exited 1, cryo restore exited %d; stderr:\n%s",
			code, r.stderr)
	}
	if !strings.Contains(p.out.String(), "FAIL read returned 0 (EOF)") {
		t.Errorf("syscallwait output %q, want its EOF failure", p.out)
	}

	// Killed by SIGKILL while blocked in read on cryo restore's stdin, a
	// pipe the test holds open.
	r = startRestore(t, store, id)
	pid := p.pid
	r.waitRunning(t, pid)
	waitSyscall(t, pid, sysRead)
	syscall.Kill(pid, syscall.SIGKILL)
	if code := r.wait(t, restoreTimeout); code != 128+9 {
		t.Errorf("restored process was killed by SIGKILL, cryo restore exited %d, "+
			"want 137; stderr:\n%s", code, r.stderr)
	}
}

// TestSyscallSleepTwice checkpoints `syscallwait sleep` twice, the second
// snapshot incremental on the first, then kills and restores it. The first
// checkpoint's stop leaves the thread to resume its sleep with restart_syscall,
// so the second finds it in that call rather than in nanosleep; the restored
// sleep must still end without EINTR, at its original deadline: not before
// (the workload checks that), and not a pause later either, though the process
// stays dead for a while between the kill and the restore.
func TestSyscallSleepTwice(t *testing.T) {
	requireE2E(t)
	const secs, gap = 5, 1500 * time.Millisecond
	store := newStore(t)
	dir := t.TempDir()
	p := start(t, spawn{argv: []string{filepath.Join(binDir, "syscallwait"), "sleep",
		strconv.Itoa(secs)}, stdoutFile: filepath.Join(dir, "stdout")})
	waitOutput(t, p.out, "ready\n", readyTimeout)
	deadline := time.Now().Add(secs * time.Second) // a little after the workload's
	waitSyscall(t, p.pid, sysNanosleep, sysClockNanoslep)

	first := checkpoint(t, store, p.pid)
	waitSyscall(t, p.pid, sysRestartSyscall)
	second := checkpoint(t, store, p.pid)
	if parent := inspectParent(t, store, second); parent != first {
		t.Fatalf("second snapshot %s has parent %q, want the first, %s", second, parent,
			first)
	}
	p.kill(t)
	time.Sleep(gap)

	r := startRestore(t, store, "latest")
	r.waitRunning(t, p.pid)
	waitOutput(t, p.out, "slept", time.Until(deadline)+restoreTimeout)
	woke := time.Now()
	r.restoreOK(t, p.out)
	if got := p.out.String(); !regexp.MustCompile(`^ready\nslept eintr=0\nOK\n$`).
		MatchString(got) {
		t.Errorf("syscallwait sleep checkpointed twice printed %q, want ready, "+
			"slept eintr=0, OK", got)
	}
	// Resumed for the time left at the second checkpoint from the restore on,
	// the sleep would end about gap late.
	if late := woke.Sub(deadline); late > gap/2 {
		t.Errorf("sleep ended %v after its deadline, want at it", late)
	}
	t.Logf("syscallwait sleep: woke %v after the deadline", woke.Sub(deadline))
}

// inspectParent returns the parent `cryo inspect --json id` shows, "" for none.
func inspectParent(t *testing.T, store, id string) string {
	t.Helper()
	r := cryo(t, store, "inspect", id, "--json")
	if r.exit != 0 {
		t.Fatalf("cryo inspect %s --json: exit %d\nstderr:\n%s", id, r.exit, r.stderr)
	}
	var doc struct {
		Parent string `json:"parent"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
		t.Fatalf("cryo inspect --json: not JSON: %v\n%s", err, r.stdout)
	}
	return doc.Parent
}
