package engine

import (
	"encoding/binary"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// zeroPFN is the page frame of the kernel's shared zero page, which anonymous
// memory that was read but never written maps; 0 when unknown (pagemap shows frame
// numbers only to CAP_SYS_ADMIN). Such pages read as zero anyway: they are not
// copied.
var zeroPFN = sync.OnceValue(func() uint64 {
	b, err := unix.Mmap(-1, 0, pageSize, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return 0
	}
	defer unix.Munmap(b)
	if b[0] != 0 { // the read maps the zero page
		return 0
	}
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return 0
	}
	defer pm.Close()
	var e [8]byte
	addr := uint64(uintptr(unsafe.Pointer(&b[0])))
	if _, err := pm.ReadAt(e[:], int64(addr/pageSize*8)); err != nil {
		return 0
	}
	v := binary.LittleEndian.Uint64(e[:])
	if v&pmPresent == 0 {
		return 0
	}
	return v & pmPFNMask
})
