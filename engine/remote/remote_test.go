package remote

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/internal/ptrace"
)

// TestBorrow runs system calls inside a live process stopped in nanosleep, then
// lets it go: the sleep must still end on time, as if nothing happened.
func TestBorrow(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: ptrace of another process")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	cmd := exec.Command("sleep", "0.5")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	pid := cmd.Process.Pid
	time.Sleep(50 * time.Millisecond) // into its nanosleep

	if err := ptrace.Seize(pid, ptrace.PTRACE_O_TRACESYSGOOD); err != nil {
		t.Fatal(err)
	}
	if err := ptrace.Interrupt(pid); err != nil {
		t.Fatal(err)
	}
	if _, err := ptrace.Wait(pid); err != nil {
		t.Fatal(err)
	}
	b, err := Borrow(pid)
	if err != nil {
		t.Fatal(err)
	}
	got, err := b.Syscall(unix.SYS_GETPID)
	if err != nil || int(got) != pid {
		t.Errorf("getpid in pid %d = %d, %v", pid, got, err)
	}
	if _, err := b.Syscall(unix.SYS_CLOSE, 12345); err != unix.EBADF {
		t.Errorf("close(12345) in pid %d: %v, want EBADF", pid, err)
	}
	if err := b.Release(); err != nil {
		t.Fatal(err)
	}
	if err := ptrace.Detach(pid, 0); err != nil {
		t.Fatal(err)
	}

	if err := cmd.Wait(); err != nil {
		t.Fatalf("sleep after the borrowed calls: %v", err)
	}
	if d := time.Since(begin); d < 450*time.Millisecond || d > 5*time.Second {
		t.Errorf("sleep 0.5 took %v: its interrupted nanosleep did not resume right", d)
	}
}

// TestBorrowHoldsPendingSignal: a signal that arrived while the process was
// stopped is dequeued when a borrowed call resumes it. The call must still work,
// and the signal must reach the process once it runs again: SIGUSR1 ends sleep.
func TestBorrowHoldsPendingSignal(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: ptrace of another process")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	cmd := exec.Command("sleep", "3")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	pid := cmd.Process.Pid
	time.Sleep(50 * time.Millisecond)
	if err := ptrace.Seize(pid, ptrace.PTRACE_O_TRACESYSGOOD); err != nil {
		t.Fatal(err)
	}
	if err := ptrace.Interrupt(pid); err != nil {
		t.Fatal(err)
	}
	if _, err := ptrace.Wait(pid); err != nil {
		t.Fatal(err)
	}
	if err := unix.Kill(pid, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}

	b, err := Borrow(pid)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := b.Syscall(unix.SYS_GETPID); err != nil || int(got) != pid {
		t.Errorf("getpid in pid %d with a signal pending = %d, %v", pid, got, err)
	}
	if err := b.Release(); err != nil {
		t.Fatal(err)
	}
	if err := ptrace.Detach(pid, 0); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	err = cmd.Wait()
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGUSR1 {
		t.Fatalf("sleep ended with %v after %v, want killed by the held SIGUSR1", err,
			time.Since(begin))
	}
}

// helperEnv names, for the test binary run as a helper, the point of a borrowed
// call at which it kills itself and the pid it borrows (TestBorrowTracerKilled).
const helperEnv = "CRYO_REMOTE_TRACER_DIES"

