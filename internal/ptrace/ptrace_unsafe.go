package ptrace

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

func ptrace(req int, pid int, addr, data uintptr) error {
	_, _, errno := unix.Syscall6(unix.SYS_PTRACE, uintptr(req), uintptr(pid), addr, data, 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

func getRegset(pid int, typ int, buf []byte) (int, error) {
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	err := ptrace(PTRACE_GETREGSET, pid, uintptr(typ), uintptr(unsafe.Pointer(&iov)))
	runtime.KeepAlive(buf)
	return int(iov.Len), err
}

func setRegset(pid int, typ int, buf []byte) error {
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	err := ptrace(PTRACE_SETREGSET, pid, uintptr(typ), uintptr(unsafe.Pointer(&iov)))
	runtime.KeepAlive(buf)
	return err
}

func getSigmask(pid int, mask *uint64) error {
	return ptrace(PTRACE_GETSIGMASK, pid, sigsetSize, uintptr(unsafe.Pointer(mask)))
}

func setSigmask(pid int, mask uint64) error {
	err := ptrace(PTRACE_SETSIGMASK, pid, sigsetSize, uintptr(unsafe.Pointer(&mask)))
	runtime.KeepAlive(&mask)
	return err
}

func getRseq(pid int, c *RseqConfig) error {
	return ptrace(PTRACE_GET_RSEQ_CONFIGURATION, pid, rseqConfigurationSize,
		uintptr(unsafe.Pointer(c)))
}

func getRobustList(tid int, head *uint64, size *uint64) error {
	_, _, errno := unix.Syscall(unix.SYS_GET_ROBUST_LIST, uintptr(tid),
		uintptr(unsafe.Pointer(head)), uintptr(unsafe.Pointer(size)))
	if errno != 0 {
		return errno
	}
	return nil
}
