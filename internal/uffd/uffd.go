// Package uffd is a thin wrapper over the userfaultfd ABI of
// linux/userfaultfd.h: its constants under their C names, the ioctl argument
// structures, the decoding of uffd_msg, and one function per ioctl.
//
// A userfaultfd belongs to the mm it was created in, not to the process that
// holds the descriptor: UFFDIO_API, UFFDIO_REGISTER, UFFDIO_COPY and the rest
// act on that mm even when the descriptor was taken from another process with
// pidfd_getfd(2) or passed over a unix socket. cryo relies on this to serve
// the memory of a restored process from its own address space.
//
// Every function retries EINTR. No function retries EAGAIN: for the filling
// ioctls it means a non-cooperative event (fork, mremap, madvise, munmap) is
// pending or being applied, and the caller must read the events before it
// tries again, so that its view of the address space stays right.
//
// The kernel headers on the build machines are older than the kernel, so the
// constants are defined here and tested against the running kernel.
package uffd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// PageSize is the base page size the ioctls work in on the supported
// architectures.
const PageSize = 4096

// API version and the flags of userfaultfd(2).
const (
	UFFD_API            = 0xAA
	UFFD_USER_MODE_ONLY = 1
)

// Features negotiated with UFFDIO_API (uffdio_api.features).
const (
	UFFD_FEATURE_PAGEFAULT_FLAG_WP  = 1 << 0
	UFFD_FEATURE_EVENT_FORK         = 1 << 1 // 4.11
	UFFD_FEATURE_EVENT_REMAP        = 1 << 2 // 4.11
	UFFD_FEATURE_EVENT_REMOVE       = 1 << 3 // 4.11
	UFFD_FEATURE_MISSING_HUGETLBFS  = 1 << 4
	UFFD_FEATURE_MISSING_SHMEM      = 1 << 5
	UFFD_FEATURE_EVENT_UNMAP        = 1 << 6 // 4.11
	UFFD_FEATURE_SIGBUS             = 1 << 7
	UFFD_FEATURE_THREAD_ID          = 1 << 8 // 4.14
	UFFD_FEATURE_MINOR_HUGETLBFS    = 1 << 9
	UFFD_FEATURE_MINOR_SHMEM        = 1 << 10
	UFFD_FEATURE_EXACT_ADDRESS      = 1 << 11
	UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
	UFFD_FEATURE_WP_UNPOPULATED     = 1 << 13 // 6.4
	UFFD_FEATURE_POISON             = 1 << 14
	UFFD_FEATURE_WP_ASYNC           = 1 << 15 // 6.7
	UFFD_FEATURE_MOVE               = 1 << 16 // 6.8
)

// Registration modes (uffdio_register.mode).
const (
	UFFDIO_REGISTER_MODE_MISSING = 1 << 0
	UFFDIO_REGISTER_MODE_WP      = 1 << 1
	UFFDIO_REGISTER_MODE_MINOR   = 1 << 2
)

// Modes of the filling and protecting ioctls.
const (
	UFFDIO_COPY_MODE_DONTWAKE         = 1 << 0
	UFFDIO_COPY_MODE_WP               = 1 << 1
	UFFDIO_ZEROPAGE_MODE_DONTWAKE     = 1 << 0
	UFFDIO_WRITEPROTECT_MODE_WP       = 1 << 0
	UFFDIO_WRITEPROTECT_MODE_DONTWAKE = 1 << 1
)

// Events (uffd_msg.event).
const (
	UFFD_EVENT_PAGEFAULT = 0x12
	UFFD_EVENT_FORK      = 0x13
	UFFD_EVENT_REMAP     = 0x14
	UFFD_EVENT_REMOVE    = 0x15
	UFFD_EVENT_UNMAP     = 0x16
)

// Page fault flags (uffd_msg.arg.pagefault.flags).
const (
	UFFD_PAGEFAULT_FLAG_WRITE = 1 << 0
	UFFD_PAGEFAULT_FLAG_WP    = 1 << 1
	UFFD_PAGEFAULT_FLAG_MINOR = 1 << 2
)

