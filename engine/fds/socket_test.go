package fds

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
)

// TestSockets dumps testdata/sockets.c, checks what the dump says of each socket
// and that the refusing policy names the first connection, restores the sockets
// into a target once the holder is gone, dumps the target and compares, and
// uses the restored sockets through copies.
func TestSockets(t *testing.T) {
	h := startProgram(t, buildTestProgram(t, "sockets"))
	pid := h.cmd.Process.Pid

	_, err := Dump(pid, DumpOptions{Established: EstablishedRefuse})
	var ee *EstablishedError
	if !errors.Is(err, ErrEstablished) || !errors.As(err, &ee) || ee.FD != 13 {
		t.Errorf("Dump refusing connections: %v, want an EstablishedError for fd 13", err)
	}
	want, err := Dump(pid, DumpOptions{})
	if err != nil {
		t.Fatal(err)
	}
	byNum := map[int]*image.Socket{}
	for _, fd := range want {
		if fd.Kind == image.FDSocket {
			byNum[fd.Num] = fd.Socket
		}
	}
	opt := func(n int, name string) int {
		for _, o := range byNum[n].Options {
			if o.Name == name {
				return o.Value
			}
		}
		return -1000
	}
	check := func(n int, ok bool, what string) {
		t.Helper()
		if !ok {
			t.Errorf("fd %d: want %s; got %+v", n, what, byNum[n])
		}
	}
	for n := 3; n <= 21; n++ {
		if byNum[n] == nil && n != 19 {
			t.Fatalf("fd %d: not a socket in the dump: %+v", n, want)
		}
	}
	s := byNum[3]
	check(3, s.State == image.SocketListen && s.Backlog == 17 && s.Local.IP == "127.0.0.1" &&
		s.Local.Port != 0 && opt(3, "SO_REUSEADDR") == 1 && opt(3, "TCP_NODELAY") == 1 &&
		opt(3, "SO_RCVBUF") == 200000, "TCP listening on 127.0.0.1, backlog 17, options")
	s = byNum[4]
	check(4, s.State == image.SocketListen && s.Family == unix.AF_INET6 && s.Local.IP == "::1" &&
		opt(4, "IPV6_V6ONLY") == 1 && opt(4, "SO_REUSEPORT") == 1 &&
		opt(4, "SO_KEEPALIVE") == 1 && opt(4, "TCP_KEEPIDLE") == 77 && s.Backlog == 3,
		"TCP listening on ::1 with its options")
	s = byNum[5]
	check(5, s.State == image.SocketBound && s.Protocol == unix.IPPROTO_UDP &&
		s.Local.Port != 0 && opt(5, "SO_BROADCAST") == 1, "UDP bound, SO_BROADCAST")
	s = byNum[6]
	check(6, s.State == image.SocketConnected && s.Peer.IP == "::1" && s.Peer.Port == 9,
		"UDP connected to [::1]:9")
	s = byNum[7]
	check(7, s.State == image.SocketListen && s.Local.Path == filepath.Join(h.dir, "listen.sock") &&
		s.Backlog == 5 && s.File != nil && s.File.Mode == 0o640, "unix listening on a path")
	s = byNum[8]
	check(8, s.State == image.SocketBound && s.Local != nil &&
		string(s.Local.Abstract) == fmt.Sprintf("cryo-test-%d\x00x", pid), "abstract name")
	check(9, byNum[9].State == image.SocketPair && byNum[9].PairID == byNum[10].PairID &&
		slices.Equal(flat(byNum[9].Queued), []byte("world!")) && byNum[9].Shutdown == 2,
		"pair end with world! queued, shut for sending")
	check(10, slices.Equal(flat(byNum[10].Queued), []byte("hello")) && byNum[10].Shutdown == 1,
		"pair end with hello queued, shut for receiving")
	check(12, byNum[12].State == image.SocketPair && len(byNum[12].Queued) == 3 &&
		string(byNum[12].Queued[2]) == "three", "datagram pair end with three messages")
	check(13, byNum[13].State == image.SocketReset && byNum[13].Peer.Port == byNum[3].Local.Port,
		"TCP connection, reset")
	check(14, byNum[14].State == image.SocketReset, "accepted TCP connection, reset")
	check(15, byNum[15].State == image.SocketPair && byNum[16].State == image.SocketPair &&
		byNum[15].PairID == byNum[16].PairID && string(flat(byNum[16].Queued)) == "ping",
		"unix connection inside the process: a pair")
	check(17, byNum[17].State == image.SocketBound && byNum[17].Local == nil, "fresh TCP")
	check(18, byNum[18].State == image.SocketReset && string(flat(byNum[18].Queued)) ==
		"last words", "unix socket whose peer closed, with its data")
	check(21, byNum[21].State == image.SocketPair && byNum[21].Type == unix.SOCK_SEQPACKET &&
		len(byNum[21].Queued) == 2 && string(byNum[21].Queued[1]) == "m2",
		"seqpacket pair end with two messages")
	for _, fd := range want {
		if fd.Num == 19 && (fd.DupOf == nil || *fd.DupOf != 3 || fd.Kind != image.FDSocket) {
			t.Errorf("fd 19: %+v, want a dup of socket 3", fd)
		}
	}

	// The dumps took nothing: the holder reads every queued byte, and its peek
	// offsets are off.
	h.finish(t)
	h.cmd.Wait()

	tg := startTarget(t)
	if err := Restore(tg.task, want, Stdio{}); err != nil {
		t.Fatal(err)
	}
	got, err := Dump(tg.pid, DumpOptions{})
	if err != nil {
		t.Fatal(err)
	}
	compareFDs(t, normalizeSockets(got), normalizeSockets(want))

	// Use the restored sockets through copies.
	pidfd, err := unix.PidfdOpen(tg.pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	cp := func(n int) int {
		c, err := unix.PidfdGetfd(pidfd, n, 0)
		if err != nil {
			t.Fatalf("copy fd %d: %v", n, err)
		}
		t.Cleanup(func() { unix.Close(c) })
		return c
	}
	buf := make([]byte, 64)

	// The listener takes connections on its old port.
	c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(c)
	if err := unix.Connect(c, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1},
		Port: byNum[3].Local.Port}); err != nil {
		t.Fatalf("connect to the restored listener: %v", err)
	}
	if a, _, err := unix.Accept4(cp(3), unix.SOCK_CLOEXEC); err != nil {
		t.Errorf("accept on the restored listener: %v", err)
	} else {
		unix.Close(a)
	}

	// The connection reads a reset, then end of file; writes fail.
	tc := cp(13)
	if _, err := unix.Read(tc, buf); err != unix.ECONNRESET {
		t.Errorf("first read of the restored connection: %v, want ECONNRESET", err)
	}
	if n, err := unix.Read(tc, buf); n != 0 || err != nil {
		t.Errorf("second read of the restored connection: %d, %v, want end of file", n, err)
	}
	if _, err := unix.SendmsgN(tc, []byte("x"), nil, nil, unix.MSG_NOSIGNAL); err != unix.EPIPE {
		t.Errorf("write to the restored connection: %v, want EPIPE", err)
	}

	// The queues are back, in order; the peer that closed stays closed.
	for _, q := range []struct {
		fd   int
		want []string
	}{{10, []string{"hello"}}, {9, []string{"world!"}}, {12, []string{"one", "two", "three"}},
		{16, []string{"ping"}}, {18, []string{"last words", ""}},
		{21, []string{"m1", "m2"}}} {
		c := cp(q.fd)
		for _, w := range q.want {
			n, err := unix.Read(c, buf)
			if err != nil || string(buf[:n]) != w {
				t.Errorf("fd %d: read %q, %v, want %q", q.fd, buf[:max(n, 0)], err, w)
			}
		}
	}
	if _, err := unix.SendmsgN(cp(9), []byte("x"), nil, nil, unix.MSG_NOSIGNAL); err != unix.EPIPE {
		t.Errorf("write to the pair end shut for sending: %v, want EPIPE", err)
	}
}

