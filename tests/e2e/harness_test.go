package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Timeouts, generous because the test VMs are slow.
const (
	cryoTimeout    = 3 * time.Minute  // one cryo command, checkpoint or restore
	readyTimeout   = 60 * time.Second // a workload getting ready
	restoreTimeout = 4 * time.Minute  // a restored workload finishing its checks
)

// newStore returns a fresh, empty store folder (mode 0700) for one test.
func newStore(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "store")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// cryoResult is what one finished cryo command printed and returned.
type cryoResult struct {
	stdout, stderr string
	exit           int // -1 when it did not exit (killed by the timeout)
	took           time.Duration
}

// cryo runs `cryo --store store --log-level info args...` to completion.
func cryo(t *testing.T, store string, args ...string) cryoResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cryoTimeout)
	defer cancel()
	full := append([]string{"--store", store, "--log-level", "info"}, args...)
	cmd := exec.CommandContext(ctx, cryoBin, full...)
	cmd.Env = cryoEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := cryoResult{stdout.String(), stderr.String(), 0, time.Since(start)}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		r.exit = exitErr.ExitCode()
	default:
		t.Fatalf("run cryo %s: %v", strings.Join(args, " "), err)
	}
	if ctx.Err() != nil {
		t.Fatalf("cryo %s did not finish within %v; stderr:\n%s",
			strings.Join(args, " "), cryoTimeout, r.stderr)
	}
	return r
}

// cryoEnv is the environment cryo runs with: the test's own, without
// CRYO_STORE so that only --store decides.
func cryoEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CRYO_STORE=") {
			env = append(env, kv)
		}
	}
	return env
}

// checkpoint checkpoints pid (leaving it running) and returns the snapshot
// id, checking that it is printed alone and listed by `cryo ls`.
func checkpoint(t *testing.T, store string, pid int) string {
	t.Helper()
	r := cryo(t, store, "checkpoint", strconv.Itoa(pid))
	if r.exit != 0 {
		t.Fatalf("cryo checkpoint %d: exit %d\nstderr:\n%s", pid, r.exit, r.stderr)
	}
	id := strings.TrimSpace(r.stdout)
	if id == "" || strings.ContainsAny(id, " \t\n") {
		t.Fatalf("cryo checkpoint %d printed %q, want one snapshot id", pid, r.stdout)
	}
	t.Logf("timing: checkpoint of pid %d: %v wall (snapshot %s)", pid, r.took, id)
	logCryo(t, "checkpoint", r.stderr)

	ids := listSnapshots(t, store)
	found := false
	for _, x := range ids {
		found = found || x == id
	}
	if !found {
		t.Fatalf("cryo ls does not list the new snapshot %s; it lists %q", id, ids)
	}
	return id
}

// logCryo logs what cryo printed on stderr (its info log: phase timings,
// the frozen time), a line at a time.
func logCryo(t *testing.T, what, stderr string) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(stderr), "\n") {
		if line != "" {
			t.Logf("cryo %s: %s", what, line)
		}
	}
}

// listSnapshots returns the ids `cryo ls` prints: the first field of each
// line, skipping a header line (its first field in capitals, "SNAPSHOT").
func listSnapshots(t *testing.T, store string) []string {
	t.Helper()
	r := cryo(t, store, "ls")
	if r.exit != 0 {
		t.Fatalf("cryo ls: exit %d\nstderr:\n%s", r.exit, r.stderr)
	}
	var ids []string
	for i, line := range strings.Split(r.stdout, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || i == 0 && f[0] == strings.ToUpper(f[0]) && f[0] != strings.ToLower(f[0]) {
			continue
		}
		ids = append(ids, f[0])
	}
	return ids
}

// snapshotStats is the part of `cryo inspect --json SNAPSHOT` these tests
// read: an object "stats" with these members, all page counts in 4 KiB pages.
//
//   - pages: pages the snapshot's memory holds (present when checkpointed);
//   - zero_pages: pages found all zero, which the store does not hold;
//   - dedup_pages: non-zero pages whose content was already in the store or
//     earlier in the same snapshot, so not stored again;
//   - new_pages: pages this snapshot added to the store;
//   - stored_bytes: compressed bytes this snapshot added to the store.
//
// inspectStats is the one place that parses it: adapt it if the format moves.
type snapshotStats struct {
	Pages       int64 `json:"pages"`
	ZeroPages   int64 `json:"zero_pages"`
	DedupPages  int64 `json:"dedup_pages"`
	NewPages    int64 `json:"new_pages"`
	StoredBytes int64 `json:"stored_bytes"`
}

