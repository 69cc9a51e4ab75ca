package fds

import "golang.org/x/sys/unix"

// The kcmp types cryo uses, from enum kcmp_type (linux/kcmp.h).
const (
	kcmpFileType     = 0 // KCMP_FILE
	kcmpEpollTfdType = 7 // KCMP_EPOLL_TFD, kernel 4.13+
)

// kcmpFile reports whether fds a and b of process pid refer to the same open
// file description. It needs CONFIG_KCMP (or CONFIG_CHECKPOINT_RESTORE) and
// permission to ptrace pid.
func kcmpFile(pid, a, b int) (bool, error) {
	r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(pid), uintptr(pid), kcmpFileType,
		uintptr(a), uintptr(b), 0)
	if e != 0 {
		return false, e
	}
	return r == 0, nil
}