func flat(msgs [][]byte) []byte { return slices.Concat(msgs...) }

// normalizeSockets clears what a restore changes by design: pair ids, the
// socket file's inode, and the addresses of reset connections.
func normalizeSockets(fds []image.FD) []image.FD {
	out := slices.Clone(fds)
	for i := range out {
		if out[i].Socket == nil {
			continue
		}
		s := *out[i].Socket
		s.PairID = 0
		if s.File != nil {
			f := *s.File
			f.Ino = 0
			s.File = &f
		}
		if s.State == image.SocketReset {
			s.Local, s.Peer = nil, nil
		}
		if s.State == image.SocketConnected && s.Family == unix.AF_INET6 {
			s.Local = nil // connect chose it: see autobound6
		}
		out[i].Socket = &s
	}
	return out
}

func TestSocketString(t *testing.T) {
	for _, tt := range []struct {
		s    image.Socket
		want string
	}{
		{image.Socket{Family: unix.AF_INET, Type: unix.SOCK_STREAM, Protocol: unix.IPPROTO_TCP,
			State: image.SocketListen, Local: &image.SockAddr{IP: "127.0.0.1", Port: 6379},
			Backlog: 511}, "TCP listen 127.0.0.1:6379 backlog 511"},
		{image.Socket{Family: unix.AF_INET6, Type: unix.SOCK_DGRAM, Protocol: unix.IPPROTO_UDP,
			State: image.SocketConnected, Local: &image.SockAddr{IP: "::1", Port: 5},
			Peer: &image.SockAddr{IP: "::1", Port: 9}}, "UDP/IPv6 connected [::1]:5 -> [::1]:9"},
		{image.Socket{Family: unix.AF_UNIX, Type: unix.SOCK_STREAM, State: image.SocketPair,
			PairID: 4711, Queued: [][]byte{[]byte("hello")}},
			"unix stream pair 4711, 5 bytes queued"},
		{image.Socket{Family: unix.AF_UNIX, Type: unix.SOCK_DGRAM, State: image.SocketBound,
			Local: &image.SockAddr{Abstract: []byte("a\x00b")}}, `unix datagram bound @"a\x00b"`},
		{image.Socket{Family: unix.AF_INET, Type: unix.SOCK_STREAM, Protocol: unix.IPPROTO_TCP,
			State: image.SocketReset, Local: &image.SockAddr{IP: "10.0.0.1", Port: 4000},
			Peer: &image.SockAddr{IP: "10.0.0.2", Port: 80}},
			"TCP reset (was 10.0.0.1:4000 -> 10.0.0.2:80)"},
	} {
		if got := SocketString(&tt.s); got != tt.want {
			t.Errorf("SocketString = %q, want %q", got, tt.want)
		}
	}
}
