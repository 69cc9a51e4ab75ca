package fds

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
	"github.com/cryo-dev/cryo/internal/sockdiag"
)

// Established says what Dump does with a connection to something outside the
// process: an established TCP connection (or one in any state but LISTEN and
// CLOSE), or a unix stream or seqpacket socket whose peer is outside.
type Established string

const (
	// EstablishedClose (the default, also "") records the connection as reset:
	// the restored process finds it closed (see image.SocketReset).
	EstablishedClose Established = "close"
	// EstablishedRefuse makes Dump fail with an *EstablishedError naming the
	// lowest such fd.
	EstablishedRefuse Established = "refuse"
)

// ErrEstablished is matched (errors.Is) by every *EstablishedError.
var ErrEstablished = errors.New("connections are refused")

// EstablishedError reports a connection that Dump refused under
// EstablishedRefuse.
type EstablishedError struct {
	FD int
	// Conn describes the connection, as "TCP 127.0.0.1:41234 -> 127.0.0.1:6379
	// (ESTABLISHED)".
	Conn string
}

func (e *EstablishedError) Error() string {
	return fmt.Sprintf("fd %d: %s: a connection to outside the process, refused "+
		"(connections are checkpointed only as closed)", e.FD, e.Conn)
}

// Is makes errors.Is(err, ErrEstablished) true.
func (e *EstablishedError) Is(target error) bool { return target == ErrEstablished }

// TCP states of include/net/tcp_states.h, as TCP_INFO and sock_diag report them.
const (
	tcpEstablished = 1
	tcpClose       = 7
	tcpListen      = 10
)

var tcpStateNames = [...]string{"", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1",
	"FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING",
	"NEW_SYN_RECV", "BOUND_INACTIVE"}

func tcpStateName(s uint8) string {
	if int(s) < len(tcpStateNames) && s != 0 {
		return tcpStateNames[s]
	}
	return fmt.Sprintf("state %d", s)
}

// classifySockets sets the kind and state of every socket descriptor. It takes a
// copy of each socket with pidfd_getfd (Linux 5.6) to read its addresses and
// options, and asks sock_diag what the copy cannot tell: the backlog of a
// listening socket, and the peer of a unix socket, which finds the pairs whose
// both ends the process holds. A socket cryo cannot rebuild fails the dump with
// an *UnsupportedError; a connection to outside the process with an
// *EstablishedError under EstablishedRefuse.
func classifySockets(pid int, ds []*desc, policy Established) error {
	var socks []*desc
	byIno := make(map[uint64]*desc)
	for _, d := range ds {
		if strings.HasPrefix(d.link, "socket:") && d.dup == nil {
			socks = append(socks, d)
			byIno[d.st.Ino] = d
		}
	}
	if len(socks) == 0 {
		return nil
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("pidfd_open: %w", err)
	}
	defer unix.Close(pidfd)

	for _, d := range socks {
		s, err := unix.PidfdGetfd(pidfd, d.fd.Num, 0)
		if err != nil {
			return fmt.Errorf("fd %d: take a copy of the socket (pidfd_getfd): %w", d.fd.Num, err)
		}
		sock, err := readSocket(s, d, byIno, policy)
		unix.Close(s)
		if err != nil {
			return err
		}
		d.fd.Kind = image.FDSocket
		d.fd.Pos, d.fd.Mode = 0, 0
		d.fd.Socket = sock
	}
	return nil
}

// readSocket reads the socket s, a copy of d's.
func readSocket(s int, d *desc, byIno map[uint64]*desc, policy Established) (
	*image.Socket, error) {

	num := d.fd.Num
	family, err1 := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_DOMAIN)
	typ, err2 := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_TYPE)
	proto, err3 := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, fmt.Errorf("fd %d: read the socket's family and type: %w", num, err)
	}
	sock := &image.Socket{Family: family, Type: typ, Protocol: proto}

	switch {
	case (family == unix.AF_INET || family == unix.AF_INET6) &&
		typ == unix.SOCK_STREAM && proto == unix.IPPROTO_TCP:
		if err := readTCP(s, d, sock, policy); err != nil {
			return nil, err
		}
	case (family == unix.AF_INET || family == unix.AF_INET6) &&
		typ == unix.SOCK_DGRAM && proto == unix.IPPROTO_UDP:
		if err := readInetAddrs(s, sock); err != nil {
			return nil, fmt.Errorf("fd %d: %w", num, err)
		}
		sock.State = image.SocketBound
		if sock.Peer != nil {
			sock.State = image.SocketConnected
		}
	case family == unix.AF_UNIX && (typ == unix.SOCK_STREAM || typ == unix.SOCK_DGRAM ||
		typ == unix.SOCK_SEQPACKET):
		if err := readUnix(s, d, sock, byIno, policy); err != nil {
			return nil, err
		}
	default:
		return nil, &UnsupportedError{FD: num, Kind: d.link + socketKind(family, typ, proto) +
			": cryo rebuilds TCP, UDP and unix sockets only"}
	}

	if sock.State != image.SocketReset {
		var err error
		if sock.Options, err = readSockOpts(s, sock); err != nil {
			return nil, fmt.Errorf("fd %d: %w", num, err)
		}
	}
	return sock, nil
}

