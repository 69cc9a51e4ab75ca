package uffd

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// uffdioAPI is struct uffdio_api.
type uffdioAPI struct {
	API      uint64
	Features uint64
	Ioctls   uint64
}

// uffdioRange is struct uffdio_range.
type uffdioRange struct {
	Start uint64
	Len   uint64
}

// uffdioRegister is struct uffdio_register.
type uffdioRegister struct {
	Range  uffdioRange
	Mode   uint64
	Ioctls uint64
}

// uffdioCopy is struct uffdio_copy.
type uffdioCopy struct {
	Dst  uint64
	Src  uint64
	Len  uint64
	Mode uint64
	Copy int64
}

// uffdioZeropage is struct uffdio_zeropage.
type uffdioZeropage struct {
	Range    uffdioRange
	Mode     uint64
	Zeropage int64
}

// uffdioWriteprotect is struct uffdio_writeprotect.
type uffdioWriteprotect struct {
	Range uffdioRange
	Mode  uint64
}

// ioctl issues request on fd with arg, retrying EINTR.
func ioctl(fd int, req uintptr, arg unsafe.Pointer) unix.Errno {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
		if errno != unix.EINTR {
			return errno
		}
	}
}

// API does UFFDIO_API on fd, asking for features. It returns the features
// the kernel supports (a superset of those asked for) and the mask of the
// ioctls the descriptor accepts. A descriptor takes UFFDIO_API once.
func API(fd int, features uint64) (got, ioctls uint64, err error) {
	a := uffdioAPI{API: UFFD_API, Features: features}
	errno := ioctl(fd, UFFDIO_API, unsafe.Pointer(&a))
	runtime.KeepAlive(&a)
	if errno != 0 {
		return 0, 0, fmt.Errorf("uffdio_api fd %d features %#x: %w", fd, features, errno)
	}
	return a.Features, a.Ioctls, nil
}

// Register does UFFDIO_REGISTER of [start, start+length) with mode
// (UFFDIO_REGISTER_MODE_*) and returns the mask of the ioctls the range
// accepts. The range must be covered by mappings of the userfaultfd's mm.
func Register(fd int, start, length, mode uint64) (ioctls uint64, err error) {
	r := uffdioRegister{Range: uffdioRange{start, length}, Mode: mode}
	errno := ioctl(fd, UFFDIO_REGISTER, unsafe.Pointer(&r))
	runtime.KeepAlive(&r)
	if errno != 0 {
		return 0, fmt.Errorf("uffdio_register %#x-%#x mode %#x: %w",
			start, start+length, mode, errno)
	}
	return r.Ioctls, nil
}

// Unregister does UFFDIO_UNREGISTER of [start, start+length).
func Unregister(fd int, start, length uint64) error {
	r := uffdioRange{start, length}
	errno := ioctl(fd, UFFDIO_UNREGISTER, unsafe.Pointer(&r))
	runtime.KeepAlive(&r)
	if errno != 0 {
		return fmt.Errorf("uffdio_unregister %#x-%#x: %w", start, start+length, errno)
	}
	return nil
}

// Copy does UFFDIO_COPY of src to the address dst of the userfaultfd's mm
// and wakes the threads waiting on that range unless mode has
// UFFDIO_COPY_MODE_DONTWAKE. len(src) must be a multiple of PageSize.
//
// It returns the bytes copied and, if that is not all of src, an error:
//   - unix.EEXIST: the page at dst+copied is already present. For a page
//     server that is success: the page needs nothing more, but the kernel
//     woke nobody, so wake the range if a fault is waiting on it.
//   - unix.EAGAIN with copied > 0: a partial copy; try the rest again.
//   - unix.EAGAIN with copied == 0: a non-cooperative event is pending or
//     being applied (the kernel's mmap_changing); read the events, apply
//     them, and decide again.
//   - unix.ENOENT: no registered mapping at dst+copied (unmapped meanwhile).
//   - unix.ESRCH: the mm is gone (the process exited).
func Copy(fd int, dst uintptr, src []byte, mode uint64) (copied int, err error) {
	if len(src) == 0 {
		return 0, nil
	}
	c := uffdioCopy{
		Dst:  uint64(dst),
		Src:  uint64(uintptr(unsafe.Pointer(&src[0]))),
		Len:  uint64(len(src)),
		Mode: mode,
	}
	errno := ioctl(fd, UFFDIO_COPY, unsafe.Pointer(&c))
	runtime.KeepAlive(&c)
	runtime.KeepAlive(src)
	return fillResult("uffdio_copy", uint64(dst), uint64(len(src)), c.Copy, errno)
}

