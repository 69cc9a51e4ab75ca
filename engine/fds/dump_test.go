package fds

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
	"github.com/cryo-dev/cryo/internal/procfs"
)

// holder is a running testdata/holder.c.
type holder struct {
	cmd   *exec.Cmd
	dir   string
	stdin io.WriteCloser
	out   *bufio.Reader
}

// buildHolder compiles testdata/holder.c.
func buildHolder(t *testing.T) string { return buildTestProgram(t, "holder") }

// buildTestProgram compiles testdata/NAME.c.
func buildTestProgram(t *testing.T, name string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: kcmp and reading another process's fds")
	}
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Fatalf("gcc is needed to build testdata/holder.c (make deps installs it): %v", err)
	}
	bin := filepath.Join(t.TempDir(), name)
	out, err := exec.Command(gcc, "-O1", "-Wall", "-Werror", "-o", bin,
		"testdata/"+name+".c").CombinedOutput()
	if err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, out)
	}
	return bin
}

// startHolder runs the holder with its stdin and stdout on pipes to the test
// and its stderr on /dev/null, and waits until it has made its descriptors.
func startHolder(t *testing.T) *holder {
	t.Helper()
	return startProgram(t, buildHolder(t))
}

// startProgram runs a holder-like test program: see startHolder.
func startProgram(t *testing.T, bin string) *holder {
	t.Helper()
	h := &holder{dir: t.TempDir()}
	h.cmd = exec.Command(bin, h.dir)
	var err error
	if h.stdin, err = h.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	h.out = bufio.NewReader(stdout)
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.cmd.Process.Kill()
		h.cmd.Wait()
	})
	if line, err := h.out.ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("holder said %q, %v", line, err)
	}
	return h
}

// finish lets the holder check its own state after a dump.
func (h *holder) finish(t *testing.T) {
	t.Helper()
	if _, err := h.stdin.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	line, err := h.out.ReadString('\n')
	if err != nil || line != "ok\n" {
		t.Fatalf("holder after dump: %q, %v", line, err)
	}
}

