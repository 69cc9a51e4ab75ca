package fds

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
	"github.com/cryo-dev/cryo/internal/kabi"
)

// TestSpecialRoundTrip gives a sleep(1) a relative and an absolute timerfd, a
// timerfd with unread ticks, a signalfd and a sealed memfd; dumps them, restores
// them into a target, dumps the target and compares.
func TestSpecialRoundTrip(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatalf("sleep(1) is needed: %v", err)
	}

	rel := must(unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC))
	relSpec := unix.ItimerSpec{Interval: unix.Timespec{Sec: 1, Nsec: 500000001},
		Value: unix.Timespec{Sec: 200, Nsec: 123456789}}
	if err := unix.TimerfdSettime(rel, 0, &relSpec, nil); err != nil {
		t.Fatal(err)
	}
	abs := must(unix.TimerfdCreate(unix.CLOCK_REALTIME, unix.TFD_CLOEXEC|unix.TFD_NONBLOCK))
	var now unix.Timespec
	unix.ClockGettime(unix.CLOCK_REALTIME, &now)
	expiry := now.Nano() + 300e9 + 987654321
	absSpec := unix.ItimerSpec{Value: unix.NsecToTimespec(expiry)}
	if err := unix.TimerfdSettime(abs, unix.TFD_TIMER_ABSTIME, &absSpec, nil); err != nil {
		t.Fatal(err)
	}
	ticked := must(unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC))
	three := uint64(3)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(ticked), kabi.TFD_IOC_SET_TICKS,
		uintptr(unsafe.Pointer(&three))); e != 0 {
		t.Fatalf("TFD_IOC_SET_TICKS (CONFIG_CHECKPOINT_RESTORE): %v", e)
	}
	var mask unix.Sigset_t
	mask.Val[0] = 1<<(unix.SIGWINCH-1) | 1<<40
	sfd := must(unix.Signalfd(-1, &mask, unix.SFD_CLOEXEC))
	mfd := must(unix.MemfdCreate("a memfd", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING))
	content := bytes.Repeat([]byte("cryo"), 3000)
	unix.Write(mfd, content)
	unix.Ftruncate(mfd, 20000)
	unix.Seek(mfd, 777, 0)
	if _, err := unix.FcntlInt(uintptr(mfd), unix.F_ADD_SEALS,
		unix.F_SEAL_GROW|unix.F_SEAL_SHRINK); err != nil {
		t.Fatal(err)
	}

	var files []*os.File
	for _, fd := range []int{rel, abs, ticked, sfd, mfd} {
		f := fdFile(t, fd)
		defer f.Close()
		files = append(files, f)
	}
	cmd := exec.Command(sleep, "60")
	cmd.ExtraFiles = files
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	waitSleeping(t, cmd.Process.Pid)

	want, err := Dump(cmd.Process.Pid, DumpOptions{})
	if err != nil {
		t.Fatal(err)
	}
	byNum := map[int]image.FD{}
	for _, fd := range want {
		byNum[fd.Num] = fd
	}
	if tf := byNum[3].Timerfd; tf == nil || tf.Interval != 1500000001 ||
		tf.Remaining > 200123456789 || tf.Remaining < 190e9 || tf.Flags != 0 {
		t.Errorf("relative timerfd dumped as %+v", tf)
	}
	if tf := byNum[4].Timerfd; tf == nil || tf.Flags != unix.TFD_TIMER_ABSTIME ||
		tf.Expiry < expiry-int64(time.Millisecond) || tf.Expiry > expiry+int64(time.Millisecond) {
		t.Errorf("absolute timerfd dumped as %+v, want expiry %d", tf, expiry)
	} else {
		t.Logf("absolute expiry read back %d ns off", tf.Expiry-expiry)
	}
	if tf := byNum[5].Timerfd; tf == nil || tf.Ticks != 3 || tf.Remaining != 0 {
		t.Errorf("ticked timerfd dumped as %+v", tf)
	}
	if s := byNum[6].Signalfd; s == nil || s.Mask != mask.Val[0] {
		t.Errorf("signalfd dumped as %+v, want mask %#x", s, mask.Val[0])
	}
	m := byNum[7].Memfd
	if m == nil || m.Name != "a memfd" || !bytes.Equal(m.Content, content) || m.Size != 20000 ||
		m.Seals != unix.F_SEAL_GROW|unix.F_SEAL_SHRINK || byNum[7].Pos != 777 {
		t.Errorf("memfd dumped as %+v at %d", m, byNum[7].Pos)
	}

	tg := startTarget(t)
	if err := Restore(tg.task, want, Stdio{}); err != nil {
		t.Fatal(err)
	}
	got, err := Dump(tg.pid, DumpOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		g, w := got[i].Timerfd, want[i].Timerfd
		if g == nil || w == nil {
			continue
		}
		// Time passed since the dump: the relative timer has less left, the
		// absolute one the same expiry (within the two readings' brackets).
		if g.Remaining > w.Remaining || w.Remaining-g.Remaining > int64(10*time.Second) ||
			(w.Expiry != 0) != (g.Expiry != 0) ||
			g.Expiry-w.Expiry > int64(time.Millisecond) ||
			w.Expiry-g.Expiry > int64(time.Millisecond) {
			t.Errorf("fd %d: timerfd restored as %+v, was %+v", got[i].Num, *g, *w)
		}
		gc, wc := *g, *w
		gc.Remaining, wc.Remaining, gc.Expiry, wc.Expiry = 0, 0, 0, 0
		got[i].Timerfd, want[i].Timerfd = &gc, &wc
	}
	compareSpecial(t, got, want)
}

