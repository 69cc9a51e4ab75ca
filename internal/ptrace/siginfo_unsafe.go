package ptrace

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// peeksiginfoArgs is struct ptrace_peeksiginfo_args.
type peeksiginfoArgs struct {
	off   uint64
	flags uint32
	nr    int32
}

func peekSiginfo(tid int, off uint64, flags uint32, nr int, buf []byte) (int, error) {
	args := peeksiginfoArgs{off: off, flags: flags, nr: int32(nr)}
	n, _, e := unix.Syscall6(unix.SYS_PTRACE, PTRACE_PEEKSIGINFO, uintptr(tid),
		uintptr(unsafe.Pointer(&args)), uintptr(unsafe.Pointer(&buf[0])), 0, 0)
	runtime.KeepAlive(&args)
	runtime.KeepAlive(buf)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
