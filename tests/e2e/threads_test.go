package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Syscall numbers on x86-64 of the calls threadwait's threads block in.
const (
	sysFutex      = 202
	sysEpollWait  = 232
	sysEpollPwait = 281
	sysAccept     = 43
	sysAccept4    = 288
	// restart_syscall: a timed wait interrupted by a ptrace stop (the guard's,
	// when it lets go of a lazily restored process) goes on in it.
	sysRestartSyscall = 219
)

// threadwaitThreads is how many threads threadwait runs: main and one blocked in
// each of futex, a timed futex, epoll_wait, nanosleep, read and accept.
const threadwaitThreads = 7

// TestThreadsBlockedInSyscalls is acceptance item 3 of issue 7: a C program
// whose threads are blocked in futex (no timeout, and FUTEX_WAIT_BITSET with an
// absolute deadline), epoll_wait, nanosleep, read and accept (on a listening
// TCP socket) is checkpointed, killed and restored lazily. Every thread comes
// back with its tid; after the trigger each call ends as it would have without
// the checkpoint (woken by main, timed out at its deadline and not before, the
// sleep at its deadline without EINTR; epoll_wait returns EINTR at every ptrace
// stop, checkpoint or not), the signal masks are the same, xmm15 keeps its value
// across the futex wait (the XSAVE area), pthread_join returns (clear_child_tid),
// a robust mutex held by a thread that exited reports EOWNERDEAD (the robust
// list), and the restored listener accepts a new connection. The program checks
// all of that itself and prints OK.
func TestThreadsBlockedInSyscalls(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	dir := t.TempDir()
	trigger := filepath.Join(dir, "trigger")
	const secs = 15 // the deadlines of the sleeping threads, from their start
	started := time.Now()
	p := start(t, spawn{argv: []string{filepath.Join(binDir, "threadwait"), trigger,
		fmt.Sprint(secs)}, stdoutFile: filepath.Join(dir, "stdout")})
	out := waitOutput(t, p.out, "ready\n", readyTimeout)
	tids := parseTids(t, out)
	blocked := map[string][]int{
		"futex": {sysFutex}, "timedwait": {sysFutex, sysRestartSyscall},
		"epoll": {sysEpollWait, sysEpollPwait},
		"sleep": {sysNanosleep, sysClockNanoslep, sysRestartSyscall}, "read": {sysRead},
		"accept": {sysAccept, sysAccept4},
	}
	for role, nrs := range blocked {
		waitThreadSyscall(t, p.pid, tids[role], nrs...)
	}
	before := taskList(t, p.pid)
	if len(before) != threadwaitThreads {
		t.Fatalf("threadwait has threads %v, want %d", before, threadwaitThreads)
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
	for _, want := range []string{"futex ok", "timedwait ok", "epoll ok",
		"sleep ok: eintr=0", "read ok", "accept ok"} {
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

// TestGoroutinesLazyRestore is acceptance item 1 of issue 7: a Go program (built
// by TestMain) with 40 goroutines over several OS threads, some of them blocked
// in read and nanosleep, keeping a counter and a map of a million entries. It is
// checkpointed three times by `cryo watch` with the uffd-wp tracker (the tracker
// and the session with threads), then once more by `cryo checkpoint --kill`, and
// restored lazily without prefetch: every thread comes back with its tid, the counter carries on
// from where it was, and after the trigger the program's own check of the map,
// the counter and the blocked goroutines passes. Then the last snapshot of the
// watch, an incremental one, is restored eagerly and passes the same check.
func TestGoroutinesLazyRestore(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	dir := t.TempDir()
	trigger := filepath.Join(dir, "trigger")
	p := start(t, spawn{argv: []string{filepath.Join(binDir, "goroutines"), trigger}})
	out := waitOutput(t, p.out, "ready\n", readyTimeout)
	var threads int
	fmt.Sscanf(out, "threads %d", &threads)
	before := taskList(t, p.pid)
	t.Logf("goroutines runs as pid %d with %d threads (%d when ready)", p.pid, len(before),
		threads)
	if threads < 6 {
		t.Fatalf("goroutines has %d threads, want at least 6 (GOMAXPROCS 4 and the "+
			"goroutines blocked in system calls)", threads)
	}

	// Incremental checkpoints of the running program, with threads.
	w := start(t, spawn{argv: []string{cryoBin, "--store", store, "--log-level", "info",
		"watch", strconv.Itoa(p.pid), "--interval", "300ms", "--tracker", "uffd-wp"},
		stderrFile: filepath.Join(dir, "watch.log")})
	deadline := time.Now().Add(readyTimeout)
	for len(strings.Fields(w.out.String())) < 3 {
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "watch.log"))
			t.Fatalf("cryo watch printed %q, want 3 snapshots; its log:\n%s", w.out, log)
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.cmd.Process.Signal(syscall.SIGTERM)
	if code := w.wait(t, cryoTimeout); code != 0 {
		t.Fatalf("cryo watch exited %d after SIGTERM, want 0", code)
	}
	watched := strings.Fields(w.out.String())
	for k, id := range watched[1:] {
		info := inspectSnapshot(t, store, id)
		t.Logf("watched snapshot %d: %s tracker %q fallback %q: %d pages, %d new, "+
			"%d carried", k+1, id, info.Labels["tracker"], info.Labels["fallback"],
			info.Stats.Pages, info.Stats.NewPages, info.Stats.CarriedPages)
		if info.Labels["tracker"] != "uffd-wp" || info.Parent != watched[k] {
			t.Errorf("watched snapshot %d (%s): tracker %q parent %q, want uffd-wp on %s",
				k+1, id, info.Labels["tracker"], info.Parent, watched[k])
		}
	}

	r := cryo(t, store, "checkpoint", "--kill", strconv.Itoa(p.pid))
	if r.exit != 0 {
		t.Fatalf("cryo checkpoint --kill %d: exit %d\nstderr:\n%s", p.pid, r.exit, r.stderr)
	}
	logCryo(t, "checkpoint --kill", r.stderr)
	if code := p.wait(t, 30*time.Second); code != -1 {
		t.Fatalf("goroutines exited %d after checkpoint --kill, want killed", code)
	}
	last := lastCounter(p.out.String())
	t.Logf("counter at the checkpoint: %d", last)

	// No prefetch: the threads fault their pages in themselves, many at once.
	rr := startRestore(t, store, "latest", "--no-prefetch")
	rr.waitRunning(t, p.pid)
	if after := taskList(t, p.pid); len(after) < len(before) ||
		!slices.Equal(after[:len(before)], before) {
		t.Errorf("restored threads are %v, want the original tids %v first", after, before)
	}
	deadline = time.Now().Add(readyTimeout)
	for lastCounter(rr.stdout.String()) <= last {
		if time.Now().After(deadline) {
			t.Fatalf("the restored program's counter did not move past %d; it printed:\n%s"+
				"\ncryo stderr:\n%s", last, rr.stdout, rr.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	first := firstCounter(rr.stdout.String())
	if first < last {
		t.Errorf("the restored counter started at %d, below the checkpointed %d", first, last)
	}
	time.Sleep(time.Second) // let it run: the runtime preempts (SIGURG) and collects
	touch(t, trigger)
	rr.restoreOK(t, rr.stdout)
	got := rr.stdout.String()
	if lastLine(got) != "OK" {
		t.Fatalf("goroutines after restore did not end with OK:\n%s", got)
	}
	t.Logf("restored program: first counter %d, %s", first,
		strings.TrimSpace(lastLines(got, 2)))

	// The incremental snapshot of the watch, eagerly: the trigger exists already.
	old := startRestore(t, store, watched[len(watched)-1], "--eager")
	old.waitRunning(t, p.pid)
	old.restoreOK(t, old.stdout)
	if lastLine(old.stdout.String()) != "OK" {
		t.Errorf("goroutines restored from %s did not end with OK:\n%s",
			watched[len(watched)-1], old.stdout)
	}
}

// lastCounter and firstCounter return the last and first "counter N" of
// goroutines' output, or -1.
func lastCounter(out string) int64 {
	n := int64(-1)
	for _, line := range strings.Split(out, "\n") {
		fmt.Sscanf(line, "counter %d", &n)
	}
	return n
}

func firstCounter(out string) int64 {
	for _, line := range strings.Split(out, "\n") {
		var n int64
		if _, err := fmt.Sscanf(line, "counter %d", &n); err == nil {
			return n
		}
	}
	return -1
}

// TestJavaLazyRestore is acceptance item 2 of issue 7: a Java program run by the
// machine's JDK, with worker, sleeping and waiting threads besides the JVM's own
// (about thirty in all) and 300 MiB of arrays on its heap, is checkpointed with
// --kill and restored lazily; its counter carries on, and after the trigger its
// own check of the arrays, the map, the sleeps and the wait passes.
func TestJavaLazyRestore(t *testing.T) {
	requireE2E(t)
	if javaErr != nil {
		t.Fatalf("the Java test needs a JDK: %v", javaErr)
	}
	store := newStore(t)
	dir := t.TempDir()
	trigger := filepath.Join(dir, "trigger")
	// No perf data: it would be a shared mapping of a file in /tmp, removed when
	// the JVM exits.
	p := start(t, spawn{argv: []string{javaBin, "-XX:-UsePerfData", "-Xmx1g", "-cp", binDir,
		"Heapwork", trigger, "300"}})
	waitOutput(t, p.out, "ready\n", 2*readyTimeout)
	before := taskList(t, p.pid)
	t.Logf("heapwork (java) runs as pid %d with %d threads", p.pid, len(before))
	if len(before) < 10 {
		t.Fatalf("the JVM has %d threads, want at least 10", len(before))
	}

	r := cryo(t, store, "checkpoint", "--kill", strconv.Itoa(p.pid))
	if r.exit != 0 {
		t.Fatalf("cryo checkpoint --kill %d: exit %d\nstderr:\n%s", p.pid, r.exit, r.stderr)
	}
	logCryo(t, "checkpoint --kill", r.stderr)
	p.wait(t, 30*time.Second)
	last := lastCounter(p.out.String())

	rr := startRestore(t, store, "latest")
	rr.waitRunning(t, p.pid)
	if after := taskList(t, p.pid); !slices.Equal(after, before) {
		t.Errorf("restored threads are %v, want the original tids %v", after, before)
	}
	deadline := time.Now().Add(readyTimeout)
	for lastCounter(rr.stdout.String()) <= last {
		if time.Now().After(deadline) {
			t.Fatalf("the restored JVM's counter did not move past %d; it printed:\n%s"+
				"\ncryo stderr:\n%s", last, rr.stdout, rr.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if first := firstCounter(rr.stdout.String()); first < last {
		t.Errorf("the restored counter started at %d, below the checkpointed %d", first, last)
	}
	time.Sleep(time.Second)
	touch(t, trigger)
	rr.restoreOK(t, rr.stdout)
	got := rr.stdout.String()
	if lastLine(got) != "OK" {
		t.Fatalf("heapwork after restore did not end with OK:\n%s", got)
	}
	t.Logf("counter at the checkpoint %d; restored JVM: %s", last,
		strings.TrimSpace(lastLines(got, 2)))
}

// TestThreadsFailedCheckpointRunsOn: a checkpoint of a multi-threaded process
// that fails after every thread was stopped (it holds an io_uring, which cryo
// cannot rebuild) leaves every thread running, untraced, and the store empty.
func TestThreadsFailedCheckpointRunsOn(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	const prog = `import ctypes, threading, time
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
fd = libc.syscall(425, 4, params)  # io_uring_setup(4, &params)
if fd < 0:
    print("unsupported: io_uring_setup errno", ctypes.get_errno(), flush=True)
    raise SystemExit(0)
for _ in range(3):
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
print("ready fd=%d" % fd, flush=True)
n = 0
while True:
    n += 1
    print("tick", n, flush=True)
    time.sleep(0.05)
`
	p := start(t, spawn{argv: []string{pythonBin, "-c", prog}})
	out := waitOutput(t, p.out, "\n", readyTimeout)
	if strings.HasPrefix(out, "unsupported:") {
		t.Fatalf("this kernel refuses io_uring, which the test needs: %s", out)
	}
	var fd int
	if _, err := fmt.Sscanf(out, "ready fd=%d", &fd); err != nil {
		t.Fatalf("the workload printed %q: %v", out, err)
	}
	tids := taskList(t, p.pid)
	if len(tids) != 4 {
		t.Fatalf("the workload has threads %v, want 4", tids)
	}

	r := cryo(t, store, "checkpoint", fmt.Sprint(p.pid))
	if r.exit == 0 {
		t.Fatalf("checkpoint of a process holding an io_uring succeeded: %q", r.stdout)
	}
	if !strings.Contains(r.stderr, fmt.Sprintf("fd %d", fd)) ||
		!strings.Contains(r.stderr, "io_uring") {
		t.Errorf("error does not name fd %d and its kind: %q", fd, r.stderr)
	}
	if ids := listSnapshots(t, store); len(ids) != 0 {
		t.Errorf("store holds %v after a failed checkpoint", ids)
	}
	for _, tid := range tids {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", p.pid, tid))
		if err != nil {
			t.Fatalf("tid %d: %v", tid, err)
		}
		if !strings.Contains(string(st), "\nTracerPid:\t0\n") {
			t.Errorf("tid %d is still traced after the failed checkpoint:\n%s", tid, st)
		}
		if s := string(st); strings.Contains(s, "State:\tt") || strings.Contains(s, "State:\tT") {
			t.Errorf("tid %d is stopped after the failed checkpoint", tid)
		}
	}
	before := strings.Count(p.out.String(), "tick")
	time.Sleep(300 * time.Millisecond)
	if after := strings.Count(p.out.String(), "tick"); after <= before {
		t.Errorf("the process stopped running after the failed checkpoint: %d ticks, "+
			"then %d", before, after)
	}
}

// TestRestoreTidTaken: when a thread's tid belongs to another process, restore
// fails with an error naming the tid, leaves no half-built process behind, and
// succeeds once the tid is free again.
func TestRestoreTidTaken(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	dir := t.TempDir()
	trigger := filepath.Join(dir, "trigger")
	p := start(t, spawn{argv: []string{filepath.Join(binDir, "threadwait"), trigger, "3"},
		stdoutFile: filepath.Join(dir, "stdout")})
	tids := parseTids(t, waitOutput(t, p.out, "ready\n", readyTimeout))
	id := checkpoint(t, store, p.pid)
	p.kill(t)

	tid := tids["epoll"]
	holder := takePid(t, tid)
	r := startRestore(t, store, id)
	code := r.wait(t, restoreTimeout)
	stderr := r.stderr.String()
	t.Logf("restore with tid %d taken: exit %d, stderr %q", tid, code, stderr)
	if code == 0 || !strings.Contains(stderr, fmt.Sprintf("tid %d", tid)) ||
		!strings.Contains(stderr, "in use") {
		t.Errorf("restore with tid %d taken: exit %d, stderr %q, want an error naming the "+
			"tid and saying it is in use", tid, code, stderr)
	}
	if processAlive(p.pid) {
		t.Errorf("pid %d is alive after the failed restore", p.pid)
	}
	holder.kill(t)

	r = startRestore(t, store, id)
	r.waitRunning(t, p.pid)
	touch(t, trigger)
	r.restoreOK(t, p.out)
	if lastLine(p.out.String()) != "OK" {
		t.Errorf("threadwait restored once the tid was free:\n%s", p.out)
	}
}

// takePid starts a sleeping process whose pid is pid, by setting
// /proc/sys/kernel/ns_last_pid just below it; other processes forking at the
// same moment can take it first, so it tries a few times.
func takePid(t *testing.T, pid int) *proc {
	t.Helper()
	for try := 0; try < 20; try++ {
		err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(fmt.Sprint(pid-1)), 0)
		if err != nil {
			t.Fatalf("set ns_last_pid: %v", err)
		}
		p := start(t, spawn{argv: []string{"sleep", "600"}})
		if p.pid == pid {
			return p
		}
		p.kill(t)
	}
	t.Fatalf("could not start a process with pid %d", pid)
	return nil
}

// TestThreadsGuardedUntilPagesIn: while a lazily restored multi-threaded process
// still has pages to come, cryo restore holds every one of its threads
// (PTRACE_O_EXITKILL), and when cryo dies the whole process dies with it.
func TestThreadsGuardedUntilPagesIn(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	dir := t.TempDir()
	trigger := filepath.Join(dir, "trigger")
	p := start(t, spawn{argv: []string{filepath.Join(binDir, "threadwait"), trigger, "30"},
		stdoutFile: filepath.Join(dir, "stdout")})
	waitOutput(t, p.out, "ready\n", readyTimeout)
	checkpoint(t, store, p.pid)
	p.kill(t)

	// Without prefetch the pages nobody touched stay out: the guard stays on.
	r := startRestore(t, store, "latest", "--no-prefetch")
	r.waitRunning(t, p.pid)
	time.Sleep(200 * time.Millisecond)
	tids := taskList(t, p.pid)
	if len(tids) != threadwaitThreads {
		t.Fatalf("restored threadwait has threads %v, want %d", tids, threadwaitThreads)
	}
	for _, tid := range tids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", p.pid, tid))
		if err != nil {
			t.Fatal(err)
		}
		// TracerPid names the tracing thread of cryo restore.
		var tracer int
		for _, line := range strings.Split(string(b), "\n") {
			fmt.Sscanf(line, "TracerPid:\t%d", &tracer)
		}
		_, err = os.Stat(fmt.Sprintf("/proc/%d/task/%d", r.cmd.Process.Pid, tracer))
		if tracer == 0 || err != nil {
			t.Errorf("tid %d is traced by %d, not by a thread of cryo restore (pid %d)",
				tid, tracer, r.cmd.Process.Pid)
		}
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
}
