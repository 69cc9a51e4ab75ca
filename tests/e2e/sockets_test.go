package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sockserve is a running bench/workloads/sockserve.c with a TCP connection to
// the test.
type sockserve struct {
	p       *proc
	dir     string
	trigger string
	conn    net.Conn // the test's end of the workload's connection
	connFD  int      // the workload's end: its fd number
	tcp4    int
	tcp6    int
	udp     int
}

// startSockserve starts sockserve, accepts its connection and reads its hello.
func startSockserve(t *testing.T) *sockserve {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s := &sockserve{dir: t.TempDir()}
	s.trigger = filepath.Join(s.dir, "trigger")
	port := ln.Addr().(*net.TCPAddr).Port
	s.p = start(t, spawn{argv: []string{filepath.Join(binDir, "sockserve"), s.dir,
		fmt.Sprint(port), s.trigger}, stdoutFile: filepath.Join(s.dir, "stdout")})
	out := waitOutput(t, s.p.out, "\n", readyTimeout)
	if _, err := fmt.Sscanf(out, "ready tcp4=%d tcp6=%d udp=%d conn=%d", &s.tcp4, &s.tcp6,
		&s.udp, &s.connFD); err != nil {
		t.Fatalf("sockserve printed %q: %v", out, err)
	}
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(readyTimeout))
	if s.conn, err = ln.Accept(); err != nil {
		t.Fatalf("accept sockserve's connection: %v", err)
	}
	t.Cleanup(func() { s.conn.Close() })
	s.conn.SetDeadline(time.Now().Add(readyTimeout))
	if line, err := bufio.NewReader(s.conn).ReadString('\n'); err != nil || line != "hello\n" {
		t.Fatalf("sockserve's connection said %q (%v), want hello", line, err)
	}
	return s
}

// ask sends a line (for UDP, a datagram) to a sockserve listener and returns the
// answer's first line.
func ask(t *testing.T, network, addr string) string {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		t.Fatalf("connect to %s %s: %v", network, addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if network == "udp4" {
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatalf("send to %s %s: %v", network, addr, err)
		}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read the answer of %s %s: %v", network, addr, err)
	}
	return strings.TrimSpace(line)
}

// askAll asks every listener of sockserve once, expecting the counter to go on
// from n.
func (s *sockserve) askAll(t *testing.T, n int) {
	t.Helper()
	for i, q := range []struct{ network, addr, kind string }{
		{"tcp4", fmt.Sprintf("127.0.0.1:%d", s.tcp4), "tcp4"},
		{"tcp6", fmt.Sprintf("[::1]:%d", s.tcp6), "tcp6"},
		{"udp4", fmt.Sprintf("127.0.0.1:%d", s.udp), "udp"},
		{"unix", filepath.Join(s.dir, "serve.sock"), "unix"},
	} {
		want := fmt.Sprintf("pong %s %d", q.kind, n+i)
		if got := ask(t, q.network, q.addr); got != want {
			t.Errorf("%s %s answered %q, want %q", q.network, q.addr, got, want)
		}
	}
}

// TestSocketsRestored is acceptance item 4 with the default policy, and the
// end-to-end test of every socket kind: sockserve, holding TCP listeners on
// IPv4 and IPv6, a UDP socket, a unix listener on a path, a unix socket pair
// with bytes queued both ways and a TCP connection to the test, is checkpointed
// with --kill and restored lazily. The test's end of the connection sees a reset
// when the original dies; the restored program finds its connection reset, says so
// and carries on: every listener answers new clients at its old address, with
// the counter it kept in memory, and the pair still holds its bytes.
func TestSocketsRestored(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	s := startSockserve(t)
	s.askAll(t, 1)

	res := cryo(t, store, "checkpoint", "--kill", fmt.Sprint(s.p.pid))
	if res.exit != 0 {
		t.Fatalf("cryo checkpoint --kill: exit %d: %s", res.exit, res.stderr)
	}
	id := strings.TrimSpace(res.stdout)
	logCryo(t, "checkpoint", res.stderr)
	s.p.kill(t)

	// The test's end of the connection sees a reset: cryo set SO_LINGER 0 on
	// it before killing the process.
	s.conn.SetDeadline(time.Now().Add(readyTimeout))
	if n, err := s.conn.Read(make([]byte, 16)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the test's end of the connection after checkpoint --kill: read %d, %v; "+
			"want a reset", n, err)
	}

	r := startRestore(t, store, id)
	took := r.waitRunning(t, s.p.pid)
	t.Logf("timing: restored process running %v after cryo restore started", took)
	out := waitOutput(t, s.p.out, "conn closed: ", readyTimeout)
	if !strings.Contains(out, "conn closed: Connection reset by peer") {
		t.Errorf("the restored program should read a reset on its connection; output:\n%s",
			out)
	}
	s.askAll(t, 5)

	touch(t, s.trigger)
	r.restoreOK(t, s.p.out)
	out = s.p.out.String()
	if lastLine(out) != "OK" || !regexp.MustCompile(
		`conn write: (Broken pipe|Connection reset by peer)`).MatchString(out) {
		t.Errorf("restored sockserve did not finish OK with a failing write on the "+
			"connection:\n%s", out)
	}
}

