package fds

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
	"github.com/cryo-dev/cryo/internal/procfs"
)

// Restore rebuilds fds inside the target of r, each at its number, through
// injected system calls (see plan.go for the order).
//
// Preconditions: the target is stopped and traced, and r's methods may be called
// from this goroutine (the tracing OS thread). The target holds the restorer's
// stdio at 0, 1 and 2 and nothing else the FDs need: descriptors above 2 that it
// holds are left alone, and an FD that wants one of their numbers is an error.
// Restore raises no limit: an FD numbered at or above the target's RLIMIT_NOFILE
// is an error.
//
// Files are reopened by path and must be the files that were checkpointed (same
// device and inode, or device number for character devices), else the error
// matches ErrFileChanged; a missing file keeps its errno (unix.ENOENT). Pipe data
// is written back by cryo through /proc/PID/fd/N, as one byte stream: the packet
// boundaries of an O_DIRECT pipe are not kept. Epoll instances get their watches
// once every descriptor exists; events that were pending are found again by the
// kernel for level-triggered watches, and reported again for edge-triggered ones
// whose file is ready.
//
// Sockets are made inside the target and set up by cryo through a copy (see
// socket_plan.go): a listening or bound socket is bound to its address again,
// which fails (EADDRINUSE) while another socket holds it; the data queued in a
// unix socket pair is sent again, each message with cryo's credentials.
func Restore(r Remote, fds []image.FD, stdio Stdio) error {
	pid := r.Pid()
	open, err := procfs.ReadFDs(pid)
	if err != nil {
		return fmt.Errorf("restore fds of pid %d: %w", pid, err)
	}
	var lim unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &lim); err != nil {
		return fmt.Errorf("restore fds of pid %d: get RLIMIT_NOFILE: %w", pid, err)
	}
	ops, err := plan(fds, stdio, open, lim.Cur)
	if err != nil {
		return fmt.Errorf("restore fds of pid %d: %w", pid, err)
	}
	x := executor{r: r, pid: pid, pidfd: -1}
	defer x.close()
	for i := range ops {
		o := &ops[i]
		if err := x.run(o); err != nil {
			num := o.fd
			if o.rec != nil {
				num = o.rec.Num
			}
			return fmt.Errorf("restore fds of pid %d: fd %d: %w", pid, num, err)
		}
	}
	return nil
}

// executor runs the steps of a plan in the target.
type executor struct {
	r     Remote
	pid   int
	pidfd int // of the target, opened on first use; -1 until then
}

func (x *executor) close() {
	if x.pidfd >= 0 {
		unix.Close(x.pidfd)
	}
}

func (x *executor) run(o *op) error {
	var (
		ret uint64
		err error
	)
	sys := func(nr uintptr, args ...uint64) {
		ret, err = x.r.Syscall(nr, args...)
	}
	switch o.code {
	case opClose:
		sys(unix.SYS_CLOSE, uint64(o.fd))
	case opDup3:
		sys(unix.SYS_DUP3, uint64(o.fd), uint64(o.to), uint64(o.flags))
		if err == nil && int(ret) != o.to {
			err = fmt.Errorf("returned fd %d", int(ret))
		}
	case opOpen:
		var addr uint64
		if addr, err = x.putString(o.path); err == nil {
			sys(unix.SYS_OPENAT, atFdcwd, addr, uint64(o.flags), o.val)
		}
		if err != nil {
			return &os.PathError{Op: "open", Path: o.path, Err: err}
		}
	case opPipe:
		err = x.pipe(o)
	case opEventfd:
		sys(unix.SYS_EVENTFD2, o.val, uint64(o.flags))
	case opEpoll:
		sys(unix.SYS_EPOLL_CREATE1, uint64(o.flags))
	case opSetFD:
		sys(unix.SYS_FCNTL, uint64(o.fd), unix.F_SETFD, o.val)
	case opSetFL:
		sys(unix.SYS_FCNTL, uint64(o.fd), unix.F_SETFL, o.val)
	case opSetPipeSize:
		sys(unix.SYS_FCNTL, uint64(o.fd), unix.F_SETPIPE_SZ, o.val)
	case opLseek:
		sys(unix.SYS_LSEEK, uint64(o.fd), o.val, unix.SEEK_SET)
		if err == nil && ret != o.val {
			err = fmt.Errorf("at %d, not %d", ret, o.val)
		}
	case opEventfdAdd:
		err = x.writeFromScratch(o.fd, binary.NativeEndian.AppendUint64(nil, o.val))
	case opFillPipe:
		err = x.fillPipe(o.fd, o.data)
	case opCheckFile:
		return x.checkFile(o.rec)
	case opEpollAdd:
		// struct epoll_event is packed on x86-64: u32 events, u64 data.
		ev := binary.NativeEndian.AppendUint32(nil, o.events)
		ev = binary.NativeEndian.AppendUint64(ev, o.val)
		addr, _ := x.r.Scratch()
		if err = x.r.WriteMem(addr, ev); err == nil {
			sys(unix.SYS_EPOLL_CTL, uint64(o.fd), unix.EPOLL_CTL_ADD, uint64(o.to), addr)
		}
		if err != nil {
			err = fmt.Errorf("epoll_ctl add fd %d: %w", o.to, err)
		}
		return err
	case opSocket, opSocketPair, opListen, opShutdown, opSockSetup,
		opSockReset, opSockFill, opSockConnect:
		return x.runSocket(o)
	default:
		ret, err = x.runSpecial(o)
	}
	if err != nil {
		return fmt.Errorf("%v: %w", o.code, err)
	}

	// A creation must return the number the plan expects.
	switch o.code {
	case opOpen, opEventfd, opEpoll, opTimerfd, opSignalfd, opMemfd:
		if int(ret) != o.fd {
			return fmt.Errorf("%v returned fd %d, the plan expected %d: the target has "+
				"descriptors the plan did not know", o.code, int(ret), o.fd)
		}
	}
	return nil
}

