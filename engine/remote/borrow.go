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

// SeizeOptions are the ptrace options Borrow expects the process to have been
// seized with. A call sets them again, with PTRACE_O_EXITKILL added while it runs.
const SeizeOptions = ptrace.PTRACE_O_TRACESYSGOOD

// Borrowed runs system calls inside a live process that the caller has seized
// (PTRACE_SEIZE with exactly SeizeOptions) and stopped, without writing its
// memory: it points the instruction pointer at a syscall instruction of the
// process's own [vdso] and lets the call run between the two syscall stops that
// PTRACE_SYSCALL gives. Each call puts the process's own registers back at its
// syscall-exit stop, before it returns.
//
// While a call's registers are in the thread, a detach would let it run them:
// it would execute the call again and then the [vdso] code after the syscall
// instruction with registers that are not its own, at best to a crash, at worst
// into a system call with arbitrary arguments. An explicit detach never happens
// then, but the tracer's death (cryo killed by SIGKILL) detaches too. So each
// call sets PTRACE_O_EXITKILL (Linux 3.8) before it loads its registers and clears
// it once the thread's own are back: should the tracer die within a call, the
// kernel kills the process instead of letting it run on with borrowed registers.
// Outside a call, the tracer's death lets the process run on untouched, but for
// a signal held back (see held) and not queued again yet, which is lost.
//
// Every method must be called from the tracer thread while the process is stopped.
type Borrowed struct {
	pid   int
	insn  uint64          // address of a syscall instruction in [vdso]
	saved unix.PtraceRegs // the registers the process stopped with
	own   unix.PtraceRegs // saved, set up to restart the call it was stopped in
	ran   bool            // a call resumed the thread: the kernel's restart step is spent

	// held are signals that arrived for the thread while a call ran (one pending
	// when it was stopped shows up at the first call): Release queues them again.
	held []unix.Signal

	unpin func() // gives the tracer thread its own CPU affinity back
}

// maxLeftoverStops bounds the ptrace stops other than syscall stops that a call
// steps over before its syscall-entry stop: a PTRACE_INTERRUPT left pending, a
// group stop reported again, a signal to hold back.
const maxLeftoverStops = 16

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
	return &Borrowed{pid: pid, insn: insn, saved: regs, own: restartRegs(regs),
		unpin: PinNear(pid)}, nil
}

// PinNear binds the calling thread, the tracer, to the CPU thread tid last ran
// on, and returns what undoes it. Each injected call is two wake-ups, tracee
// then tracer; on the 2-CPU VMs cryo is built on, a wake-up that crosses CPUs
// costs several times one that does not, and the frozen time a checkpoint
// spends in injected calls fell by half or more (docs/DESIGN.md). Pinning is an
// optimization only: when the CPU is outside cryo's own affinity or the kernel
// refuses, the thread runs where it was allowed to.
func PinNear(tid int) (undo func()) {
	undo = func() {}
	st, err := procfs.ReadStat(tid)
	if err != nil {
		return undo
	}
	var own, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &own); err != nil || !own.IsSet(st.Processor) {
		return undo
	}
	one.Set(st.Processor)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		return undo
	}
	return func() { unix.SchedSetaffinity(0, &own) }
}

// Pid is the process id.
func (b *Borrowed) Pid() int { return b.pid }

// Saved returns the registers the process stopped with.
func (b *Borrowed) Saved() unix.PtraceRegs { return b.saved }