// compareSpecial compares the dumps field by field, the kind-specific state by
// value.
func compareSpecial(t *testing.T, got, want []image.FD) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("restored %d fds, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Kind == image.FDStdio || w.Kind == image.FDStdio {
			continue
		}
		same := g.Num == w.Num && g.Kind == w.Kind && g.Flags == w.Flags &&
			g.Cloexec == w.Cloexec && g.Pos == w.Pos
		switch {
		case w.Timerfd != nil:
			same = same && g.Timerfd != nil && *g.Timerfd == *w.Timerfd
		case w.Signalfd != nil:
			same = same && g.Signalfd != nil && *g.Signalfd == *w.Signalfd
		case w.Memfd != nil:
			same = same && g.Memfd != nil && g.Memfd.Name == w.Memfd.Name &&
				g.Memfd.Seals == w.Memfd.Seals && g.Memfd.Mode == w.Memfd.Mode &&
				g.Memfd.Size == w.Memfd.Size && bytes.Equal(g.Memfd.Content, w.Memfd.Content)
		}
		if !same {
			t.Errorf("fd %d restored as %+v (%+v %+v %+v), want %+v (%+v %+v %+v)", w.Num,
				g, g.Timerfd, g.Signalfd, g.Memfd, w, w.Timerfd, w.Signalfd, w.Memfd)
		}
	}
}

// TestMemfdUnsupported: a memfd opened a second time through /proc, read-only
// or as a second open file, is refused with the fd named.
func TestMemfdUnsupported(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatalf("sleep(1) is needed: %v", err)
	}
	for _, tc := range []struct {
		name string
		mode int
		want string
	}{
		{"read-only", os.O_RDONLY, "opened again read-only"},
		{"second open file", os.O_RDWR, "also open at fd 3 as another open file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mfd := fdFile(t, must(unix.MemfdCreate("m", unix.MFD_CLOEXEC)))
			defer mfd.Close()
			again, err := os.OpenFile("/proc/self/fd/"+strconv.Itoa(int(mfd.Fd())), tc.mode, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer again.Close()
			files := []*os.File{mfd, again}
			if tc.mode == os.O_RDONLY {
				files = []*os.File{again}
			}
			cmd := exec.Command(sleep, "60")
			cmd.ExtraFiles = files
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			waitSleeping(t, cmd.Process.Pid)
			_, err = Dump(cmd.Process.Pid, DumpOptions{})
			var ue *UnsupportedError
			if !errors.As(err, &ue) || !bytes.Contains([]byte(ue.Error()), []byte(tc.want)) {
				t.Errorf("Dump: %v, want an UnsupportedError saying %q", err, tc.want)
			}
		})
	}
}
