// Package sockdiag asks the kernel about sockets through the sock_diag netlink
// interface (NETLINK_SOCK_DIAG, linux/sock_diag.h, inet_diag.h and unix_diag.h):
// what a socket's own descriptor cannot tell, such as the backlog of a listening
// socket or the inode of a unix socket's peer.
//
// Queries see the sockets of cryo's network namespace only.
package sockdiag

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// ErrNotFound is returned when no socket of the namespace has the inode asked for.
var ErrNotFound = errors.New("socket not found by sock_diag")

// Constants of linux/inet_diag.h and linux/unix_diag.h.
const (
	// unix_diag_req.udiag_show bits.
	UDIAG_SHOW_NAME    = 0x01
	UDIAG_SHOW_VFS     = 0x02
	UDIAG_SHOW_PEER    = 0x04
	UDIAG_SHOW_ICONS   = 0x08
	UDIAG_SHOW_RQLEN   = 0x10
	UDIAG_SHOW_MEMINFO = 0x20
	UDIAG_SHOW_UID     = 0x40

	// unix_diag_msg attributes. UNIX_DIAG_SHUTDOWN comes whatever udiag_show says.
	UNIX_DIAG_NAME     = 0
	UNIX_DIAG_VFS      = 1
	UNIX_DIAG_PEER     = 2
	UNIX_DIAG_ICONS    = 3
	UNIX_DIAG_RQLEN    = 4
	UNIX_DIAG_MEMINFO  = 5
	UNIX_DIAG_SHUTDOWN = 6

	// sizes of the structs on the wire.
	sizeofInetDiagReqV2 = 56
	sizeofInetDiagMsg   = 72
	sizeofUnixDiagReq   = 24
	sizeofUnixDiagMsg   = 16

	// nlaTypeMask clears NLA_F_NESTED and NLA_F_NET_BYTEORDER from nla_type.
	nlaTypeMask = 0x3fff
)

// Inet is what inet_diag says of one TCP or UDP socket.
type Inet struct {
	Inode uint32
	State uint8 // TCP_ESTABLISHED, TCP_LISTEN, ... (include/net/tcp_states.h)
	// RQueue and WQueue: for a listening TCP socket, the connections waiting to
	// be accepted and the backlog (sk_max_ack_backlog); otherwise bytes queued.
	RQueue, WQueue uint32
}

// Unix is what unix_diag says of one unix socket.
type Unix struct {
	Inode uint32
	Type  uint8 // SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET
	State uint8 // TCP_LISTEN, TCP_ESTABLISHED or TCP_CLOSE
	// Name is the address the socket is bound to: a path (up to its first NUL),
	// or a NUL and an abstract name, every byte of it; nil when unbound.
	Name []byte
	// VFSIno and VFSDev identify the socket file of a path-bound socket.
	VFSIno, VFSDev uint32
	HasVFS         bool
	// Peer is the inode of the connected peer; 0 when not connected.
	Peer uint32
	// RQueue and WQueue: for a listening socket, the connections waiting to be
	// accepted and the backlog; otherwise bytes queued to be read (the first
	// datagram only, for datagram sockets) and bytes sent but not yet freed.
	RQueue, WQueue uint32
	// Shutdown holds the shutdown(2) state: bit 0 receive, bit 1 send.
	Shutdown uint8
}

