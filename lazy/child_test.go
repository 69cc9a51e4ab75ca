package lazy

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/internal/uffd"
)

// The child-process tests re-run the test binary as a helper that creates a
// userfaultfd in itself, maps a region and hands the descriptor to the test
// over a unix socket (SCM_RIGHTS), as cryo's restorer does with
// pidfd_getfd: the server then works on another process's mm.

const (
	helperEnv   = "CRYO_LAZY_HELPER"
	helperPages = 256
	remapFirst  = 64 // pages [64, 96) move elsewhere with mremap
	remapPages  = 32
)

// helperSum is the checksum the fork child computes: it must not allocate or
// grow its stack, since it runs in a forked copy of a multi-threaded Go
// process.
//
//go:nosplit
//go:norace
func helperSum(b []byte) uint64 {
	var h uint64
	for _, c := range b {
		h = h*31 + uint64(c)
	}
	return h
}

// wantSum is helperSum of the snapshot's content of [first, end) pages of a
// region at base, computed without touching the region.
func wantSum(base uint64, first, end int) uint64 {
	var h uint64
	page := make([]byte, pageSize)
	for i := first; i < end; i++ {
		clear(page)
		if a := base + uint64(i)*pageSize; hasData(a) {
			fill(a, page)
		}
		for _, c := range page {
			h = h*31 + uint64(c)
		}
	}
	return h
}

// runHelper is the helper process. It reports on fd 3 (the socket): first
// the region and the userfaultfd, then one line of result.
func runHelper(scenario string) int {
	sock := os.NewFile(3, "sock")
	fd, err := uffd.Create(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	mem, err := unix.Mmap(-1, 0, helperPages*pageSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return 2
	}
	spare, err := unix.Mmap(-1, 0, remapPages*pageSize, unix.PROT_NONE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return 2
	}
	base := uint64(uffd.Addr(mem))
	hdr := make([]byte, 16)
	binary.LittleEndian.PutUint64(hdr, base)
	binary.LittleEndian.PutUint64(hdr[8:], uint64(uffd.Addr(spare)))
	if err := unix.Sendmsg(3, hdr, unix.UnixRights(fd), nil, 0); err != nil {
		return 2
	}
	unix.Close(fd) // the server's copy is the only one, as after pidfd_getfd + close
	var goByte [1]byte
	if _, err := sock.Read(goByte[:]); err != nil {
		return 2
	}
	res := helperScenario(scenario, mem, spare, base)
	fmt.Fprintln(sock, res)
	return 0
}

func helperScenario(scenario string, mem, spare []byte, base uint64) string {
	check := func(first, end int, zero bool) string {
		for i := first; i < end; i++ {
			if err := checkPage(mem[i*pageSize:], base+uint64(i)*pageSize, zero); err != nil {
				return fmt.Sprintf("page %d: %v", i, err)
			}
		}
		return ""
	}
	switch scenario {
	case "read-bad", "server-dies":
		// Four of the five pages [5, 10) have data: all zero means the
		// process ran on with zeros where its data was.
		var or uint64
		for i := 5; i < 10; i++ {
			or |= binary.LittleEndian.Uint64(mem[i*pageSize:])
		}
		if or == 0 {
			return "zero"
		}
		return fmt.Sprintf("data %#x", or)
	case "events":
	default:
		return "unknown scenario " + scenario
	}

	// REMOVE: drop [10, 20) untouched and page 30 after dirtying it.
	mem[30*pageSize] = 0xff
	if err := unix.Madvise(mem[10*pageSize:20*pageSize], unix.MADV_DONTNEED); err != nil {
		return err.Error()
	}
	if err := unix.Madvise(mem[30*pageSize:31*pageSize], unix.MADV_DONTNEED); err != nil {
		return err.Error()
	}
	if msg := check(10, 20, true) + check(30, 31, true); msg != "" {
		return "after MADV_DONTNEED: " + msg
	}

	// REMAP: move [64, 96) over the spare mapping; it keeps its content.
	moved, _, errno := unix.Syscall6(unix.SYS_MREMAP, uintptr(base+remapFirst*pageSize),
		remapPages*pageSize, remapPages*pageSize,
		unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, uffd.Addr(spare), 0)
	if errno != 0 || moved != uffd.Addr(spare) {
		return fmt.Sprintf("mremap: %v", errno)
	}
	for i := 0; i < remapPages; i++ {
		src := base + uint64(remapFirst+i)*pageSize
		if err := checkPage(spare[i*pageSize:], src, false); err != nil {
			return fmt.Sprintf("moved page %d: %v", i, err)
		}
	}

	// FORK: the child sums [100, 200) before the parent touches it.
	want := wantSum(base, 100, 200)
	part := mem[100*pageSize : 200*pageSize]
	pid, _, errno := syscall.RawSyscall(syscall.SYS_FORK, 0, 0, 0)
	if errno != 0 {
		return fmt.Sprintf("fork: %v", errno)
	}
	if pid == 0 {
		code := uintptr(0)
		if helperSum(part) != want {
			code = 1
		}
		syscall.RawSyscall(syscall.SYS_EXIT_GROUP, code, 0, 0)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(int(pid), &ws, 0, nil); err != nil {
		return fmt.Sprintf("wait4: %v", err)
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		return fmt.Sprintf("fork child saw wrong memory: %v", ws)
	}

	// UNMAP the tail, then check everything still mapped.
	// (unix.Munmap only takes whole mappings it made: use the syscall.)
	if _, _, errno := unix.Syscall(unix.SYS_MUNMAP, uintptr(base+200*pageSize),
		(helperPages-200)*pageSize, 0); errno != 0 {
		return fmt.Sprintf("munmap: %v", errno)
	}
	if msg := check(0, 10, false) + check(20, 30, false) + check(31, remapFirst, false) +
		check(remapFirst+remapPages, 200, false); msg != "" {
		return msg
	}
	return "ok"
}

type helper struct {
	cmd    *exec.Cmd
	sock   *os.File
	base   uint64
	spare  uint64
	fd     int
	result chan string
}

func startHelper(t *testing.T, scenario string) *helper {
	t.Helper()
	requireUffd(t)
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	theirs := os.NewFile(uintptr(pair[1]), "helper-sock")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+scenario)
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	h := &helper{cmd: cmd, sock: os.NewFile(uintptr(pair[0]), "sock"),
		result: make(chan string, 1)}
	t.Cleanup(func() {
		h.cmd.Process.Kill()
		h.cmd.Wait()
		h.sock.Close()
	})

	hdr := make([]byte, 16)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(pair[0], hdr, oob, 0)
	if err != nil || n != 16 {
		t.Fatalf("receive from helper: %d bytes, %v", n, err)
	}
	cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(cmsgs) != 1 {
		t.Fatalf("helper sent no descriptor: %v", err)
	}
	fds, err := unix.ParseUnixRights(&cmsgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("helper sent no descriptor: %v", err)
	}
	h.fd = fds[0]
	h.base = binary.LittleEndian.Uint64(hdr)
	h.spare = binary.LittleEndian.Uint64(hdr[8:])
	go func() {
		line, _ := bufio.NewReader(h.sock).ReadString('\n')
		h.result <- strings.TrimSpace(line)
	}()
	return h
}

func (h *helper) start(t *testing.T) {
	t.Helper()
	if _, err := h.sock.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
}

func (h *helper) source() *fakeSource {
	return newFakeSource(Range{h.base, h.base + helperPages*pageSize})
}

func TestChildEvents(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"faults", Options{}},
		{"around", Options{Around: 16}},
		{"prefetch", Options{Prefetch: true, Around: 16}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startHelper(t, "events")
			opts := tc.opts
			opts.Pid = h.cmd.Process.Pid
			srv, err := NewServer(h.fd, []Range{{h.base, h.base + helperPages*pageSize}},
				h.source(), opts)
			if err != nil {
				t.Fatal(err)
			}
			if err := srv.Register(); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- srv.Serve(ctx) }()
			h.start(t)
			if res := <-h.result; res != "ok" {
				t.Fatalf("helper: %s", res)
			}
			if err := h.cmd.Wait(); err != nil {
				t.Fatalf("helper: %v", err)
			}
			if err := <-done; err != nil {
				t.Fatalf("Serve: %v", err)
			}
			st := srv.Stats()
			// With prefetch every page may be in (and the uffd closed)
			// before the helper forks.
			if !tc.opts.Prefetch && (st.Forks != 1 || st.Processes != 2) {
				t.Errorf("stats %+v: want one fork", st)
			}
			if !tc.opts.Prefetch && (st.Removes != 2 || st.Remaps != 1 || st.Unmaps == 0) {
				t.Errorf("stats %+v: want 2 REMOVE, 1 REMAP, UNMAP", st)
			}
			t.Logf("stats %+v", st)
		})
	}
}

