package pagemap

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// pmScanArg is struct pm_scan_arg (linux/fs.h, Linux 6.7).
type pmScanArg struct {
	Size              uint64
	Flags             uint64
	Start             uint64
	End               uint64
	WalkEnd           uint64
	Vec               uint64
	VecLen            uint64
	MaxPages          uint64
	CategoryInverted  uint64
	CategoryMask      uint64
	CategoryAnyofMask uint64
	ReturnMask        uint64
}

// scan issues PAGEMAP_SCAN with arg, pointing arg.Vec at vec, retrying EINTR. It
// returns the number of regions filled; arg.WalkEnd says where the walk ended.
func scan(fd int, arg *pmScanArg, vec []Region) (int, error) {
	arg.Vec = uint64(uintptr(unsafe.Pointer(&vec[0])))
	arg.VecLen = uint64(len(vec))
	for {
		n, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), PAGEMAP_SCAN,
			uintptr(unsafe.Pointer(arg)))
		runtime.KeepAlive(arg)
		runtime.KeepAlive(vec)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(n), nil
	}
}

// structSizes returns unsafe.Sizeof of every ABI structure and its constant, for
// the tests.
func structSizes() map[string][2]uintptr {
	return map[string][2]uintptr{
		"pm_scan_arg": {unsafe.Sizeof(pmScanArg{}), sizeofPmScanArg},
		"page_region": {unsafe.Sizeof(Region{}), sizeofPageRegion},
	}
}
