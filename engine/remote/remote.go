// Package remote runs system calls inside a stopped, traced process.
//
// A Task owns a small area in the tracee (the trampoline) that holds the two
// instructions `syscall; int3` followed by scratch memory for paths and structs.
// To run a system call, the tracer loads the syscall number and arguments into the
// tracee's registers, points its instruction pointer at the trampoline, and lets it
// run until the int3 traps; the result is in rax. The tracee executes nothing else.
//
// Every method must be called from the OS thread that traces the task
// (runtime.LockOSThread), and only while the task is in a ptrace stop.
package remote

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/internal/ptrace"
)

// Code is the trampoline's machine code: syscall (0f 05), then int3 (cc).
var Code = []byte{0x0f, 0x05, 0xcc}

// TrampolineSize is the size of the area a Task maps in the tracee: one page of code
// followed by scratch memory.
const TrampolineSize = 17 * pageSize

const pageSize = 4096

// Task is a stopped, traced process that system calls can be injected into.
type Task struct {
	pid   int
	tramp uint64          // address of Code in the tracee
	base  unix.PtraceRegs // registers used as the template of each call
}

// Attach prepares a task whose trampoline is already at tramp, with base as the
// register template (segment selectors and flags of the stopped tracee).
func Attach(pid int, tramp uint64, base unix.PtraceRegs) *Task {
	return &Task{pid: pid, tramp: tramp, base: base}
}

// Base is the register template of the task.
func (t *Task) Base() unix.PtraceRegs { return t.base }

// Pid is the task's process id.
func (t *Task) Pid() int { return t.pid }

// Trampoline is the address of the trampoline area in the tracee.
func (t *Task) Trampoline() uint64 { return t.tramp }

// Scratch is the writable scratch area that follows the trampoline code page.
func (t *Task) Scratch() (addr uint64, size int) {
	page := uint64(pageSize)
	return t.tramp + page, TrampolineSize - int(page)
}

// Syscall runs system call nr with up to six arguments inside the tracee and
// returns its result. A negative result in the errno range comes back as unix.Errno.
func (t *Task) Syscall(nr uintptr, args ...uint64) (uint64, error) {
	regs := callRegs(t.base, t.tramp, nr, args)
	if err := ptrace.SetRegs(t.pid, &regs); err != nil {
		return 0, fmt.Errorf("inject syscall %d into pid %d: set registers: %w", nr, t.pid, err)
	}
	if err := t.runToTrap(); err != nil {
		return 0, fmt.Errorf("inject syscall %d into pid %d: %w", nr, t.pid, err)
	}
	out, err := ptrace.GetRegs(t.pid)
	if err != nil {
		return 0, fmt.Errorf("inject syscall %d into pid %d: get registers: %w", nr, t.pid, err)
	}
	if r := int64(out.Rax); r < 0 && r >= -4095 {
		return 0, unix.Errno(-r)
	}
	return out.Rax, nil
}

// callRegs loads system call nr and its arguments into a copy of base, pointed at
// the syscall instruction at rip. orig_rax is -1 so that the kernel restarts
// nothing on the way back to user mode.
func callRegs(base unix.PtraceRegs, rip uint64, nr uintptr, args []uint64) unix.PtraceRegs {
	if len(args) > 6 {
		panic("remote: more than six syscall arguments")
	}
	var a [6]uint64
	copy(a[:], args)
	regs := base
	regs.Rip = rip
	regs.Rax = uint64(nr)
	regs.Orig_rax = ^uint64(0)
	regs.Rdi, regs.Rsi, regs.Rdx, regs.R10, regs.R8, regs.R9 = a[0], a[1], a[2], a[3], a[4], a[5]
	return regs
}

// result turns rax after a system call into its value or errno.
func result(rax uint64) (uint64, error) {
	if r := int64(rax); r < 0 && r >= -4095 {
		return 0, unix.Errno(-r)
	}
	return rax, nil
}

// runToTrap continues the tracee and waits until it stops at the trampoline's int3.
func (t *Task) runToTrap() error {
	if err := ptrace.Cont(t.pid, 0); err != nil {
		return fmt.Errorf("continue: %w", err)
	}
	for {
		ws, err := ptrace.Wait(t.pid)
		if err != nil {
			return err
		}
		switch {
		case ws.Exited():
			return fmt.Errorf("tracee exited with status %d", ws.ExitStatus())
		case ws.Signaled():
			return fmt.Errorf("tracee killed by %s", unix.SignalName(ws.Signal()))
		case !ws.Stopped():
			continue
		case ws.StopSignal() == unix.SIGTRAP && ptrace.Event(ws) == 0:
			return nil
		case ws.StopSignal() == unix.SIGTRAP:
			// A ptrace event stop (a clone the syscall made): let the syscall finish.
			if err := ptrace.Cont(t.pid, 0); err != nil {
				return fmt.Errorf("continue after event %d: %w", ptrace.Event(ws), err)
			}
		default:
			regs, _ := ptrace.GetRegs(t.pid)
			return fmt.Errorf("tracee stopped by %v (event %d) at rip %#x instead of the trampoline trap",
				ws.StopSignal(), ptrace.Event(ws), regs.Rip)
		}
	}
}

// WriteMem writes b into the tracee at addr with process_vm_writev. The pages must
// be writable in the tracee.
func (t *Task) WriteMem(addr uint64, b []byte) error {
	return WriteMem(t.pid, addr, b)
}

