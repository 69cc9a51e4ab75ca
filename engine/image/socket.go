package image

// FDSocket is a TCP, UDP or unix socket (see Socket).
const FDSocket FDKind = "socket"

// SocketState says how a socket is rebuilt.
type SocketState string

// The socket states cryo rebuilds.
const (
	// SocketListen is a stream or seqpacket socket listening on Local with
	// Backlog.
	SocketListen SocketState = "listen"
	// SocketBound is a socket that is neither listening nor connected: bound to
	// Local when Local is set, else fresh from socket(2).
	SocketBound SocketState = "bound"
	// SocketConnected is a datagram socket (UDP, or unix bound or connected by
	// name) connected to Peer: connect(2) is run again on restore.
	SocketConnected SocketState = "connected"
	// SocketPair is one end of a unix socket pair whose other end the process
	// holds too (socketpair(2), or a connection between two of its sockets).
	SocketPair SocketState = "pair"
	// SocketReset is a connection to something outside the process (a TCP
	// connection in any state but LISTEN and CLOSE, or a unix stream or
	// seqpacket socket connected outside): it cannot be rebuilt, and is restored
	// as a connection the peer has reset (TCP) or closed (unix).
	SocketReset SocketState = "reset"
)

// Socket describes a socket: enough to create it again, bind it, set its
// options and, for pairs, put back the bytes queued in it.
type Socket struct {
	// Family, Type and Protocol are the arguments of socket(2): AF_INET,
	// AF_INET6 or AF_UNIX; SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET; the
	// protocol number (IPPROTO_TCP, IPPROTO_UDP, or 0 for unix).
	Family   int `json:"family"`
	Type     int `json:"type"`
	Protocol int `json:"protocol"`

	State SocketState `json:"state"`

	// Local is the address the socket is bound to, Peer the one it is
	// connected to (for SocketConnected, and for information with
	// SocketReset). Nil when there is none.
	Local *SockAddr `json:"local,omitempty"`
	Peer  *SockAddr `json:"peer,omitempty"`

	// Backlog is the listen(2) backlog as the kernel keeps it
	// (sk_max_ack_backlog, read with sock_diag).
	Backlog int `json:"backlog,omitempty"`

	// Options are the socket options whose values are read back and set again.
	Options []SockOpt `json:"options,omitempty"`

	// Shutdown is the shutdown(2) state of a pair's end: bit 0 no more
	// receptions (SHUT_RD), bit 1 no more sends (SHUT_WR).
	Shutdown int `json:"shutdown,omitempty"`

	// PairID names the pair a SocketPair end belongs to (the inode of its
	// lower-numbered end); both ends carry it.
	PairID uint64 `json:"pair_id,omitempty"`

	// Queued holds what was waiting to be read on a SocketPair end: for a stream
	// socket one element with every byte, for a datagram or seqpacket socket one
	// element per message, in order.
	Queued [][]byte `json:"queued,omitempty"`

	// File is the socket file a unix socket bound to a path created: its
	// identity, so that restore removes only that file, and its mode and owner,
	// set again on the new one.
	File *SockFile `json:"file,omitempty"`
}

// SockAddr is a socket address. For AF_INET and AF_INET6: IP (in the text form
// of net/netip, with a zone for link-local IPv6) and Port. For AF_UNIX: Path, an
// absolute path, or Abstract, the abstract name without its leading NUL (every
// byte counts, including NULs).
type SockAddr struct {
	IP       string `json:"ip,omitempty"`
	Port     int    `json:"port,omitempty"`
	Path     string `json:"path,omitempty"`
	Abstract []byte `json:"abstract,omitempty"`
}

// SockOpt is one socket option and its value as getsockopt(2) reported it. Name
// is the option's C name (SO_REUSEADDR, TCP_NODELAY, IPV6_V6ONLY, ...); the list
// of names cryo knows is in engine/fds. SO_LINGER's value is the linger time in
// seconds, or -1 when lingering is off; SO_RCVBUF and SO_SNDBUF are the sizes
// the kernel reports (twice what setsockopt was given).
type SockOpt struct {
	Name  string `json:"name"`
	Value int    `json:"value"`
}

// SockFile is the inode a path-bound unix socket made in the filesystem.
type SockFile struct {
	Dev  uint64 `json:"dev"`
	Ino  uint64 `json:"ino"`
	Mode uint32 `json:"mode"`
	UID  uint32 `json:"uid"`
	GID  uint32 `json:"gid"`
}
