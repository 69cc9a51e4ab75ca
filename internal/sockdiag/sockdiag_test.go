package sockdiag

import (
	"bytes"
	"net/netip"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func inode(t *testing.T, fd int) uint32 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return uint32(st.Ino)
}

// TestInetListen finds a listening TCP socket and reads its backlog.
func TestInetListen(t *testing.T) {
	s, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	if err := unix.Bind(s, &unix.SockaddrInet6{Addr: [16]byte{15: 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(s, 7); err != nil {
		t.Fatal(err)
	}
	got, err := InetByInode(unix.AF_INET6, unix.IPPROTO_TCP, 1<<10, inode(t, s))
	if err != nil {
		t.Fatal(err)
	}
	if got.State != 10 || got.WQueue != 7 {
		t.Errorf("listening socket: state %d backlog %d, want 10 (TCP_LISTEN) and 7",
			got.State, got.WQueue)
	}
	if _, err := InetByInode(unix.AF_INET, unix.IPPROTO_TCP, 1<<10, inode(t, s)); err == nil {
		t.Errorf("an IPv6 socket was found among the IPv4 ones")
	}
}

// TestUnixPair finds the peer of each end of a socket pair, the name of a bound
// socket, and the bytes queued.
func TestUnixPair(t *testing.T) {
	sv, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sv[0])
	defer unix.Close(sv[1])
	if _, err := unix.Write(sv[0], []byte("hello")); err != nil {
		t.Fatal(err)
	}
	a, err := UnixByInode(inode(t, sv[0]))
	if err != nil {
		t.Fatal(err)
	}
	b, err := UnixByInode(inode(t, sv[1]))
	if err != nil {
		t.Fatal(err)
	}
	if a.Peer != b.Inode || b.Peer != a.Inode {
		t.Errorf("peers: %d -> %d, %d -> %d", a.Inode, a.Peer, b.Inode, b.Peer)
	}
	if b.RQueue != 5 || a.Type != unix.SOCK_STREAM || a.State != 1 {
		t.Errorf("end b: %d bytes queued, type %d, state %d; want 5, stream, established",
			b.RQueue, a.Type, a.State)
	}

	d, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(d)
	path := t.TempDir() + "/sock"
	if err := unix.Bind(d, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	u, err := UnixByInode(inode(t, d))
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(u.Name, []byte(path)) || !u.HasVFS || uint64(u.VFSIno) != st.Ino {
		t.Errorf("bound socket: name %q vfs %v ino %d, want %q and ino %d", u.Name, u.HasVFS,
			u.VFSIno, path, st.Ino)
	}
	if _, err := UnixByInode(1); err == nil {
		t.Errorf("inode 1 found as a unix socket")
	}
}

// TestDestroyTimeWait leaves a connection in TIME_WAIT on a listener's port, so
// that binding the port fails, and ends it.
func TestDestroyTimeWait(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SOCK_DESTROY needs CAP_NET_ADMIN: run as root")
	}
	loop := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	l, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(l, loop); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(l, 1); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(l)
	port := sa.(*unix.SockaddrInet4).Port
	c, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	defer unix.Close(c)
	if err := unix.Connect(c, sa); err != nil {
		t.Fatal(err)
	}
	a, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(a) // the server side closes first: its end goes to TIME_WAIT
	unix.Close(l)
	unix.Read(c, make([]byte, 1)) // the FIN is in
	unix.Close(c)

	n, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(n)
	loop.Port = port
	if err := unix.Bind(n, loop); err != unix.EADDRINUSE {
		t.Fatalf("bind to the port with a connection in TIME_WAIT: %v, want EADDRINUSE", err)
	}
	ended, err := DestroyTimeWait(unix.AF_INET, netip.MustParseAddr("127.0.0.1"), uint16(port))
	if err != nil || ended < 1 {
		t.Fatalf("DestroyTimeWait: %d, %v; want at least the one connection", ended, err)
	}
	if err := unix.Bind(n, loop); err != nil {
		t.Errorf("bind after DestroyTimeWait: %v", err)
	}
}
