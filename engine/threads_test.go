package engine

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
)

func TestCheckThreads(t *testing.T) {
	th := func(tids ...int) []image.Thread {
		var out []image.Thread
		for _, tid := range tids {
			out = append(out, image.Thread{Tid: tid})
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		im      image.Image
		wantErr string // "" for none
	}{
		{"version 1, one thread", image.Image{Version: 1, Pid: 40, Threads: th(40)}, ""},
		{"version 2, threads", image.Image{Version: 2, Pid: 40, Threads: th(40, 41, 45)}, ""},
		{"version 1, two threads", image.Image{Version: 1, Pid: 40, Threads: th(40, 41)},
			"version 1 image has 2 threads"},
		{"no thread", image.Image{Version: 2, Pid: 40}, "no thread"},
		{"leader not first", image.Image{Version: 2, Pid: 40, Threads: th(41, 40)},
			"first thread has tid 41, not the pid 40"},
		{"repeated tid", image.Image{Version: 2, Pid: 40, Threads: th(40, 41, 41)},
			"repeated tid 41"},
		{"tid 1", image.Image{Version: 2, Pid: 40, Threads: th(40, 1)},
			"invalid or repeated tid 1"},
		{"fxsave", image.Image{Version: 3, Pid: 40, Threads: []image.Thread{
			{Tid: 40, Fxsave: make([]byte, 512)}, {Tid: 41, Fxsave: make([]byte, 512)}}}, ""},
		{"fxsave short", image.Image{Version: 3, Pid: 40, Threads: []image.Thread{
			{Tid: 40, Fxsave: make([]byte, 512)}, {Tid: 41, Fxsave: make([]byte, 511)}}},
			"thread 41 has an FXSAVE area of 511 bytes, want 512"},
		{"fxsave and xstate", image.Image{Version: 3, Pid: 40, Threads: []image.Thread{
			{Tid: 40, Xstate: make([]byte, 832), Fxsave: make([]byte, 512)}}},
			"thread 40 has both an XSAVE and an FXSAVE area"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkThreads(&tc.im)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("checkThreads: %v, want no error", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("checkThreads: %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

// TestImageVersion1Loads decodes an image as cryo wrote it before threads were
// supported: one thread, none of the version 2 fields.
func TestImageVersion1Loads(t *testing.T) {
	const v1 = `{"version":1,"pid":4242,"comm":"x","exe":"/bin/x","kernel":"k","mm":{},` +
		`"vmas":[],"threads":[{"tid":4242,"regs":{"Rip":4096},"xstate":"AAAA",` +
		`"sigmask":5}],"fds":[]}`
	im, err := image.Unmarshal([]byte(v1))
	if err != nil {
		t.Fatal(err)
	}
	if err := checkThreads(im); err != nil {
		t.Fatalf("version 1 image refused: %v", err)
	}
	th := im.Threads[0]
	if th.Tid != 4242 || th.Regs.Rip != 4096 || th.SigMask != 5 || th.RobustList != 0 ||
		th.ClearChildTid != 0 || th.AltStack != nil {
		t.Errorf("version 1 thread decoded as %+v", th)
	}
}

// TestXstateError: an XSAVE area written where the CPU has no XSAVE fails with
// an error that says so and names the thread, and keeps the errno.
func TestXstateError(t *testing.T) {
	err := xstateError(41, unix.ENODEV)
	for _, want := range []string{"tid 41", "no XSAVE"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("xstateError(ENODEV) = %v, want it to contain %q", err, want)
		}
	}
	if !errors.Is(err, unix.ENODEV) {
		t.Errorf("xstateError(ENODEV) = %v, does not match ENODEV", err)
	}
	if err := xstateError(41, unix.EFAULT); err == nil ||
		strings.Contains(err.Error(), "XSAVE") || !errors.Is(err, unix.EFAULT) {
		t.Errorf("xstateError(EFAULT) = %v, want only the tid and EFAULT", err)
	}
	if err := xstateError(41, nil); err != nil {
		t.Errorf("xstateError(nil) = %v", err)
	}
}

// TestRestartedCall checks a stop in restart_syscall is taken for the call the
// previous snapshot saw the thread stopped in only when the place and every
// argument register match.
func TestRestartedCall(t *testing.T) {
	neg := func(e int64) uint64 { return uint64(-e) }
	sleep := image.Regs{Orig_rax: unix.SYS_CLOCK_NANOSLEEP, Rax: neg(errRestartRestartBlock),
		Rip: 0x401002, Rdi: 0, Rsi: 0, Rdx: 0x7ffd0010, R10: 0x7ffd0020}
	restart := sleep
	restart.Orig_rax = unix.SYS_RESTART_SYSCALL
	for _, tc := range []struct {
		name   string
		regs   image.Regs
		prev   func(*image.Regs) // nil: no previous thread
		want   uint64
		wantOK bool
	}{
		{"same place and arguments", restart, func(*image.Regs) {}, unix.SYS_CLOCK_NANOSLEEP, true},
		{"no previous snapshot", restart, nil, 0, false},
		{"not in restart_syscall", sleep, func(*image.Regs) {}, 0, false},
		{"restart_syscall returned", func() image.Regs { r := restart; r.Rax = 0; return r }(),
			func(*image.Regs) {}, 0, false},
		{"other place", restart, func(r *image.Regs) { r.Rip += 16 }, 0, false},
		{"other argument", restart, func(r *image.Regs) { r.R10 += 16 }, 0, false},
		{"other sixth argument", restart, func(r *image.Regs) { r.R9 = 1 }, 0, false},
		{"previous call not restarted", restart,
			func(r *image.Regs) { r.Rax = neg(errRestartNoHand) }, 0, false},
		{"previous call unknown too", restart,
			func(r *image.Regs) { r.Orig_rax = unix.SYS_RESTART_SYSCALL }, 0, false},
		{"previous stop outside a call", restart,
			func(r *image.Regs) { r.Orig_rax = ^uint64(0) }, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var prev *image.Thread
			if tc.prev != nil {
				prev = &image.Thread{Regs: sleep}
				tc.prev(&prev.Regs)
			}
			got, ok := restartedCall(tc.regs, prev)
			if got != tc.want || ok != tc.wantOK {
				t.Errorf("restartedCall = %d, %v; want %d, %v", got, ok, tc.want, tc.wantOK)
			}
		})
	}
}
