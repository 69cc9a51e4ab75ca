package fds

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
	"github.com/cryo-dev/cryo/internal/kabi"
	"github.com/cryo-dev/cryo/internal/procfs"
)

// This file handles the descriptor kinds of image version 2: timerfd, signalfd
// and memfd.
//
// A timerfd is recorded from fdinfo: clock, settime flags, time left to the
// nanosecond, interval and unread ticks. A relative timer is armed again with the
// time it had left (the time between checkpoint and restore does not count, as
// for every relative timer cryo restores). A timer armed with TFD_TIMER_ABSTIME
// keeps its absolute expiry: fdinfo shows only the time left, so Dump reads the
// clock on both sides of a second read of fdinfo and takes the middle; the
// expiry is exact to within that bracket (microseconds). Its successive
// expirations were first + k*interval; the k is lost, and the restored timer
// counts its intervals from the recorded expiry, which is the same instants.
// Unread ticks are set back with TFD_IOC_SET_TICKS (CONFIG_CHECKPOINT_RESTORE).
//
// A signalfd is its signal mask. A memfd is its name, content, size, file mode
// and seals; its content is kept in the image, so memfds larger than
// MaxMemfdSize are refused (storing their pages in the page store would lift
// that). A memfd opened twice through /proc (two open file descriptions of one
// memfd) and a hugetlb memfd are refused; mappings of memfds are refused by
// the engine.

// MaxMemfdSize is the largest memfd content Dump records.
const MaxMemfdSize = 16 << 20

// hugetlbfsMagic is HUGETLBFS_MAGIC (linux/magic.h).
const hugetlbfsMagic = 0x958458f6

// classifySpecial records a timerfd or signalfd; ok is false for other kinds.
func classifySpecial(pid int, d *desc) (ok bool, err error) {
	fd := &d.fd
	switch d.link {
	case "anon_inode:[timerfd]":
		if d.info.Timerfd == nil {
			return true, fmt.Errorf("fd %d: timerfd without timer state in fdinfo", fd.Num)
		}
		fd.Kind = image.FDTimerfd
		fd.Pos, fd.Mode = 0, 0
		fd.Timerfd, err = readTimerfd(pid, fd.Num, d.info.Timerfd)
		return true, err
	case "anon_inode:[signalfd]":
		if d.info.Signalfd == nil {
			return true, fmt.Errorf("fd %d: signalfd without sigmask in fdinfo", fd.Num)
		}
		fd.Kind = image.FDSignalfd
		fd.Pos, fd.Mode = 0, 0
		fd.Signalfd = &image.Signalfd{Mask: d.info.Signalfd.Sigmask}
		return true, nil
	}
	return false, nil
}

// readTimerfd turns fdinfo's timer state into the image's. For an absolute timer
// it reads fdinfo again between two readings of the clock.
func readTimerfd(pid, num int, ti *procfs.TimerfdInfo) (*image.Timerfd, error) {
	ns := func(ts procfs.Timespec) int64 { return ts.Sec*1e9 + ts.Nsec }
	tf := &image.Timerfd{Clock: ti.ClockID, Flags: ti.SettimeFlags, Remaining: ns(ti.Value),
		Interval: ns(ti.Interval), Ticks: ti.Ticks}
	if tf.Flags&unix.TFD_TIMER_ABSTIME == 0 || tf.Remaining == 0 {
		return tf, nil
	}
	clock := tf.Clock
	switch clock {
	case unix.CLOCK_REALTIME_ALARM:
		clock = unix.CLOCK_REALTIME
	case unix.CLOCK_BOOTTIME_ALARM:
		clock = unix.CLOCK_BOOTTIME
	}
	var before, after unix.Timespec
	if err := unix.ClockGettime(int32(clock), &before); err != nil {
		return nil, fmt.Errorf("fd %d: read clock %d: %w", num, clock, err)
	}
	again, err := procfs.ReadFdinfo(pid, num)
	if err != nil {
		return nil, fmt.Errorf("fd %d: %w", num, err)
	}
	if err := unix.ClockGettime(int32(clock), &after); err != nil {
		return nil, fmt.Errorf("fd %d: read clock %d: %w", num, clock, err)
	}
	if again.Timerfd == nil {
		return nil, fmt.Errorf("fd %d: timerfd without timer state in fdinfo", num)
	}
	tf.Remaining = ns(again.Timerfd.Value)
	tf.Ticks = again.Timerfd.Ticks
	mid := before.Nano() + (after.Nano()-before.Nano())/2
	if tf.Remaining != 0 {
		tf.Expiry = mid + tf.Remaining
	}
	return tf, nil
}

