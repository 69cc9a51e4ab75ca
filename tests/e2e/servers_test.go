package e2e

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The servers of acceptance items 1 and 2 are the Debian packages; `make deps`
// installs them. Both run several threads (redis its bio and jemalloc threads,
// memcached its workers and maintainers), so their checkpoints need cryo's
// support for multi-threaded processes.

const serverKeys = 500_000

// lookTool finds a program the test needs, or fails saying how to get it.
func lookTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is needed (Debian package %s; `make deps` installs it): %v", name, pkg, err)
	}
	return p
}

// freePort returns a loopback TCP port that nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// checkpointServer checkpoints a server, saying plainly when cryo refused it for
// its threads.
func checkpointServer(t *testing.T, store, name string, pid int) string {
	t.Helper()
	threads, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	r := cryo(t, store, "checkpoint", strconv.Itoa(pid))
	if r.exit != 0 {
		t.Fatalf("cryo checkpoint of %s (pid %d, %d threads) under load: exit %d: %s\n"+
			"(if cryo refused its threads, this test waits for multi-threaded checkpoint)",
			name, pid, len(threads), r.exit, strings.TrimSpace(r.stderr))
	}
	logCryo(t, "checkpoint", r.stderr)
	t.Logf("timing: checkpoint of %s (%d threads) under load: %v wall", name, len(threads),
		r.took)
	return strings.TrimSpace(r.stdout)
}