// pipe runs pipe2 with the fd pair in scratch memory.
func (x *executor) pipe(o *op) error {
	addr, _ := x.r.Scratch()
	if _, err := x.r.Syscall(unix.SYS_PIPE2, addr, uint64(o.flags)); err != nil {
		return err
	}
	var b [8]byte
	if err := x.r.ReadMem(addr, b[:]); err != nil {
		return fmt.Errorf("read result: %w", err)
	}
	rd := int(int32(binary.NativeEndian.Uint32(b[0:])))
	wr := int(int32(binary.NativeEndian.Uint32(b[4:])))
	if rd != o.fd || wr != o.to {
		return fmt.Errorf("returned fds %d and %d, the plan expected %d and %d: the target "+
			"has descriptors the plan did not know", rd, wr, o.fd, o.to)
	}
	return nil
}

// putString writes s and a NUL into scratch memory and returns its address.
func (x *executor) putString(s string) (uint64, error) {
	addr, size := x.r.Scratch()
	if len(s)+1 > size || len(s)+1 > unix.PathMax {
		return 0, unix.ENAMETOOLONG
	}
	b := append([]byte(s), 0)
	if err := x.r.WriteMem(addr, b); err != nil {
		return 0, fmt.Errorf("write path to scratch: %w", err)
	}
	return addr, nil
}

// writeFromScratch writes b to fd in the target from scratch memory.
func (x *executor) writeFromScratch(fd int, b []byte) error {
	addr, _ := x.r.Scratch()
	if err := x.r.WriteMem(addr, b); err != nil {
		return fmt.Errorf("write to scratch: %w", err)
	}
	n, err := x.r.Syscall(unix.SYS_WRITE, uint64(fd), addr, uint64(len(b)))
	if err != nil {
		return err
	}
	if n != uint64(len(b)) {
		return fmt.Errorf("wrote %d of %d bytes", n, len(b))
	}
	return nil
}

// fillPipe writes data into the pipe whose write end is fd num of the target, by
// opening that end through /proc from cryo. The pipe is empty and at least as big
// as the one that held data, so the writes never block.
func (x *executor) fillPipe(num int, data []byte) error {
	p := procfs.Path(x.pid, "fd", strconv.Itoa(num))
	f, err := unix.Open(p, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: p, Err: err}
	}
	defer unix.Close(f)
	for off := 0; off < len(data); {
		n, err := unix.Write(f, data[off:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("write %d bytes of pipe data at %d: %w", len(data), off, err)
		}
		off += n
	}
	return nil
}

// checkFile checks that fd.Num in the target is the file fd recorded.
func (x *executor) checkFile(fd *image.FD) error {
	var st unix.Stat_t
	p := procfs.Path(x.pid, "fd", strconv.Itoa(fd.Num))
	if err := unix.Stat(p, &st); err != nil {
		return &os.PathError{Op: "stat", Path: p, Err: err}
	}
	if fd.Rdev != 0 {
		if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != fd.Rdev {
			return fmt.Errorf("%s: %w: device %d:%d, was character device %d:%d", fd.Path,
				ErrFileChanged, unix.Major(st.Rdev), unix.Minor(st.Rdev),
				unix.Major(fd.Rdev), unix.Minor(fd.Rdev))
		}
		return nil
	}
	if st.Dev != fd.Dev || st.Ino != fd.Ino {
		return fmt.Errorf("%s: %w: device %#x inode %d, was device %#x inode %d", fd.Path,
			ErrFileChanged, st.Dev, st.Ino, fd.Dev, fd.Ino)
	}
	return nil
}

// atFdcwd is AT_FDCWD (-100) as a system call argument.
var atFdcwd = func() uint64 { v := int64(unix.AT_FDCWD); return uint64(v) }()
