package fds

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
)

// socket plans the creation and set-up of the socket fd (and, for a pair, of its
// other end). The socket is made inside the target, so that it is the target's
// own (its credentials, its cgroup); cryo then takes a copy with pidfd_getfd to
// set options, bind, connect and queue data, which act on the one socket both
// descriptors name. listen(2) runs inside the target too: a unix socket records
// the credentials of the process that calls it, for its clients' SO_PEERCRED.
func (p *planner) socket(fd *image.FD, byNum map[int]*image.FD) {
	s := fd.Socket
	cloexec := cloexecFlag(fd.Cloexec, unix.SOCK_CLOEXEC)

	switch {
	case s.State == image.SocketPair:
		p.socketPair(fd, byNum)
		return

	case s.State == image.SocketReset && s.Family == unix.AF_UNIX:
		// A pair whose other end is closed once the queued bytes are in it:
		// reads return them, then end of file; writes fail with EPIPE.
		lr := p.lowest()
		p.used[lr] = true
		lw := p.lowest()
		p.used[lw] = true
		p.emit(op{code: opSocketPair, fd: lr, to: lw, rec: fd})
		keep, other := lr, lw
		if lw == fd.Num {
			keep, other = lw, lr
		}
		if len(s.Queued) > 0 {
			p.emit(op{code: opSockFill, fd: other, msgs: s.Queued, rec: fd})
		}
		p.emit(op{code: opClose, fd: other, rec: fd})
		delete(p.used, other)
		if keep != fd.Num {
			p.move(keep, fd)
		} else {
			p.setCloexec(fd, fd.Cloexec, false)
		}

	case s.State == image.SocketReset:
		p.single(op{code: opSocket, flags: cloexec, rec: fd})
		p.emit(op{code: opSockReset, fd: fd.Num, rec: fd})

	default:
		p.single(op{code: opSocket, flags: cloexec, rec: fd})
		p.emit(op{code: opSockSetup, fd: fd.Num, rec: fd})
		if s.State == image.SocketListen {
			p.emit(op{code: opListen, fd: fd.Num, val: uint64(s.Backlog), rec: fd})
		}
	}
	p.setNonblock(fd)
}

// socketPair plans socketpair(2) for the pair fd is one end of: both ends placed,
// set up, their queued data sent from the other end, their shutdown state set.
func (p *planner) socketPair(fd *image.FD, byNum map[int]*image.FD) {
	var a, b *image.FD
	for _, o := range byNum {
		if o.Kind != image.FDSocket || o.DupOf != nil || o.Socket.State != image.SocketPair ||
			o.Socket.PairID != fd.Socket.PairID {
			continue
		}
		if a == nil || o.Num < a.Num {
			a, b = o, a
		} else {
			b = o
		}
	}
	la := p.lowest()
	p.used[la] = true
	lb := p.lowest()
	p.used[lb] = true
	p.emit(op{code: opSocketPair, fd: la, to: lb, rec: a})
	p.place2(la, lb, a, b)

	for _, end := range []*image.FD{a, b} {
		p.emit(op{code: opSockSetup, fd: end.Num, rec: end})
		p.setNonblock(end)
	}
	for _, end := range []*image.FD{a, b} {
		other := b
		if end == b {
			other = a
		}
		if len(end.Socket.Queued) > 0 {
			p.emit(op{code: opSockFill, fd: other.Num, msgs: end.Socket.Queued, rec: end})
		}
	}
	for _, end := range []*image.FD{a, b} {
		if how, ok := shutdownHow(end.Socket.Shutdown); ok {
			p.emit(op{code: opShutdown, fd: end.Num, val: uint64(how), rec: end})
		}
	}
}

// setNonblock plans O_NONBLOCK for a socket created without it.
func (p *planner) setNonblock(fd *image.FD) {
	if fd.Flags&unix.O_NONBLOCK != 0 {
		p.emit(op{code: opSetFL, fd: fd.Num, val: unix.O_NONBLOCK, rec: fd})
	}
}

// shutdownHow converts the kernel's shutdown bits (1 receive, 2 send) into the
// argument of shutdown(2).
func shutdownHow(bits int) (int, bool) {
	switch bits & 3 {
	case 1:
		return unix.SHUT_RD, true
	case 2:
		return unix.SHUT_WR, true
	case 3:
		return unix.SHUT_RDWR, true
	}
	return 0, false
}

// validateSocket checks a socket FD for what the plan and executor rely on.
func validateSocket(fd *image.FD, byNum map[int]*image.FD) error {
	s := fd.Socket
	if s == nil {
		return fmt.Errorf("fd %d: socket without socket state", fd.Num)
	}
	switch s.Family {
	case unix.AF_INET, unix.AF_INET6, unix.AF_UNIX:
	default:
		return fmt.Errorf("fd %d: socket of family %d", fd.Num, s.Family)
	}
	switch s.Type {
	case unix.SOCK_STREAM, unix.SOCK_DGRAM, unix.SOCK_SEQPACKET:
	default:
		return fmt.Errorf("fd %d: socket of type %d", fd.Num, s.Type)
	}
	for _, o := range s.Options {
		if findSockOpt(o.Name) == nil {
			return fmt.Errorf("fd %d: unknown socket option %q", fd.Num, o.Name)
		}
	}
	for _, a := range []*image.SockAddr{s.Local, s.Peer} {
		if a == nil {
			continue
		}
		if _, err := fromSockAddr(s.Family, a); err != nil {
			return fmt.Errorf("fd %d: %w", fd.Num, err)
		}
	}
	switch s.State {
	case image.SocketListen:
		if s.Type == unix.SOCK_DGRAM || s.Local == nil {
			return fmt.Errorf("fd %d: a listening socket must be a bound stream", fd.Num)
		}
	case image.SocketBound, image.SocketReset:
	case image.SocketConnected:
		if s.Peer == nil || s.Type != unix.SOCK_DGRAM {
			return fmt.Errorf("fd %d: a connected socket must be a datagram socket with a "+
				"peer", fd.Num)
		}
	case image.SocketPair:
		if s.Family != unix.AF_UNIX {
			return fmt.Errorf("fd %d: a socket pair must be unix", fd.Num)
		}
		ends := 0
		for _, o := range byNum {
			if o.Kind == image.FDSocket && o.DupOf == nil && o.Socket != nil &&
				o.Socket.State == image.SocketPair && o.Socket.PairID == s.PairID {
				ends++
				if o.Socket.Type != s.Type {
					return fmt.Errorf("fd %d: socket pair %d has ends of two types", fd.Num,
						s.PairID)
				}
			}
		}
		if ends != 2 {
			return fmt.Errorf("fd %d: socket pair %d has %d ends recorded, want 2", fd.Num,
				s.PairID, ends)
		}
	default:
		return fmt.Errorf("fd %d: unknown socket state %q", fd.Num, s.State)
	}
	return nil
}