// classifyMemfd records a memfd with its content, which it reads through
// /proc/PID/fd/N.
func classifyMemfd(pid int, d *desc, byNum map[int]*desc) error {
	fd := &d.fd
	name := strings.TrimSuffix(strings.TrimPrefix(d.link, "/memfd:"), procfs.DeletedSuffix)
	unsupported := func(why string) error {
		return &UnsupportedError{FD: fd.Num, Kind: d.link + " (memfd " + why + ")"}
	}
	if fd.Flags&unix.O_ACCMODE != unix.O_RDWR {
		return unsupported("opened again read-only or write-only")
	}
	for _, o := range byNum {
		if o != d && o.dup == nil && o.fd.Num < fd.Num && o.st.Dev == d.st.Dev &&
			o.st.Ino == d.st.Ino {
			return unsupported(fmt.Sprintf("also open at fd %d as another open file", o.fd.Num))
		}
	}
	if d.st.Size > MaxMemfdSize {
		return unsupported(fmt.Sprintf("of %d bytes, more than the %d cryo keeps in an image",
			d.st.Size, MaxMemfdSize))
	}
	p := procfs.Path(pid, "fd", strconv.Itoa(fd.Num))
	var sfs unix.Statfs_t
	if err := unix.Statfs(p, &sfs); err != nil {
		return fmt.Errorf("fd %d: statfs %s: %w", fd.Num, p, err)
	}
	if sfs.Type == hugetlbfsMagic {
		return unsupported("on hugetlbfs")
	}
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("fd %d: %w", fd.Num, err)
	}
	defer f.Close()
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil {
		return fmt.Errorf("fd %d: F_GET_SEALS: %w", fd.Num, err)
	}
	content, err := io.ReadAll(io.LimitReader(f, d.st.Size))
	if err != nil {
		return fmt.Errorf("fd %d: read memfd content: %w", fd.Num, err)
	}
	fd.Kind = image.FDMemfd
	fd.Memfd = &image.Memfd{Name: name, Seals: seals, Mode: d.st.Mode & 0o7777,
		Size: d.st.Size, Content: bytes.TrimRight(content, "\x00")}
	fd.Mode = 0
	return nil
}

// validateSpecial checks the state of the kinds of this file; ok is false for
// other kinds.
func validateSpecial(fd *image.FD) (ok bool, err error) {
	switch fd.Kind {
	case image.FDTimerfd:
		if t := fd.Timerfd; t == nil || t.Remaining < 0 || t.Interval < 0 {
			return true, fmt.Errorf("fd %d: timerfd without a valid timer", fd.Num)
		}
	case image.FDSignalfd:
		if fd.Signalfd == nil {
			return true, fmt.Errorf("fd %d: signalfd without a mask", fd.Num)
		}
	case image.FDMemfd:
		m := fd.Memfd
		if m == nil || m.Size < 0 || int64(len(m.Content)) > m.Size || len(m.Name) > 249 {
			return true, fmt.Errorf("fd %d: memfd without valid state", fd.Num)
		}
	default:
		return false, nil
	}
	return true, nil
}

// Restore steps of these kinds (continuing opCode).
const (
	opTimerfd      opCode = iota + 100 // timerfd_create(val, flags) = fd
	opTimerfdSet                       // timerfd_settime(fd, flags, data, NULL)
	opTimerfdTicks                     // ioctl(fd, TFD_IOC_SET_TICKS, &val)
	opSignalfd                         // signalfd4(-1, &val, 8, flags) = fd
	opMemfd                            // memfd_create(path, flags) = fd
	opMemfdFill                        // cryo writes content, size, mode and seals of rec
)

var specialNames = map[opCode]string{opTimerfd: "timerfd_create", opTimerfdSet: "timerfd_settime",
	opTimerfdTicks: "TFD_IOC_SET_TICKS", opSignalfd: "signalfd4", opMemfd: "memfd_create",
	opMemfdFill: "fill memfd"}