// InetByInode finds the TCP or UDP socket of family (AF_INET or AF_INET6) and
// protocol (IPPROTO_TCP or IPPROTO_UDP) whose inode is ino, among the sockets in
// the states of the mask states (bit i for state i; ^0 for all). The dump walks
// every matching socket of the namespace, so a narrow mask is cheaper.
func InetByInode(family, protocol uint8, states uint32, ino uint32) (*Inet, error) {
	req := make([]byte, sizeofInetDiagReqV2)
	req[0] = family
	req[1] = protocol
	binary.NativeEndian.PutUint32(req[4:], states)
	// The socket id is left zero: a dump ignores it. The cookie must say "none".
	binary.NativeEndian.PutUint32(req[48:], ^uint32(0))
	binary.NativeEndian.PutUint32(req[52:], ^uint32(0))

	var found *Inet
	err := query(unix.SOCK_DIAG_BY_FAMILY, req, true, func(msg []byte) error {
		if len(msg) < sizeofInetDiagMsg {
			return fmt.Errorf("inet_diag_msg of %d bytes", len(msg))
		}
		if i := binary.NativeEndian.Uint32(msg[68:]); i == ino && found == nil {
			found = &Inet{Inode: i, State: msg[1],
				RQueue: binary.NativeEndian.Uint32(msg[56:]),
				WQueue: binary.NativeEndian.Uint32(msg[60:])}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("inet_diag dump (family %d, protocol %d): %w", family, protocol, err)
	}
	if found == nil {
		return nil, fmt.Errorf("inet_diag: inode %d: %w", ino, ErrNotFound)
	}
	return found, nil
}

// UnixByInode asks unix_diag about the unix socket whose inode is ino: its
// name, socket file, peer, queue lengths and shutdown state.
func UnixByInode(ino uint32) (*Unix, error) {
	req := make([]byte, sizeofUnixDiagReq)
	req[0] = unix.AF_UNIX
	binary.NativeEndian.PutUint32(req[4:], ^uint32(0)) // every state
	binary.NativeEndian.PutUint32(req[8:], ino)
	binary.NativeEndian.PutUint32(req[12:],
		UDIAG_SHOW_NAME|UDIAG_SHOW_VFS|UDIAG_SHOW_PEER|UDIAG_SHOW_RQLEN)
	binary.NativeEndian.PutUint32(req[16:], ^uint32(0)) // no cookie
	binary.NativeEndian.PutUint32(req[20:], ^uint32(0))

	var found *Unix
	err := query(unix.SOCK_DIAG_BY_FAMILY, req, false, func(msg []byte) error {
		u, err := parseUnix(msg)
		if err != nil {
			return err
		}
		if u.Inode == ino {
			found = u
		}
		return nil
	})
	if errors.Is(err, unix.ENOENT) {
		err = ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("unix_diag: inode %d: %w", ino, err)
	}
	if found == nil {
		return nil, fmt.Errorf("unix_diag: inode %d: %w", ino, ErrNotFound)
	}
	return found, nil
}

func parseUnix(msg []byte) (*Unix, error) {
	if len(msg) < sizeofUnixDiagMsg {
		return nil, fmt.Errorf("unix_diag_msg of %d bytes", len(msg))
	}
	u := &Unix{Type: msg[1], State: msg[2], Inode: binary.NativeEndian.Uint32(msg[4:])}
	err := attrs(msg[sizeofUnixDiagMsg:], func(typ uint16, v []byte) error {
		switch typ {
		case UNIX_DIAG_NAME:
			if i := bytes.IndexByte(v, 0); i > 0 {
				v = v[:i] // a path ends at its NUL; an abstract name has none
			}
			u.Name = append([]byte{}, v...)
		case UNIX_DIAG_VFS:
			if len(v) < 8 {
				return fmt.Errorf("UNIX_DIAG_VFS of %d bytes", len(v))
			}
			u.VFSIno = binary.NativeEndian.Uint32(v)
			u.VFSDev = binary.NativeEndian.Uint32(v[4:])
			u.HasVFS = true
		case UNIX_DIAG_PEER:
			if len(v) < 4 {
				return fmt.Errorf("UNIX_DIAG_PEER of %d bytes", len(v))
			}
			u.Peer = binary.NativeEndian.Uint32(v)
		case UNIX_DIAG_RQLEN:
			if len(v) < 8 {
				return fmt.Errorf("UNIX_DIAG_RQLEN of %d bytes", len(v))
			}
			u.RQueue = binary.NativeEndian.Uint32(v)
			u.WQueue = binary.NativeEndian.Uint32(v[4:])
		case UNIX_DIAG_SHUTDOWN:
			if len(v) >= 1 {
				u.Shutdown = v[0]
			}
		}
		return nil
	})
	return u, err
}

// attrs calls f for each netlink attribute (struct nlattr, 4-byte aligned) in b.
func attrs(b []byte, f func(typ uint16, v []byte) error) error {
	for len(b) >= unix.SizeofNlAttr {
		l := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:]) & nlaTypeMask
		if l < unix.SizeofNlAttr || l > len(b) {
			return fmt.Errorf("netlink attribute %d of length %d in %d bytes", typ, l, len(b))
		}
		if err := f(typ, b[unix.SizeofNlAttr:l]); err != nil {
			return err
		}
		l = (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if l > len(b) {
			break
		}
		b = b[l:]
	}
	return nil
}

// DestroyTimeWait ends the TCP connections in TIME_WAIT of family (AF_INET or
// AF_INET6) whose local port is port and whose local address is addr (any
// address when addr is unspecified or invalid), with SOCK_DESTROY
// (CONFIG_INET_DIAG_DESTROY; TIME_WAIT sockets from Linux 4.5 on, which
// needs CAP_NET_ADMIN). It returns how many it ended. A connection that ends by
// itself meanwhile is not an error.
func DestroyTimeWait(family uint8, addr netip.Addr, port uint16) (int, error) {
	const timeWait = 6
	req := make([]byte, sizeofInetDiagReqV2)
	req[0] = family
	req[1] = unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(req[4:], 1<<timeWait)
	binary.NativeEndian.PutUint32(req[48:], ^uint32(0))
	binary.NativeEndian.PutUint32(req[52:], ^uint32(0))

	// inet_diag_sockid: sport and dport big-endian, src and dst (16 bytes
	// each, an IPv4 address in the first 4), interface, cookie.
	var ids [][]byte
	err := query(unix.SOCK_DIAG_BY_FAMILY, req, true, func(msg []byte) error {
		if len(msg) < sizeofInetDiagMsg {
			return fmt.Errorf("inet_diag_msg of %d bytes", len(msg))
		}
		id := msg[4:52]
		if binary.BigEndian.Uint16(id) != port || msg[1] != timeWait {
			return nil
		}
		if addr.IsValid() && !addr.IsUnspecified() {
			var src netip.Addr
			if family == unix.AF_INET {
				src = netip.AddrFrom4([4]byte(id[4:8]))
			} else {
				src = netip.AddrFrom16([16]byte(id[4:20]))
			}
			if src.Unmap() != addr.Unmap() {
				return nil
			}
		}
		ids = append(ids, append([]byte{}, id...))
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("inet_diag dump of TIME_WAIT connections: %w", err)
	}
	n := 0
	for _, id := range ids {
		copy(req[8:], id)
		err := query(sockDestroy, req, false, func([]byte) error { return nil })
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("destroy a TIME_WAIT connection of port %d: %w", port, err)
		}
		n++
	}
	return n, nil
}

// sockDestroy is SOCK_DESTROY of linux/sock_diag.h.
const sockDestroy = 21

// query sends one request of type typ (SOCK_DIAG_BY_FAMILY or SOCK_DESTROY)
// with body req (a dump when dump is set) and calls f with the body of every
// answer until the kernel is done. A request that is not a dump asks for an
// acknowledgement.
func query(typ uint16, req []byte, dump bool, f func(msg []byte) error) error {
	s, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC,
		unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return fmt.Errorf("open netlink socket: %w", err)
	}
	defer unix.Close(s)

	flags := uint16(unix.NLM_F_REQUEST | unix.NLM_F_ACK)
	if dump {
		flags = unix.NLM_F_REQUEST | unix.NLM_F_DUMP
	}
	const seq = 1
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(req))
	binary.NativeEndian.PutUint32(msg[0:], uint32(unix.SizeofNlMsghdr+len(req)))
	binary.NativeEndian.PutUint16(msg[4:], typ)
	binary.NativeEndian.PutUint16(msg[6:], flags)
	binary.NativeEndian.PutUint32(msg[8:], seq)
	msg = append(msg, req...)
	if err := unix.Sendto(s, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send request: %w", err)
	}

	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(s, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("receive answer: %w", err)
		}
		for b := buf[:n]; len(b) >= unix.SizeofNlMsghdr; {
			l := int(binary.NativeEndian.Uint32(b))
			if l < unix.SizeofNlMsghdr || l > len(b) {
				return fmt.Errorf("netlink message of length %d in %d bytes", l, len(b))
			}
			typ := binary.NativeEndian.Uint16(b[4:])
			mseq := binary.NativeEndian.Uint32(b[8:])
			data := b[unix.SizeofNlMsghdr:l]
			if l = (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1); l > len(b) {
				l = len(b)
			}
			b = b[l:]
			if mseq != seq {
				continue
			}
			switch typ {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(data) < 4 {
					return fmt.Errorf("short netlink error message")
				}
				if e := int32(binary.NativeEndian.Uint32(data)); e != 0 {
					return unix.Errno(-e)
				}
				return nil
			}
			if err := f(data); err != nil {
				return err
			}
		}
		if !dump {
			return nil
		}
	}
}
