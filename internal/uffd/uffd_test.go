package uffd

import (
	"bytes"
	"errors"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// requireUffd skips when userfaultfd is unavailable to an unprivileged user
// and fails when it is unavailable to root: every kernel cryo runs on has it.
func requireUffd(t *testing.T) uint64 {
	t.Helper()
	got, err := Supported()
	if err != nil {
		if os.Geteuid() == 0 {
			t.Fatalf("userfaultfd unavailable as root: %v", err)
		}
		t.Skipf("userfaultfd unavailable (not root?): %v", err)
	}
	return got
}

func TestStructSizes(t *testing.T) {
	for name, s := range structSizes() {
		if s[0] != s[1] {
			t.Errorf("sizeof(struct %s) = %d, constant says %d", name, s[0], s[1])
		}
	}
}

func TestIoctlNumbers(t *testing.T) {
	// Values of the C macros, worked out by hand from _IOC.
	want := map[string]uintptr{
		"UFFDIO_API":          0xc018aa3f,
		"UFFDIO_REGISTER":     0xc020aa00,
		"UFFDIO_UNREGISTER":   0x8010aa01,
		"UFFDIO_WAKE":         0x8010aa02,
		"UFFDIO_COPY":         0xc028aa03,
		"UFFDIO_ZEROPAGE":     0xc020aa04,
		"UFFDIO_MOVE":         0xc028aa05,
		"UFFDIO_WRITEPROTECT": 0xc018aa06,
		"UFFDIO_CONTINUE":     0xc020aa07,
		"UFFDIO_POISON":       0xc020aa08,
	}
	got := map[string]uintptr{
		"UFFDIO_API": UFFDIO_API, "UFFDIO_REGISTER": UFFDIO_REGISTER,
		"UFFDIO_UNREGISTER": UFFDIO_UNREGISTER, "UFFDIO_WAKE": UFFDIO_WAKE,
		"UFFDIO_COPY": UFFDIO_COPY, "UFFDIO_ZEROPAGE": UFFDIO_ZEROPAGE,
		"UFFDIO_MOVE": UFFDIO_MOVE, "UFFDIO_WRITEPROTECT": UFFDIO_WRITEPROTECT,
		"UFFDIO_CONTINUE": UFFDIO_CONTINUE, "UFFDIO_POISON": UFFDIO_POISON,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %#x, want %#x", k, got[k], v)
		}
	}
}

func TestAPIFeatures(t *testing.T) {
	have := requireUffd(t)
	want := uint64(UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP |
		UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_THREAD_ID |
		UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_PAGEFAULT_FLAG_WP)
	if err := Missing(have, want); err != nil {
		// Every machine cryo runs on has Linux 6.7+: fail, do not skip.
		t.Fatalf("kernel lacks a feature cryo needs: %v", err)
	}
	if !errors.Is(Missing(0, UFFD_FEATURE_WP_ASYNC), ErrNotSupported) {
		t.Error("Missing does not match ErrNotSupported")
	}

	fd := mustCreate(t)
	got, ioctls, err := API(fd, want)
	if err != nil {
		t.Fatal(err)
	}
	if got&want != want {
		t.Errorf("API features %#x lack %#x", got, want&^got)
	}
	for _, b := range []uint64{IoctlAPI, IoctlRegister, IoctlUnregister} {
		if ioctls&b == 0 {
			t.Errorf("API ioctls %#x lack %#x", ioctls, b)
		}
	}
	if _, _, err := API(fd, want); !errors.Is(err, unix.EINVAL) {
		t.Errorf("second UFFDIO_API: %v, want EINVAL", err)
	}
}