// ioctl numbers within the 0xAA type; bit _UFFDIO_x of the ioctls masks that
// UFFDIO_API and UFFDIO_REGISTER return says that ioctl x is available.
const (
	_UFFDIO_REGISTER     = 0x00
	_UFFDIO_UNREGISTER   = 0x01
	_UFFDIO_WAKE         = 0x02
	_UFFDIO_COPY         = 0x03
	_UFFDIO_ZEROPAGE     = 0x04
	_UFFDIO_MOVE         = 0x05
	_UFFDIO_WRITEPROTECT = 0x06
	_UFFDIO_CONTINUE     = 0x07
	_UFFDIO_POISON       = 0x08
	_UFFDIO_API          = 0x3F

	UFFDIO = 0xAA
)

// Sizes of the ioctl argument structures (checked against unsafe.Sizeof in
// the tests).
const (
	sizeofUffdioAPI          = 24
	sizeofUffdioRange        = 16
	sizeofUffdioRegister     = 32
	sizeofUffdioCopy         = 40
	sizeofUffdioZeropage     = 32
	sizeofUffdioWriteprotect = 24
	sizeofUffdioMove         = 40
	sizeofUffdioContinue     = 32
	sizeofUffdioPoison       = 32

	// SizeofMsg is the size of struct uffd_msg: every read returns whole
	// messages of this size.
	SizeofMsg = 32
)

// The ioctl requests, _IOWR or _IOR of UFFDIO as linux/userfaultfd.h has them.
const (
	UFFDIO_API          = iocRW<<30 | sizeofUffdioAPI<<16 | UFFDIO<<8 | _UFFDIO_API
	UFFDIO_REGISTER     = iocRW<<30 | sizeofUffdioRegister<<16 | UFFDIO<<8 | _UFFDIO_REGISTER
	UFFDIO_UNREGISTER   = iocR<<30 | sizeofUffdioRange<<16 | UFFDIO<<8 | _UFFDIO_UNREGISTER
	UFFDIO_WAKE         = iocR<<30 | sizeofUffdioRange<<16 | UFFDIO<<8 | _UFFDIO_WAKE
	UFFDIO_COPY         = iocRW<<30 | sizeofUffdioCopy<<16 | UFFDIO<<8 | _UFFDIO_COPY
	UFFDIO_ZEROPAGE     = iocRW<<30 | sizeofUffdioZeropage<<16 | UFFDIO<<8 | _UFFDIO_ZEROPAGE
	UFFDIO_MOVE         = iocRW<<30 | sizeofUffdioMove<<16 | UFFDIO<<8 | _UFFDIO_MOVE
	UFFDIO_WRITEPROTECT = iocRW<<30 | sizeofUffdioWriteprotect<<16 | UFFDIO<<8 |
		_UFFDIO_WRITEPROTECT
	UFFDIO_CONTINUE = iocRW<<30 | sizeofUffdioContinue<<16 | UFFDIO<<8 | _UFFDIO_CONTINUE
	UFFDIO_POISON   = iocRW<<30 | sizeofUffdioPoison<<16 | UFFDIO<<8 | _UFFDIO_POISON

	iocR  = 2 // _IOC_READ
	iocRW = 3 // _IOC_READ|_IOC_WRITE
)

// Bits of the ioctls masks returned by API and Register.
const (
	IoctlRegister     = 1 << _UFFDIO_REGISTER
	IoctlUnregister   = 1 << _UFFDIO_UNREGISTER
	IoctlWake         = 1 << _UFFDIO_WAKE
	IoctlCopy         = 1 << _UFFDIO_COPY
	IoctlZeroPage     = 1 << _UFFDIO_ZEROPAGE
	IoctlMove         = 1 << _UFFDIO_MOVE
	IoctlWriteProtect = 1 << _UFFDIO_WRITEPROTECT
	IoctlContinue     = 1 << _UFFDIO_CONTINUE
	IoctlPoison       = 1 << _UFFDIO_POISON
	IoctlAPI          = 1 << _UFFDIO_API
)