// ZeroPage does UFFDIO_ZEROPAGE of [dst, dst+length): the pages read as zero
// (the shared zero page is mapped). Results and errors are those of Copy.
func ZeroPage(fd int, dst uintptr, length uint64, mode uint64) (zeroed int, err error) {
	z := uffdioZeropage{Range: uffdioRange{uint64(dst), length}, Mode: mode}
	errno := ioctl(fd, UFFDIO_ZEROPAGE, unsafe.Pointer(&z))
	runtime.KeepAlive(&z)
	return fillResult("uffdio_zeropage", uint64(dst), length, z.Zeropage, errno)
}

func fillResult(op string, dst, length uint64, n int64, errno unix.Errno) (int, error) {
	if errno == 0 {
		return int(length), nil
	}
	done := 0
	if n > 0 {
		done = int(n)
	}
	at := dst + uint64(done)
	return done, fmt.Errorf("%s %#x-%#x at %#x: %w", op, dst, dst+length, at, errno)
}

// WriteProtect does UFFDIO_WRITEPROTECT of [start, start+length) with mode
// (UFFDIO_WRITEPROTECT_MODE_*). The range must be registered in
// UFFDIO_REGISTER_MODE_WP, else the kernel returns ENOENT; a gone mm gives
// ESRCH.
func WriteProtect(fd int, start, length, mode uint64) error {
	w := uffdioWriteprotect{Range: uffdioRange{start, length}, Mode: mode}
	errno := ioctl(fd, UFFDIO_WRITEPROTECT, unsafe.Pointer(&w))
	runtime.KeepAlive(&w)
	if errno != 0 {
		return fmt.Errorf("uffdio_writeprotect %#x-%#x mode %#x: %w",
			start, start+length, mode, errno)
	}
	return nil
}

// Wake does UFFDIO_WAKE of [start, start+length): threads waiting on a fault
// in that range retry it.
func Wake(fd int, start, length uint64) error {
	r := uffdioRange{start, length}
	errno := ioctl(fd, UFFDIO_WAKE, unsafe.Pointer(&r))
	runtime.KeepAlive(&r)
	if errno != 0 {
		return fmt.Errorf("uffdio_wake %#x-%#x: %w", start, start+length, errno)
	}
	return nil
}

// structSizes returns unsafe.Sizeof of every ABI structure, for the tests.
func structSizes() map[string][2]uintptr {
	return map[string][2]uintptr{
		"uffdio_api":          {unsafe.Sizeof(uffdioAPI{}), sizeofUffdioAPI},
		"uffdio_range":        {unsafe.Sizeof(uffdioRange{}), sizeofUffdioRange},
		"uffdio_register":     {unsafe.Sizeof(uffdioRegister{}), sizeofUffdioRegister},
		"uffdio_copy":         {unsafe.Sizeof(uffdioCopy{}), sizeofUffdioCopy},
		"uffdio_zeropage":     {unsafe.Sizeof(uffdioZeropage{}), sizeofUffdioZeropage},
		"uffdio_writeprotect": {unsafe.Sizeof(uffdioWriteprotect{}), sizeofUffdioWriteprotect},
	}
}

// Addr returns the address of the first byte of b, for tests and callers
// that register memory of their own process.
func Addr(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }
