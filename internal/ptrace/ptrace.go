// Package ptrace wraps the ptrace requests cryo needs beyond golang.org/x/sys/unix:
// register sets, the signal mask, the rseq configuration and waiting for stops.
//
// Every call except Wait must come from the OS thread that attached to the tracee;
// callers lock that goroutine to its thread with runtime.LockOSThread.
package ptrace

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Requests and constants from linux/ptrace.h that x/sys/unix lacks or names differently.
const (
	PTRACE_GETREGSET              = 0x4204
	PTRACE_SETREGSET              = 0x4205
	PTRACE_SEIZE                  = 0x4206
	PTRACE_LISTEN                 = 0x4208
	PTRACE_GETSIGMASK             = 0x420a
	PTRACE_SETSIGMASK             = 0x420b
	PTRACE_GET_RSEQ_CONFIGURATION = 0x420f
	PTRACE_EVENT_STOP             = 0x80
	NT_PRSTATUS                   = 1
	NT_PRFPREG                    = 2
	NT_X86_XSTATE                 = 0x202
	rseqConfigurationSize         = 24 // sizeof(struct ptrace_rseq_configuration)
	xstateMaxSize                 = 16384
	FxsaveSize                    = 512 // sizeof(struct user_i387_struct) of x86-64
	sigsetSize                    = 8
	PTRACE_O_TRACESYSGOOD         = 0x1
	PTRACE_O_TRACEFORK            = 0x2
	PTRACE_O_EXITKILL             = 0x100000
)

// Seize attaches to pid without stopping it (PTRACE_SEIZE, Linux 3.4+), with options.
func Seize(pid int, options int) error {
	return ignoreEINTR(func() error { return ptrace(PTRACE_SEIZE, pid, 0, uintptr(options)) })
}

// Interrupt stops a seized tracee (PTRACE_INTERRUPT); Wait reports the stop.
func Interrupt(pid int) error { return unix.PtraceInterrupt(pid) }

// Detach lets the tracee run on, delivering sig (0 for none).
func Detach(pid int, sig int) error {
	return ptrace(unix.PTRACE_DETACH, pid, 0, uintptr(sig))
}

// Listen lets a seized tracee in a group stop stay stopped while the tracer keeps
// receiving its events (PTRACE_LISTEN, Linux 3.4+).
func Listen(pid int) error { return ptrace(PTRACE_LISTEN, pid, 0, 0) }

// Cont resumes a stopped tracee, delivering sig (0 for none).
func Cont(pid int, sig int) error { return unix.PtraceCont(pid, sig) }

// Regs is struct user_regs_struct of x86-64.
type Regs = unix.PtraceRegs

// GetRegs reads the general registers of a stopped tracee.
func GetRegs(pid int) (Regs, error) {
	var r Regs
	err := unix.PtraceGetRegs(pid, &r)
	return r, err
}

// SetRegs writes the general registers of a stopped tracee.
func SetRegs(pid int, r *Regs) error { return unix.PtraceSetRegs(pid, r) }

// GetXstate reads the NT_X86_XSTATE register set (FPU, SSE, AVX and the rest of the
// XSAVE area) and returns as many bytes as the kernel filled. On a CPU without
// XSAVE (or a kernel booted with noxsave) the error is ENODEV; GetFxsave reads
// the FPU state there.
func GetXstate(pid int) ([]byte, error) {
	buf := make([]byte, xstateMaxSize)
	n, err := getRegset(pid, NT_X86_XSTATE, buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// SetXstate writes an NT_X86_XSTATE register set taken by GetXstate on this machine.
func SetXstate(pid int, xstate []byte) error {
	return setRegset(pid, NT_X86_XSTATE, xstate)
}

// GetFxsave reads the NT_PRFPREG register set: the x87 and SSE state in the
// 512-byte layout of the FXSAVE instruction (struct user_i387_struct). Every
// x86-64 CPU has it; where the CPU has XSAVE it is the first part of the XSAVE
// area, without AVX and the later extensions.
func GetFxsave(pid int) ([]byte, error) {
	buf := make([]byte, FxsaveSize)
	n, err := getRegset(pid, NT_PRFPREG, buf)
	if err != nil {
		return nil, err
	}
	if n != FxsaveSize {
		return nil, fmt.Errorf("NT_PRFPREG of pid %d: the kernel filled %d bytes, want %d",
			pid, n, FxsaveSize)
	}
	return buf, nil
}

// SetFxsave writes an NT_PRFPREG register set of FxsaveSize bytes. It works on
// a CPU with XSAVE too: the kernel puts it into the legacy part of the XSAVE
// area and leaves the extended state as it was.
func SetFxsave(pid int, fxsave []byte) error {
	if len(fxsave) != FxsaveSize {
		return fmt.Errorf("NT_PRFPREG of pid %d: %d bytes, want %d", pid, len(fxsave),
			FxsaveSize)
	}
	return setRegset(pid, NT_PRFPREG, fxsave)
}

// GetSigmask reads the blocked signal mask (Linux 3.11+).
func GetSigmask(pid int) (uint64, error) {
	var mask uint64
	err := getSigmask(pid, &mask)
	return mask, err
}

// SetSigmask writes the blocked signal mask; SIGKILL and SIGSTOP are ignored by the kernel.
func SetSigmask(pid int, mask uint64) error { return setSigmask(pid, mask) }

// RseqConfig is struct ptrace_rseq_configuration.
type RseqConfig struct {
	Ptr   uint64
	Size  uint32
	Sig   uint32
	Flags uint32
	_     uint32
}

// GetRseqConfig reads the thread's rseq registration (Linux 5.13+). Ptr is zero when
// the thread registered none.
func GetRseqConfig(pid int) (RseqConfig, error) {
	var c RseqConfig
	err := getRseq(pid, &c)
	return c, err
}

// GetRobustList returns the head and length of thread tid's robust futex list
// (get_robust_list(2), Linux 2.6.17+); head is zero when the thread registered
// none. It is a system call, not a ptrace request, but it asks what ptrace may
// ask: the caller needs PTRACE_MODE_READ access to the thread.
func GetRobustList(tid int) (head, size uint64, err error) {
	err = getRobustList(tid, &head, &size)
	return head, size, err
}

// Status is a wait status with the helpers the tracer needs.
type Status = unix.WaitStatus

// Wait waits for a state change of the tracee pid, retrying EINTR.
func Wait(pid int) (Status, error) {
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, unix.WALL, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return ws, fmt.Errorf("wait for pid %d: %w", pid, err)
		}
		return ws, nil
	}
}

// Event returns the PTRACE_EVENT_* number of a stop, or 0.
func Event(ws Status) int { return int(ws>>16) & 0xff }

func ignoreEINTR(f func() error) error {
	for {
		err := f()
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
