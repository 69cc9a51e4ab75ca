package ptrace

import (
	"bytes"
	"errors"
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
	pid := seizeSleeper(t)

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
	if fx, err := GetFxsave(pid); err != nil || len(fx) != FxsaveSize {
		t.Errorf("FXSAVE area: %d bytes, %v", len(fx), err)
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

// TestFxsaveOnXsaveCPU writes a register through NT_PRFPREG, the regset cryo
// falls back to on CPUs without XSAVE, and reads it back through both regsets:
// an image taken on such a CPU restores on one with XSAVE. (On a CPU without
// XSAVE, the VM of tests/vm, the checkpoint and restore tests cover it.)
func TestFxsaveOnXsaveCPU(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: ptrace of another process")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	pid := seizeSleeper(t)

	fx, err := GetFxsave(pid)
	if err != nil {
		t.Fatal(err)
	}
	const xmm15 = 160 + 15*16 // the XMM registers start at byte 160 of the area
	want := []byte("cryo fxsave xmm!")
	copy(fx[xmm15:], want)
	if err := SetFxsave(pid, fx); err != nil {
		t.Fatalf("write the FXSAVE area: %v", err)
	}
	got, err := GetFxsave(pid)
	if err != nil || !bytes.Equal(got[xmm15:xmm15+16], want) {
		t.Errorf("xmm15 reads %q, %v through NT_PRFPREG after writing %q", got[xmm15:xmm15+16],
			err, want)
	}
	xs, err := GetXstate(pid)
	if errors.Is(err, unix.ENODEV) {
		t.Skipf("SKIP the XSAVE half: this CPU lacks the XSAVE feature (hardware), so "+
			"NT_X86_XSTATE is refused: %v; the NT_PRFPREG half above ran", err)
	}
	if err != nil || !bytes.Equal(xs[xmm15:xmm15+16], want) {
		t.Errorf("xmm15 reads %q, %v through NT_X86_XSTATE after writing %q to NT_PRFPREG",
			xs[xmm15:xmm15+16], err, want)
	}
	if err := SetFxsave(pid, fx[:100]); err == nil {
		t.Errorf("SetFxsave took 100 bytes")
	}
}

// seizeSleeper starts a sleep(1) child, seizes and interrupts it, and kills it
// when the test ends. The caller is locked to its OS thread.
func seizeSleeper(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("sleep", "5")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
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
	return pid
}
