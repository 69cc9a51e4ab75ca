package fds

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
	"github.com/cryo-dev/cryo/internal/sockdiag"
)

// runSocket runs the socket steps of a plan. The steps cryo runs itself act on a
// copy of the target's socket taken with pidfd_getfd (Linux 5.6).
func (x *executor) runSocket(o *op) error {
	s := o.rec.Socket
	switch o.code {
	case opSocket:
		ret, err := x.r.Syscall(unix.SYS_SOCKET, uint64(s.Family), uint64(s.Type|o.flags),
			uint64(s.Protocol))
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		if int(ret) != o.fd {
			return fmt.Errorf("socket returned fd %d, the plan expected %d: the target has "+
				"descriptors the plan did not know", int(ret), o.fd)
		}
		return nil
	case opSocketPair:
		addr, _ := x.r.Scratch()
		if _, err := x.r.Syscall(unix.SYS_SOCKETPAIR, uint64(s.Family), uint64(s.Type|o.flags),
			0, addr); err != nil {
			return fmt.Errorf("socketpair: %w", err)
		}
		var b [8]byte
		if err := x.r.ReadMem(addr, b[:]); err != nil {
			return fmt.Errorf("socketpair: read result: %w", err)
		}
		a0 := int(int32(binary.NativeEndian.Uint32(b[0:])))
		a1 := int(int32(binary.NativeEndian.Uint32(b[4:])))
		if a0 != o.fd || a1 != o.to {
			return fmt.Errorf("socketpair returned fds %d and %d, the plan expected %d and %d",
				a0, a1, o.fd, o.to)
		}
		return nil
	case opListen:
		if _, err := x.r.Syscall(unix.SYS_LISTEN, uint64(o.fd), o.val); err != nil {
			return fmt.Errorf("listen on %s with backlog %d: %w", addrString(s.Local), o.val, err)
		}
		return nil
	case opShutdown:
		if _, err := x.r.Syscall(unix.SYS_SHUTDOWN, uint64(o.fd), o.val); err != nil {
			return fmt.Errorf("shutdown %d: %w", o.val, err)
		}
		return nil
	}

	c, err := x.copyOf(o.fd)
	if err != nil {
		return err
	}
	defer unix.Close(c)
	switch o.code {
	case opSockSetup:
		return setupSocket(c, s)
	case opSockReset:
		return resetTCP(c, s.Family)
	case opSockFill:
		return fillSocket(c, o.msgs)
	case opSockConnect:
		sa, err := fromSockAddr(s.Family, s.Peer)
		if err == nil {
			err = unix.Connect(c, sa)
		}
		if err != nil {
			return fmt.Errorf("connect to %s: %w", addrString(s.Peer), err)
		}
		return nil
	}
	panic(fmt.Sprintf("fds: runSocket of op %v", o.code))
}

// copyOf returns a copy of the target's descriptor num.
func (x *executor) copyOf(num int) (int, error) {
	if x.pidfd < 0 {
		pidfd, err := unix.PidfdOpen(x.pid, 0)
		if err != nil {
			return -1, fmt.Errorf("pidfd_open: %w", err)
		}
		x.pidfd = pidfd
	}
	c, err := unix.PidfdGetfd(x.pidfd, num, 0)
	if err != nil {
		return -1, fmt.Errorf("take a copy of fd %d (pidfd_getfd): %w", num, err)
	}
	return c, nil
}

// setupSocket sets the recorded options of the fresh socket c and binds it to
// its recorded address. A unix socket's stale socket file (the one the
// checkpointed socket made, same device and inode) is removed first, and the new
// file gets the old one's mode and owner.
func setupSocket(c int, s *image.Socket) error {
	for _, rec := range s.Options {
		o := findSockOpt(rec.Name)
		v := rec.Value
		cur, err := getSockOpt(c, o)
		if err == nil && cur == v {
			continue
		}
		if err := setSockOpt(c, o, v); err != nil {
			return fmt.Errorf("setsockopt %s %d: %w", o.name, v, err)
		}
	}
	if s.Local == nil || s.State == image.SocketPair || s.State == image.SocketReset {
		return nil
	}
	if s.State == image.SocketConnected && autobound6(s) {
		// Binding would set IPV6_V6ONLY, which the socket did not have: it
		// got its address when it connected, and gets one again so.
		return nil
	}

	if s.Local.Path != "" {
		if err := removeStaleSocketFile(s.Local.Path, s.File); err != nil {
			return err
		}
	}
	sa, err := fromSockAddr(s.Family, s.Local)
	if err != nil {
		return err
	}
	err = unix.Bind(c, sa)
	if err == unix.EADDRINUSE && s.Protocol == unix.IPPROTO_TCP {
		err = bindPastTimeWait(c, sa, s)
	}
	if err != nil {
		return fmt.Errorf("bind to %s: %w", addrString(s.Local), err)
	}
	if s.Local.Path != "" && s.File != nil {
		if err := unix.Chmod(s.Local.Path, s.File.Mode); err != nil {
			return &os.PathError{Op: "chmod", Path: s.Local.Path, Err: err}
		}
		if err := unix.Lchown(s.Local.Path, int(s.File.UID), int(s.File.GID)); err != nil {
			return &os.PathError{Op: "chown", Path: s.Local.Path, Err: err}
		}
	}
	return nil
}

