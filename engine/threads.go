package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
	"github.com/cryo-dev/cryo/engine/remote"
	"github.com/cryo-dev/cryo/internal/procfs"
	"github.com/cryo-dev/cryo/internal/ptrace"
)

// This file holds the per-thread half of checkpoint and restore: stopping every
// thread of a process together, reading each thread's own state, and on restore
// creating the threads again inside the rebuilt process with their tids.

// maxFreezeRounds bounds how many times freezeThreads lists the threads again
// because new ones appeared: a process that creates threads faster than they can
// be seized is refused rather than chased forever.
const maxFreezeRounds = 100

// freezeThreads seizes every thread of process pid and stops it with
// PTRACE_INTERRUPT. A thread can create another until it is stopped, so the list
// of /proc/PID/task is read again after each round of stops until a round finds
// no new thread: then every thread is stopped and none can be born. Threads that
// exit meanwhile are left out. It returns the tids, the leader (pid) first.
//
// On failure every thread seized so far is let go. Precondition: the calling
// goroutine is locked to its OS thread, which becomes the tracer.
func freezeThreads(pid int) (_ []int, err error) {
	var tids []int
	seized := map[int]bool{}
	waited := map[int]bool{}
	defer func() {
		if err == nil {
			return
		}
		// A thread can be detached only in a stop: wait for the interrupt of those
		// not yet seen stopped.
		for _, tid := range tids {
			if !waited[tid] {
				waitInterrupted(tid)
			}
		}
		detachThreads(tids)
	}()

	for round := 0; ; round++ {
		list, err := procfs.ReadTasks(pid)
		if err != nil {
			return nil, fmt.Errorf("list threads: %w", err)
		}
		var fresh []int
		for _, tid := range list {
			if seized[tid] {
				continue
			}
			if err := ptrace.Seize(tid, remote.SeizeOptions); err != nil {
				if tid != pid && threadGone(pid, tid) {
					continue // it exited between the listing and the seize
				}
				if tid == pid && len(list) > 1 && threadGone(pid, tid) {
					// pthread_exit in main: the leader is a zombie until the
					// last thread exits, and ptrace cannot attach to it.
					return nil, fmt.Errorf("thread group leader tid %d has exited "+
						"(pthread_exit) while other threads run on (%d in all): %w",
						pid, len(list), ErrUnsupported)
				}
				return nil, fmt.Errorf("seize tid %d: %w%s", tid, err, seizeHint(pid, err))
			}
			seized[tid] = true
			tids = append(tids, tid)
			if err := ptrace.Interrupt(tid); err != nil {
				return nil, fmt.Errorf("interrupt tid %d: %w", tid, err)
			}
			fresh = append(fresh, tid)
		}
		if len(fresh) == 0 {
			break
		}
		if round == maxFreezeRounds {
			return nil, fmt.Errorf("stop threads: new threads keep appearing after %d "+
				"rounds (%d seized): %w", round, len(tids), ErrUnsupported)
		}
		for _, tid := range fresh {
			alive, err := waitInterrupted(tid)
			waited[tid] = true
			if err != nil {
				return nil, fmt.Errorf("stop tid %d: %w", tid, err)
			}
			if !alive {
				if tid == pid {
					return nil, fmt.Errorf("process ended while being stopped: %w", unix.ESRCH)
				}
				tids = removeTid(tids, tid) // exited and reaped: nothing to detach
			}
		}
	}

	if len(tids) == 0 || tids[0] != pid {
		// The leader is listed first by ReadTasks only when it has the lowest tid,
		// which it has unless tids wrapped around: put it first.
		tids = removeTid(tids, pid)
		if _, err := os.Stat(procfs.Path(pid, "task", fmt.Sprint(pid))); err != nil {
			return nil, fmt.Errorf("thread group leader tid %d: %w", pid, err)
		}
		tids = append([]int{pid}, tids...)
	}
	return tids, nil
}

// threadGone reports whether thread tid of pid has exited or is exiting.
func threadGone(pid, tid int) bool {
	st, err := procfs.ReadStat(tid)
	if err != nil {
		return true
	}
	if _, err := os.Stat(procfs.Path(pid, "task", fmt.Sprint(tid))); err != nil {
		return true
	}
	return st.State == 'Z' || st.State == 'X'
}