// firstReply connects to addr again and again, sends req and returns how long
// after since the first answer beginning with want came.
func firstReply(t *testing.T, addr, req, want string, since time.Time) time.Duration {
	t.Helper()
	deadline := time.Now().Add(cryoTimeout)
	for {
		c, err := net.DialTimeout("tcp4", addr, time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write([]byte(req))
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, want) {
				return time.Since(since)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q from %s within %v", want, addr, cryoTimeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// firstReplyRestored is firstReply for a restored server: on failure it says
// what cryo restore printed and where the restored threads are.
func firstReplyRestored(t *testing.T, r *restoreRun, addr, req, want string) time.Duration {
	t.Helper()
	deadline := time.Now().Add(cryoTimeout)
	for {
		c, err := net.DialTimeout("tcp4", addr, time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write([]byte(req))
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, want) {
				return time.Since(r.started)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q from the restored server at %s within %v; its threads:\n%s\n"+
				"cryo restore's stderr:\n%s", want, addr, cryoTimeout, threadStates(r.readPid()),
				r.stderr)
		}
		time.Sleep(time.Millisecond)
	}
}

// threadStates describes where the threads of pid are: state, wchan, syscall.
func threadStates(pid int) string {
	var b strings.Builder
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return err.Error()
	}
	for _, task := range tasks {
		dir := fmt.Sprintf("/proc/%d/task/%s/", pid, task.Name())
		stat, _ := os.ReadFile(dir + "stat")
		wchan, _ := os.ReadFile(dir + "wchan")
		sc, _ := os.ReadFile(dir + "syscall")
		state := ""
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 && i+3 < len(stat) {
			state = string(stat[i+2 : i+3])
		}
		fmt.Fprintf(&b, "  tid %s state %s wchan %s syscall %s\n", task.Name(), state, wchan,
			strings.TrimSpace(string(sc)))
	}
	return b.String()
}

// redisConn is a minimal RESP client.
type redisConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialRedis(t *testing.T, addr string) *redisConn {
	t.Helper()
	c, err := net.DialTimeout("tcp4", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("connect to redis at %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(cryoTimeout))
	return &redisConn{c: c, r: bufio.NewReaderSize(c, 1<<16)}
}

// send writes commands without reading their replies.
func (rc *redisConn) send(t *testing.T, cmds ...[]string) {
	t.Helper()
	var b strings.Builder
	for _, args := range cmds {
		fmt.Fprintf(&b, "*%d\r\n", len(args))
		for _, a := range args {
			fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
		}
	}
	if _, err := rc.c.Write([]byte(b.String())); err != nil {
		t.Fatalf("send to redis: %v", err)
	}
}

// reply reads one reply: a status, error or integer line as is ("+OK",
// "-ERR ...", ":5"), a bulk string as its value, a nil bulk as "(nil)".
func (rc *redisConn) reply(t *testing.T) string {
	t.Helper()
	line, err := rc.r.ReadString('\n')
	if err != nil {
		t.Fatalf("read a redis reply: %v", err)
	}
	line = strings.TrimRight(line, "\r\n")
	if !strings.HasPrefix(line, "$") {
		return line
	}
	n, err := strconv.Atoi(line[1:])
	if err != nil {
		t.Fatalf("redis reply %q", line)
	}
	if n < 0 {
		return "(nil)"
	}
	b := make([]byte, n+2)
	if _, err := ioReadFull(rc.r, b); err != nil {
		t.Fatalf("read a redis bulk reply: %v", err)
	}
	return string(b[:n])
}

func (rc *redisConn) do(t *testing.T, args ...string) string {
	t.Helper()
	rc.send(t, args)
	return rc.reply(t)
}

func ioReadFull(r *bufio.Reader, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := r.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func redisValue(i int) string { return fmt.Sprintf("value-%d-%x", i, uint32(i)*2654435761) }

// TestRedisUnderLoad is acceptance item 1: redis-server holding 500,000 keys is
// checkpointed while redis-benchmark drives it (read-only commands, so that
// the data set the checks compare against is the one checkpointed), killed and
// restored lazily. DBSIZE and 1,000 sampled keys are identical, and new
// clients are served at once. The log gives the time from the start of cryo
// restore to redis's first reply, against redis's own start from an RDB file of
// the same data.
func TestRedisUnderLoad(t *testing.T) {
	requireE2E(t)
	server := lookTool(t, "redis-server", "redis-server")
	bench := lookTool(t, "redis-benchmark", "redis-tools")
	store := newStore(t)
	dir := t.TempDir()
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	redisArgs := func(port int) []string {
		return []string{server, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", dir, "--daemonize", "no",
			"--protected-mode", "no", "--logfile", "", "--enable-protected-configs",
			"yes"}
	}
	p := start(t, spawn{argv: redisArgs(port), stdoutFile: filepath.Join(dir, "redis.out")})
	firstReply(t, addr, "PING\r\n", "+PONG", time.Now())

	// 500,000 keys, 1,000 to an MSET.
	rc := dialRedis(t, addr)
	var cmds [][]string
	for i := 0; i < serverKeys; i += 1000 {
		args := []string{"MSET"}
		for j := i; j < i+1000 && j < serverKeys; j++ {
			args = append(args, fmt.Sprintf("key:%d", j), redisValue(j))
		}
		cmds = append(cmds, args)
	}
	rc.send(t, cmds...)
	for range cmds {
		if r := rc.reply(t); r != "+OK" {
			t.Fatalf("MSET: %s", r)
		}
	}
	if n := rc.do(t, "DBSIZE"); n != fmt.Sprintf(":%d", serverKeys) {
		t.Fatalf("DBSIZE after loading: %s", n)
	}

	// Load: redis-benchmark with read-only commands, 20 clients.
	b := start(t, spawn{argv: []string{bench, "-h", "127.0.0.1", "-p", strconv.Itoa(port),
		"-c", "20", "-n", "1000000000", "-r", strconv.Itoa(serverKeys), "-t", "get,ping",
		"-q", "-l"}, stdoutFile: filepath.Join(dir, "bench.out")})
	time.Sleep(time.Second)
	info := rc.do(t, "INFO", "clients")
	var clients int
	for _, line := range strings.Split(info, "\n") {
		fmt.Sscanf(line, "connected_clients:%d", &clients)
	}
	if clients < 20 {
		t.Fatalf("redis has %d clients under redis-benchmark's load, want 21:\n%s",
			clients, info)
	}
	rc.c.Close()

	id := checkpointServer(t, store, "redis-server", p.pid)
	p.kill(t)
	b.kill(t)

	r := startRestore(t, store, id)
	restoreTook := firstReplyRestored(t, r, addr, "PING\r\n", "+PONG")
	t.Logf("timing: cryo restore to redis's first reply: %v (noisy: a shared 2-CPU VM)",
		restoreTook)

	rc = dialRedis(t, addr)
	if n := rc.do(t, "DBSIZE"); n != fmt.Sprintf(":%d", serverKeys) {
		t.Errorf("DBSIZE after restore: %s, want %d", n, serverKeys)
	}
	rng := rand.New(rand.NewPCG(8, 1))
	sample := make([]int, 1000)
	cmds = cmds[:0]
	for k := range sample {
		sample[k] = rng.IntN(serverKeys)
		cmds = append(cmds, []string{"GET", fmt.Sprintf("key:%d", sample[k])})
	}
	rc.send(t, cmds...)
	bad := 0
	for _, i := range sample {
		if v := rc.reply(t); v != redisValue(i) {
			if bad++; bad <= 5 {
				t.Errorf("GET key:%d after restore: %q, want %q", i, v, redisValue(i))
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of 1000 sampled keys differ after restore", bad)
	}

	// New clients, several at once, are served at once.
	var wg sync.WaitGroup
	var slow atomic.Int64
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if d := firstReply(t, addr, "PING\r\n", "+PONG", time.Now()); d > 2*time.Second {
				slow.Add(1)
			}
		}()
	}
	wg.Wait()
	if slow.Load() > 0 {
		t.Errorf("%d of 10 new clients waited over 2 s for PING", slow.Load())
	}

	// redis's own start from an RDB file of the same data, for comparison.
	// redis writes the file into its working directory, which cryo restores
	// only with the process-wide state (not on every branch yet): set it again,
	// so that the file lands in dir whatever.
	if s := rc.do(t, "CONFIG", "SET", "dir", dir); s != "+OK" {
		t.Fatalf("CONFIG SET dir on the restored redis: %s", s)
	}
	if s := rc.do(t, "SAVE"); s != "+OK" {
		t.Fatalf("SAVE on the restored redis: %s", s)
	}
	rc.send(t, []string{"SHUTDOWN", "NOSAVE"})
	r.restoreOK(t, fileOutput(filepath.Join(dir, "redis.out")))
	port2 := freePort(t)
	started := time.Now()
	start(t, spawn{argv: redisArgs(port2), stdoutFile: filepath.Join(dir, "redis2.out")})
	own := firstReply(t, fmt.Sprintf("127.0.0.1:%d", port2), "DBSIZE\r\n",
		fmt.Sprintf(":%d", serverKeys), started)
	t.Logf("timing: redis's own start from its RDB file (%d keys) to its first reply with "+
		"the data: %v; cryo restore to first reply: %v", serverKeys, own, restoreTook)
}

// memcacheValue is the value of key i.
func memcacheValue(i int) string { return fmt.Sprintf("mc-%d-%x", i, uint32(i)*2246822519) }

// mcGet reads the value of key from a memcached text-protocol reader, after the
// get was sent; "" when it is missing.
func mcGet(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read a memcached reply: %v", err)
	}
	if line == "END\r\n" {
		return ""
	}
	f := strings.Fields(line)
	if len(f) != 4 || f[0] != "VALUE" {
		t.Fatalf("memcached replied %q", line)
	}
	n, _ := strconv.Atoi(f[3])
	b := make([]byte, n+2)
	if _, err := ioReadFull(r, b); err != nil {
		t.Fatal(err)
	}
	if end, _ := r.ReadString('\n'); end != "END\r\n" {
		t.Fatalf("memcached value not followed by END: %q", end)
	}
	return string(b[:n])
}

// mcStat returns one field of memcached's stats.
func mcStat(t *testing.T, addr, name string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp4", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("connect to memcached: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	c.Write([]byte("stats\r\n"))
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil || line == "END\r\n" {
			t.Fatalf("memcached stats without %s (%v)", name, err)
		}
		if f := strings.Fields(line); len(f) == 3 && f[1] == name {
			return f[2]
		}
	}
}

// TestMemcachedUnderLoad is acceptance item 2: memcached holding 500,000 keys is
// checkpointed while clients drive it with gets, killed and restored lazily:
// its item count and 1,000 sampled keys are identical and new clients are
// served at once. memcached keeps no data across its own restarts (its
// restartable-cache file is experimental), so there is no start time of its own
// to compare with.
func TestMemcachedUnderLoad(t *testing.T) {
	requireE2E(t)
	server := lookTool(t, "memcached", "memcached")
	store := newStore(t)
	dir := t.TempDir()
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p := start(t, spawn{argv: []string{server, "-p", strconv.Itoa(port), "-U", "0",
		"-l", "127.0.0.1", "-m", "512", "-t", "2", "-u", "root"},
		stdoutFile: filepath.Join(dir, "memcached.out")})
	firstReply(t, addr, "version\r\n", "VERSION", time.Now())

	c, err := net.DialTimeout("tcp4", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(cryoTimeout))
	w := bufio.NewWriterSize(c, 1<<16)
	for i := range serverKeys {
		v := memcacheValue(i)
		fmt.Fprintf(w, "set key:%d 0 0 %d noreply\r\n%s\r\n", i, len(v), v)
	}
	w.WriteString("version\r\n")
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil ||
		!strings.HasPrefix(line, "VERSION") {
		t.Fatalf("memcached after the sets: %q, %v", line, err)
	}
	c.Close()
	items := mcStat(t, addr, "curr_items")
	if items != strconv.Itoa(serverKeys) {
		t.Fatalf("memcached holds %s items after the sets, want %d", items, serverKeys)
	}

	// Load: 8 clients getting random keys until the checkpoint is done.
	stop := make(chan struct{})
	var gets atomic.Int64
	var wg sync.WaitGroup
	for k := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp4", addr, 10*time.Second)
			if err != nil {
				return
			}
			defer c.Close()
			r := bufio.NewReader(c)
			rng := rand.New(rand.NewPCG(uint64(k), 3))
			for {
				select {
				case <-stop:
					return
				default:
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := fmt.Fprintf(c, "get key:%d\r\n", rng.IntN(serverKeys)); err != nil {
					return
				}
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if line == "END\r\n" {
						break
					}
				}
				gets.Add(1)
			}
		}()
	}
	time.Sleep(time.Second)
	before := gets.Load()
	id := checkpointServer(t, store, "memcached", p.pid)
	p.kill(t)
	close(stop)
	wg.Wait()
	t.Logf("load: %d gets in all, %d before the checkpoint started", gets.Load(), before)
	if before == 0 {
		t.Errorf("the load clients got no answer before the checkpoint")
	}

	r := startRestore(t, store, id)
	took := firstReplyRestored(t, r, addr, "version\r\n", "VERSION")
	t.Logf("timing: cryo restore to memcached's first reply: %v (noisy: a shared 2-CPU VM)",
		took)

	if got := mcStat(t, addr, "curr_items"); got != items {
		t.Errorf("memcached holds %s items after restore, want %s", got, items)
	}
	c, err = net.DialTimeout("tcp4", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(cryoTimeout))
	rng := rand.New(rand.NewPCG(8, 2))
	sample := make([]int, 1000)
	var req strings.Builder
	for k := range sample {
		sample[k] = rng.IntN(serverKeys)
		fmt.Fprintf(&req, "get key:%d\r\n", sample[k])
	}
	if _, err := c.Write([]byte(req.String())); err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(c)
	bad := 0
	for _, i := range sample {
		if v := mcGet(t, rd); v != memcacheValue(i) {
			if bad++; bad <= 5 {
				t.Errorf("get key:%d after restore: %q, want %q", i, v, memcacheValue(i))
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of 1000 sampled keys differ after restore", bad)
	}

	var slow atomic.Int64
	var wg2 sync.WaitGroup
	for range 10 {
		wg2.Add(1)
		go func() {
			defer wg2.Done()
			if d := firstReply(t, addr, "version\r\n", "VERSION", time.Now()); d > 2*time.Second {
				slow.Add(1)
			}
		}()
	}
	wg2.Wait()
	if slow.Load() > 0 {
		t.Errorf("%d of 10 new clients waited over 2 s for an answer", slow.Load())
	}
}
