package fds

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// kcmpEpollSlot is struct kcmp_epoll_slot (linux/kcmp.h).
type kcmpEpollSlot struct {
	Efd  uint32 // the epoll instance
	Tfd  uint32 // the fd number the watch was added under
	Toff uint32 // which of the watches under that number, in fdinfo order
}

// kcmpEpollTfd reports whether fd of process pid is the file that epoll
// instance efd watches as its toff-th watch under number tfd.
func kcmpEpollTfd(pid, fd, efd, tfd, toff int) (bool, error) {
	slot := kcmpEpollSlot{Efd: uint32(efd), Tfd: uint32(tfd), Toff: uint32(toff)}
	r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(pid), uintptr(pid), kcmpEpollTfdType,
		uintptr(fd), uintptr(unsafe.Pointer(&slot)), 0)
	runtime.KeepAlive(&slot)
	if e != 0 {
		return false, e
	}
	return r == 0, nil
}