func removeTid(tids []int, tid int) []int {
	out := tids[:0]
	for _, t := range tids {
		if t != tid {
			out = append(out, t)
		}
	}
	return out
}

// detachThreads lets every thread in tids run on. Threads that have exited are
// skipped.
func detachThreads(tids []int) error {
	var errs []error
	for _, tid := range tids {
		if err := ptrace.Detach(tid, 0); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("detach tid %d: %w", tid, err))
		}
	}
	return errors.Join(errs...)
}

// waitInterrupted waits for the stop PTRACE_INTERRUPT asked of thread tid, and
// reports false when the thread exited instead. A signal that arrives first gives
// a signal-delivery stop: the signal is delivered (the thread handles it as it
// would have) and the interrupt stop follows.
func waitInterrupted(tid int) (alive bool, err error) {
	for {
		ws, err := ptrace.Wait(tid)
		if err != nil {
			return false, err
		}
		switch {
		case ws.Exited() || ws.Signaled():
			return false, nil
		case !ws.Stopped():
			return false, fmt.Errorf("unexpected wait status %#x while stopping", uint32(ws))
		case ptrace.Event(ws) == ptrace.PTRACE_EVENT_STOP:
			// The interrupt, or a group stop (the process was stopped by SIGSTOP or
			// the like, and stays so when detached).
			return true, nil
		default:
			if err := ptrace.Cont(tid, int(ws.StopSignal())); err != nil {
				return false, fmt.Errorf("deliver %v while stopping: %w", ws.StopSignal(), err)
			}
		}
	}
}