// Syscall runs system call nr with up to six arguments in the process. An error
// the call itself returns comes back as a bare unix.Errno; a failure to run it
// is wrapped, naming the call and the pid.
//
// A thread in a group stop (SIGSTOP) runs the call too: under PTRACE_SEIZE a
// resumed tracee runs although its group is stopped, and the kernel puts it back
// in the group stop when it is detached. Its first resume may report the group
// stop once more (the PTRACE_INTERRUPT that stopped the thread is still pending
// when the thread was in a group stop already at PTRACE_SEIZE): such stops are
// stepped over.
func (b *Borrowed) Syscall(nr uintptr, args ...uint64) (_ uint64, err error) {
	fail := func(err error) (uint64, error) {
		return 0, fmt.Errorf("inject syscall %d into pid %d: %w", nr, b.pid, err)
	}
	if err := unix.PtraceSetOptions(b.pid, SeizeOptions|ptrace.PTRACE_O_EXITKILL); err != nil {
		return fail(fmt.Errorf("set PTRACE_O_EXITKILL: %w", err))
	}
	defer func() {
		// The thread's own registers go back whatever happened, while it is in a
		// stop; only then may the tracer's death let it run.
		if rerr := b.putBack(); rerr != nil && err == nil {
			_, err = fail(rerr)
		}
	}()

	regs := callRegs(b.saved, b.insn, nr, args)
	if err := ptrace.SetRegs(b.pid, &regs); err != nil {
		return fail(fmt.Errorf("set registers: %w", err))
	}
	testHook("loaded")
	for stop, other := 0, 0; stop < 2; { // syscall entry, then exit
		if err := unix.PtraceSyscall(b.pid, 0); err != nil {
			return fail(fmt.Errorf("resume: %w", err))
		}
		b.ran = true
		ws, err := ptrace.Wait(b.pid)
		if err != nil {
			return fail(err)
		}
		switch {
		case ws.Stopped() && ws.StopSignal() == unix.SIGTRAP|0x80:
			stop++
			if stop == 1 {
				testHook("entry")
			}
			continue
		case !ws.Stopped() || stop > 0 || other == maxLeftoverStops:
			return fail(fmt.Errorf("unexpected state %#x waiting for a syscall stop",
				uint32(ws)))
		case ptrace.Event(ws) == ptrace.PTRACE_EVENT_STOP:
			// A PTRACE_INTERRUPT stop left pending, or the group stop reported
			// again: nothing to do but resume.
		case ptrace.Event(ws) == 0 && ws.StopSignal() != unix.SIGTRAP:
			// A signal pending for the thread, dequeued on the way back to user
			// mode before the call: hold it, for Release to queue again.
			b.held = append(b.held, ws.StopSignal())
		default:
			return fail(fmt.Errorf("unexpected state %#x waiting for a syscall stop",
				uint32(ws)))
		}
		other++
	}
	out, err := ptrace.GetRegs(b.pid)
	if err != nil {
		return fail(fmt.Errorf("get registers: %w", err))
	}
	return result(out.Rax)
}

// putBack loads the thread's own registers and clears PTRACE_O_EXITKILL. Until
// a call has resumed the thread, the kernel still takes its restart step when
// the thread runs on, so it gets the very registers it stopped with.
func (b *Borrowed) putBack() error {
	regs := &b.own
	if !b.ran {
		regs = &b.saved
	}
	if err := ptrace.SetRegs(b.pid, regs); err != nil {
		// Not in a stop (it died), or gone: PTRACE_O_EXITKILL stays, since
		// the options cannot be changed either.
		return fmt.Errorf("put registers back: %w", err)
	}
	if err := unix.PtraceSetOptions(b.pid, SeizeOptions); err != nil {
		return fmt.Errorf("clear PTRACE_O_EXITKILL: %w", err)
	}
	return nil
}

// Release queues again the signals held back while calls ran. The registers are
// the thread's own already: each call put them back.
func (b *Borrowed) Release() error {
	if b.unpin != nil {
		b.unpin()
		b.unpin = nil
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

// testHook, when set by a test, is called at the named points of a call: "loaded"
// once the call's registers are in the thread, "entry" at its syscall-entry stop.
var testHook = func(point string) {}

// restartRegs returns the registers a thread stopped with regs is to get back
// after calls have run in it. A system call it was interrupted in is set up to
// restart the way the kernel would have restarted it, since the kernel's own
// restart step, taken on the way back to user mode from the stop, is spent on
// the first injected call.
func restartRegs(regs unix.PtraceRegs) unix.PtraceRegs {
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
	return regs
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
