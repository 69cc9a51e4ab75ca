package ptrace

import (
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestStoppedThreadState seizes a sleeping child and reads what checkpoint reads:
// registers, the XSAVE area, the signal mask and the rseq registration (glibc
// 2.35+ registers rseq in every thread).
func TestStoppedThreadState(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: ptrace of another process")
	}
	if got := unsafe.Sizeof(RseqConfig{}); got != rseqConfigurationSize {
		t.Fatalf("RseqConfig is %d bytes, struct ptrace_rseq_configuration is %d",
			got, rseqConfigurationSize)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	cmd := exec.Command("sleep", "5")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := cmd.Process.Pid
	time.Sleep(50 * time.Millisecond)

	if err := Seize(pid, PTRACE_O_TRACESYSGOOD); err != nil {
		t.Fatal(err)
	}
	if err := Interrupt(pid); err != nil {
		t.Fatal(err)
	}
	ws, err := Wait(pid)
	if err != nil || !ws.Stopped() || Event(ws) != PTRACE_EVENT_STOP {
		t.Fatalf("wait for the interrupt stop: status %#x, %v", uint32(ws), err)
	}
	regs, err := GetRegs(pid)
	if err != nil || regs.Rip == 0 {
		t.Errorf("registers: rip %#x, %v", regs.Rip, err)
	}
	xs, err := GetXstate(pid)
	if err != nil || len(xs) < 576 { // legacy area 512 + XSAVE header 64
		t.Errorf("XSAVE area: %d bytes, %v", len(xs), err)
	}
	if err := SetXstate(pid, xs); err != nil {
		t.Errorf("write the XSAVE area back: %v", err)
	}
	mask, err := GetSigmask(pid)
	if err != nil {
		t.Errorf("signal mask: %v", err)
	}
	if err := SetSigmask(pid, mask|1<<(unix.SIGUSR1-1)); err != nil {
		t.Errorf("set signal mask: %v", err)
	}
	if got, _ := GetSigmask(pid); got != mask|1<<(unix.SIGUSR1-1) {
		t.Errorf("signal mask reads %#x after setting %#x", got, mask|1<<(unix.SIGUSR1-1))
	}
	rs, err := GetRseqConfig(pid)
	if err != nil || rs.Ptr == 0 || rs.Size < 32 {
		t.Errorf("rseq registration: %+v, %v (glibc registers rseq: want an area)", rs, err)
	}
	if err := Detach(pid, 0); err != nil {
		t.Fatal(err)
	}
}