// killTraced kills a process whose threads tids this thread traces, reaps the
// threads, and waits, briefly, until its parent has reaped it, so that its pid
// and tids are free for a restore that follows at once. A parent that never
// reaps keeps the pid taken; that is the parent's to fix.
func killTraced(pid int, tids []int) {
	unix.Kill(pid, unix.SIGKILL)
	// The tracer sees each thread's death first (the leader's last); the parent
	// is told once we have.
	for i := len(tids) - 1; i >= 0; i-- {
		reapThread(tids[i])
	}
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		if _, err := os.Stat(procfs.Path(pid)); errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// reapThread waits until thread tid, traced by this thread and sent SIGKILL,
// has exited, and reaps it.
func reapThread(tid int) {
	for {
		ws, err := ptrace.Wait(tid)
		if err != nil || ws.Exited() || ws.Signaled() {
			return
		}
		ptrace.Cont(tid, 0)
	}
}

// readThreads reads the state of every stopped thread: registers, FPU state,
// signal mask and rseq from ptrace, the robust list from get_robust_list, and the
// clear_child_tid address and alternate signal stack by running
// prctl(PR_GET_TID_ADDRESS) (CONFIG_CHECKPOINT_RESTORE) and sigaltstack in the
// thread itself. The registers are read before any call is run in the thread,
// since running one consumes the restart of a system call it was stopped in.
//
// The two calls write their answer to memory: 32 bytes below the leader's stack
// pointer, beyond its red zone, which are put back afterwards.
//
// A thread stopped in restart_syscall is recorded as stopped in the call it
// restarts when the previous snapshot tells which (restartedCall); prev returns
// the thread of that snapshot with tid, or nil.
//
// Precondition: every thread is stopped and seized with PTRACE_O_TRACESYSGOOD, on
// the tracer thread.
func readThreads(pid int, tids []int, prev func(tid int) *image.Thread) ([]image.Thread,
	error) {
	out := make([]image.Thread, 0, len(tids))
	for _, tid := range tids {
		th, err := readThread(tid)
		if err != nil {
			return nil, err
		}
		if isRestartStop(th.Regs) && prev != nil {
			if nr, ok := restartedCall(th.Regs, prev(tid)); ok {
				th.Regs.Orig_rax = nr
			}
		}
		head, size, err := ptrace.GetRobustList(tid)
		if err != nil {
			return nil, fmt.Errorf("read robust futex list of tid %d: %w", tid, err)
		}
		th.RobustList, th.RobustListLen = head, size
		if th.Sleep, err = readSleep(tid, th.Regs); err != nil {
			return nil, err
		}
		out = append(out, th)
	}

	scratch := (uint64(out[0].Regs.Rsp) - 128 - 256) &^ 15
	saved := make([]byte, 32)
	if err := remote.ReadMem(pid, scratch, saved); err != nil {
		return nil, fmt.Errorf("read thread state: no room below the stack: %w", err)
	}
	defer remote.WriteMem(pid, scratch, saved)
	for i := range out {
		if err := readThreadCalls(&out[i], scratch); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// isRestartStop says whether a thread with registers regs is stopped in
// restart_syscall, which returned ERESTART_RESTARTBLOCK: it was resuming a call
// the kernel keeps the state of in its restart block, and will resume it again.
func isRestartStop(regs image.Regs) bool {
	return regs.Orig_rax == unix.SYS_RESTART_SYSCALL &&
		-int64(regs.Rax) == errRestartRestartBlock
}

// restartedCall returns the system call a thread stopped in restart_syscall, with
// registers regs, is resuming, as the previous snapshot's record prev of the same
// thread tells it; ok is false when it does not tell.
//
// A call interrupted with ERESTART_RESTARTBLOCK (a relative sleep, a timed futex
// wait, poll) is resumed by the kernel as restart_syscall, whose state (the
// restart block: the function to go on with, the absolute deadline, the
// arguments it needs) lives in the task, out of reach of ptrace and /proc: a stop
// in it shows call 219 and no trace of the call restarted. Every such call that a
// checkpoint stops and lets run on (or that SIGSTOP and SIGCONT interrupt) is in
// restart_syscall at the next checkpoint. The registers still hold the call's
// place and arguments: to restart, the kernel rewinds rip to the same syscall
// instruction and sets rax alone (rcx and r11 are the instruction's own), so rip,
// rdi, rsi, rdx, r10, r8 and r9 are those of the original call.
//
// So when the previous snapshot recorded this thread stopped with
// ERESTART_RESTARTBLOCK in call nr at the same instruction with the same six
// arguments, the restart block is nr's: the thread has been in that call since,
// or in the very same call made again. The stop is then recorded as a stop in nr,
// and resumes as the kernel resumes nr. For a relative sleep that is exact: the
// time left is read afresh from the caller's timespec (readSleep), which the
// kernel's restart (hrtimer_nanosleep_restart keeps the caller's rmtp in the
// restart block) wrote at this stop from the absolute deadline, as nanosleep did
// at the first; no figure from the previous snapshot is reused. An absolute
// FUTEX_WAIT_BITSET is issued again, which is what futex_wait_restart does. A
// relative futex wait and poll return EINTR, as they do at a first checkpoint
// (their deadline is only in the restart block). An absolute clock_nanosleep
// never gets here: the kernel restarts it with ERESTARTNOHAND, issuing the call
// itself again.
//
// Without a previous snapshot (the first checkpoint into a store, or one whose
// image cannot be read or shows the thread elsewhere) the call stays unknown and
// returns EINTR on restore.
func restartedCall(regs image.Regs, prev *image.Thread) (nr uint64, ok bool) {
	if !isRestartStop(regs) || prev == nil {
		return 0, false
	}
	p := prev.Regs
	if -int64(p.Rax) != errRestartRestartBlock || int64(p.Orig_rax) < 0 ||
		p.Orig_rax == unix.SYS_RESTART_SYSCALL {
		return 0, false
	}
	if p.Rip != regs.Rip || p.Rdi != regs.Rdi || p.Rsi != regs.Rsi || p.Rdx != regs.Rdx ||
		p.R10 != regs.R10 || p.R8 != regs.R8 || p.R9 != regs.R9 {
		return 0, false
	}
	return p.Orig_rax, true
}

// readSleep returns what restore needs to resume the sleep a thread with
// registers regs is stopped in, or nil: a relative nanosleep or clock_nanosleep
// interrupted with ERESTART_RESTARTBLOCK (or restart_syscall resuming one, which
// readThreads records as that call), on a clock whose restart the kernel keeps,
// whose caller asked for the time left (the kernel wrote it there when the
// thread was stopped). Without that address the time left is unknown, and the
// sleep returns EINTR on restore.
func readSleep(tid int, regs image.Regs) (*image.Sleep, error) {
	if -int64(regs.Rax) != errRestartRestartBlock {
		return nil, nil
	}
	var sl image.Sleep
	switch regs.Orig_rax {
	case unix.SYS_NANOSLEEP:
		sl.Clock, sl.Rmtp = unix.CLOCK_MONOTONIC, regs.Rsi
	case unix.SYS_CLOCK_NANOSLEEP:
		sl.Clock, sl.Rmtp = int32(regs.Rdi), regs.R10
		if regs.Rsi&unix.TIMER_ABSTIME != 0 {
			return nil, nil
		}
	default:
		return nil, nil
	}
	switch sl.Clock {
	case unix.CLOCK_REALTIME, unix.CLOCK_MONOTONIC, unix.CLOCK_BOOTTIME:
	default:
		return nil, nil
	}
	if sl.Rmtp == 0 {
		return nil, nil
	}
	b := make([]byte, 16)
	if err := remote.ReadMem(tid, sl.Rmtp, b); err != nil {
		return nil, fmt.Errorf("read time left of the sleep of tid %d: %w", tid, err)
	}
	le := binary.LittleEndian
	sl.Remaining = int64(le.Uint64(b))*1e9 + int64(le.Uint64(b[8:]))
	sl.Taken = time.Now().UnixNano()
	return &sl, nil
}

// readThreadCalls asks thread th.Tid for its clear_child_tid address and its
// alternate signal stack, with 32 bytes of the process's memory at scratch to
// receive the answers.
func readThreadCalls(th *image.Thread, scratch uint64) (err error) {
	tid := th.Tid
	b, err := remote.Borrow(tid)
	if err != nil {
		return err
	}
	defer func() {
		if rerr := b.Release(); err == nil {
			err = rerr
		}
	}()
	buf := make([]byte, 24)
	le := binary.LittleEndian

	if _, err := b.Syscall(unix.SYS_PRCTL, unix.PR_GET_TID_ADDRESS, scratch); err != nil {
		hint := ""
		if err == unix.EINVAL || err == unix.ENOSYS { // the call's own answer, bare
			// A kernel without CONFIG_CHECKPOINT_RESTORE knows no such option.
			hint = " (needs CONFIG_CHECKPOINT_RESTORE)"
		}
		return fmt.Errorf("read clear_child_tid of tid %d: prctl PR_GET_TID_ADDRESS%s: %w",
			tid, hint, err)
	}
	if err := remote.ReadMem(tid, scratch, buf[:8]); err != nil {
		return fmt.Errorf("read clear_child_tid of tid %d: %w", tid, err)
	}
	th.ClearChildTid = le.Uint64(buf)

	if _, err := b.Syscall(unix.SYS_SIGALTSTACK, 0, scratch); err != nil {
		return fmt.Errorf("read alternate signal stack of tid %d: %w", tid, err)
	}
	if err := remote.ReadMem(tid, scratch, buf); err != nil {
		return fmt.Errorf("read alternate signal stack of tid %d: %w", tid, err)
	}
	// stack_t: ss_sp, int ss_flags (then 4 bytes of padding), ss_size.
	flags := int32(le.Uint32(buf[8:]))
	if flags&ssDisable == 0 {
		th.AltStack = &image.AltStack{Sp: le.Uint64(buf), Flags: flags &^ ssOnStack,
			Size: le.Uint64(buf[16:])}
	}
	return nil
}

// Flags of stack_t.ss_flags (asm-generic/signal-defs.h, linux/signal.h).
const (
	ssOnStack = 1 // SS_ONSTACK: the thread runs on its signal stack now
	ssDisable = 2 // SS_DISABLE: no signal stack
)

// Flags of clone3 for a thread of the process under restore: what pthreads and
// the Go runtime pass, but CLONE_SETTLS (fs_base comes back with the registers)
// and CLONE_PARENT_SETTID.
const threadCloneFlags = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES |
	unix.CLONE_SIGHAND | unix.CLONE_THREAD | unix.CLONE_SYSVSEM

// cloneThread creates, from the stopped leader t, a thread whose tid is th.Tid
// (clone3 with set_tid, Linux 5.5+; CAP_SYS_ADMIN) and whose clear_child_tid is
// th.ClearChildTid (CLONE_CHILD_CLEARTID). The leader must trace its clones
// (PTRACE_O_TRACECLONE): the thread starts traced by this thread, stopped before
// its first instruction, which would be the trampoline's int3.
func cloneThread(t *remote.Task, th image.Thread) (*remote.Task, error) {
	scratch, _ := t.Scratch()
	args := make([]byte, 88+8) // struct clone_args (CLONE_ARGS_SIZE_VER2), set_tid
	le := binary.LittleEndian
	flags := uint64(threadCloneFlags)
	if th.ClearChildTid != 0 {
		flags |= unix.CLONE_CHILD_CLEARTID
	}
	le.PutUint64(args[0:], flags)
	le.PutUint64(args[16:], th.ClearChildTid) // child_tid
	le.PutUint64(args[64:], scratch+88)       // set_tid
	le.PutUint64(args[72:], 1)                // set_tid_size
	le.PutUint32(args[88:], uint32(th.Tid))
	if err := t.WriteMem(scratch, args); err != nil {
		return nil, fmt.Errorf("clone tid %d: %w", th.Tid, err)
	}

	got, err := t.Syscall(unix.SYS_CLONE3, scratch, 88)
	if errors.Is(err, unix.EEXIST) {
		holder := "another process"
		if st, serr := procfs.ReadStat(th.Tid); serr == nil {
			if tg := tgidOf(th.Tid); tg != th.Tid {
				holder = fmt.Sprintf("a thread of another process (%s, pid %d)", st.Comm, tg)
			} else {
				holder = fmt.Sprintf("another process (%s)", st.Comm)
			}
		}
		return nil, fmt.Errorf("restore thread as tid %d: %w by %s", th.Tid, ErrPidInUse,
			holder)
	}
	if err != nil {
		return nil, fmt.Errorf("clone tid %d: %w", th.Tid, err)
	}
	if int(got) != th.Tid {
		return nil, fmt.Errorf("clone tid %d: kernel gave tid %d", th.Tid, got)
	}

	// The thread's first stop, as it is auto-attached.
	ws, err := ptrace.Wait(th.Tid)
	if err != nil {
		return nil, fmt.Errorf("clone tid %d: %w", th.Tid, err)
	}
	if !ws.Stopped() {
		return nil, fmt.Errorf("clone tid %d: expected a stop, got status %#x", th.Tid,
			uint32(ws))
	}
	base, err := ptrace.GetRegs(th.Tid)
	if err != nil {
		return nil, fmt.Errorf("clone tid %d: get registers: %w", th.Tid, err)
	}
	return remote.Attach(th.Tid, t.Trampoline(), base), nil
}

// tgidOf returns the process (thread group) a tid belongs to, or 0.
func tgidOf(tid int) int {
	b, err := os.ReadFile(procfs.Path(tid, "status"))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Tgid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(rest))
			return n
		}
	}
	return 0
}

