package kabi

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SchedGetattr is sched_getattr(2) (Linux 3.14+) of thread tid.
func SchedGetattr(tid int) (SchedAttr, error) {
	var a SchedAttr
	_, _, e := unix.Syscall6(unix.SYS_SCHED_GETATTR, uintptr(tid), uintptr(unsafe.Pointer(&a)),
		SizeofSchedAttr, 0, 0, 0)
	runtime.KeepAlive(&a)
	if e != 0 {
		return a, e
	}
	return a, nil
}

// SchedSetattr is sched_setattr(2) of thread tid.
func SchedSetattr(tid int, a SchedAttr) error {
	a.Size = SizeofSchedAttr
	_, _, e := unix.Syscall(unix.SYS_SCHED_SETATTR, uintptr(tid), uintptr(unsafe.Pointer(&a)), 0)
	runtime.KeepAlive(&a)
	if e != 0 {
		return e
	}
	return nil
}
