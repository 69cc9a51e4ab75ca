package fds

import (
	"fmt"
	"math"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
)

// The restore of descriptors is planned in full before any system call runs.
// The planner simulates the target's descriptor table: the kernel gives every new
// descriptor the lowest free number, so the number each creation returns is known
// in advance, and every dup3 can be aimed at a number known to be free. The
// executor checks each returned number against the plan.
//
// The plan:
//
//  1. Close the inherited descriptors 0-2 that no stdio-kind FD keeps.
//     Descriptors above 2 that the target holds are left alone; an FD that wants
//     one of their numbers is an error.
//  2. Create the objects in ascending order of their number: open, pipe2,
//     eventfd2, epoll_create1, socket, socketpair. A new descriptor that did not
//     land on its number is moved there with dup3 and the temporary closed,
//     before anything else is created, so that no temporary outlives its step.
//     Both ends of a pipe or socket pair are placed together, through a scratch
//     number when they have to swap. A socket is set up (options, bind, listen,
//     queued data) as soon as it is at its number.
//  3. Connect the datagram sockets that were connected, once every socket they
//     may name is bound.
//  4. Make the descriptors that share an open file description with dup3.
//  5. Add the epoll watches, once every watched descriptor exists.
//
// Because temporaries never survive a step, a number that is some FD's target is
// only ever occupied by that FD or by a temporary of the current step, and dup3
// never replaces a descriptor that is still needed.

// opCode names a step of a restore plan.
type opCode int

const (
	opClose       opCode = iota // close(fd)
	opDup3                      // dup3(fd, to, flags)
	opOpen                      // openat(AT_FDCWD, path, flags, mode) = fd
	opPipe                      // pipe2([fd, to], flags)
	opEventfd                   // eventfd2(val, flags) = fd
	opEpoll                     // epoll_create1(flags) = fd
	opSetFD                     // fcntl(fd, F_SETFD, val)
	opSetFL                     // fcntl(fd, F_SETFL, val)
	opSetPipeSize               // fcntl(fd, F_SETPIPE_SZ, val)
	opLseek                     // lseek(fd, val, SEEK_SET)
	opEventfdAdd                // write(fd, &val, 8)
	opFillPipe                  // cryo writes data into the pipe whose write end is fd
	opCheckFile                 // cryo checks that fd is the file rec recorded
	opEpollAdd                  // epoll_ctl(fd, EPOLL_CTL_ADD, to, {events, val})
	opSocket                    // socket(family, type|flags, protocol) = fd
	opSocketPair                // socketpair(family, type|flags, 0, [fd, to])
	opListen                    // listen(fd, val)
	opShutdown                  // shutdown(fd, val)
	opSockSetup                 // cryo sets options on fd's socket and binds it
	opSockReset                 // cryo connects fd's TCP socket and has the peer reset it
	opSockFill                  // cryo sends msgs on fd, to be queued at its peer
	opSockConnect               // cryo connects fd's socket to its recorded peer
)

var opNames = [...]string{"close", "dup3", "openat", "pipe2", "eventfd2", "epoll_create1",
	"F_SETFD", "F_SETFL", "F_SETPIPE_SZ", "lseek", "eventfd write", "fill pipe",
	"check file", "epoll_ctl", "socket", "socketpair", "listen", "shutdown",
	"set up socket", "reset connection", "queue socket data",
	"connect"}

func (c opCode) String() string {
	if n, ok := specialNames[c]; ok {
		return n
	}
	return opNames[c]
}

// op is one step of a restore plan.
type op struct {
	code   opCode
	fd     int // descriptor operated on; for creations, the number expected back
	to     int // dup3 target, pipe write end, or the fd an epoll watch names
	flags  int
	val    uint64
	events uint32
	path   string
	data   []byte
	msgs   [][]byte
	rec    *image.FD // the FD this step is for; nil for closing an inherited fd
}

// planner holds the simulated descriptor table while a plan is built.
type planner struct {
	used map[int]bool // numbers open in the target at this point of the plan
	ops  []op
}