// restoreThread gives the thread t its rseq registration, robust futex list,
// clear_child_tid, alternate signal stack, signal mask and FPU state. Its
// registers are set by the caller, last.
func restoreThread(t *remote.Task, th image.Thread, leader bool) error {
	tid := t.Pid()
	if th.Rseq != nil && th.Rseq.Ptr != 0 {
		_, err := t.Syscall(unix.SYS_RSEQ, th.Rseq.Ptr, uint64(th.Rseq.Size), 0,
			uint64(th.Rseq.Sig))
		if err != nil {
			return fmt.Errorf("register rseq area %#x of tid %d: %w", th.Rseq.Ptr, tid, err)
		}
	}
	if th.RobustList != 0 {
		_, err := t.Syscall(unix.SYS_SET_ROBUST_LIST, th.RobustList, th.RobustListLen)
		if err != nil {
			return fmt.Errorf("set robust futex list %#x of tid %d: %w", th.RobustList,
				tid, err)
		}
	}
	// A thread made by cloneThread has its clear_child_tid already.
	if leader && th.ClearChildTid != 0 {
		if _, err := t.Syscall(unix.SYS_SET_TID_ADDRESS, th.ClearChildTid); err != nil {
			return fmt.Errorf("set clear_child_tid %#x of tid %d: %w", th.ClearChildTid,
				tid, err)
		}
	}
	if ss := th.AltStack; ss != nil {
		scratch, _ := t.Scratch()
		b := make([]byte, 24)
		le := binary.LittleEndian
		le.PutUint64(b, ss.Sp)
		le.PutUint32(b[8:], uint32(ss.Flags))
		le.PutUint64(b[16:], ss.Size)
		if err := t.WriteMem(scratch, b); err != nil {
			return err
		}
		if _, err := t.Syscall(unix.SYS_SIGALTSTACK, scratch, 0); err != nil {
			return fmt.Errorf("set alternate signal stack %#x+%d of tid %d: %w", ss.Sp,
				ss.Size, tid, err)
		}
	}
	if err := ptrace.SetSigmask(tid, th.SigMask); err != nil {
		return fmt.Errorf("set signal mask of tid %d: %w", tid, err)
	}
	return restoreFPU(tid, th)
}