// TestBorrowTracerKilled kills the tracer (SIGKILL, which nothing can catch)
// at points of a borrowed call: the process must either run on untouched (the
// tracer died between calls, with the thread's own registers in place) or be
// killed, never run on with the call's registers, which would take sleep into
// the [vdso] code after the syscall instruction with registers not its own.
func TestBorrowTracerKilled(t *testing.T) {
	if os.Getenv(helperEnv) != "" {
		t.Skip("not a test in this process: it is the helper process TestBorrowTracerKilled started")
	}
	if os.Geteuid() != 0 {
		t.Fatal("needs root: ptrace of another process")
	}
	for _, tc := range []struct {
		point  string
		killed bool // the process must die by SIGKILL; else run on untouched
	}{
		{"loaded", true},
		{"entry", true},
		{"between", false},
	} {
		t.Run(tc.point, func(t *testing.T) {
			target := exec.Command("sleep", "1")
			if err := target.Start(); err != nil {
				t.Fatal(err)
			}
			defer target.Process.Kill()
			begin := time.Now()
			time.Sleep(50 * time.Millisecond) // into its nanosleep

			helper := exec.Command(os.Args[0], "-test.run=^TestBorrowTracerHelper$")
			helper.Env = append(os.Environ(),
				fmt.Sprintf("%s=%s:%d", helperEnv, tc.point, target.Process.Pid))
			out, err := helper.CombinedOutput()
			ws, _ := helper.ProcessState.Sys().(syscall.WaitStatus)
			if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("helper ended with %v, want killed by itself at %q:\n%s", err,
					tc.point, out)
			}

			err = target.Wait()
			ws, _ = target.ProcessState.Sys().(syscall.WaitStatus)
			took := time.Since(begin)
			switch {
			case tc.killed && !(ws.Signaled() && ws.Signal() == syscall.SIGKILL):
				t.Errorf("tracer died at %q: sleep ended with %v after %v, want killed "+
					"by PTRACE_O_EXITKILL", tc.point, err, took)
			case !tc.killed && (err != nil || took < 950*time.Millisecond):
				t.Errorf("tracer died at %q: sleep 1 ended with %v after %v, want exit 0 "+
					"after a second", tc.point, err, took)
			}
		})
	}
}

// TestBorrowTracerHelper is the tracer of TestBorrowTracerKilled, run in a
// process of its own: it borrows the process and kills itself where told.
func TestBorrowTracerHelper(t *testing.T) {
	point, spid, ok := strings.Cut(os.Getenv(helperEnv), ":")
	if !ok {
		t.Skip("not a test on its own: the helper process TestBorrowTracerKilled starts, with " +
			helperEnv + " set; that test runs it")
	}
	pid, err := strconv.Atoi(spid)
	if err != nil {
		t.Fatal(err)
	}
	runtime.LockOSThread()
	die := func() { unix.Kill(os.Getpid(), unix.SIGKILL); select {} }
	testHook = func(at string) {
		if at == point {
			die()
		}
	}
	if err := ptrace.Seize(pid, SeizeOptions); err != nil {
		t.Fatal(err)
	}
	if err := ptrace.Interrupt(pid); err != nil {
		t.Fatal(err)
	}
	if _, err := ptrace.Wait(pid); err != nil {
		t.Fatal(err)
	}
	b, err := Borrow(pid)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if got, err := b.Syscall(unix.SYS_GETPID); err != nil || int(got) != pid {
			t.Fatalf("getpid in pid %d = %d, %v", pid, got, err)
		}
		if point == "between" {
			die()
		}
	}
	t.Fatalf("never reached %q", point)
}

// BenchmarkBorrowedSyscall measures one getpid run inside a stopped sleep: the
// cost of a borrowed call, with its two syscall stops.
func BenchmarkBorrowedSyscall(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Fatal("needs root: ptrace of another process")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cmd := exec.Command("sleep", "100")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	pid := cmd.Process.Pid
	if err := ptrace.Seize(pid, ptrace.PTRACE_O_TRACESYSGOOD); err != nil {
		b.Fatal(err)
	}
	if err := ptrace.Interrupt(pid); err != nil {
		b.Fatal(err)
	}
	if _, err := ptrace.Wait(pid); err != nil {
		b.Fatal(err)
	}
	bw, err := Borrow(pid)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := bw.Syscall(unix.SYS_GETPID); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if err := bw.Release(); err != nil {
		b.Fatal(err)
	}
}