// plan builds the steps that turn a target holding the descriptors open into one
// holding fds. limit is the target's RLIMIT_NOFILE soft limit.
func plan(fds []image.FD, stdio Stdio, open []int, limit uint64) ([]op, error) {
	p := &planner{used: make(map[int]bool)}
	byNum := make(map[int]*image.FD, len(fds))
	for i := range fds {
		fd := &fds[i]
		if fd.Num < 0 || uint64(fd.Num) >= limit {
			return nil, fmt.Errorf("fd %d: number not below the target's RLIMIT_NOFILE %d",
				fd.Num, limit)
		}
		if byNum[fd.Num] != nil {
			return nil, fmt.Errorf("fd %d: recorded twice", fd.Num)
		}
		byNum[fd.Num] = fd
	}
	if err := validate(fds, byNum); err != nil {
		return nil, err
	}

	// Step 1: the inherited descriptors.
	for _, n := range open {
		p.used[n] = true
	}
	for _, n := range open {
		fd := byNum[n]
		switch {
		case n <= 2 && fd != nil && fd.Kind == image.FDStdio && stdio.Paths[n] == "":
			p.setCloexec(fd, fd.Cloexec, true)
		case n <= 2:
			p.emit(op{code: opClose, fd: n, rec: fd})
			delete(p.used, n)
		case fd != nil:
			return nil, fmt.Errorf("fd %d: the target already has that number open", n)
		}
	}
	for i := range 3 {
		fd := byNum[i]
		if fd != nil && fd.Kind == image.FDStdio && stdio.Paths[i] == "" && !p.used[i] &&
			fd.DupOf == nil {
			return nil, fmt.Errorf("fd %d: stdio to keep, but the target has no fd %d", i, i)
		}
	}

	// Step 2: the objects, in ascending order.
	nums := make([]int, 0, len(fds))
	for _, fd := range fds {
		nums = append(nums, fd.Num)
	}
	slices.Sort(nums)
	for _, n := range nums {
		fd := byNum[n]
		if p.used[n] || isDup(fd, stdio, open) {
			continue // kept stdio, the other end of a pipe, or a dup
		}
		p.create(fd, byNum, stdio)
	}

	// Step 3: connect the datagram sockets.
	for _, n := range nums {
		fd := byNum[n]
		if fd.Kind == image.FDSocket && fd.DupOf == nil &&
			fd.Socket.State == image.SocketConnected {
			p.emit(op{code: opSockConnect, fd: n, rec: fd})
		}
	}

	// Step 4: the dups.
	for _, n := range nums {
		fd := byNum[n]
		if p.used[n] {
			continue
		}
		if fd.DupOf == nil {
			panic(fmt.Sprintf("fds: plan left fd %d unplaced", n))
		}
		flags := cloexecFlag(fd.Cloexec, unix.O_CLOEXEC)
		p.emit(op{code: opDup3, fd: *fd.DupOf, to: n, flags: flags, rec: fd})
		p.used[n] = true
	}

	// Step 5: the epoll watches.
	for _, n := range nums {
		fd := byNum[n]
		if fd.Kind != image.FDEpoll || fd.DupOf != nil {
			continue
		}
		for _, w := range fd.Epoll.Watches {
			p.emit(op{code: opEpollAdd, fd: n, to: w.FD, events: w.Events, val: w.Data, rec: fd})
		}
	}
	return p.ops, nil
}

// isDup reports whether fd is made with dup3 from *fd.DupOf. Every FD with DupOf
// is, except stdio 0-2 that go to a path or keep the target's descriptor: a
// restored process's stdout and stderr are what the restorer gives it, shared or
// not.
func isDup(fd *image.FD, stdio Stdio, open []int) bool {
	if fd.DupOf == nil {
		return false
	}
	if fd.Kind == image.FDStdio && fd.Num <= 2 {
		return stdio.Paths[fd.Num] == "" && !slices.Contains(open, fd.Num)
	}
	return true
}