// restoreFPU writes the FPU state of the stopped thread tid with the register
// set it was read with: NT_PRFPREG for an FXSAVE area, which any x86-64 CPU
// takes, NT_X86_XSTATE for an XSAVE area, which a CPU without XSAVE cannot
// take. A thread with neither keeps the state restore left it with.
func restoreFPU(tid int, th image.Thread) error {
	if len(th.Fxsave) > 0 {
		if err := ptrace.SetFxsave(tid, th.Fxsave); err != nil {
			return fmt.Errorf("set FPU state (FXSAVE area) of tid %d: %w", tid, err)
		}
		return nil
	}
	if len(th.Xstate) > 0 {
		return xstateError(tid, ptrace.SetXstate(tid, th.Xstate))
	}
	return nil
}

// xstateError wraps the error of writing thread tid's XSAVE area, saying what an
// ENODEV means: this CPU has no XSAVE (or the kernel was booted with noxsave),
// so the image, taken on a CPU that has it, cannot be restored here.
func xstateError(tid int, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("set FPU state of tid %d: the image holds an XSAVE area and "+
			"this CPU has no XSAVE (NT_X86_XSTATE): restore it on a CPU with XSAVE: %w",
			tid, err)
	}
	return fmt.Errorf("set FPU state of tid %d: %w", tid, err)
}