// bindPastTimeWait ends the TIME_WAIT connections on the port of s, then binds
// again. The connections that the checkpointed process accepted and closed
// last stay in TIME_WAIT on its listening port for a minute; unless it set
// SO_REUSEADDR before they were made, they keep the port from being bound, which
// is as true of the program restarting on its own. Restoring it means that
// its old connections are over: cryo ends them (sock_diag SOCK_DESTROY, as
// ss -K does) rather than wait.
func bindPastTimeWait(c int, sa unix.Sockaddr, s *image.Socket) error {
	ip, _ := netip.ParseAddr(s.Local.IP)
	n, err := sockdiag.DestroyTimeWait(uint8(s.Family), ip, uint16(s.Local.Port))
	if s.Family == unix.AF_INET6 && err == nil {
		// A dual-stack listener's IPv4 connections are IPv4 in sock_diag.
		var m int
		m, err = sockdiag.DestroyTimeWait(unix.AF_INET, ip.Unmap(), uint16(s.Local.Port))
		n += m
	}
	if err != nil {
		return fmt.Errorf("%w (and ending the TIME_WAIT connections on the port failed: %v)",
			unix.EADDRINUSE, err)
	}
	if n == 0 {
		return unix.EADDRINUSE
	}
	return unix.Bind(c, sa)
}

// removeStaleSocketFile removes the socket file at path if it is the one the
// checkpointed socket made. A missing file is fine; any other file is left
// alone, and the error matches ErrFileChanged.
func removeStaleSocketFile(path string, f *image.SockFile) error {
	var st unix.Stat_t
	err := unix.Lstat(path, &st)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	if f == nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Dev != f.Dev || st.Ino != f.Ino {
		return fmt.Errorf("%s: %w: the path names another file than the socket's "+
			"(device %#x inode %d)", path, ErrFileChanged, st.Dev, st.Ino)
	}
	if err := unix.Unlink(path); err != nil {
		return &os.PathError{Op: "remove stale socket file", Path: path, Err: err}
	}
	return nil
}

// autobound6 reports whether an IPv6 socket's address must come from connect
// rather than bind: binding to a specific IPv6 address (not v4-mapped) sets
// IPV6_V6ONLY, so a socket with such an address and without IPV6_V6ONLY was
// never bound to it, and the kernel chose its port.
func autobound6(s *image.Socket) bool {
	if s.Family != unix.AF_INET6 || recordedOpt(s, "IPV6_V6ONLY") != 0 {
		return false
	}
	ip, err := netip.ParseAddr(s.Local.IP)
	return err == nil && !ip.IsUnspecified() && !ip.Is4In6()
}

func findRecorded(s *image.Socket, name string) *image.SockOpt {
	for i := range s.Options {
		if s.Options[i].Name == name {
			return &s.Options[i]
		}
	}
	return nil
}

func recordedOpt(s *image.Socket, name string) int {
	if o := findRecorded(s, name); o != nil {
		return o.Value
	}
	return 0
}

// resetTCP makes the fresh TCP socket c a connection its peer has reset: c
// connects to a listener cryo makes on the loopback address, cryo accepts and
// closes that connection with SO_LINGER 0 (which sends a reset), and waits until
// c has seen the reset. Reading c then fails once with ECONNRESET and returns end
// of file after; writing fails with ECONNRESET once, then EPIPE (and SIGPIPE).
func resetTCP(c, family int) error {
	var loop unix.Sockaddr = &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	if family == unix.AF_INET6 {
		loop = &unix.SockaddrInet6{Addr: [16]byte{15: 1}}
	}
	l, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("make the resetting listener: %w", err)
	}
	defer unix.Close(l)
	if err := unix.Bind(l, loop); err != nil {
		return fmt.Errorf("bind the resetting listener: %w", err)
	}
	if err := unix.Listen(l, 1); err != nil {
		return fmt.Errorf("listen on the resetting listener: %w", err)
	}
	sa, err := unix.Getsockname(l)
	if err != nil {
		return fmt.Errorf("getsockname of the resetting listener: %w", err)
	}
	if err := unix.Connect(c, sa); err != nil {
		return fmt.Errorf("connect to the resetting listener: %w", err)
	}
	a, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		return fmt.Errorf("accept on the resetting listener: %w", err)
	}
	err = unix.SetsockoptLinger(a, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
	unix.Close(a)
	if err != nil {
		return fmt.Errorf("set SO_LINGER 0: %w", err)
	}

	// The reset crosses the loopback device; it is usually in before close
	// returns. TCP_INFO reads the state without taking the pending error.
	for deadline := time.Now().Add(2 * time.Second); ; {
		info, err := unix.GetsockoptTCPInfo(c, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return fmt.Errorf("read TCP_INFO: %w", err)
		}
		if info.State == tcpClose {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the connection is %s 2 s after its peer reset it",
				tcpStateName(info.State))
		}
		time.Sleep(time.Millisecond)
	}
}

// fillSocket sends msgs on the unix socket c (one send each), to be queued at its
// peer. The peer's queue was empty and its limits are the recorded ones, so the
// sends do not block; one that would is an error.
func fillSocket(c int, msgs [][]byte) error {
	for i, m := range msgs {
		for off := 0; off < len(m); {
			n, err := unix.SendmsgN(c, m[off:], nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return fmt.Errorf("send queued message %d of %d (%d bytes, at %d): %w", i+1,
					len(msgs), len(m), off, err)
			}
			off += n
		}
	}
	return nil
}
