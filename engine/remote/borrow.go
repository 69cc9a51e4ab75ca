package remote

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/internal/procfs"
	"github.com/cryo-dev/cryo/internal/ptrace"
)

// Borrowed runs system calls inside a live process that the caller has seized
// (PTRACE_SEIZE with PTRACE_O_TRACESYSGOOD) and stopped, without writing its
// memory: it points the instruction pointer at a syscall instruction of the
// process's own [vdso] and lets the call run between the two syscall stops that
// PTRACE_SYSCALL gives. Release puts the registers back.
//
// Every method must be called from the tracer thread while the process is stopped.
type Borrowed struct {
	pid   int
	insn  uint64          // address of a syscall instruction in [vdso]
	saved unix.PtraceRegs // the registers the process stopped with

	// held are signals that arrived for the thread while a call ran (one pending
	// when it was stopped shows up at the first call): Release queues them again.
	held []unix.Signal
}

// Borrow prepares to run system calls in the stopped process pid.
func Borrow(pid int) (*Borrowed, error) {
	regs, err := ptrace.GetRegs(pid)
	if err != nil {
		return nil, fmt.Errorf("borrow pid %d: get registers: %w", pid, err)
	}
	insn, err := vdsoSyscall(pid)
	if err != nil {
		return nil, fmt.Errorf("borrow pid %d: %w", pid, err)
	}
	return &Borrowed{pid: pid, insn: insn, saved: regs}, nil
}

// Pid is the process id.
func (b *Borrowed) Pid() int { return b.pid }

// Saved returns the registers the process stopped with.
func (b *Borrowed) Saved() unix.PtraceRegs { return b.saved }

// Syscall runs system call nr with up to six arguments in the process.
func (b *Borrowed) Syscall(nr uintptr, args ...uint64) (uint64, error) {
	regs := callRegs(b.saved, b.insn, nr, args)
	if err := ptrace.SetRegs(b.pid, &regs); err != nil {
		return 0, fmt.Errorf("inject syscall %d into pid %d: set registers: %w", nr, b.pid, err)
	}
	for stop := 0; stop < 2; { // syscall entry, then exit
		if err := unix.PtraceSyscall(b.pid, 0); err != nil {
			return 0, fmt.Errorf("inject syscall %d into pid %d: resume: %w", nr, b.pid, err)
		}
		ws, err := ptrace.Wait(b.pid)
		if err != nil {
			return 0, fmt.Errorf("inject syscall %d into pid %d: %w", nr, b.pid, err)
		}
		switch {
		case ws.Stopped() && ws.StopSignal() == unix.SIGTRAP|0x80:
			stop++
		case ws.Stopped() && stop == 0 && ptrace.Event(ws) == 0 &&
			ws.StopSignal() != unix.SIGTRAP:
			// A signal pending for the thread, dequeued on the way back to user
			// mode before the call: hold it, for Release to queue again.
			b.held = append(b.held, ws.StopSignal())
		default:
			return 0, fmt.Errorf("inject syscall %d into pid %d: unexpected state %#x "+
				"waiting for a syscall stop", nr, b.pid, uint32(ws))
		}
	}
	out, err := ptrace.GetRegs(b.pid)
	if err != nil {
		return 0, fmt.Errorf("inject syscall %d into pid %d: get registers: %w", nr, b.pid, err)
	}
	return result(out.Rax)
}

// Release puts back the registers the process stopped with. A system call it was
// interrupted in is set up to restart the way the kernel would have restarted it,
// since the kernel's own restart step has been consumed by the injected calls.
func (b *Borrowed) Release() error {
	regs := b.saved
	if int64(regs.Orig_rax) >= 0 {
		switch -int64(regs.Rax) {
		case 512, 513, 514: // ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND
			regs.Rax = regs.Orig_rax
			regs.Rip -= 2
		case 516: // ERESTART_RESTARTBLOCK: the task's restart block is still there
			regs.Rax = unix.SYS_RESTART_SYSCALL
			regs.Rip -= 2
		}
		regs.Orig_rax = ^uint64(0)
	}
	if err := ptrace.SetRegs(b.pid, &regs); err != nil {
		return fmt.Errorf("release pid %d: set registers: %w", b.pid, err)
	}
	// Signals held back go to the same thread again; the kernel delivers them when
	// it runs. A real-time signal loses its siginfo payload on the way.
	for _, sig := range b.held {
		if err := unix.Tgkill(tgid(b.pid), b.pid, sig); err != nil {
			return fmt.Errorf("release pid %d: queue %v again: %w", b.pid, sig, err)
		}
	}
	b.held = nil
	return nil
}

// tgid returns the process a thread belongs to, from /proc/TID/status; a thread
// whose status cannot be read is taken for a process of its own.
func tgid(tid int) int {
	b, err := os.ReadFile(procfs.Path(tid, "status"))
	if err != nil {
		return tid
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Tgid:"); ok {
			if n, err := strconv.Atoi(strings.TrimSpace(rest)); err == nil {
				return n
			}
		}
	}
	return tid
}

// vdsoSyscall finds a syscall instruction (0f 05) in the [vdso] of pid.
func vdsoSyscall(pid int) (uint64, error) {
	maps, err := procfs.ReadMaps(pid)
	if err != nil {
		return 0, fmt.Errorf("read layout: %w", err)
	}
	for _, m := range maps {
		if m.Path != "[vdso]" {
			continue
		}
		code := make([]byte, m.End-m.Start)
		if err := ReadMem(pid, m.Start, code); err != nil {
			return 0, fmt.Errorf("read [vdso]: %w", err)
		}
		if i := bytes.Index(code, []byte{0x0f, 0x05}); i >= 0 {
			return m.Start + uint64(i), nil
		}
		return 0, fmt.Errorf("no syscall instruction in [vdso] at %#x", m.Start)
	}
	return 0, fmt.Errorf("no [vdso] mapping")
}