// readTCP reads a TCP socket: listening, fresh (bound or not) or a connection.
func readTCP(s int, d *desc, sock *image.Socket, policy Established) error {
	num := d.fd.Num
	info, err := unix.GetsockoptTCPInfo(s, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return fmt.Errorf("fd %d: read TCP_INFO: %w", num, err)
	}
	if err := readInetAddrs(s, sock); err != nil {
		return fmt.Errorf("fd %d: %w", num, err)
	}
	switch info.State {
	case tcpListen:
		diag, err := sockdiag.InetByInode(uint8(sock.Family), unix.IPPROTO_TCP, 1<<tcpListen,
			uint32(d.st.Ino))
		if err != nil {
			return fmt.Errorf("fd %d: read the backlog of a listening TCP socket: %w", num, err)
		}
		sock.State = image.SocketListen
		sock.Backlog = int(diag.WQueue)
		return nil
	case tcpClose:
		if info.Segs_out > 0 || info.Segs_in > 0 {
			// A connection that has ended (reset, or closed both ways):
			// nothing is left to refuse, and it comes back as ended.
			sock.State = image.SocketReset
			return nil
		}
		sock.State = image.SocketBound
		sock.Peer = nil
		return nil
	}
	conn := fmt.Sprintf("TCP %s -> %s (%s)", addrString(sock.Local), addrString(sock.Peer),
		tcpStateName(info.State))
	if policy == EstablishedRefuse {
		return &EstablishedError{FD: num, Conn: conn}
	}
	sock.State = image.SocketReset
	return nil
}

// readInetAddrs reads the local and peer addresses of an IP socket; a socket
// that is not connected has no peer.
func readInetAddrs(s int, sock *image.Socket) error {
	sa, err := unix.Getsockname(s)
	if err != nil {
		return fmt.Errorf("getsockname: %w", err)
	}
	sock.Local = toSockAddr(sa)
	sa, err = unix.Getpeername(s)
	switch {
	case err == unix.ENOTCONN:
	case err != nil:
		return fmt.Errorf("getpeername: %w", err)
	default:
		sock.Peer = toSockAddr(sa)
	}
	return nil
}

// readUnix reads a unix socket. Its peer decides its state: none (bound, or
// listening), another socket of the process (a pair), or something outside.
func readUnix(s int, d *desc, sock *image.Socket, byIno map[uint64]*desc,
	policy Established) error {

	num := d.fd.Num
	diag, err := sockdiag.UnixByInode(uint32(d.st.Ino))
	if err != nil {
		return fmt.Errorf("fd %d: ask sock_diag about the unix socket: %w", num, err)
	}
	sock.Local = unixName(diag.Name)
	if sa, err := unix.Getpeername(s); err == nil {
		sock.Peer = toSockAddr(sa)
	}
	dgram := sock.Type == unix.SOCK_DGRAM

	switch {
	case diag.State == tcpListen:
		sock.State = image.SocketListen
		sock.Backlog = int(diag.WQueue)

	case diag.Peer != 0 && byIno[uint64(diag.Peer)] != nil && (!dgram || mutualPeer(diag)):
		// Both ends are here: a pair, rebuilt with socketpair(2).
		sock.State = image.SocketPair
		sock.PairID = min(uint64(diag.Inode), uint64(diag.Peer))
		sock.Shutdown = int(diag.Shutdown)
		sock.Local, sock.Peer = nil, nil
		if sock.Queued, err = peekQueue(s, sock.Type); err != nil {
			return fmt.Errorf("fd %d: copy the data queued on a unix socket pair: %w", num, err)
		}
		return nil

	case dgram && diag.Peer != 0 && sock.Peer != nil:
		// Connected to a named socket: connected again by name.
		sock.State = image.SocketConnected

	case diag.Peer != 0 || diag.State == tcpEstablished:
		// A connection to outside the process, or one whose peer is gone
		// (the kernel keeps the socket connected to a closed peer).
		conn := fmt.Sprintf("unix %s socket %s -> %s", unixTypeName(sock.Type),
			addrString(sock.Local), addrString(sock.Peer))
		if diag.Peer == 0 {
			conn += " (peer closed)"
		}
		if policy == EstablishedRefuse {
			return &EstablishedError{FD: num, Conn: conn}
		}
		sock.State = image.SocketReset
		if sock.Queued, err = peekQueue(s, sock.Type); err != nil {
			return fmt.Errorf("fd %d: copy the data queued on a unix socket: %w", num, err)
		}
		return nil

	default:
		sock.State = image.SocketBound
		sock.Peer = nil
	}

	// A bound socket is bound again on restore: its name must be one that
	// restore can use.
	if sock.Local != nil && sock.Local.Path != "" {
		if !strings.HasPrefix(sock.Local.Path, "/") {
			return &UnsupportedError{FD: num, Kind: fmt.Sprintf(
				"%s (unix socket bound to the relative path %q)", d.link, sock.Local.Path)}
		}
		var st unix.Stat_t
		err := unix.Stat(sock.Local.Path, &st)
		if err != nil || uint32(st.Ino) != diag.VFSIno || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			return &UnsupportedError{FD: num, Kind: fmt.Sprintf(
				"%s (unix socket bound to %s, which no longer names its socket file)",
				d.link, sock.Local.Path)}
		}
		sock.File = &image.SockFile{Dev: st.Dev, Ino: st.Ino, Mode: st.Mode & 0o7777,
			UID: st.Uid, GID: st.Gid}
	}
	return nil
}

