package remote

import (
	"os"
	"os/exec"
	"runtime"
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
