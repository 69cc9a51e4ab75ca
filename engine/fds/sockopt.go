package fds

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
)

// sockOptSpec is a socket option cryo reads at checkpoint and sets again on
// restore. Options not in this table are lost: among them multicast group
// memberships (getsockopt cannot list them), TCP_CONGESTION, SO_BINDTODEVICE
// and socket filters.
type sockOptSpec struct {
	name       string
	level, opt int
	kind       optKind
}

type optKind int

const (
	optInt     optKind = iota // an int
	optBuf                    // SO_RCVBUF/SO_SNDBUF: set through the *FORCE variant, halved
	optLinger                 // struct linger: seconds, or -1 when off
	optTimeval                // struct timeval: microseconds
)

var sockOpts = []sockOptSpec{
	{"SO_REUSEADDR", unix.SOL_SOCKET, unix.SO_REUSEADDR, optInt},
	{"SO_REUSEPORT", unix.SOL_SOCKET, unix.SO_REUSEPORT, optInt},
	{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, optInt},
	{"SO_BROADCAST", unix.SOL_SOCKET, unix.SO_BROADCAST, optInt},
	{"SO_OOBINLINE", unix.SOL_SOCKET, unix.SO_OOBINLINE, optInt},
	{"SO_PASSCRED", unix.SOL_SOCKET, unix.SO_PASSCRED, optInt},
	{"SO_PRIORITY", unix.SOL_SOCKET, unix.SO_PRIORITY, optInt},
	{"SO_MARK", unix.SOL_SOCKET, unix.SO_MARK, optInt},
	{"SO_RCVLOWAT", unix.SOL_SOCKET, unix.SO_RCVLOWAT, optInt},
	{"SO_RCVBUF", unix.SOL_SOCKET, unix.SO_RCVBUF, optBuf},
	{"SO_SNDBUF", unix.SOL_SOCKET, unix.SO_SNDBUF, optBuf},
	{"SO_LINGER", unix.SOL_SOCKET, unix.SO_LINGER, optLinger},
	{"SO_RCVTIMEO", unix.SOL_SOCKET, unix.SO_RCVTIMEO, optTimeval},
	{"SO_SNDTIMEO", unix.SOL_SOCKET, unix.SO_SNDTIMEO, optTimeval},

	{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY, optInt},
	{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, optInt},
	{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, optInt},
	{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, optInt},
	{"TCP_DEFER_ACCEPT", unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, optInt},
	{"TCP_USER_TIMEOUT", unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, optInt},
	{"TCP_FASTOPEN", unix.IPPROTO_TCP, unix.TCP_FASTOPEN, optInt},

	{"IP_TOS", unix.IPPROTO_IP, unix.IP_TOS, optInt},
	{"IP_TTL", unix.IPPROTO_IP, unix.IP_TTL, optInt},
	{"IP_FREEBIND", unix.IPPROTO_IP, unix.IP_FREEBIND, optInt},
	{"IP_TRANSPARENT", unix.IPPROTO_IP, unix.IP_TRANSPARENT, optInt},
	{"IP_PKTINFO", unix.IPPROTO_IP, unix.IP_PKTINFO, optInt},
	{"IP_MULTICAST_TTL", unix.IPPROTO_IP, unix.IP_MULTICAST_TTL, optInt},
	{"IP_MULTICAST_LOOP", unix.IPPROTO_IP, unix.IP_MULTICAST_LOOP, optInt},

	{"IPV6_V6ONLY", unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, optInt},
	{"IPV6_TCLASS", unix.IPPROTO_IPV6, unix.IPV6_TCLASS, optInt},
	{"IPV6_UNICAST_HOPS", unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, optInt},
	{"IPV6_FREEBIND", unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, optInt},
	{"IPV6_TRANSPARENT", unix.IPPROTO_IPV6, unix.IPV6_TRANSPARENT, optInt},
	{"IPV6_RECVPKTINFO", unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, optInt},
}

// applies reports whether option o is meaningful for socket s.
func (o *sockOptSpec) applies(s *image.Socket) bool {
	switch o.level {
	case unix.SOL_SOCKET:
		return true
	case unix.IPPROTO_TCP:
		return s.Protocol == unix.IPPROTO_TCP
	case unix.IPPROTO_IP:
		return s.Family == unix.AF_INET
	case unix.IPPROTO_IPV6:
		return s.Family == unix.AF_INET6
	}
	return false
}

func findSockOpt(name string) *sockOptSpec {
	for i := range sockOpts {
		if sockOpts[i].name == name {
			return &sockOpts[i]
		}
	}
	return nil
}

// getSockOpt reads option o of socket fd as an image value.
func getSockOpt(fd int, o *sockOptSpec) (int, error) {
	switch o.kind {
	case optLinger:
		l, err := unix.GetsockoptLinger(fd, o.level, o.opt)
		if err != nil {
			return 0, err
		}
		if l.Onoff == 0 {
			return -1, nil
		}
		return int(l.Linger), nil
	case optTimeval:
		tv, err := unix.GetsockoptTimeval(fd, o.level, o.opt)
		if err != nil {
			return 0, err
		}
		return int(tv.Sec)*1e6 + int(tv.Usec), nil
	}
	return unix.GetsockoptInt(fd, o.level, o.opt)
}