// validate checks what the plan relies on: dups name a first descriptor, pipes
// and socket pairs have their two ends, epoll watches name recorded descriptors.
func validate(fds []image.FD, byNum map[int]*image.FD) error {
	type ends struct{ read, write int }
	pipes := make(map[uint64]*ends)
	for i := range fds {
		fd := &fds[i]
		if fd.DupOf != nil {
			src := byNum[*fd.DupOf]
			if src == nil || src.DupOf != nil || *fd.DupOf == fd.Num {
				return fmt.Errorf("fd %d: dup of fd %d, which is not a recorded first descriptor",
					fd.Num, *fd.DupOf)
			}
			continue
		}
		if ok, err := validateSpecial(fd); ok {
			if err != nil {
				return err
			}
			continue
		}
		switch fd.Kind {
		case image.FDFile:
			if fd.Path == "" {
				return fmt.Errorf("fd %d: file without a path", fd.Num)
			}
		case image.FDStdio:
			if fd.Num > 2 {
				return fmt.Errorf("fd %d: stdio kind above 2", fd.Num)
			}
		case image.FDPipe:
			if fd.Pipe == nil {
				return fmt.Errorf("fd %d: pipe without pipe state", fd.Num)
			}
			e := pipes[fd.Pipe.ID]
			if e == nil {
				e = &ends{-1, -1}
				pipes[fd.Pipe.ID] = e
			}
			end := &e.write
			if fd.Pipe.ReadEnd {
				end = &e.read
			}
			if *end >= 0 {
				return fmt.Errorf("fd %d: pipe %d has a second end of that direction", fd.Num,
					fd.Pipe.ID)
			}
			*end = fd.Num
		case image.FDEventfd:
			if fd.Eventfd == nil || fd.Eventfd.Count == math.MaxUint64 {
				return fmt.Errorf("fd %d: eventfd without a valid count", fd.Num)
			}
		case image.FDEpoll:
			if fd.Epoll == nil {
				return fmt.Errorf("fd %d: epoll without watches", fd.Num)
			}
			for _, w := range fd.Epoll.Watches {
				if byNum[w.FD] == nil || w.FD == fd.Num {
					return fmt.Errorf("fd %d: epoll watch of fd %d, which is not recorded",
						fd.Num, w.FD)
				}
			}
		case image.FDSocket:
			if err := validateSocket(fd, byNum); err != nil {
				return err
			}
		default:
			return fmt.Errorf("fd %d: unknown kind %q", fd.Num, fd.Kind)
		}
	}
	for id, e := range pipes {
		if e.read < 0 || e.write < 0 {
			return fmt.Errorf("pipe %d: only one end recorded (fd %d)", id, max(e.read, e.write))
		}
	}
	return nil
}

// create plans the creation of fd's object (and, for a pipe, its other end) at
// its number.
func (p *planner) create(fd *image.FD, byNum map[int]*image.FD, stdio Stdio) {
	cloexec := cloexecFlag(fd.Cloexec, unix.O_CLOEXEC)
	switch fd.Kind {
	case image.FDStdio:
		// Only a stdio FD with a path gets here: the others are kept.
		flags := fd.Flags&unix.O_ACCMODE | unix.O_NOCTTY | cloexec
		if fd.Flags&unix.O_ACCMODE != unix.O_RDONLY {
			flags |= unix.O_CREAT | unix.O_APPEND
		}
		p.single(op{code: opOpen, path: stdio.Paths[fd.Num], flags: flags, val: 0o644, rec: fd})

	case image.FDFile:
		p.single(op{code: opOpen, path: fd.Path, flags: openFlags(fd.Flags) | cloexec, rec: fd})
		if fd.Dev != 0 || fd.Ino != 0 || fd.Rdev != 0 {
			p.emit(op{code: opCheckFile, fd: fd.Num, rec: fd})
		}
		if fd.Pos != 0 && fd.Flags&unix.O_PATH == 0 {
			p.emit(op{code: opLseek, fd: fd.Num, val: uint64(fd.Pos), rec: fd})
		}

	case image.FDEventfd:
		flags := cloexecFlag(fd.Cloexec, unix.EFD_CLOEXEC)
		if fd.Flags&unix.O_NONBLOCK != 0 {
			flags |= unix.EFD_NONBLOCK
		}
		if fd.Eventfd.Semaphore {
			flags |= unix.EFD_SEMAPHORE
		}
		// eventfd2 takes an unsigned int; a larger count is written after.
		init := fd.Eventfd.Count
		if init > math.MaxUint32 {
			init = 0
		}
		p.single(op{code: opEventfd, val: init, flags: flags, rec: fd})
		if init != fd.Eventfd.Count {
			p.emit(op{code: opEventfdAdd, fd: fd.Num, val: fd.Eventfd.Count, rec: fd})
		}

	case image.FDEpoll:
		p.single(op{code: opEpoll, flags: cloexecFlag(fd.Cloexec, unix.EPOLL_CLOEXEC), rec: fd})
		if fl := fd.Flags & unix.O_NONBLOCK; fl != 0 {
			p.emit(op{code: opSetFL, fd: fd.Num, val: uint64(fl), rec: fd})
		}

	case image.FDPipe:
		p.pipe(fd, byNum)

	case image.FDSocket:
		p.socket(fd, byNum)

	default:
		if !p.createSpecial(fd) {
			panic(fmt.Sprintf("fds: plan for kind %q", fd.Kind)) // validate let it through
		}
	}
}

// single plans a creation returning one descriptor, and its move to its number.
func (p *planner) single(o op) {
	o.fd = p.lowest()
	p.emit(o)
	p.used[o.fd] = true
	if o.fd != o.rec.Num {
		p.move(o.fd, o.rec)
	}
}