func mustCreate(t *testing.T) int {
	t.Helper()
	requireUffd(t)
	fd, err := Create(unix.O_CLOEXEC | unix.O_NONBLOCK | UFFD_USER_MODE_ONLY)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func mapRegion(t *testing.T, pages int) []byte {
	t.Helper()
	mem, err := unix.Mmap(-1, 0, pages*PageSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	return mem
}

func TestCopyZeroPageWake(t *testing.T) {
	fd := mustCreate(t)
	if _, _, err := API(fd, UFFD_FEATURE_THREAD_ID); err != nil {
		t.Fatal(err)
	}
	mem := mapRegion(t, 8)
	base := uint64(Addr(mem))
	ioctls, err := Register(fd, base, uint64(len(mem)), UFFDIO_REGISTER_MODE_MISSING)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []uint64{IoctlCopy, IoctlZeroPage, IoctlWake} {
		if ioctls&b == 0 {
			t.Errorf("range ioctls %#x lack %#x", ioctls, b)
		}
	}

	// Copy two pages with nobody waiting, then again: EEXIST, nothing copied.
	src := bytes.Repeat([]byte{0xab}, 2*PageSize)
	if n, err := Copy(fd, uintptr(base), src, UFFDIO_COPY_MODE_DONTWAKE); err != nil ||
		n != len(src) {
		t.Fatalf("Copy = %d, %v", n, err)
	}
	if n, err := Copy(fd, uintptr(base), src[:PageSize], 0); !errors.Is(err, unix.EEXIST) ||
		n != 0 {
		t.Fatalf("Copy over a present page = %d, %v; want 0, EEXIST", n, err)
	}
	// A copy over [absent, present) copies the first page then reports the
	// second: a partial copy comes back as EAGAIN with the count.
	n, err := Copy(fd, uintptr(base+3*PageSize), bytes.Repeat([]byte{1}, 2*PageSize), 0)
	if n != 2*PageSize || err != nil {
		t.Fatalf("Copy of two absent pages = %d, %v", n, err)
	}
	n, err = Copy(fd, uintptr(base+2*PageSize), bytes.Repeat([]byte{2}, 2*PageSize), 0)
	if n != PageSize || !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("partial Copy = %d, %v; want %d, EAGAIN", n, err, PageSize)
	}
	if n, err := ZeroPage(fd, uintptr(base+5*PageSize), PageSize, 0); err != nil ||
		n != PageSize {
		t.Fatalf("ZeroPage = %d, %v", n, err)
	}
	if !bytes.Equal(mem[:2*PageSize], src) || mem[2*PageSize] != 2 || mem[3*PageSize] != 1 ||
		mem[5*PageSize] != 0 {
		t.Fatal("memory does not hold what was copied")
	}

	// A MISSING-only range refuses UFFDIO_WRITEPROTECT with ENOENT, which is
	// how lazy probes that the mm is alive.
	err = WriteProtect(fd, base, PageSize, UFFDIO_WRITEPROTECT_MODE_DONTWAKE)
	if !errors.Is(err, unix.ENOENT) {
		t.Errorf("WriteProtect of a MISSING range: %v, want ENOENT", err)
	}

	// A fault from another thread: read it, answer it, the reader goes on.
	got := make(chan byte)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		v := mem[6*PageSize+100] // load here: a send would pass &mem[i] and not fault
		got <- v
	}()
	msg := waitMsg(t, fd)
	if msg.Event != UFFD_EVENT_PAGEFAULT || msg.Address != base+6*PageSize || msg.Ptid == 0 {
		t.Fatalf("message %v, want a fault at %#x with a tid", msg, base+6*PageSize)
	}
	if _, err := Copy(fd, uintptr(base+6*PageSize), bytes.Repeat([]byte{7}, PageSize),
		0); err != nil {
		t.Fatal(err)
	}
	if b := <-got; b != 7 {
		t.Fatalf("faulting reader saw %d, want 7", b)
	}

	// Wake without a page makes the faulting thread retry and fault again.
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		v := mem[7*PageSize]
		got <- v
	}()
	waitMsg(t, fd)
	if err := Wake(fd, base+7*PageSize, PageSize); err != nil {
		t.Fatal(err)
	}
	msg = waitMsg(t, fd)
	if msg.Address != base+7*PageSize {
		t.Fatalf("after Wake: %v", msg)
	}
	if _, err := ZeroPage(fd, uintptr(base+7*PageSize), PageSize, 0); err != nil {
		t.Fatal(err)
	}
	if b := <-got; b != 0 {
		t.Fatalf("reader of a zero page saw %d", b)
	}
	if err := Unregister(fd, base, uint64(len(mem))); err != nil {
		t.Fatal(err)
	}
}

func waitMsg(t *testing.T, fd int) Msg {
	t.Helper()
	buf := make([]byte, 4*SizeofMsg)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		msgs, err := ReadMsgs(fd, buf, nil)
		if errors.Is(err, unix.EAGAIN) {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			unix.Poll(pfd, 100)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) != 1 {
			t.Fatalf("%d messages, want 1: %v", len(msgs), msgs)
		}
		return msgs[0]
	}
	t.Fatal("no userfaultfd message within 5s")
	return Msg{}
}

func TestDecodeMsg(t *testing.T) {
	b := make([]byte, SizeofMsg)
	b[0] = UFFD_EVENT_REMAP
	copy(b[8:], []byte{0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0x30})
	m, err := DecodeMsg(b)
	if err != nil || m.From != 0x1000 || m.To != 0x2000 || m.Len != 0x3000 {
		t.Fatalf("DecodeMsg = %v, %v", m, err)
	}
	b[0] = 0x7f
	if _, err := DecodeMsg(b); err == nil {
		t.Error("unknown event decoded without error")
	}
	if _, err := DecodeMsg(b[:8]); err == nil {
		t.Error("short message decoded without error")
	}
}