// mutualPeer is true for a datagram socket whose peer is connected back to it.
func mutualPeer(diag *sockdiag.Unix) bool {
	p, err := sockdiag.UnixByInode(diag.Peer)
	return err == nil && p.Peer == diag.Inode
}

// peekQueue copies the messages waiting to be read on the unix socket s without
// taking them: with SO_PEEK_OFF set, each MSG_PEEK read starts where the last
// ended. The socket's peek offset is put back afterwards. A message carrying
// descriptors (SCM_RIGHTS) cannot be copied: the copy would need them restored
// too.
func peekQueue(s, typ int) ([][]byte, error) {
	old, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_PEEK_OFF)
	if err != nil {
		return nil, fmt.Errorf("get SO_PEEK_OFF: %w", err)
	}
	if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_PEEK_OFF, 0); err != nil {
		return nil, fmt.Errorf("set SO_PEEK_OFF: %w", err)
	}
	msgs, err := peekAll(s, typ)
	if err2 := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_PEEK_OFF, old); err2 != nil &&
		err == nil {
		err = fmt.Errorf("put SO_PEEK_OFF back to %d: %w", old, err2)
	}
	return msgs, err
}

// maxQueued bounds the bytes peekQueue copies from one socket.
const maxQueued = 64 << 20

func peekAll(s, typ int) ([][]byte, error) {
	var (
		msgs   [][]byte
		stream []byte
		total  int
		buf    = make([]byte, 64<<10)
		oob    = make([]byte, unix.CmsgSpace(253*4))
	)
	peek := unix.MSG_PEEK | unix.MSG_DONTWAIT | unix.MSG_CMSG_CLOEXEC
	if typ != unix.SOCK_STREAM {
		peek |= unix.MSG_TRUNC // report a message's whole length
	}
	for {
		n, oobn, flags, _, err := unix.Recvmsg(s, buf, oob, peek)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("peek: %w", err)
		}
		if err := refuseRights(oob[:oobn]); err != nil {
			return nil, err
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return nil, fmt.Errorf("a queued message carries more control data than cryo reads")
		}
		if typ == unix.SOCK_STREAM {
			if n == 0 {
				break // the peer shut down its sending side: nothing more comes
			}
			stream = append(stream, buf[:n]...)
		} else {
			if n == 0 && typ == unix.SOCK_SEQPACKET {
				break // the same end of stream; an empty message reads the same
			}
			if n == 0 {
				return nil, fmt.Errorf("a zero-length message is queued: cryo cannot peek past it")
			}
			if n > len(buf) {
				// MSG_TRUNC made recvmsg report the whole length: peek again
				// with room for it, from the same offset.
				buf = make([]byte, n)
				if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_PEEK_OFF,
					total); err != nil {
					return nil, fmt.Errorf("set SO_PEEK_OFF: %w", err)
				}
				continue
			}
			msgs = append(msgs, append([]byte{}, buf[:n]...))
		}
		total += n
		if total > maxQueued {
			return nil, fmt.Errorf("more than %d bytes queued", maxQueued)
		}
	}
	if len(stream) > 0 {
		msgs = [][]byte{stream}
	}
	return msgs, nil
}

// refuseRights closes the descriptors a peeked message brought (peeking
// SCM_RIGHTS installs copies in cryo) and returns an error if there were any.
func refuseRights(oob []byte) error {
	if len(oob) == 0 {
		return nil
	}
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return fmt.Errorf("parse control messages: %w", err)
	}
	rights := false
	for _, c := range cmsgs {
		if c.Header.Level != unix.SOL_SOCKET || c.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		rights = true
		if fds, err := unix.ParseUnixRights(&c); err == nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
	}
	if rights {
		return fmt.Errorf("a queued message carries descriptors (SCM_RIGHTS): not supported")
	}
	return nil
}

