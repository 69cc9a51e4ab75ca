package fds

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
	"github.com/cryo-dev/cryo/engine/remote"
)

// target is a process stopped at its execve under ptrace, ready for injected
// system calls: the host a restore builds descriptors in. Its stdin and stdout
// are pipes to the test, its stderr /dev/null.
type target struct {
	task  *remote.Task
	pid   int
	stdin io.WriteCloser
	out   *bufio.Reader
}

// startTarget starts a target. The calling goroutine must stay on its OS thread
// (the tracer) for the rest of the test: it is locked here and never unlocked.
func startTarget(t *testing.T) *target {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	runtime.LockOSThread()
	bin, err := exec.LookPath("true")
	if err != nil {
		t.Fatalf("true(1) is needed as the restore target: %v", err)
	}
	cmd := exec.Command(bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Ptrace: true}
	tg := &target{}
	if tg.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	tg.out = bufio.NewReader(stdout)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tg.pid = cmd.Process.Pid
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	var ws unix.WaitStatus
	if _, err := unix.Wait4(tg.pid, &ws, unix.WALL, nil); err != nil || !ws.Stopped() {
		t.Fatalf("target did not stop at execve: %v %v", ws, err)
	}
	if tg.task, err = remote.Bootstrap(tg.pid, 0x10000000); err != nil {
		t.Fatal(err)
	}
	return tg
}

// TestRestore dumps the holder, restores its descriptors into a target, dumps
// the target and compares.
func TestRestore(t *testing.T) {
	h := startHolder(t)
	want, err := Dump(h.cmd.Process.Pid, DumpOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h.finish(t)

	tg := startTarget(t)
	if err := Restore(tg.task, want, Stdio{}); err != nil {
		t.Fatal(err)
	}
	got, err := Dump(tg.pid, DumpOptions{})
	if err != nil {
		t.Fatal(err)
	}
	compareFDs(t, got, want)

	// The kept stdio is still the test's pipe: what the test writes to the
	// target's stdin, the target's fd 0 holds.
	if _, err := tg.stdin.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	size, data, err := peekPipe(tg.pid, 0)
	if err != nil || string(data) != "hi" || size == 0 {
		t.Errorf("target's stdin holds %q (%v), want what the test wrote", data, err)
	}
}

// compareFDs checks that a restored set of descriptors matches the dumped one.
// Pipe identities differ, and stdio is what the target had.
func compareFDs(t *testing.T, got, want []image.FD) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("restored %d fds, want %d:\n%+v", len(got), len(want), got)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Pipe != nil && w.Pipe != nil {
			gp, wp := *g.Pipe, *w.Pipe
			gp.ID, wp.ID = 0, 0
			if !slices.Equal(gp.Buffered, wp.Buffered) {
				t.Errorf("fd %d: %d bytes buffered, want %d", g.Num, len(gp.Buffered),
					len(wp.Buffered))
			}
			if gp.ReadEnd != wp.ReadEnd || gp.Size != wp.Size {
				t.Errorf("fd %d: pipe %+v, want %+v", g.Num, gp, wp)
			}
			g.Pipe, w.Pipe = nil, nil
		}
		if g.Epoll != nil && w.Epoll != nil {
			gw, ww := slices.Clone(g.Epoll.Watches), slices.Clone(w.Epoll.Watches)
			cmp := func(a, b image.EpollWatch) int { return a.FD - b.FD }
			slices.SortFunc(gw, cmp)
			slices.SortFunc(ww, cmp)
			if !slices.Equal(gw, ww) {
				t.Errorf("fd %d: watches %+v, want %+v", g.Num, gw, ww)
			}
			g.Epoll, w.Epoll = nil, nil
		}
		if g.Eventfd != nil && w.Eventfd != nil {
			if *g.Eventfd != *w.Eventfd {
				t.Errorf("fd %d: eventfd %+v, want %+v", g.Num, *g.Eventfd, *w.Eventfd)
			}
			g.Eventfd, w.Eventfd = nil, nil
		}
		if g.Socket != nil && w.Socket != nil {
			if !reflect.DeepEqual(g.Socket, w.Socket) {
				gj, _ := json.Marshal(g.Socket)
				wj, _ := json.Marshal(w.Socket)
				t.Errorf("fd %d: socket\ngot  %s\nwant %s", g.Num, gj, wj)
			}
			g.Socket, w.Socket = nil, nil
		}
		if g.DupOf != nil && w.DupOf != nil && *g.DupOf == *w.DupOf {
			g.DupOf, w.DupOf = nil, nil
		}
		if w.Kind == image.FDStdio {
			g.Path, w.Path, g.Flags, w.Flags = "", "", 0, 0
		}
		if g != w {
			t.Errorf("fd %d:\ngot  %+v\nwant %+v", w.Num, g, w)
		}
	}
}