// createSpecial plans the creation of fd of a kind of this file; ok is false
// for other kinds.
func (p *planner) createSpecial(fd *image.FD) (ok bool) {
	nonblock := 0
	if fd.Flags&unix.O_NONBLOCK != 0 {
		nonblock = unix.O_NONBLOCK // TFD_NONBLOCK, SFD_NONBLOCK
	}
	cloexec := cloexecFlag(fd.Cloexec, unix.O_CLOEXEC)
	switch fd.Kind {
	case image.FDTimerfd:
		t := fd.Timerfd
		p.single(op{code: opTimerfd, val: uint64(t.Clock), flags: nonblock | cloexec, rec: fd})
		value := t.Remaining
		if t.Flags&unix.TFD_TIMER_ABSTIME != 0 {
			value = t.Expiry
		}
		if value != 0 { // else disarmed, as timerfd_create leaves it
			its := make([]byte, 32)
			le := binary.LittleEndian
			le.PutUint64(its[0:], uint64(t.Interval/1e9))
			le.PutUint64(its[8:], uint64(t.Interval%1e9))
			le.PutUint64(its[16:], uint64(value/1e9))
			le.PutUint64(its[24:], uint64(value%1e9))
			p.emit(op{code: opTimerfdSet, fd: fd.Num, flags: t.Flags, data: its, rec: fd})
		}
		if t.Ticks > 0 {
			p.emit(op{code: opTimerfdTicks, fd: fd.Num, val: t.Ticks, rec: fd})
		}
	case image.FDSignalfd:
		p.single(op{code: opSignalfd, val: fd.Signalfd.Mask, flags: nonblock | cloexec, rec: fd})
	case image.FDMemfd:
		m := fd.Memfd
		flags := cloexecFlag(fd.Cloexec, unix.MFD_CLOEXEC)
		if m.Seals != unix.F_SEAL_SEAL { // else made without MFD_ALLOW_SEALING
			flags |= unix.MFD_ALLOW_SEALING
		}
		p.single(op{code: opMemfd, path: m.Name, flags: flags, rec: fd})
		p.emit(op{code: opMemfdFill, fd: fd.Num, rec: fd})
		if fl := fd.Flags & (unix.O_NONBLOCK | unix.O_APPEND); fl != 0 {
			p.emit(op{code: opSetFL, fd: fd.Num, val: uint64(fl), rec: fd})
		}
		if fd.Pos != 0 {
			p.emit(op{code: opLseek, fd: fd.Num, val: uint64(fd.Pos), rec: fd})
		}
	default:
		return false
	}
	return true
}

// runSpecial runs a step of this file; it returns the system call's result.
func (x *executor) runSpecial(o *op) (uint64, error) {
	scratch, _ := x.r.Scratch()
	switch o.code {
	case opTimerfd:
		return x.r.Syscall(unix.SYS_TIMERFD_CREATE, o.val, uint64(o.flags))
	case opTimerfdSet:
		if err := x.r.WriteMem(scratch, o.data); err != nil {
			return 0, err
		}
		return x.r.Syscall(unix.SYS_TIMERFD_SETTIME, uint64(o.fd), uint64(o.flags), scratch, 0)
	case opTimerfdTicks:
		if err := x.r.WriteMem(scratch, binary.NativeEndian.AppendUint64(nil, o.val)); err != nil {
			return 0, err
		}
		return x.r.Syscall(unix.SYS_IOCTL, uint64(o.fd), kabi.TFD_IOC_SET_TICKS, scratch)
	case opSignalfd:
		if err := x.r.WriteMem(scratch, binary.NativeEndian.AppendUint64(nil, o.val)); err != nil {
			return 0, err
		}
		return x.r.Syscall(unix.SYS_SIGNALFD4, ^uint64(0), scratch, 8, uint64(o.flags))
	case opMemfd:
		addr, err := x.putString(o.path)
		if err != nil {
			return 0, err
		}
		return x.r.Syscall(unix.SYS_MEMFD_CREATE, addr, uint64(o.flags))
	case opMemfdFill:
		return 0, x.fillMemfd(o.fd, o.rec.Memfd)
	}
	panic(fmt.Sprintf("fds: unknown op %d", o.code))
}

// fillMemfd gives the new memfd at fd num of the target its content, size, mode
// and seals, through /proc/PID/fd/N (seals belong to the file, not the
// descriptor), then reads the seals back.
func (x *executor) fillMemfd(num int, m *image.Memfd) error {
	p := procfs.Path(x.pid, "fd", strconv.Itoa(num))
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt(m.Content, 0); err != nil {
		return fmt.Errorf("write %d bytes: %w", len(m.Content), err)
	}
	if err := f.Truncate(m.Size); err != nil {
		return fmt.Errorf("set size %d: %w", m.Size, err)
	}
	if err := unix.Fchmod(int(f.Fd()), m.Mode); err != nil {
		return fmt.Errorf("set mode %#o: %w", m.Mode, err)
	}
	have, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil {
		return fmt.Errorf("F_GET_SEALS: %w", err)
	}
	if add := m.Seals &^ have; add != 0 {
		if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, add); err != nil {
			return fmt.Errorf("F_ADD_SEALS %#x: %w", add, err)
		}
	}
	if have, err = unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0); err != nil || have != m.Seals {
		return fmt.Errorf("seals are %#x, want %#x (%v)", have, m.Seals, err)
	}
	return nil
}