// checkThreads rejects a thread list restore cannot rebuild: the leader must come
// first with the pid as its tid, and tids must be distinct and valid.
func checkThreads(im *image.Image) error {
	if len(im.Threads) == 0 {
		return errors.New("image has no thread")
	}
	if im.Version < 2 && len(im.Threads) != 1 {
		return fmt.Errorf("version %d image has %d threads: only version 2 and later "+
			"record several", im.Version, len(im.Threads))
	}
	if im.Threads[0].Tid != im.Pid {
		return fmt.Errorf("image's first thread has tid %d, not the pid %d",
			im.Threads[0].Tid, im.Pid)
	}
	seen := map[int]bool{}
	for _, th := range im.Threads {
		if th.Tid <= 1 || seen[th.Tid] {
			return fmt.Errorf("image has invalid or repeated tid %d", th.Tid)
		}
		seen[th.Tid] = true
		if len(th.Fxsave) == 0 {
			continue
		}
		if len(th.Xstate) > 0 {
			return fmt.Errorf("image's thread %d has both an XSAVE and an FXSAVE area",
				th.Tid)
		}
		if len(th.Fxsave) != ptrace.FxsaveSize {
			return fmt.Errorf("image's thread %d has an FXSAVE area of %d bytes, want %d",
				th.Tid, len(th.Fxsave), ptrace.FxsaveSize)
		}
	}
	return nil
}