func TestDump(t *testing.T) {
	h := startHolder(t)
	pid := h.cmd.Process.Pid

	fds, err := Dump(pid, DumpOptions{})
	if err != nil {
		t.Fatal(err)
	}
	byNum := map[int]image.FD{}
	var nums []int
	for _, fd := range fds {
		byNum[fd.Num] = fd
		nums = append(nums, fd.Num)
	}
	if want := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100, 1000}; !slices.Equal(nums, want) {
		t.Fatalf("fds %v, want %v", nums, want)
	}

	// stdin and stdout are pipes to the test: stdio. stderr is /dev/null.
	for _, n := range []int{0, 1} {
		if fd := byNum[n]; fd.Kind != image.FDStdio || !strings.HasPrefix(fd.Path, "pipe:[") {
			t.Errorf("fd %d: %+v, want stdio on a pipe", n, fd)
		}
	}
	if fd := byNum[2]; fd.Kind != image.FDFile || fd.Path != "/dev/null" ||
		fd.Rdev != unix.Mkdev(1, 3) || fd.Flags&unix.O_ACCMODE != unix.O_WRONLY {
		t.Errorf("fd 2: %+v, want /dev/null for writing", fd)
	}

	if fd := byNum[3]; fd.Kind != image.FDEventfd || fd.Eventfd == nil ||
		*fd.Eventfd != (image.Eventfd{Count: 5, Semaphore: true}) ||
		fd.Flags != unix.O_RDWR|unix.O_NONBLOCK || fd.Cloexec {
		t.Errorf("fd 3: %+v %+v, want eventfd 5 semaphore nonblocking", fd, fd.Eventfd)
	}

	r, w := byNum[4], byNum[5]
	if r.Kind != image.FDPipe || w.Kind != image.FDPipe || r.Pipe.ID != w.Pipe.ID ||
		!r.Pipe.ReadEnd || w.Pipe.ReadEnd || r.Pipe.Size != 65536 ||
		r.Flags != unix.O_RDONLY|unix.O_NONBLOCK || w.Flags != unix.O_WRONLY {
		t.Errorf("pipe: %+v %+v / %+v %+v", r, r.Pipe, w, w.Pipe)
	}
	want := make([]byte, 1000)
	for i := range want {
		want[i] = byte(i*7 + 1)
	}
	if r.Pipe == nil || !slices.Equal(r.Pipe.Buffered, want) || w.Pipe.Buffered != nil {
		t.Errorf("pipe buffered %d bytes, want the 1000 the holder wrote", len(r.Pipe.Buffered))
	}

	var st unix.Stat_t
	data := filepath.Join(h.dir, "data file")
	if err := unix.Stat(data, &st); err != nil {
		t.Fatal(err)
	}
	if fd := byNum[6]; fd.Kind != image.FDFile || fd.Path != data || fd.Pos != 12345 ||
		fd.Flags&^oLargefile != unix.O_RDWR || fd.Dev != st.Dev || fd.Ino != st.Ino ||
		fd.Mode&unix.S_IFMT != unix.S_IFREG || fd.DupOf != nil {
		t.Errorf("fd 6: %+v, want %q at 12345", fd, data)
	}
	if fd := byNum[7]; fd.Kind != image.FDFile || fd.Path != filepath.Join(h.dir, "log") ||
		fd.Pos != 6 || fd.Flags&^oLargefile != unix.O_WRONLY|unix.O_APPEND {
		t.Errorf("fd 7: %+v, want the log for appending", fd)
	}
	if fd := byNum[8]; fd.Kind != image.FDFile || fd.Path != "/dev/null" || fd.DupOf != nil {
		t.Errorf("fd 8: %+v, want /dev/null", fd)
	}
	if fd := byNum[9]; fd.Kind != image.FDFile || fd.Path != h.dir ||
		fd.Mode&unix.S_IFMT != unix.S_IFDIR || fd.Flags&unix.O_DIRECTORY == 0 {
		t.Errorf("fd 9: %+v, want the directory", fd)
	}

	ep := byNum[10]
	if ep.Kind != image.FDEpoll || ep.Epoll == nil {
		t.Fatalf("fd 10: %+v, want epoll", ep)
	}
	watches := slices.Clone(ep.Epoll.Watches)
	slices.SortFunc(watches, func(a, b image.EpollWatch) int { return a.FD - b.FD })
	wantW := []image.EpollWatch{
		{FD: 3, Events: unix.EPOLLIN | unix.EPOLLERR | unix.EPOLLHUP, Data: 0x1111222233334444},
		{FD: 4, Events: unix.EPOLLIN | unix.EPOLLERR | unix.EPOLLHUP | unix.EPOLLET,
			Data: 0xdeadbeef},
		{FD: 5, Events: unix.EPOLLOUT | unix.EPOLLERR | unix.EPOLLHUP | unix.EPOLLONESHOT,
			Data: 7},
	}
	if !slices.Equal(watches, wantW) {
		t.Errorf("epoll watches %+v\nwant %+v", watches, wantW)
	}

	if fd := byNum[100]; fd.DupOf == nil || *fd.DupOf != 6 || !fd.Cloexec ||
		fd.Kind != image.FDFile || fd.Path != data {
		t.Errorf("fd 100: %+v, want a cloexec dup of fd 6", fd)
	}
	if fd := byNum[1000]; fd.DupOf == nil || *fd.DupOf != 8 || fd.Cloexec {
		t.Errorf("fd 1000: %+v, want a dup of fd 8", fd)
	}
	for _, fd := range fds {
		if fd.Num != 100 && fd.Cloexec {
			t.Errorf("fd %d has cloexec", fd.Num)
		}
	}

	// The image survives encoding.
	im := image.Image{Version: image.Version, FDs: fds}
	b, err := im.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := image.Unmarshal(b)
	if err != nil || len(back.FDs) != len(fds) || *back.FDs[12].DupOf != 8 {
		t.Fatalf("round trip: %v", err)
	}

	// The dump took nothing from the process: it still reads its pipe's bytes
	// and its eventfd's count.
	h.finish(t)
}

