package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Syscall numbers on x86-64 of the calls threadwait's threads block in.
const (
	sysFutex      = 202
	sysEpollWait  = 232
	sysEpollPwait = 281
	// restart_syscall: a timed wait interrupted by a ptrace stop (the guard's,
	// when it lets go of a lazily restored process) goes on in it.
	sysRestartSyscall = 219
)

// TestThreadsBlockedInSyscalls is acceptance item 3 of issue 7: a C program
// whose threads are blocked in futex (no timeout, and FUTEX_WAIT_BITSET with an
// absolute deadline), epoll_wait, nanosleep and read is checkpointed, killed
// and restored lazily. Every thread comes back with its tid; after the trigger
// each call ends as it would have without the checkpoint (woken by main, timed
// out at its deadline and not before, the sleep not before its deadline), the
// signal masks are the same, pthread_join returns (clear_child_tid) and a robust
// mutex held by a thread that exited reports EOWNERDEAD (the robust list). The
// program checks all of that itself and prints OK.
//
// accept is not among them: cryo cannot checkpoint a socket yet.
func TestThreadsBlockedInSyscalls(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	dir := t.TempDir()
	trigger := filepath.Join(dir, "trigger")
	const secs = 8 // the deadlines of the sleeping threads, from their start
	started := time.Now()
	p := start(t, spawn{argv: []string{filepath.Join(binDir, "threadwait"), trigger,
		fmt.Sprint(secs)}, stdoutFile: filepath.Join(dir, "stdout")})
	out := waitOutput(t, p.out, "ready\n", readyTimeout)
	tids := parseTids(t, out)
	blocked := map[string][]int{
		"futex": {sysFutex}, "timedwait": {sysFutex, sysRestartSyscall},
		"epoll": {sysEpollWait, sysEpollPwait},
		"sleep": {sysNanosleep, sysClockNanoslep, sysRestartSyscall}, "read": {sysRead},
	}
	for role, nrs := range blocked {
		waitThreadSyscall(t, p.pid, tids[role], nrs...)
	}
	before := taskList(t, p.pid)
	if len(before) != 6 {
		t.Fatalf("threadwait has threads %v, want 6", before)
	}

	t.Logf("threads blocked %v after the start", time.Since(started))
	checkpoint(t, store, p.pid)
	p.kill(t)
	t.Logf("checkpointed and killed %v after the start", time.Since(started))

	r := startRestore(t, store, "latest")
	r.waitRunning(t, p.pid)
	defer func() {
		if t.Failed() {
			t.Logf("threadwait output:\n%s\ncryo restore stderr:\n%s", p.out, r.stderr)
		}
	}()
	// The threads block again, each in its own call, with its own tid.
	for role, nrs := range blocked {
		waitThreadSyscall(t, p.pid, tids[role], nrs...)
	}
	if after := taskList(t, p.pid); !slices.Equal(after, before) {
		t.Errorf("restored threads are %v, want the original tids %v", after, before)
	}
	if time.Since(started) > secs*time.Second-time.Second {
		t.Fatalf("restore took too long: the sleeping threads' deadlines (%ds) passed "+
			"before the test could see them blocked", secs)
	}
	touch(t, trigger)
	r.restoreOK(t, p.out)

	got := p.out.String()
	t.Logf("threadwait after restore:\n%s", got)
	for _, want := range []string{"futex ok", "timedwait ok", "epoll ok", "sleep ok",
		"read ok"} {
		if !strings.Contains(got, want) {
			t.Errorf("threadwait did not report %q", want)
		}
	}
	if lastLine(got) != "OK" {
		t.Errorf("threadwait did not end with OK")
	}
}

// parseTids reads threadwait's "tid ROLE TID" lines.
func parseTids(t *testing.T, out string) map[string]int {
	t.Helper()
	tids := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "tid" {
			n, err := strconv.Atoi(f[2])
			if err != nil {
				t.Fatalf("threadwait printed %q", line)
			}
			tids[f[1]] = n
		}
	}
	return tids
}

// taskList returns the tids of process pid, ascending.
func taskList(t *testing.T, pid int) []int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	var tids []int
	for _, e := range ents {
		n, _ := strconv.Atoi(e.Name())
		tids = append(tids, n)
	}
	slices.Sort(tids)
	return tids
}

// waitThreadSyscall waits until thread tid of pid is blocked in one of the
// system calls nrs, as /proc/PID/task/TID/syscall shows.
func waitThreadSyscall(t *testing.T, pid, tid int, nrs ...int) {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/syscall", pid, tid))
		if err != nil {
			t.Fatalf("tid %d of pid %d: %v (process state %s)", tid, pid, err,
				func() string { s, _ := procState(pid); return s }())
		}
		f := strings.Fields(string(b))
		if len(f) > 0 {
			nr, err := strconv.Atoi(f[0])
			if err == nil && slices.Contains(nrs, nr) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("tid %d of pid %d not blocked in syscall %v: %s", tid, pid, nrs, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