// TestRestoreCases restores hand-made descriptor sets into fresh targets.
func TestRestoreCases(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, []byte("0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	f := func(n int) image.FD {
		return image.FD{Num: n, Kind: image.FDFile, Path: path, Flags: unix.O_RDWR | oLargefile,
			Dev: st.Dev, Ino: st.Ino, Mode: st.Mode, Pos: 3}
	}
	stdio := func(n int) image.FD { return image.FD{Num: n, Kind: image.FDStdio} }
	dup := func(n, of int, kind image.FDKind) image.FD {
		return image.FD{Num: n, Kind: kind, DupOf: &of, Flags: unix.O_RDWR | oLargefile,
			Path: path}
	}

	t.Run("swapped pipe, big eventfd, sparse", func(t *testing.T) {
		want := []image.FD{stdio(0), stdio(1), f(2),
			{Num: 3, Kind: image.FDPipe, Flags: unix.O_WRONLY | unix.O_NONBLOCK, Cloexec: true,
				Pipe: &image.Pipe{ID: 1, Size: 1 << 20}},
			{Num: 4, Kind: image.FDPipe, Flags: unix.O_RDONLY, Pipe: &image.Pipe{ID: 1,
				ReadEnd: true, Size: 1 << 20, Buffered: []byte(strings.Repeat("x", 100000))}},
			{Num: 7, Kind: image.FDEventfd, Flags: unix.O_RDWR, Eventfd: &image.Eventfd{Count: 1<<40 + 3}},
			{Num: 9, Kind: image.FDEpoll, Flags: unix.O_RDWR | unix.O_NONBLOCK, Cloexec: true,
				Epoll: &image.Epoll{Watches: []image.EpollWatch{
					{FD: 900, Events: unix.EPOLLIN | unix.EPOLLERR | unix.EPOLLHUP | unix.EPOLLET,
						Data: 1<<63 | 5}}}},
			dup(500, 2, image.FDFile),
			{Num: 900, Kind: image.FDPipe, DupOf: ptr(4), Flags: unix.O_RDONLY, Cloexec: true},
		}
		tg := startTarget(t)
		if err := Restore(tg.task, want, Stdio{}); err != nil {
			t.Fatal(err)
		}
		got, err := Dump(tg.pid, DumpOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want[8].Path = got[8].Path // the dump names the pipe
		compareFDs(t, got, want)
	})

	t.Run("stdout to a file", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "out")
		tg := startTarget(t)
		fds := []image.FD{stdio(1), dup(2, 1, image.FDStdio)}
		fds[0].Flags = unix.O_WRONLY
		if err := Restore(tg.task, fds, Stdio{Paths: [3]string{1: out}}); err != nil {
			t.Fatal(err)
		}
		got, err := Dump(tg.pid, DumpOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// fd 2 keeps the target's /dev/null; fd 1 is the file, appending.
		if len(got) != 2 || got[0].Path != out ||
			got[0].Flags&^oLargefile != unix.O_WRONLY|unix.O_APPEND || got[1].Path != "/dev/null" {
			t.Errorf("restored %+v", got)
		}
	})

	t.Run("file changed", func(t *testing.T) {
		tg := startTarget(t)
		fd := f(3)
		fd.Ino++
		err := Restore(tg.task, []image.FD{fd}, Stdio{})
		if !errors.Is(err, ErrFileChanged) || !strings.Contains(err.Error(), "fd 3: "+path) {
			t.Fatalf("Restore: %v, want ErrFileChanged naming fd 3 and %s", err, path)
		}
	})

	t.Run("file missing", func(t *testing.T) {
		tg := startTarget(t)
		fd := f(3)
		fd.Path = filepath.Join(dir, "missing")
		err := Restore(tg.task, []image.FD{fd}, Stdio{})
		if !errors.Is(err, unix.ENOENT) || !strings.Contains(err.Error(), "fd 3: open "+fd.Path) {
			t.Fatalf("Restore: %v, want ENOENT naming fd 3 and its path", err)
		}
	})

	t.Run("above RLIMIT_NOFILE", func(t *testing.T) {
		tg := startTarget(t)
		lim := unix.Rlimit{Cur: 64, Max: 64}
		if err := unix.Prlimit(tg.pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
			t.Fatal(err)
		}
		err := Restore(tg.task, []image.FD{f(3), f(64)}, Stdio{})
		if err == nil || !strings.Contains(err.Error(), "fd 64: number not below the target's "+
			"RLIMIT_NOFILE 64") {
			t.Fatalf("Restore: %v, want an RLIMIT_NOFILE error for fd 64", err)
		}
	})
}

func ptr(n int) *int { return &n }