// setSockOpt sets option o of socket fd to an image value.
func setSockOpt(fd int, o *sockOptSpec, v int) error {
	switch o.kind {
	case optLinger:
		l := unix.Linger{}
		if v >= 0 {
			l.Onoff, l.Linger = 1, int32(v)
		}
		return unix.SetsockoptLinger(fd, o.level, o.opt, &l)
	case optTimeval:
		tv := unix.NsecToTimeval(int64(v) * 1000)
		return unix.SetsockoptTimeval(fd, o.level, o.opt, &tv)
	case optBuf:
		// The kernel doubles what it is given (room for its bookkeeping) and
		// reports the doubled size; the FORCE variants pass rmem_max and
		// wmem_max, which the original program may have been allowed to pass
		// through CAP_NET_ADMIN.
		force := unix.SO_RCVBUFFORCE
		if o.opt == unix.SO_SNDBUF {
			force = unix.SO_SNDBUFFORCE
		}
		return unix.SetsockoptInt(fd, o.level, force, v/2)
	}
	return unix.SetsockoptInt(fd, o.level, o.opt, v)
}

// readSockOpts reads every option of the table that applies to s. An option the
// kernel does not offer for this socket (ENOPROTOOPT, EOPNOTSUPP, EINVAL) is
// left out.
func readSockOpts(fd int, s *image.Socket) ([]image.SockOpt, error) {
	var out []image.SockOpt
	for i := range sockOpts {
		o := &sockOpts[i]
		if !o.applies(s) {
			continue
		}
		v, err := getSockOpt(fd, o)
		if errors.Is(err, unix.ENOPROTOOPT) || errors.Is(err, unix.EOPNOTSUPP) ||
			errors.Is(err, unix.EINVAL) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("getsockopt %s: %w", o.name, err)
		}
		out = append(out, image.SockOpt{Name: o.name, Value: v})
	}
	return out, nil
}

// toSockAddr converts a kernel address into the image's. It returns nil for an
// unbound address (an IP socket on port 0, a unix socket without a name).
func toSockAddr(sa unix.Sockaddr) *image.SockAddr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		if a.Port == 0 && a.Addr == [4]byte{} {
			return nil
		}
		return &image.SockAddr{IP: netip.AddrFrom4(a.Addr).String(), Port: a.Port}
	case *unix.SockaddrInet6:
		if a.Port == 0 && a.Addr == [16]byte{} {
			return nil
		}
		ip := netip.AddrFrom16(a.Addr)
		if a.ZoneId != 0 {
			ip = ip.WithZone(strconv.Itoa(int(a.ZoneId)))
		}
		return &image.SockAddr{IP: ip.String(), Port: a.Port}
	case *unix.SockaddrUnix:
		return unixName([]byte(a.Name))
	}
	return nil
}

// unixName converts a unix socket name as the kernel keeps it (a path, or a NUL
// and an abstract name; Go's SockaddrUnix writes an abstract name with a
// leading '@') into an image address.
func unixName(b []byte) *image.SockAddr {
	switch {
	case len(b) == 0:
		return nil
	case b[0] == 0 || b[0] == '@':
		return &image.SockAddr{Abstract: append([]byte{}, b[1:]...)}
	}
	return &image.SockAddr{Path: string(b)}
}

// fromSockAddr converts an image address into one for bind or connect on a
// socket of family.
func fromSockAddr(family int, a *image.SockAddr) (unix.Sockaddr, error) {
	switch family {
	case unix.AF_INET, unix.AF_INET6:
		ip, err := netip.ParseAddr(a.IP)
		if err != nil {
			return nil, fmt.Errorf("address %q: %w", a.IP, err)
		}
		if a.Port < 0 || a.Port > 65535 {
			return nil, fmt.Errorf("port %d out of range", a.Port)
		}
		if family == unix.AF_INET {
			if !ip.Is4() {
				return nil, fmt.Errorf("address %s is not IPv4", ip)
			}
			return &unix.SockaddrInet4{Addr: ip.As4(), Port: a.Port}, nil
		}
		sa := &unix.SockaddrInet6{Addr: ip.As16(), Port: a.Port}
		if z := ip.Zone(); z != "" {
			id, err := strconv.Atoi(z)
			if err != nil {
				return nil, fmt.Errorf("address %s: zone is not an interface index", ip)
			}
			sa.ZoneId = uint32(id)
		}
		return sa, nil
	case unix.AF_UNIX:
		if a.Path != "" {
			return &unix.SockaddrUnix{Name: a.Path}, nil
		}
		// x/sys/unix sends a name starting with '@' as an abstract one, every
		// byte after it counted.
		return &unix.SockaddrUnix{Name: "@" + string(a.Abstract)}, nil
	}
	return nil, fmt.Errorf("family %d", family)
}

// addrString shows an address for errors and logs.
func addrString(a *image.SockAddr) string {
	switch {
	case a == nil:
		return "(unbound)"
	case a.IP != "":
		if ip, err := netip.ParseAddr(a.IP); err == nil {
			return netip.AddrPortFrom(ip, uint16(a.Port)).String()
		}
		return a.IP + " port " + strconv.Itoa(a.Port)
	case a.Path != "":
		return a.Path
	}
	return "@" + strconv.Quote(string(a.Abstract))
}