// inspectStats runs `cryo inspect --json id` and returns its stats, failing
// when any of the members is missing.
func inspectStats(t *testing.T, store, id string) snapshotStats {
	t.Helper()
	r := cryo(t, store, "inspect", id, "--json")
	if r.exit != 0 {
		t.Fatalf("cryo inspect %s --json: exit %d\nstderr:\n%s", id, r.exit, r.stderr)
	}
	var doc struct {
		Stats map[string]json.RawMessage `json:"stats"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
		t.Fatalf("cryo inspect --json: not JSON: %v\n%s", err, r.stdout)
	}
	for _, k := range []string{"pages", "zero_pages", "dedup_pages", "new_pages", "stored_bytes"} {
		if _, ok := doc.Stats[k]; !ok {
			t.Fatalf("cryo inspect --json: no stats.%s in\n%s", k, r.stdout)
		}
	}
	raw, _ := json.Marshal(doc.Stats)
	var s snapshotStats
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("cryo inspect --json: stats: %v\n%s", err, r.stdout)
	}
	t.Logf("inspect %s: %+v", id, s)
	return s
}

// output is something a workload writes to: a file or a pipe the test drains.
type output interface {
	String() string
}

// fileOutput is a regular file a workload's stdout was opened on.
type fileOutput string

func (f fileOutput) String() string {
	b, _ := os.ReadFile(string(f))
	return string(b)
}

// pipeOutput collects what arrives on a pipe.
type pipeOutput struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	done chan struct{}
}

// drainPipe copies r into a new pipeOutput until EOF, and closes r.
func drainPipe(r io.ReadCloser) *pipeOutput {
	p := &pipeOutput{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer r.Close()
		b := make([]byte, 64<<10)
		for {
			n, err := r.Read(b)
			p.mu.Lock()
			p.buf.Write(b[:n])
			p.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return p
}

func (p *pipeOutput) String() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.buf.String()
}

// waitOutput waits until out holds want, and returns what it holds. It fails
// at once when the workload reports a failure ("FAIL") instead.
func waitOutput(t *testing.T, out output, want string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := out.String()
		if strings.Contains(s, want) {
			return s
		}
		if strings.Contains(s, "FAIL") {
			t.Fatalf("waiting for %q, the workload reported a failure:\n%s", want, s)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q within %v; output so far:\n%s", want, timeout, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// proc is a workload the test started.
type proc struct {
	cmd    *exec.Cmd
	pid    int
	out    output // its stdout
	waited chan struct{}
	state  *os.ProcessState
}

// spawn describes how to start a workload.
type spawn struct {
	argv []string // the program and its arguments

	// stdoutFile, if set, is a file stdout is opened on (created, truncated);
	// otherwise stdout is a pipe the test drains.
	stdoutFile string

	// stdin, if set, is the workload's stdin; otherwise /dev/null.
	stdin *os.File

	// stderrFile, if set, receives stderr; otherwise /dev/null.
	stderrFile string

	env []string // added to the test's environment
}

// start starts a workload; t.Cleanup kills it if it still runs.
func start(t *testing.T, s spawn) *proc {
	t.Helper()
	cmd := exec.Command(s.argv[0], s.argv[1:]...)
	cmd.Env = append(os.Environ(), s.env...)
	if s.stdin != nil {
		cmd.Stdin = s.stdin
	}
	p := &proc{cmd: cmd, waited: make(chan struct{})}
	var pr, pw *os.File
	if s.stdoutFile != "" {
		f, err := os.Create(s.stdoutFile)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.Stdout = f
		p.out = fileOutput(s.stdoutFile)
	} else {
		var err error
		if pr, pw, err = os.Pipe(); err != nil {
			t.Fatal(err)
		}
		cmd.Stdout = pw
	}
	if s.stderrFile != "" {
		f, err := os.Create(s.stderrFile)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.Stderr = f
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", s.argv[0], err)
	}
	if pw != nil {
		pw.Close()
		p.out = drainPipe(pr)
	}
	p.pid = cmd.Process.Pid
	go func() {
		cmd.Wait()
		p.state = cmd.ProcessState
		close(p.waited)
	}()
	t.Cleanup(func() { p.kill(t) })
	return p
}

// kill sends SIGKILL and reaps the process, so its pid is free for a restore.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	select {
	case <-p.waited:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.waited:
	case <-time.After(30 * time.Second):
		t.Errorf("pid %d did not die within 30s of SIGKILL", p.pid)
	}
}

// wait waits for the workload to exit by itself and returns its exit code.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.waited:
		return p.state.ExitCode()
	case <-time.After(timeout):
		t.Fatalf("pid %d did not exit within %v; output:\n%s", p.pid, timeout, p.out)
		return -1
	}
}

// restoreRun is a `cryo restore` running in the foreground, in the background
// of the test.
type restoreRun struct {
	cmd     *exec.Cmd
	stdout  *pipeOutput // the restored process's stdout, if it was a pipe
	stderr  *pipeOutput // cryo's log and errors
	pidfile string
	started time.Time
	waited  chan struct{}
	exit    int
	took    time.Duration
}

// startRestore runs `cryo --store store restore args... --pidfile F`. Its
// stdin is a pipe the test holds open and never writes to, its stdout and
// stderr pipes the test drains.
// t.Cleanup kills the restored process and cryo if they still run.
func startRestore(t *testing.T, store string, args ...string) *restoreRun {
	t.Helper()
	r := &restoreRun{pidfile: filepath.Join(t.TempDir(), "restored.pid"),
		waited: make(chan struct{})}
	full := append([]string{"--store", store, "--log-level", "info", "restore"}, args...)
	full = append(full, "--pidfile", r.pidfile)
	r.cmd = exec.Command(cryoBin, full...)
	r.cmd.Env = cryoEnv()

	// Plain pipes, not StdoutPipe: a detached restored process may hold them
	// open long after cryo exits, and Wait must not wait for it.
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.cmd.Stdin, r.cmd.Stdout, r.cmd.Stderr = inR, outW, errW
	r.started = time.Now()
	err = r.cmd.Start()
	inR.Close()
	outW.Close()
	errW.Close()
	t.Cleanup(func() { inW.Close() })
	if err != nil {
		t.Fatalf("start cryo restore: %v", err)
	}
	r.stdout, r.stderr = drainPipe(outR), drainPipe(errR)
	go func() {
		err := r.cmd.Wait()
		r.took = time.Since(r.started)
		r.exit = 0
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			r.exit = exitErr.ExitCode()
			if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				r.exit = 128 + int(ws.Signal())
			}
		} else if err != nil {
			r.exit = -1
		}

		// Let the readers catch up with what cryo wrote before it exited.
		select {
		case <-r.stderr.done:
		case <-time.After(5 * time.Second):
		}
		select {
		case <-r.stdout.done:
		case <-time.After(5 * time.Second):
		}
		close(r.waited)
	}()
	t.Cleanup(func() { r.kill(t) })
	return r
}

// kill kills the restored process (by its pidfile) and cryo, if still running.
func (r *restoreRun) kill(t *testing.T) {
	t.Helper()
	select {
	case <-r.waited:
	default:
		if pid := r.readPid(); pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		select {
		case <-r.waited:
		case <-time.After(10 * time.Second):
			r.cmd.Process.Signal(syscall.SIGKILL)
			<-r.waited
		}
	}
	// A restored process may outlive a detached or crashed cryo.
	if pid := r.readPid(); pid > 0 && processAlive(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// readPid returns the pid in the pidfile, or 0 when there is none yet.
func (r *restoreRun) readPid() int {
	b, err := os.ReadFile(r.pidfile)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return pid
}

// waitRunning waits for the pidfile, checks the restored process kept the
// original pid, and returns how long after the start of cryo restore the
// pidfile appeared: the time until the process runs again.
func (r *restoreRun) waitRunning(t *testing.T, wantPid int) time.Duration {
	t.Helper()
	deadline := time.Now().Add(cryoTimeout)
	for {
		if pid := r.readPid(); pid != 0 {
			took := time.Since(r.started)
			if pid != wantPid {
				t.Fatalf("restored process has pid %d, want the original pid %d", pid, wantPid)
			}
			return took
		}
		select {
		case <-r.waited:
			t.Fatalf("cryo restore exited %d without writing its pidfile; stderr:\n%s",
				r.exit, r.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pidfile within %v; stderr:\n%s", cryoTimeout, r.stderr)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// wait waits for cryo restore to exit and returns its exit status.
func (r *restoreRun) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-r.waited:
		return r.exit
	case <-time.After(timeout):
		t.Fatalf("cryo restore still running after %v; stdout:\n%s\nstderr:\n%s",
			timeout, r.stdout, r.stderr)
		return -1
	}
}

// restoreOK waits for a restore to finish, and fails unless it exited 0.
func (r *restoreRun) restoreOK(t *testing.T, out output) {
	t.Helper()
	if code := r.wait(t, restoreTimeout); code != 0 {
		t.Fatalf("cryo restore exited %d (the restored process's status), want 0\n"+
			"workload output:\n%s\ncryo stderr:\n%s", code, out, r.stderr)
	}
	t.Logf("timing: cryo restore ran %v until the restored process exited", r.took)
	logCryo(t, "restore", r.stderr.String())
}

// touch creates an empty file, the trigger the workloads poll for.
func touch(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	st, err := procState(pid)
	return err == nil && st != "Z" && st != "X"
}

// procState returns the one-letter state of pid from /proc/PID/stat.
func procState(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+3 > len(s) {
		return "", fmt.Errorf("parse /proc/%d/stat: %q", pid, s)
	}
	return s[i+2 : i+3], nil
}

// runMarker is put into the environment of every process this test binary
// starts (TestMain sets it in its own): a restored process keeps its environment,
// so the marker tells this run's workloads from those of another run on the same
// machine, which the checks below must neither count nor kill.
var runMarker = fmt.Sprintf("CRYO_E2E_RUN=%d-%d", os.Getpid(), time.Now().UnixNano())

// ours reports whether process pid carries this run's marker.
func ours(pid int) bool {
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return false
	}
	for _, kv := range strings.Split(string(env), "\x00") {
		if kv == runMarker {
			return true
		}
	}
	return false
}

// procsNamed returns the live (non-zombie) processes of this run whose comm is
// name.
func procsNamed(name string) []int {
	if len(name) > 15 {
		name = name[:15]
	}
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err == nil && strings.TrimSpace(string(comm)) == name && processAlive(pid) &&
			ours(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// statusField returns a numeric field of /proc/PID/status (kB for sizes).
func statusField(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// requireFree checks the process pid runs on unharmed by cryo: not stopped,
// not traced.
func requireFree(t *testing.T, pid int) {
	t.Helper()
	st, err := procState(pid)
	if err != nil {
		t.Fatalf("pid %d: %v", pid, err)
	}
	if st == "T" || st == "t" || st == "Z" {
		t.Fatalf("pid %d is in state %s after cryo, want running or sleeping", pid, st)
	}
	if tracer, err := statusField(pid, "TracerPid"); err != nil || tracer != 0 {
		t.Fatalf("pid %d is still traced by pid %d (%v)", pid, tracer, err)
	}
}

// waitSyscall waits until pid is blocked in one of the system calls nrs, as
// /proc/PID/syscall shows.
func waitSyscall(t *testing.T, pid int, nrs ...int) {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/syscall", pid))
		if err != nil {
			t.Fatalf("pid %d: %v", pid, err)
		}
		f := strings.Fields(string(b))
		if len(f) > 0 {
			nr, _ := strconv.Atoi(f[0])
			for _, want := range nrs {
				if nr == want && f[0] != "running" {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d not blocked in syscall %v; /proc/%d/syscall: %s", pid, nrs,
				pid, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// storeFile is one file of a store folder.
type storeFile struct {
	path string // relative to the store
	size int64
}

// storeFiles lists the regular files under store, sorted by path.
func storeFiles(t *testing.T, store string) []storeFile {
	t.Helper()
	var files []storeFile
	err := filepath.WalkDir(store, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(store, path)
		files = append(files, storeFile{rel, info.Size()})
		return nil
	})
	if err != nil {
		t.Fatalf("walk store: %v", err)
	}
	sort.Slice(files, func(i, j int) bool { return files[i].path < files[j].path })
	return files
}

// storeBytes is the total size of the files under store.
func storeBytes(t *testing.T, store string) int64 {
	t.Helper()
	var n int64
	for _, f := range storeFiles(t, store) {
		n += f.size
	}
	return n
}

// memfillCounts are the page counts memfill prints on its first line.
type memfillCounts struct {
	pages, zero, text, random, dup, templates int64
}

// parseMemfill reads memfill's first line.
func parseMemfill(t *testing.T, out string) memfillCounts {
	t.Helper()
	var c memfillCounts
	_, err := fmt.Sscanf(out, "pages %d zero %d text %d random %d dup %d templates %d",
		&c.pages, &c.zero, &c.text, &c.random, &c.dup, &c.templates)
	if err != nil {
		t.Fatalf("parse memfill output %q: %v", out, err)
	}
	return c
}

// checksumLines returns memfill's "checksum" lines.
func checksumLines(out string) []string {
	var sums []string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "checksum ") {
			sums = append(sums, line)
		}
	}
	return sums
}