// ErrNotSupported is matched (with errors.Is) by every error that reports a
// userfaultfd feature the running kernel lacks.
var ErrNotSupported = errors.New("not supported")

// FeatureError reports a feature the kernel does not offer.
type FeatureError struct {
	Feature string // C name, e.g. "UFFD_FEATURE_WP_ASYNC"
	Version string // kernel version that brought it, e.g. "6.7"
}

func (e *FeatureError) Error() string {
	return fmt.Sprintf("%s (Linux %s+) %v", e.Feature, e.Version, ErrNotSupported)
}

// Is makes a FeatureError match ErrNotSupported.
func (e *FeatureError) Is(target error) bool { return target == ErrNotSupported }

// FeatureNames maps the features cryo uses to their C name and the kernel
// version that brought them, for FeatureError.
var FeatureNames = map[uint64][2]string{
	UFFD_FEATURE_EVENT_FORK:        {"UFFD_FEATURE_EVENT_FORK", "4.11"},
	UFFD_FEATURE_EVENT_REMAP:       {"UFFD_FEATURE_EVENT_REMAP", "4.11"},
	UFFD_FEATURE_EVENT_REMOVE:      {"UFFD_FEATURE_EVENT_REMOVE", "4.11"},
	UFFD_FEATURE_EVENT_UNMAP:       {"UFFD_FEATURE_EVENT_UNMAP", "4.11"},
	UFFD_FEATURE_THREAD_ID:         {"UFFD_FEATURE_THREAD_ID", "4.14"},
	UFFD_FEATURE_WP_UNPOPULATED:    {"UFFD_FEATURE_WP_UNPOPULATED", "6.4"},
	UFFD_FEATURE_WP_ASYNC:          {"UFFD_FEATURE_WP_ASYNC", "6.7"},
	UFFD_FEATURE_MOVE:              {"UFFD_FEATURE_MOVE", "6.8"},
	UFFD_FEATURE_PAGEFAULT_FLAG_WP: {"UFFD_FEATURE_PAGEFAULT_FLAG_WP", "5.7"},
}

// Missing returns a FeatureError for the lowest bit of want that have lacks,
// or nil if have has every bit of want.
func Missing(have, want uint64) error {
	lack := want &^ have
	if lack == 0 {
		return nil
	}
	bit := lack & -lack
	if n, ok := FeatureNames[bit]; ok {
		return &FeatureError{Feature: n[0], Version: n[1]}
	}
	return &FeatureError{Feature: fmt.Sprintf("userfaultfd feature %#x", bit), Version: "?"}
}

// Create calls userfaultfd(2) in the current process with flags (O_CLOEXEC,
// O_NONBLOCK, UFFD_USER_MODE_ONLY) and returns the new descriptor. cryo
// itself creates userfaultfds inside the target; Create is for tests and
// probes.
func Create(flags int) (int, error) {
	for {
		fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, uintptr(flags), 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return -1, fmt.Errorf("userfaultfd: %w", errno)
		}
		return int(fd), nil
	}
}

// Msg is a decoded struct uffd_msg. Event says which of the other fields
// are meaningful.
type Msg struct {
	Event uint8

	// UFFD_EVENT_PAGEFAULT: the faulting address (page aligned unless
	// UFFD_FEATURE_EXACT_ADDRESS), UFFD_PAGEFAULT_FLAG_* and, with
	// UFFD_FEATURE_THREAD_ID, the faulting thread's id.
	Flags   uint64
	Address uint64
	Ptid    uint32

	// UFFD_EVENT_FORK: the child's new userfaultfd, already installed in the
	// process that read the message.
	Ufd int32

	// UFFD_EVENT_REMAP: [From, From+Len) moved to [To, To+Len).
	From, To, Len uint64

	// UFFD_EVENT_REMOVE and UFFD_EVENT_UNMAP: the range [Start, End).
	Start, End uint64
}