// pipe plans pipe2 for the pipe that fd is one end of, and places both ends.
func (p *planner) pipe(fd *image.FD, byNum map[int]*image.FD) {
	var r, w *image.FD
	for _, o := range byNum {
		if o.Kind == image.FDPipe && o.DupOf == nil && o.Pipe.ID == fd.Pipe.ID {
			if o.Pipe.ReadEnd {
				r = o
			} else {
				w = o
			}
		}
	}
	flags := (r.Flags | w.Flags) & unix.O_DIRECT

	lr := p.lowest()
	p.used[lr] = true
	lw := p.lowest()
	p.used[lw] = true
	p.emit(op{code: opPipe, fd: lr, to: lw, flags: flags, rec: r})
	p.place2(lr, lw, r, w)

	for _, end := range []*image.FD{r, w} {
		if fl := end.Flags & (unix.O_NONBLOCK | unix.O_DIRECT); fl&unix.O_NONBLOCK != 0 {
			p.emit(op{code: opSetFL, fd: end.Num, val: uint64(fl), rec: end})
		}
	}
	if r.Pipe.Size > 0 {
		p.emit(op{code: opSetPipeSize, fd: r.Num, val: uint64(r.Pipe.Size), rec: r})
	}
	if len(r.Pipe.Buffered) > 0 {
		p.emit(op{code: opFillPipe, fd: w.Num, data: r.Pipe.Buffered, rec: r})
	}
}

// place2 moves the two descriptors a call just made at lr and lw (without
// O_CLOEXEC) to the numbers of r and w.
func (p *planner) place2(lr, lw int, r, w *image.FD) {
	switch {
	case lr == w.Num && lw == r.Num:
		// Each end sits on the other's number: go through a scratch number.
		s := p.lowest()
		p.emit(op{code: opDup3, fd: lr, to: s, flags: unix.O_CLOEXEC, rec: r})
		p.used[s] = true
		p.emit(op{code: opClose, fd: lr, rec: r})
		delete(p.used, lr)
		p.move(lw, w)
		p.move(s, r)
	case lw == r.Num:
		// The write end sits on the read end's number: move it first.
		p.move(lw, w)
		p.move(lr, r)
	default:
		if lr != r.Num {
			p.move(lr, r)
		} else {
			p.setCloexec(r, r.Cloexec, false)
		}
		if lw != w.Num {
			p.move(lw, w)
		} else {
			p.setCloexec(w, w.Cloexec, false)
		}
	}
}

// move plans dup3 of the temporary descriptor cur to fd's number, which must be
// free, and the close of cur.
func (p *planner) move(cur int, fd *image.FD) {
	if p.used[fd.Num] {
		panic(fmt.Sprintf("fds: plan moves fd %d onto fd %d, which is in use", cur, fd.Num))
	}
	p.emit(op{code: opDup3, fd: cur, to: fd.Num, flags: cloexecFlag(fd.Cloexec, unix.O_CLOEXEC),
		rec: fd})
	p.used[fd.Num] = true
	p.emit(op{code: opClose, fd: cur, rec: fd})
	delete(p.used, cur)
}

// setCloexec plans F_SETFD for a descriptor that is already at its number. A
// descriptor just created without O_CLOEXEC needs it only when cloexec is set;
// an inherited one (always) gets its flag set either way.
func (p *planner) setCloexec(fd *image.FD, cloexec, always bool) {
	if !cloexec && !always {
		return
	}
	v := uint64(0)
	if cloexec {
		v = unix.FD_CLOEXEC
	}
	p.emit(op{code: opSetFD, fd: fd.Num, val: v, rec: fd})
}

func (p *planner) emit(o op) { p.ops = append(p.ops, o) }

// lowest returns the number the kernel gives the next new descriptor.
func (p *planner) lowest() int {
	n := 0
	for p.used[n] {
		n++
	}
	return n
}

// oLargefile is O_LARGEFILE as the kernel shows it in fdinfo on x86-64, where it
// is set on every open file; x/sys/unix defines it as 0 there.
const oLargefile = 0o100000

// openFlags keeps the status flags of an open file description that openat
// reproduces; O_CREAT and the like are not kept by the kernel anyway.
func openFlags(f int) int {
	const keep = unix.O_ACCMODE | unix.O_APPEND | unix.O_NONBLOCK | unix.O_SYNC |
		unix.O_DSYNC | unix.O_DIRECT | oLargefile | unix.O_NOATIME | unix.O_PATH |
		unix.O_DIRECTORY | unix.O_NOFOLLOW
	return f&keep | unix.O_NOCTTY
}

func cloexecFlag(cloexec bool, flag int) int {
	if cloexec {
		return flag
	}
	return 0
}