func unixTypeName(typ int) string {
	switch typ {
	case unix.SOCK_STREAM:
		return "stream"
	case unix.SOCK_DGRAM:
		return "datagram"
	case unix.SOCK_SEQPACKET:
		return "seqpacket"
	}
	return fmt.Sprintf("type %d", typ)
}

// socketKind names a socket's family and type for an error, as " (TCP socket)".
func socketKind(domain, typ, proto int) string {
	var fam string
	switch domain {
	case unix.AF_INET, unix.AF_INET6:
		switch {
		case proto == unix.IPPROTO_TCP:
			return " (TCP socket)"
		case proto == unix.IPPROTO_UDP:
			return " (UDP socket)"
		case proto == unix.IPPROTO_MPTCP:
			return " (MPTCP socket)"
		case typ == unix.SOCK_RAW:
			return fmt.Sprintf(" (raw IP socket, protocol %d)", proto)
		}
		fam = fmt.Sprintf("IP protocol %d", proto)
	case unix.AF_UNIX:
		fam = "unix"
	case unix.AF_NETLINK:
		fam = "netlink"
	case unix.AF_PACKET:
		fam = "packet"
	default:
		fam = fmt.Sprintf("family %d", domain)
	}
	switch typ {
	case unix.SOCK_STREAM:
		return " (" + fam + " stream socket)"
	case unix.SOCK_DGRAM:
		return " (" + fam + " datagram socket)"
	case unix.SOCK_SEQPACKET:
		return " (" + fam + " seqpacket socket)"
	case unix.SOCK_RAW:
		return " (" + fam + " raw socket)"
	}
	return " (" + fam + " socket)"
}

// SocketString describes a recorded socket for people, as "TCP listen
// 127.0.0.1:6379 backlog 511" or "unix stream pair 4711, 5 bytes queued".
func SocketString(s *image.Socket) string {
	var b strings.Builder
	switch {
	case s.Family == unix.AF_UNIX:
		b.WriteString("unix " + unixTypeName(s.Type))
	case s.Protocol == unix.IPPROTO_TCP:
		b.WriteString("TCP")
	case s.Protocol == unix.IPPROTO_UDP:
		b.WriteString("UDP")
	default:
		fmt.Fprintf(&b, "family %d protocol %d", s.Family, s.Protocol)
	}
	if s.Family == unix.AF_INET6 {
		b.WriteString("/IPv6")
	}
	b.WriteString(" " + string(s.State))
	switch s.State {
	case image.SocketPair:
		fmt.Fprintf(&b, " %d", s.PairID)
	case image.SocketListen:
		fmt.Fprintf(&b, " %s backlog %d", addrString(s.Local), s.Backlog)
	case image.SocketReset:
		if s.Local != nil || s.Peer != nil {
			fmt.Fprintf(&b, " (was %s -> %s)", addrString(s.Local), addrString(s.Peer))
		}
	default:
		if s.Local != nil {
			b.WriteString(" " + addrString(s.Local))
		}
		if s.Peer != nil {
			b.WriteString(" -> " + addrString(s.Peer))
		}
	}
	n := 0
	for _, m := range s.Queued {
		n += len(m)
	}
	if n > 0 {
		fmt.Fprintf(&b, ", %d bytes queued", n)
	}
	return b.String()
}

// AbortConnections makes the TCP connections of fds (those recorded as
// SocketReset) send a reset when the process pid closes them, by setting
// SO_LINGER to 0 through a copy of each: the peers of a process that is killed
// after its checkpoint then see a reset, as on restore the process does, rather
// than an orderly end. It is for a process that is about to be killed: one that
// runs on would reset its own connections when it closes them.
//
// Preconditions: the process is stopped, and the caller may ptrace it. Every
// connection is tried; the error joins those that failed.
func AbortConnections(pid int, fds []image.FD) error {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("abort connections of pid %d: pidfd_open: %w", pid, err)
	}
	defer unix.Close(pidfd)
	var errs []error
	for _, fd := range fds {
		s := fd.Socket
		if s == nil || fd.DupOf != nil || s.State != image.SocketReset ||
			s.Protocol != unix.IPPROTO_TCP {
			continue
		}
		c, err := unix.PidfdGetfd(pidfd, fd.Num, 0)
		if err == nil {
			err = unix.SetsockoptLinger(c, unix.SOL_SOCKET, unix.SO_LINGER,
				&unix.Linger{Onoff: 1})
			unix.Close(c)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("fd %d: set SO_LINGER 0: %w", fd.Num, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("abort connections of pid %d: %w", pid, err)
	}
	return nil
}