// ReadMem reads len(b) bytes of the tracee at addr with process_vm_readv.
func (t *Task) ReadMem(addr uint64, b []byte) error {
	return ReadMem(t.pid, addr, b)
}

// WriteMem writes b into process pid at addr with process_vm_writev.
func WriteMem(pid int, addr uint64, b []byte) error {
	if len(b) == 0 {
		return nil
	}
	local := []unix.Iovec{{Base: &b[0]}}
	local[0].SetLen(len(b))
	remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: len(b)}}
	n, err := unix.ProcessVMWritev(pid, local, remote, 0)
	if err != nil {
		return fmt.Errorf("write %d bytes at %#x of pid %d: %w", len(b), addr, pid, err)
	}
	if n != len(b) {
		return fmt.Errorf("write %d bytes at %#x of pid %d: short write of %d", len(b), addr, pid, n)
	}
	return nil
}

// ReadMem reads len(b) bytes of process pid at addr with process_vm_readv.
func ReadMem(pid int, addr uint64, b []byte) error {
	if len(b) == 0 {
		return nil
	}
	local := []unix.Iovec{{Base: &b[0]}}
	local[0].SetLen(len(b))
	remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: len(b)}}
	n, err := unix.ProcessVMReadv(pid, local, remote, 0)
	if err != nil {
		return fmt.Errorf("read %d bytes at %#x of pid %d: %w", len(b), addr, pid, err)
	}
	if n != len(b) {
		return fmt.Errorf("read %d bytes at %#x of pid %d: short read of %d", len(b), addr, pid, n)
	}
	return nil
}

// Finish removes the trampoline from the tracee and lets it run with the registers
// final. The trampoline unmaps itself: the tracer stops the tracee at the exit of that
// munmap (PTRACE_SYSCALL), before it could return into the vanished page, loads final
// and detaches. The tracee needs PTRACE_O_TRACESYSGOOD.
func (t *Task) Finish(final *unix.PtraceRegs) error {
	regs := callRegs(t.base, t.tramp, unix.SYS_MUNMAP, []uint64{t.tramp, TrampolineSize})
	if err := ptrace.SetRegs(t.pid, &regs); err != nil {
		return fmt.Errorf("finish pid %d: set registers: %w", t.pid, err)
	}

	// Two syscall stops: entry, then exit of the munmap.
	for stop := 0; stop < 2; stop++ {
		if err := unix.PtraceSyscall(t.pid, 0); err != nil {
			return fmt.Errorf("finish pid %d: resume to syscall stop: %w", t.pid, err)
		}
		ws, err := ptrace.Wait(t.pid)
		if err != nil {
			return fmt.Errorf("finish pid %d: %w", t.pid, err)
		}
		if !ws.Stopped() || ws.StopSignal() != unix.SIGTRAP|0x80 {
			return fmt.Errorf("finish pid %d: unexpected state %#x waiting for a syscall stop",
				t.pid, uint32(ws))
		}
	}
	out, err := ptrace.GetRegs(t.pid)
	if err != nil {
		return fmt.Errorf("finish pid %d: get registers: %w", t.pid, err)
	}
	if out.Rax != 0 {
		return fmt.Errorf("finish pid %d: unmap trampoline at %#x: %w", t.pid, t.tramp,
			unix.Errno(-int64(out.Rax)))
	}

	if err := ptrace.SetRegs(t.pid, final); err != nil {
		return fmt.Errorf("finish pid %d: set final registers: %w", t.pid, err)
	}
	if err := ptrace.Detach(t.pid, 0); err != nil {
		return fmt.Errorf("finish pid %d: detach: %w", t.pid, err)
	}
	return nil
}

// Bootstrap turns a freshly exec'd, ptrace-stopped process into a Task: it writes the
// trampoline code over the instruction at the stop, uses it to map the trampoline
// area at addr (which must be free), and copies the code there. The overwritten
// instruction is left as it is: the caller discards the process's own image.
func Bootstrap(pid int, addr uint64) (*Task, error) {
	regs, err := ptrace.GetRegs(pid)
	if err != nil {
		return nil, fmt.Errorf("bootstrap pid %d: get registers: %w", pid, err)
	}

	word := make([]byte, 8)
	if _, err := unix.PtracePeekText(pid, uintptr(regs.Rip), word); err != nil {
		return nil, fmt.Errorf("bootstrap pid %d: read code at %#x: %w", pid, regs.Rip, err)
	}
	copy(word, Code)
	if _, err := unix.PtracePokeText(pid, uintptr(regs.Rip), word); err != nil {
		return nil, fmt.Errorf("bootstrap pid %d: write code at %#x: %w", pid, regs.Rip, err)
	}

	boot := Attach(pid, regs.Rip, regs)
	got, err := boot.Syscall(unix.SYS_MMAP, addr, TrampolineSize,
		unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE, ^uint64(0), 0)
	if err != nil {
		return nil, fmt.Errorf("bootstrap pid %d: map trampoline at %#x: %w", pid, addr, err)
	}
	if got != addr {
		return nil, fmt.Errorf("bootstrap pid %d: trampoline mapped at %#x, not %#x", pid, got, addr)
	}
	if err := WriteMem(pid, addr, Code); err != nil {
		return nil, fmt.Errorf("bootstrap pid %d: %w", pid, err)
	}
	return Attach(pid, addr, regs), nil
}