// String names the event and its arguments, for logs and test failures.
func (m Msg) String() string {
	switch m.Event {
	case UFFD_EVENT_PAGEFAULT:
		return fmt.Sprintf("pagefault %#x flags %#x tid %d", m.Address, m.Flags, m.Ptid)
	case UFFD_EVENT_FORK:
		return fmt.Sprintf("fork ufd %d", m.Ufd)
	case UFFD_EVENT_REMAP:
		return fmt.Sprintf("remap %#x-%#x to %#x", m.From, m.From+m.Len, m.To)
	case UFFD_EVENT_REMOVE:
		return fmt.Sprintf("remove %#x-%#x", m.Start, m.End)
	case UFFD_EVENT_UNMAP:
		return fmt.Sprintf("unmap %#x-%#x", m.Start, m.End)
	}
	return fmt.Sprintf("event %#x", m.Event)
}

// DecodeMsg decodes one uffd_msg from the first SizeofMsg bytes of b.
func DecodeMsg(b []byte) (Msg, error) {
	if len(b) < SizeofMsg {
		return Msg{}, fmt.Errorf("decode uffd_msg: %d bytes, want %d", len(b), SizeofMsg)
	}
	ne := binary.NativeEndian
	m := Msg{Event: b[0]}
	arg := b[8:SizeofMsg]
	switch m.Event {
	case UFFD_EVENT_PAGEFAULT:
		m.Flags = ne.Uint64(arg[0:])
		m.Address = ne.Uint64(arg[8:])
		m.Ptid = ne.Uint32(arg[16:])
	case UFFD_EVENT_FORK:
		m.Ufd = int32(ne.Uint32(arg[0:]))
	case UFFD_EVENT_REMAP:
		m.From = ne.Uint64(arg[0:])
		m.To = ne.Uint64(arg[8:])
		m.Len = ne.Uint64(arg[16:])
	case UFFD_EVENT_REMOVE, UFFD_EVENT_UNMAP:
		m.Start = ne.Uint64(arg[0:])
		m.End = ne.Uint64(arg[8:])
	default:
		return m, fmt.Errorf("decode uffd_msg: unknown event %#x", m.Event)
	}
	return m, nil
}

// ReadMsgs reads the pending messages of fd into buf (a multiple of
// SizeofMsg bytes) and appends them, decoded, to dst. On a non-blocking fd
// with nothing pending it returns dst unchanged and an error matching
// unix.EAGAIN.
//
// Reading a FORK message installs the child's userfaultfd in the calling
// process; reading any non-cooperative event lets the thread that caused it
// go on.
func ReadMsgs(fd int, buf []byte, dst []Msg) ([]Msg, error) {
	n, err := readRetry(fd, buf)
	if err != nil {
		return dst, err
	}
	for off := 0; off+SizeofMsg <= n; off += SizeofMsg {
		m, err := DecodeMsg(buf[off:])
		if err != nil {
			return dst, fmt.Errorf("read uffd %d: %w", fd, err)
		}
		dst = append(dst, m)
	}
	return dst, nil
}

func readRetry(fd int, buf []byte) (int, error) {
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if err == unix.EAGAIN {
				return 0, err
			}
			return 0, fmt.Errorf("read uffd %d: %w", fd, err)
		}
		return n, nil
	}
}

// Supported returns the features the running kernel offers, probed once
// with a throwaway userfaultfd and cached.
func Supported() (uint64, error) { return supported() }

var supported = sync.OnceValues(func() (uint64, error) {
	// UFFD_USER_MODE_ONLY (5.11) lets an unprivileged process probe when
	// vm.unprivileged_userfaultfd is 0; older kernels refuse the flag.
	fd, err := Create(unix.O_CLOEXEC | unix.O_NONBLOCK | UFFD_USER_MODE_ONLY)
	if errors.Is(err, unix.EINVAL) {
		fd, err = Create(unix.O_CLOEXEC | unix.O_NONBLOCK)
	}
	if err != nil {
		return 0, fmt.Errorf("probe userfaultfd features: %w", err)
	}
	defer unix.Close(fd)
	got, _, err := API(fd, 0)
	if err != nil {
		return 0, fmt.Errorf("probe userfaultfd features: %w", err)
	}
	return got, nil
})