// TestEstablishedRefused is acceptance item 4 with --established=refuse: the
// checkpoint fails, naming the connection's fd, writes nothing, and leaves the
// process running untouched: it still reads its connection and serves.
func TestEstablishedRefused(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	s := startSockserve(t)

	r := cryo(t, store, "checkpoint", "--established=refuse", fmt.Sprint(s.p.pid))
	t.Logf("cryo checkpoint --established=refuse (exit %d): %s", r.exit, r.stderr)
	if r.exit == 0 || strings.TrimSpace(r.stdout) != "" {
		t.Fatalf("checkpoint of a process with a connection succeeded under "+
			"--established=refuse (exit %d, printed %q)", r.exit, r.stdout)
	}
	fdRE := regexp.MustCompile(fmt.Sprintf(`\bfd %d\b.*TCP .*ESTABLISHED`, s.connFD))
	if !fdRE.MatchString(r.stderr) {
		t.Errorf("checkpoint error %q does not name fd %d and its TCP connection",
			strings.TrimSpace(r.stderr), s.connFD)
	}
	if ids := listSnapshots(t, store); len(ids) != 0 {
		t.Errorf("the refused checkpoint left snapshots %q", ids)
	}

	time.Sleep(100 * time.Millisecond)
	requireFree(t, s.p.pid)
	if _, err := s.conn.Write([]byte("still there\n")); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, s.p.out, "conn got still there", readyTimeout)
	s.askAll(t, 1)
	touch(t, s.trigger)
	if code := s.p.wait(t, readyTimeout); code != 0 || lastLine(s.p.out.String()) != "OK" {
		t.Errorf("sockserve after the refused checkpoint: exit %d, output:\n%s", code, s.p.out)
	}
}

// TestAsyncioServer is acceptance item 3: a python3 asyncio server on a
// listening socket (with asyncio's own epoll and self-pipe socket pair) is
// checkpointed, killed and restored lazily; it serves new clients at once, one
// at a time and several together, with the table and the counter it had.
func TestAsyncioServer(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	dir := t.TempDir()
	p := start(t, spawn{argv: []string{pythonBin, filepath.Join(workloadsDir, "asyncserve.py")},
		stdoutFile: filepath.Join(dir, "stdout")})
	out := waitOutput(t, p.out, "\n", readyTimeout)
	var port int
	if _, err := fmt.Sscanf(out, "ready port=%d", &port); err != nil {
		t.Fatalf("asyncserve printed %q: %v", out, err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	query := func(key string) string {
		t.Helper()
		c, err := net.DialTimeout("tcp4", addr, 10*time.Second)
		if err != nil {
			t.Errorf("connect to the asyncio server: %v", err)
			return ""
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write([]byte(key + "\n")); err != nil {
			t.Errorf("send %q to the asyncio server: %v", key, err)
			return ""
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Errorf("read the asyncio server's answer to %q: %v", key, err)
		}
		return strings.TrimSpace(line)
	}
	if got := query("k5"); got != "1 k5 25" {
		t.Fatalf("asyncio server answered %q, want \"1 k5 25\"", got)
	}

	id := checkpoint(t, store, p.pid)
	p.kill(t)
	r := startRestore(t, store, id)
	r.waitRunning(t, p.pid)
	first := time.Now()
	if got := query("k199999"); got != "2 k199999 39999600001" {
		t.Errorf("restored asyncio server answered %q, want \"2 k199999 39999600001\"", got)
	}
	t.Logf("timing: first answer of the restored server %v after cryo restore started "+
		"(%v after it ran)", time.Since(r.started), time.Since(first))

	// Several clients at once.
	answers := make(chan string, 8)
	for i := range 8 {
		go func() { answers <- query(fmt.Sprintf("k%d", 1000+i)) }()
	}
	seen := map[string]bool{}
	for range 8 {
		a := <-answers
		var n, key, val string
		if f := strings.Fields(a); len(f) == 3 {
			n, key, val = f[0], f[1], f[2]
		}
		var i int
		fmt.Sscanf(key, "k%d", &i)
		if seen[n] || val != fmt.Sprint(i*i) || i < 1000 || i >= 1008 {
			t.Errorf("concurrent client got %q", a)
		}
		seen[n] = true
	}
	for i := 3; i <= 10; i++ {
		if !seen[fmt.Sprint(i)] {
			t.Errorf("no concurrent client was client number %d; answers had %v", i, seen)
		}
	}

	if got := query("quit"); got != "bye" {
		t.Errorf("asyncio server answered %q to quit", got)
	}
	r.restoreOK(t, p.out)
	if !strings.Contains(p.out.String(), "served 10") {
		t.Errorf("asyncio server's output after quit:\n%s", p.out)
	}
}