// TestDumpUnsupported gives a child one descriptor of each kind cryo does not
// support, at fd 3, and checks the error names it. The test's own copies are
// close-on-exec, so that no child inherits another's.
func TestDumpUnsupported(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatalf("sleep(1) is needed: %v", err)
	}
	dir := t.TempDir()

	tests := []struct {
		name string
		make func(t *testing.T) *os.File
		want string
	}{
		{"netlink socket", func(t *testing.T) *os.File {
			return fdFile(t, must(unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC,
				unix.NETLINK_ROUTE)))
		}, "fd 3: socket:[* (netlink datagram socket): cryo rebuilds TCP, UDP and unix " +
			"sockets only: not supported"},
		{"packet socket", func(t *testing.T) *os.File {
			return fdFile(t, must(unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)))
		}, "fd 3: socket:[* (packet datagram socket): cryo rebuilds TCP, UDP and unix " +
			"sockets only: not supported"},
		{"ping socket", func(t *testing.T) *os.File {
			return fdFile(t, must(unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC,
				unix.IPPROTO_ICMP)))
		}, "fd 3: socket:[* (raw IP socket, protocol 1): cryo rebuilds TCP, UDP and unix " +
			"sockets only: not supported"},
		{"unix socket with a relative path", func(t *testing.T) *os.File {
			s := must(unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0))
			wd, _ := os.Getwd()
			defer os.Chdir(wd)
			os.Chdir(dir)
			if err := unix.Bind(s, &unix.SockaddrUnix{Name: "rel.sock"}); err != nil {
				t.Fatal(err)
			}
			return fdFile(t, s)
		}, "fd 3: socket:[* (unix socket bound to the relative path \"rel.sock\"): " +
			"not supported"},
		{"pidfd", func(t *testing.T) *os.File {
			return fdFile(t, must(unix.PidfdOpen(os.Getpid(), 0)))
		}, "fd 3: anon_inode:[pidfd]: not supported"},
		{"inotify", func(t *testing.T) *os.File {
			return fdFile(t, must(unix.InotifyInit1(unix.IN_CLOEXEC)))
		}, "fd 3: anon_inode:inotify: not supported"},
		{"deleted file", func(t *testing.T) *os.File {
			f, err := os.Create(filepath.Join(dir, "gone"))
			if err != nil {
				t.Fatal(err)
			}
			os.Remove(f.Name())
			return f
		}, "fd 3: " + dir + "/gone (deleted) (deleted file): not supported"},
		{"replaced file", func(t *testing.T) *os.File {
			p := filepath.Join(dir, "replaced")
			f, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			// The file lives on under another name; its path is another file.
			os.Link(p, p+".kept")
			os.WriteFile(p+".new", nil, 0o600)
			os.Rename(p+".new", p)
			return f
		}, "fd 3: " + dir + "/replaced (deleted) (the path no longer names the open file): " +
			"not supported"},
		{"pipe to outside", func(t *testing.T) *os.File {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { w.Close() })
			return r
		}, "fd 3: pipe:[* (its other end is outside the process): not supported"},
		{"pty master", func(t *testing.T) *os.File {
			f, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
			if err != nil {
				t.Fatalf("open /dev/ptmx (this kernel has pseudo-terminals): %v", err)
			}
			return f
		}, "fd 3: /dev/ptmx (character device 5:2): not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tt.make(t)
			defer f.Close()
			cmd := exec.Command(sleep, "60")
			cmd.ExtraFiles = []*os.File{f}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			waitSleeping(t, cmd.Process.Pid)

			_, err := Dump(cmd.Process.Pid, DumpOptions{})
			var ue *UnsupportedError
			if !errors.Is(err, ErrUnsupported) || !errors.As(err, &ue) || ue.FD != 3 {
				t.Fatalf("Dump: %v, want an UnsupportedError for fd 3", err)
			}
			pre, post, _ := strings.Cut(tt.want, "*")
			if msg := ue.Error(); !strings.HasPrefix(msg, pre) || !strings.HasSuffix(msg, post) {
				t.Errorf("error %q, want %q", msg, tt.want)
			}
		})
	}
}

// waitSleeping waits until process pid, a sleep(1), is blocked in its sleep:
// past execve and the dynamic loader, which open and close descriptors.
func waitSleeping(t *testing.T, pid int) {
	t.Helper()
	want := []string{fmt.Sprint(unix.SYS_CLOCK_NANOSLEEP), fmt.Sprint(unix.SYS_NANOSLEEP)}
	var b []byte
	for range 1000 {
		b, _ = os.ReadFile(procfs.Path(pid, "syscall"))
		nr, _, _ := strings.Cut(string(b), " ")
		if slices.Contains(want, nr) {
			return
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 1e6}, nil)
	}
	t.Fatalf("pid %d is not sleeping: /proc/%d/syscall says %q", pid, pid, b)
}

func fdFile(t *testing.T, fd int) *os.File { return os.NewFile(uintptr(fd), "test fd") }

func must(fd int, err error) int {
	if err != nil {
		panic(err)
	}
	return fd
}