// finalRegs returns the registers thread t is to run on with: resumeRegs of its
// checkpointed ones, except for a relative sleep recorded in th.Sleep. Such a
// sleep is armed again for the time it has left (armSleep) and resumed with
// restart_syscall, as the kernel would have resumed it, so that it neither
// returns EINTR nor ends before its deadline; one whose time has run out returns
// 0. Precondition: t is stopped, on the tracer thread; pid is its process.
func finalRegs(t *remote.Task, pid int, th image.Thread) (unix.PtraceRegs, error) {
	regs := resumeRegs(th.Regs)
	sl := th.Sleep
	if sl == nil {
		return regs, nil
	}
	left := sl.Remaining - max(time.Now().UnixNano()-sl.Taken, 0)
	armed := false
	if left > 0 {
		var err error
		if armed, err = armSleep(t, pid, sl, left); err != nil {
			return regs, fmt.Errorf("resume the sleep of tid %d: %w", t.Pid(), err)
		}
	}
	regs.Rip = th.Regs.Rip
	regs.Rax = 0 // the sleep is over
	if armed {
		regs.Rip -= 2 // back on the syscall instruction
		regs.Rax = unix.SYS_RESTART_SYSCALL
	}
	regs.Orig_rax = ^uint64(0)
	return regs, nil
}

// armSleep gives thread t, in the restored process pid, a restart block that
// sleeps on sl.Clock until left ns from now: it runs clock_nanosleep for that
// long in the thread and interrupts it with SIGSTOP, which the kernel answers
// by recording the absolute deadline for restart_syscall. The SIGSTOP is then
// held in its signal-delivery stop, where the thread is left, and discarded when
// the thread is next resumed. It reports false when the sleep ended before the
// signal came.
func armSleep(t *remote.Task, pid int, sl *image.Sleep, left int64) (bool, error) {
	tid := t.Pid()
	scratch, _ := t.Scratch()
	ts := make([]byte, 16)
	binary.LittleEndian.PutUint64(ts, uint64(left/1e9))
	binary.LittleEndian.PutUint64(ts[8:], uint64(left%1e9))
	if err := t.WriteMem(scratch, ts); err != nil {
		return false, err
	}
	regs := t.Base()
	regs.Rip, regs.Rax, regs.Orig_rax = t.Trampoline(), unix.SYS_CLOCK_NANOSLEEP, ^uint64(0)
	regs.Rdi, regs.Rsi, regs.Rdx, regs.R10 = uint64(sl.Clock), 0, scratch, sl.Rmtp
	if err := ptrace.SetRegs(tid, &regs); err != nil {
		return false, fmt.Errorf("set registers: %w", err)
	}

	// Entry of the call, then (once interrupted) its exit, then the SIGSTOP.
	stop := func(what string, want unix.Signal) error {
		ws, err := ptrace.Wait(tid)
		if err != nil {
			return err
		}
		if !ws.Stopped() || ws.StopSignal() != want {
			return fmt.Errorf("unexpected state %#x waiting for the %s", uint32(ws), what)
		}
		return nil
	}
	if err := unix.PtraceSyscall(tid, 0); err != nil {
		return false, fmt.Errorf("resume to clock_nanosleep: %w", err)
	}
	if err := stop("entry of clock_nanosleep", unix.SIGTRAP|0x80); err != nil {
		return false, err
	}
	if err := unix.PtraceSyscall(tid, 0); err != nil {
		return false, fmt.Errorf("resume into clock_nanosleep: %w", err)
	}
	if err := unix.Tgkill(pid, tid, unix.SIGSTOP); err != nil {
		return false, fmt.Errorf("interrupt clock_nanosleep: %w", err)
	}
	if err := stop("exit of clock_nanosleep", unix.SIGTRAP|0x80); err != nil {
		return false, err
	}
	out, err := ptrace.GetRegs(tid)
	if err != nil {
		return false, fmt.Errorf("get registers: %w", err)
	}
	if err := unix.PtraceCont(tid, 0); err != nil {
		return false, fmt.Errorf("resume to the SIGSTOP: %w", err)
	}
	if err := stop("SIGSTOP", unix.SIGSTOP); err != nil {
		return false, err
	}
	switch r := int64(out.Rax); {
	case r == 0:
		return false, nil
	case -r == errRestartRestartBlock:
		return true, nil
	default:
		return false, fmt.Errorf("clock_nanosleep returned %d", r)
	}
}