func TestSourceErrorKills(t *testing.T) {
	h := startHelper(t, "read-bad")
	src := h.source()
	for i := 5; src.bad == 0; i++ {
		if a := h.base + uint64(i)*pageSize; hasData(a) {
			src.bad = a
		}
	}
	var fatal error
	srv, err := NewServer(h.fd, []Range{{h.base, h.base + helperPages*pageSize}}, src,
		Options{Pid: h.cmd.Process.Pid, OnFatal: func(err error) { fatal = err }})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Register(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background()) }()
	h.start(t)
	err = <-done
	if !errors.Is(err, ErrSource) || !errors.Is(err, ErrKilled) {
		t.Fatalf("Serve: %v, want ErrSource and ErrKilled", err)
	}
	if fatal == nil {
		t.Error("OnFatal not called")
	}
	werr := h.cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(werr, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("helper ended with %v, want SIGKILL", werr)
	}
	select {
	case res := <-h.result:
		if res != "" {
			t.Fatalf("helper ran on after the damaged page: %q", res)
		}
	case <-time.After(5 * time.Second):
	}
	t.Logf("Serve: %v", err)
}

// TestServerDeathGivesZeroPages pins down what Linux does when the page
// server dies with pages pending (its userfaultfd is released): the ranges
// are unregistered and the faulting thread gets a zero page. It neither
// blocks nor gets SIGBUS. The restorer must therefore kill the process when
// cryo dies (see the package documentation).
func TestServerDeathGivesZeroPages(t *testing.T) {
	h := startHelper(t, "server-dies")
	srv, err := NewServer(h.fd, []Range{{h.base, h.base + helperPages*pageSize}},
		h.source(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Register(); err != nil {
		t.Fatal(err)
	}
	h.start(t)
	time.Sleep(50 * time.Millisecond) // let the helper fault and wait
	srv.Close()                       // as if cryo were killed
	select {
	case res := <-h.result:
		if res != "zero" {
			t.Fatalf("after the server's death the helper read %q; the kernel's "+
				"behaviour changed, update the package documentation", res)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("helper still blocked 10s after the server's death; " +
			"the kernel's behaviour changed, update the package documentation")
	}
}
