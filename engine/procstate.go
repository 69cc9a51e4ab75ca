package engine

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
	"github.com/cryo-dev/cryo/engine/remote"
	"github.com/cryo-dev/cryo/internal/kabi"
	"github.com/cryo-dev/cryo/internal/procfs"
	"github.com/cryo-dev/cryo/internal/ptrace"
)

// This file records and rebuilds the process-wide kernel state (image.Proc):
// session and process group, umask, cwd and root, personality, rlimits,
// credentials, no_new_privs, the dumpable and child-subreaper flags, interval
// and POSIX timers, pending signals, and per thread the scheduling attributes,
// CPU affinity, I/O priority, timer slack and the signals queued to that
// thread. The alternate signal stack, like the rest of a thread's own state
// (rseq, robust list, registers), is the thread code's.
//
// What can be read from outside is read from outside (/proc, sched_getattr,
// sched_getaffinity, ioprio_get, PTRACE_PEEKSIGINFO); the rest (getitimer,
// timer_gettime, securebits, prctl flags, timer slack) runs inside the stopped
// process through remote.Borrow. On restore most of it is injected into the
// process, because those calls act on their caller only.
//
// State that cryo cannot rebuild makes the checkpoint fail with an error
// matching ErrUnsupported that names it: a seccomp filter, namespaces other
// than cryo's, threads with credentials of their own, a process that traces
// another, an execution domain other than PER_LINUX, a cwd or root whose path no
// longer names it, a POSIX timer on a clock or with a notification cryo cannot
// make again. docs/DESIGN.md, "Process-wide state", gives the order of the
// restore and what is not kept.

// rlimNlimits is RLIM_NLIMITS: the number of resource limits (linux/resource.h).
const rlimNlimits = 16

// precheckProcState refuses, before the process is stopped, state that cryo
// cannot rebuild: it checks everything readProcState checks, and whether the
// process traces another, which takes a scan of every process (milliseconds,
// too long for the frozen time). A process that starts tracing between this
// check and the freeze is not noticed.
func precheckProcState(pid int) error {
	status, err := readStatus(pid)
	if err != nil {
		return err
	}
	if err := checkUnsupported(pid, status); err != nil {
		return err
	}
	if tracee, err := findTracee(pid); err != nil {
		return err
	} else if tracee != 0 {
		return fmt.Errorf("the process traces pid %d (ptrace): a tracer's hold on its "+
			"tracees cannot be rebuilt: %w", tracee, ErrUnsupported)
	}
	return nil
}

// readProcState reads the process-wide state of the stopped process pid.
//
// Precondition: the process is stopped and seized with PTRACE_O_TRACESYSGOOD, on
// the tracer thread; every thread of it is stopped.
func readProcState(pid int) (*image.Proc, error) {
	status, err := readStatus(pid)
	if err != nil {
		return nil, err
	}
	if err := checkUnsupported(pid, status); err != nil {
		return nil, err
	}

	p := &image.Proc{}
	if p.Sid, err = unix.Getsid(pid); err != nil {
		return nil, fmt.Errorf("read session id: %w", err)
	}
	if p.Pgid, err = unix.Getpgid(pid); err != nil {
		return nil, fmt.Errorf("read process group: %w", err)
	}
	if p.Creds, p.Umask, p.NoNewPrivs, err = parseCreds(status); err != nil {
		return nil, err
	}
	if p.Personality, err = readPersonality(pid); err != nil {
		return nil, err
	}
	if p.Cwd, err = readDir(pid, "cwd"); err != nil {
		return nil, err
	}
	if p.Root, err = readDir(pid, "root"); err != nil {
		return nil, err
	}
	if p.Rlimits, err = readRlimits(pid); err != nil {
		return nil, err
	}

	tids, err := procfs.ReadTasks(pid)
	if err != nil {
		return nil, fmt.Errorf("list threads: %w", err)
	}
	if p.Timers, err = readTimers(pid, tids); err != nil {
		return nil, err
	}
	if p.Pending, err = ptrace.PeekSiginfo(pid, true); err != nil {
		return nil, err
	}
	for _, tid := range tids {
		tp, err := readThreadProc(tid)
		if err != nil {
			return nil, err
		}
		p.Threads = append(p.Threads, tp)
	}
	if err := checkPendingBlocked(p); err != nil {
		return nil, err
	}

	// The rest only the process itself can tell.
	if err := readInside(pid, p); err != nil {
		return nil, err
	}
	return p, nil
}

// readThreadProc reads what can be read from outside of thread tid: scheduling
// attributes, signal queue, CPU affinity and I/O priority.
func readThreadProc(tid int) (image.ThreadProc, error) {
	tp := image.ThreadProc{Tid: tid}
	a, err := kabi.SchedGetattr(tid)
	if err != nil {
		return tp, fmt.Errorf("read scheduling attributes of tid %d: %w", tid, err)
	}
	tp.Sched = image.Sched{Policy: a.Policy, Flags: a.Flags, Nice: a.Nice,
		Priority: a.Priority, Runtime: a.Runtime, Deadline: a.Deadline, Period: a.Period,
		UtilMin: a.UtilMin, UtilMax: a.UtilMax}
	if tp.Pending, err = ptrace.PeekSiginfo(tid, false); err != nil {
		return tp, err
	}
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(tid, &set); err != nil {
		return tp, fmt.Errorf("read CPU affinity of tid %d: %w", tid, err)
	}
	for _, w := range set {
		tp.Affinity = append(tp.Affinity, uint64(w))
	}
	for len(tp.Affinity) > 0 && tp.Affinity[len(tp.Affinity)-1] == 0 {
		tp.Affinity = tp.Affinity[:len(tp.Affinity)-1]
	}
	prio, _, errno := unix.Syscall(unix.SYS_IOPRIO_GET, kabi.IOPRIO_WHO_PROCESS,
		uintptr(tid), 0)
	if errno != 0 {
		return tp, fmt.Errorf("read I/O priority of tid %d: %w", tid, errno)
	}
	tp.Ioprio = int(prio)
	return tp, nil
}

// readStatus reads /proc/PID/status into a map of its fields.
func readStatus(pid int) (map[string]string, error) {
	b, err := os.ReadFile(procfs.Path(pid, "status"))
	if err != nil {
		return nil, fmt.Errorf("read status: %w", err)
	}
	return parseStatus(b), nil
}

// parseStatus splits a status file into its fields.
func parseStatus(b []byte) map[string]string {
	m := make(map[string]string)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// checkUnsupported refuses state cryo cannot rebuild, naming it: a seccomp
// filter, namespaces other than cryo's, threads whose credentials differ.
func checkUnsupported(pid int, status map[string]string) error {
	if s := status["Seccomp"]; s != "" && s != "0" {
		what := "seccomp strict mode"
		if s == "2" {
			what = fmt.Sprintf("a seccomp filter (%s filters)", status["Seccomp_filters"])
		}
		return fmt.Errorf("%s: cryo cannot read back and reinstall seccomp programs: %w",
			what, ErrUnsupported)
	}
	tids, err := procfs.ReadTasks(pid)
	if err != nil {
		return fmt.Errorf("list threads: %w", err)
	}
	for _, tid := range tids {
		if tid == pid {
			continue
		}
		b, err := os.ReadFile(procfs.Path(pid, "task", strconv.Itoa(tid), "status"))
		if err != nil {
			return fmt.Errorf("read status of tid %d: %w", tid, err)
		}
		ts := parseStatus(b)
		for _, k := range []string{"Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff",
			"CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"} {
			if ts[k] != status[k] {
				return fmt.Errorf("thread %d has %s %q, the process %q: threads with "+
					"credentials of their own: %w", tid, k, ts[k], status[k], ErrUnsupported)
			}
		}
	}
	for _, ns := range []string{"mnt", "pid", "net", "ipc", "uts", "user", "cgroup", "time"} {
		var mine, theirs unix.Stat_t
		if err := unix.Stat(filepath.Join("/proc/self/ns", ns), &mine); err != nil {
			continue // this kernel has no such namespace
		}
		if err := unix.Stat(procfs.Path(pid, "ns", ns), &theirs); err != nil {
			return fmt.Errorf("read %s namespace: %w", ns, err)
		}
		if mine.Ino != theirs.Ino || mine.Dev != theirs.Dev {
			return fmt.Errorf("%s namespace %d is not cryo's (%d): cryo restores into its own "+
				"namespaces only: %w", ns, theirs.Ino, mine.Ino, ErrUnsupported)
		}
	}
	return nil
}

// findTracee returns a process that pid traces, or 0. Only the main thread of
// each process is looked at.
func findTracee(pid int) (int, error) {
	ents, err := os.ReadDir(procfs.Root)
	if err != nil {
		return 0, fmt.Errorf("list processes: %w", err)
	}
	for _, e := range ents {
		other, err := strconv.Atoi(e.Name())
		if err != nil || other == pid {
			continue
		}
		if tracer, err := procfs.TracerPid(other); err == nil && tracer == pid {
			return other, nil
		}
	}
	return 0, nil
}

// parseCreds reads the credentials, umask and no_new_privs from status fields.
func parseCreds(st map[string]string) (c image.Creds, umask uint32, nnp bool, err error) {
	ids := func(key string, dst []uint32) error {
		f := strings.Fields(st[key])
		if dst != nil && len(f) != len(dst) {
			return fmt.Errorf("parse status %s %q", key, st[key])
		}
		for i, s := range f {
			v, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return fmt.Errorf("parse status %s %q: %w", key, st[key], err)
			}
			if dst != nil {
				dst[i] = uint32(v)
			} else {
				c.Groups = append(c.Groups, uint32(v))
			}
		}
		return nil
	}
	hex := func(key string) (uint64, error) {
		v, err := strconv.ParseUint(st[key], 16, 64)
		if err != nil {
			return 0, fmt.Errorf("parse status %s %q: %w", key, st[key], err)
		}
		return v, nil
	}
	if err = ids("Uid", c.Uid[:]); err != nil {
		return
	}
	if err = ids("Gid", c.Gid[:]); err != nil {
		return
	}
	if err = ids("Groups", nil); err != nil {
		return
	}
	for _, f := range []struct {
		key string
		dst *uint64
	}{{"CapInh", &c.CapInh}, {"CapPrm", &c.CapPrm}, {"CapEff", &c.CapEff},
		{"CapBnd", &c.CapBnd}, {"CapAmb", &c.CapAmb}} {
		if *f.dst, err = hex(f.key); err != nil {
			return
		}
	}
	m, err := strconv.ParseUint(st["Umask"], 8, 32)
	if err != nil {
		return c, 0, false, fmt.Errorf("parse status Umask %q: %w", st["Umask"], err)
	}
	return c, uint32(m), st["NoNewPrivs"] == "1", nil
}

// readRlimits reads /proc/PID/limits, which lists the limits in RLIMIT_* order.
// prlimit64 would need the caller's ids to match the process's or
// CAP_SYS_RESOURCE, which a container may not grant.
func readRlimits(pid int) ([]image.Rlimit, error) {
	b, err := os.ReadFile(procfs.Path(pid, "limits"))
	if err != nil {
		return nil, fmt.Errorf("read rlimits: %w", err)
	}
	return parseLimits(b)
}

// parseLimits parses a limits file.
func parseLimits(b []byte) ([]image.Rlimit, error) {
	var err error
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) != rlimNlimits+1 {
		return nil, fmt.Errorf("read rlimits: %d limits, want %d", len(lines)-1, rlimNlimits)
	}
	const nameWidth = 26 // "Max cpu time              "
	var out []image.Rlimit
	for r, line := range lines[1:] {
		if len(line) < nameWidth {
			return nil, fmt.Errorf("parse rlimit line %q", line)
		}
		f := strings.Fields(line[nameWidth:])
		if len(f) < 2 {
			return nil, fmt.Errorf("parse rlimit line %q", line)
		}
		lim := image.Rlimit{Resource: r}
		for i, dst := range []*uint64{&lim.Cur, &lim.Max} {
			if f[i] == "unlimited" {
				*dst = unix.RLIM_INFINITY
				continue
			}
			if *dst, err = strconv.ParseUint(f[i], 10, 64); err != nil {
				return nil, fmt.Errorf("parse rlimit line %q: %w", line, err)
			}
		}
		out = append(out, lim)
	}
	return out, nil
}

// readPersonality reads /proc/PID/personality and refuses execution domains
// other than PER_LINUX.
func readPersonality(pid int) (uint64, error) {
	b, err := os.ReadFile(procfs.Path(pid, "personality"))
	if err != nil {
		return 0, fmt.Errorf("read personality: %w", err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 32)
	if err != nil {
		return 0, fmt.Errorf("parse personality %q: %w", b, err)
	}
	if v&kabi.PER_MASK != 0 {
		return 0, fmt.Errorf("personality %#x: execution domain %#x is not PER_LINUX: %w",
			v, v&kabi.PER_MASK, ErrUnsupported)
	}
	return v, nil
}

// readDir reads the cwd or root link of pid with the identity of the directory.
func readDir(pid int, which string) (image.Dir, error) {
	link := procfs.Path(pid, which)
	path, err := os.Readlink(link)
	if err != nil {
		return image.Dir{}, fmt.Errorf("read %s: %w", which, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(link, &st); err != nil {
		return image.Dir{}, fmt.Errorf("stat %s %s: %w", which, path, err)
	}
	var now unix.Stat_t
	if err := unix.Stat(path, &now); err != nil || now.Dev != st.Dev || now.Ino != st.Ino {
		return image.Dir{}, fmt.Errorf("%s %s: the path no longer names the directory "+
			"(deleted or moved): %w", which, path, ErrUnsupported)
	}
	return image.Dir{Path: path, Dev: st.Dev, Ino: st.Ino}, nil
}

// readTimers parses /proc/PID/timers (CONFIG_CHECKPOINT_RESTORE): id, signal and
// sigev_value, notify kind and target, clock. The times are read later, inside.
func readTimers(pid int, tids []int) ([]image.PosixTimer, error) {
	b, err := os.ReadFile(procfs.Path(pid, "timers"))
	if err != nil {
		return nil, fmt.Errorf("read POSIX timers: %w", err)
	}
	return parseTimers(b, tids)
}

// parseTimers parses a timers file; tids are the threads of the process.
func parseTimers(b []byte, tids []int) ([]image.PosixTimer, error) {
	var out []image.PosixTimer
	var cur *image.PosixTimer
	for _, line := range strings.Split(string(b), "\n") {
		key, val, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		bad := func(err error) error {
			return fmt.Errorf("parse POSIX timers: %q: %w", line, err)
		}
		if cur == nil && key != "ID" {
			return nil, bad(errors.New("a field before the first ID"))
		}
		switch key {
		case "ID":
			id, err := strconv.ParseInt(val, 10, 32)
			if err != nil {
				return nil, bad(err)
			}
			out = append(out, image.PosixTimer{ID: int32(id)})
			cur = &out[len(out)-1]
		case "signal":
			sig, v, _ := strings.Cut(val, "/")
			n, err1 := strconv.Atoi(sig)
			sv, err2 := strconv.ParseUint(v, 16, 64)
			if err := errors.Join(err1, err2); err != nil {
				return nil, bad(err)
			}
			cur.Signo, cur.Value = n, sv
		case "notify":
			kind, target, _ := strings.Cut(val, "/")
			switch kind {
			case "signal":
				cur.Notify = kabi.SIGEV_SIGNAL
			case "none":
				cur.Notify = kabi.SIGEV_NONE
			default:
				return nil, fmt.Errorf("POSIX timer %d notifies by %q: %w", cur.ID, val,
					ErrUnsupported)
			}
			if t, ok := strings.CutPrefix(target, "tid."); ok {
				tid, err := strconv.Atoi(t)
				if err != nil {
					return nil, bad(err)
				}
				if !slices.Contains(tids, tid) {
					return nil, fmt.Errorf("POSIX timer %d signals thread %d, which is not "+
						"a thread of the process: %w", cur.ID, tid, ErrUnsupported)
				}
				cur.Notify |= kabi.SIGEV_THREAD_ID
				cur.Tid = tid
			}
		case "ClockID":
			c, err := strconv.ParseInt(val, 10, 32)
			if err != nil {
				return nil, bad(err)
			}
			cur.Clock = int32(c)
			switch c {
			case unix.CLOCK_REALTIME, unix.CLOCK_MONOTONIC, unix.CLOCK_PROCESS_CPUTIME_ID,
				unix.CLOCK_BOOTTIME, unix.CLOCK_REALTIME_ALARM, unix.CLOCK_BOOTTIME_ALARM,
				unix.CLOCK_TAI:
			default:
				return nil, fmt.Errorf("POSIX timer %d on clock %d (a thread's or another "+
					"process's CPU clock): %w", cur.ID, c, ErrUnsupported)
			}
		}
	}
	return out, nil
}

// checkPendingBlocked refuses, with a *signalRaceError, a pending signal that its
// thread (for the shared queue: some thread) does not block. Such a signal
// arrived while the process was being stopped and is delivered the moment it
// runs; the restored process would have to be stopped in the middle of that
// delivery. Trying again a moment later succeeds, which Session.Checkpoint does.
func checkPendingBlocked(p *image.Proc) error {
	var all uint64 = ^uint64(0)
	masks := make(map[int]uint64)
	for _, tp := range p.Threads {
		m, err := ptrace.GetSigmask(tp.Tid)
		if err != nil {
			return fmt.Errorf("read signal mask of tid %d: %w", tp.Tid, err)
		}
		masks[tp.Tid] = m
		all &= m
	}
	unblocked := func(info []byte, mask uint64) int {
		sig := int(int32(binary.LittleEndian.Uint32(info)))
		if sig < 1 || sig > 64 || mask&(1<<(sig-1)) == 0 {
			return sig
		}
		return 0
	}
	for _, info := range p.Pending {
		if sig := unblocked(info, all); sig != 0 {
			return &signalRaceError{sig: sig}
		}
	}
	for _, tp := range p.Threads {
		for _, info := range tp.Pending {
			if sig := unblocked(info, masks[tp.Tid]); sig != 0 {
				return &signalRaceError{sig: sig, tid: tp.Tid}
			}
		}
	}
	return nil
}

// signalRaceError is a checkpoint given up because signal sig arrived for the
// process (for thread tid, when not 0) while it was being stopped, and is about
// to be delivered: a moment later it will have been, and a checkpoint can
// succeed. Not so when the process is in a job-control stop (stopped): the
// signal waits for SIGCONT.
type signalRaceError struct {
	sig, tid int
	stopped  bool
}

func (e *signalRaceError) Error() string {
	if e.stopped {
		// Restore would have to queue the signal unblocked and then stop the
		// process before it is delivered, which it cannot do yet.
		return fmt.Sprintf("signal %d is pending for %s of the stopped process, to be "+
			"delivered when it is continued: cryo cannot restore a stopped process with "+
			"a signal on its way; checkpoint it once it has run", e.sig, e.who())
	}
	return fmt.Sprintf("signal %d arrived for %s while it was being stopped and is about "+
		"to be delivered: try again", e.sig, e.who())
}

func (e *signalRaceError) who() string {
	if e.tid != 0 {
		return fmt.Sprintf("tid %d", e.tid)
	}
	return "the process"
}

// readInside runs, in the stopped process, what only the process can ask:
// getitimer, timer_gettime, securebits, the dumpable flag, the child subreaper
// flag, and of the thread it runs in (the main thread; other threads would need
// their own turn) the timer slack. The kernel
// writes the answers below the stack pointer, past the red zone (see
// readSigactions); the bytes there are put back.
func readInside(pid int, p *image.Proc) error {
	b, err := remote.Borrow(pid)
	if err != nil {
		return err
	}
	defer b.Release()

	regs := b.Saved()
	addr := (regs.Rsp - 128 - 512) &^ 15
	saved := make([]byte, 64)
	if err := remote.ReadMem(pid, addr, saved); err != nil {
		return fmt.Errorf("read process state: no room below the stack: %w", err)
	}
	defer remote.WriteMem(pid, addr, saved)
	buf := make([]byte, 32)
	le := binary.LittleEndian

	for _, which := range []int{unix.ITIMER_REAL, unix.ITIMER_VIRTUAL, unix.ITIMER_PROF} {
		if _, err := b.Syscall(unix.SYS_GETITIMER, uint64(which), addr); err != nil {
			return fmt.Errorf("read interval timer %d: %w", which, err)
		}
		if err := remote.ReadMem(pid, addr, buf); err != nil {
			return fmt.Errorf("read interval timer %d: %w", which, err)
		}
		// struct itimerval: it_interval then it_value, each seconds and microseconds.
		usec := func(off int) int64 {
			return int64(le.Uint64(buf[off:]))*1e9 + int64(le.Uint64(buf[off+8:]))*1e3
		}
		if it := (image.Itimer{Which: which, Interval: usec(0), Value: usec(16)}); it.Value != 0 {
			p.Itimers = append(p.Itimers, it)
		}
	}
	for i := range p.Timers {
		tm := &p.Timers[i]
		if _, err := b.Syscall(unix.SYS_TIMER_GETTIME, uint64(tm.ID), addr); err != nil {
			return fmt.Errorf("read POSIX timer %d: %w", tm.ID, err)
		}
		if err := remote.ReadMem(pid, addr, buf); err != nil {
			return fmt.Errorf("read POSIX timer %d: %w", tm.ID, err)
		}
		nsec := func(off int) int64 {
			return int64(le.Uint64(buf[off:]))*1e9 + int64(le.Uint64(buf[off+8:]))
		}
		tm.Interval, tm.Remaining = nsec(0), nsec(16)
	}
	sb, err := b.Syscall(unix.SYS_PRCTL, kabi.PR_GET_SECUREBITS)
	if err != nil {
		return fmt.Errorf("read securebits: %w", err)
	}
	p.Creds.Securebits = uint32(sb)
	d, err := b.Syscall(unix.SYS_PRCTL, kabi.PR_GET_DUMPABLE)
	if err != nil {
		return fmt.Errorf("read dumpable flag: %w", err)
	}
	p.Dumpable = int(d)
	if _, err := b.Syscall(unix.SYS_PRCTL, kabi.PR_GET_CHILD_SUBREAPER, addr); err != nil {
		return fmt.Errorf("read child subreaper flag: %w", err)
	}
	if err := remote.ReadMem(pid, addr, buf[:4]); err != nil {
		return fmt.Errorf("read child subreaper flag: %w", err)
	}
	p.ChildSubreaper = le.Uint32(buf) != 0

	var main *image.ThreadProc
	for i := range p.Threads {
		if p.Threads[i].Tid == pid {
			main = &p.Threads[i]
		}
	}
	if main == nil {
		return fmt.Errorf("read thread state: no main thread %d", pid)
	}
	if main.TimerSlack, err = b.Syscall(unix.SYS_PRCTL, kabi.PR_GET_TIMERSLACK); err != nil {
		return fmt.Errorf("read timer slack: %w", err)
	}
	return nil
}

// procStep is one step of restoring im.Proc, run by injected calls in the
// thread t.
type procStep struct {
	what string
	do   func(t *remote.Task, im *image.Image, log *slog.Logger) error
}

// restoreProcState rebuilds im.Proc in the process under restore, in two parts
// around the creation of the other threads. It runs after the memory,
// descriptors and signal handlers are in place and before the threads get their
// signal masks and registers: it blocks every signal of the leader, so that the
// signals it queues and the timers it arms cannot interrupt the injected calls,
// and leaves the real masks to restoreThread.
//
// The early part (session, personality, umask, cwd and root) runs before the
// other threads exist, so that they inherit what is per thread among it (the
// personality) from the leader. The late part runs once every thread exists,
// since pending signals and scheduling name threads by tid.
//
// The order matters. Directories, signals, scheduling and limits come first,
// while the process still has cryo's credentials (chroot, clone3 with set_tid,
// and timers on alarm clocks need privileges); then the credentials, and within
// them the capability bounding set is cut while the thread is still root, and
// SECBIT_KEEP_CAPS holds the permitted set across setresuid until capset has
// set it. The timers are armed last, so that as little as possible runs between
// the moment they can fire and the moment the process runs.
//
// Precondition: on the tracer thread, with the process stopped at the
// trampoline; a nil im.Proc (a version 1 image) does nothing.
func restoreProcState(t *remote.Task, im *image.Image, log *slog.Logger, late bool) error {
	if im.Proc == nil {
		return nil
	}
	pid := t.Pid()
	steps := []procStep{
		{"session and process group", restoreSession},
		{"personality and subreaper flag", restorePersonality},
		{"umask", func(t *remote.Task, im *image.Image, _ *slog.Logger) error {
			_, err := t.Syscall(unix.SYS_UMASK, uint64(im.Proc.Umask))
			return err
		}},
		{"cwd and root", restoreDirs},
	}
	if late {
		steps = []procStep{
			{"thread state", restoreThreadProcOf},
			{"pending signals", restorePending},
			{"POSIX timers", createTimers},
			{"scheduling", restoreSched},
			{"rlimits", restoreRlimits},
			{"credentials", restoreCreds},
			{"interval timers", restoreItimers},
			{"arming of POSIX timers", armTimers},
		}
	} else if err := ptrace.SetSigmask(pid, ^uint64(0)); err != nil {
		return fmt.Errorf("block signals of pid %d: %w", pid, err)
	}
	for _, s := range steps {
		if err := s.do(t, im, log); err != nil {
			return fmt.Errorf("restore %s of pid %d: %w", s.what, pid, err)
		}
	}
	return nil
}

// restoreOtherThreadProc gives a thread other than the leader, made by
// cloneThread, the state that each thread must set for itself: its timer slack
// and its credentials (which the checkpoint found equal to the leader's). It
// runs before the thread's registers are loaded, since it injects calls.
func restoreOtherThreadProc(t *remote.Task, im *image.Image, log *slog.Logger) error {
	if im.Proc == nil {
		return nil
	}
	for _, s := range []procStep{
		{"thread state", restoreThreadProcOf},
		{"credentials", restoreCreds},
	} {
		if err := s.do(t, im, log); err != nil {
			return fmt.Errorf("restore %s of tid %d: %w", s.what, t.Pid(), err)
		}
	}
	return nil
}

// restoreThreadProcOf runs restoreThreadProc with the record of t's thread, if
// the image has one.
func restoreThreadProcOf(t *remote.Task, im *image.Image, _ *slog.Logger) error {
	for _, tp := range im.Proc.Threads {
		if tp.Tid == t.Pid() {
			return restoreThreadProc(t, tp)
		}
	}
	return nil
}

// restoreThreadProc restores what the thread t is stopped in must set itself:
// its timer slack. With several threads, each needs its turn.
func restoreThreadProc(t *remote.Task, tp image.ThreadProc) error {
	if tp.TimerSlack != 0 {
		if _, err := t.Syscall(unix.SYS_PRCTL, kabi.PR_SET_TIMERSLACK, tp.TimerSlack); err != nil {
			return fmt.Errorf("tid %d: set timer slack %d: %w", tp.Tid, tp.TimerSlack, err)
		}
	}
	return nil
}

// restoreSession rebuilds the session and process group as far as the kernel
// lets a process do it: a session leader makes its own session again (setsid), a
// group leader its own group (setpgid), and a member of another group joins it
// when that group exists in the restorer's session. Otherwise the process stays
// in cryo restore's group and session, and a warning says so: a session or group
// whose leader is gone cannot be joined or remade under its old id.
func restoreSession(t *remote.Task, im *image.Image, log *slog.Logger) error {
	p, pid := im.Proc, t.Pid()
	switch {
	case p.Sid == pid:
		if _, err := t.Syscall(unix.SYS_SETSID); err != nil {
			return fmt.Errorf("setsid: %w", err)
		}
		return nil
	case p.Pgid == pid:
		if _, err := t.Syscall(unix.SYS_SETPGID, 0, 0); err != nil {
			return fmt.Errorf("setpgid(0, 0): %w", err)
		}
	case p.Pgid > 0:
		if _, err := t.Syscall(unix.SYS_SETPGID, 0, uint64(p.Pgid)); err != nil {
			log.Warn("restored process stays in cryo's process group: its own is gone or "+
				"in another session", "pid", pid, "pgid", p.Pgid, "err", err)
		}
	}
	if sid, err := unix.Getsid(pid); err == nil && sid != p.Sid {
		log.Warn("restored process is in cryo's session, not its own: a session cannot be "+
			"joined from outside", "pid", pid, "sid", p.Sid, "now", sid)
	}
	return nil
}

// restorePersonality sets the personality and the child subreaper flag.
func restorePersonality(t *remote.Task, im *image.Image, _ *slog.Logger) error {
	if im.Proc.ChildSubreaper {
		if _, err := t.Syscall(unix.SYS_PRCTL, kabi.PR_SET_CHILD_SUBREAPER, 1); err != nil {
			return fmt.Errorf("set child subreaper: %w", err)
		}
	}
	if im.Proc.Personality == 0 {
		return nil
	}
	_, err := t.Syscall(unix.SYS_PERSONALITY, im.Proc.Personality)
	return err
}

// restoreDirs changes to the cwd and root by path, checking each still names the
// directory that was recorded. chdir goes first: both paths are as cryo sees them,
// from its own root.
func restoreDirs(t *remote.Task, im *image.Image, _ *slog.Logger) error {
	p := im.Proc
	scratch, _ := t.Scratch()
	for _, d := range []struct {
		which string
		dir   image.Dir
		nr    uintptr
	}{{"cwd", p.Cwd, unix.SYS_CHDIR}, {"root", p.Root, unix.SYS_CHROOT}} {
		if d.which == "root" && d.dir.Path == "/" {
			var st unix.Stat_t
			if err := unix.Stat("/", &st); err == nil && st.Dev == d.dir.Dev && st.Ino == d.dir.Ino {
				continue // the root the process has
			}
		}
		var st unix.Stat_t
		if err := unix.Stat(d.dir.Path, &st); err != nil {
			return fmt.Errorf("%s %s: %w", d.which, d.dir.Path, err)
		}
		if st.Dev != d.dir.Dev || st.Ino != d.dir.Ino {
			return fmt.Errorf("%s %s: %w: device %#x inode %d, was device %#x inode %d",
				d.which, d.dir.Path, errDirChanged, st.Dev, st.Ino, d.dir.Dev, d.dir.Ino)
		}
		if err := t.WriteMem(scratch, append([]byte(d.dir.Path), 0)); err != nil {
			return err
		}
		if _, err := t.Syscall(d.nr, scratch); err != nil {
			return fmt.Errorf("%s %s: %w", d.which, d.dir.Path, err)
		}
		if err := unix.Stat(procfs.Path(t.Pid(), d.which), &st); err != nil ||
			st.Dev != d.dir.Dev || st.Ino != d.dir.Ino {
			return fmt.Errorf("%s %s: the process landed elsewhere (%v)", d.which, d.dir.Path,
				err)
		}
	}
	return nil
}

// errDirChanged says a cwd or root path now names another directory.
var errDirChanged = errors.New("directory replaced since the checkpoint")

// restorePending queues the recorded signals again with their siginfo, from
// inside the process (a process may queue any siginfo to itself), oldest first.
func restorePending(t *remote.Task, im *image.Image, _ *slog.Logger) error {
	pid := t.Pid()
	scratch, _ := t.Scratch()
	queue := func(info []byte, tid int) error {
		if len(info) != kabi.SizeofSiginfo {
			return fmt.Errorf("siginfo of %d bytes, want %d", len(info), kabi.SizeofSiginfo)
		}
		sig := uint64(binary.LittleEndian.Uint32(info))
		if sig < 1 || sig > 64 {
			return fmt.Errorf("pending signal %d is not a signal", sig)
		}
		if err := t.WriteMem(scratch, info); err != nil {
			return err
		}
		var err error
		if tid == 0 {
			_, err = t.Syscall(unix.SYS_RT_SIGQUEUEINFO, uint64(pid), sig, scratch)
		} else {
			_, err = t.Syscall(unix.SYS_RT_TGSIGQUEUEINFO, uint64(pid), uint64(tid), sig, scratch)
		}
		if err != nil {
			return fmt.Errorf("queue signal %d (tid %d): %w", sig, tid, err)
		}
		return nil
	}
	for _, info := range im.Proc.Pending {
		if err := queue(info, 0); err != nil {
			return err
		}
	}
	for _, tp := range im.Proc.Threads {
		for _, info := range tp.Pending {
			if err := queue(info, tp.Tid); err != nil {
				return err
			}
		}
	}
	return nil
}

// restoreItimers arms the interval timers with the time they had left.
func restoreItimers(t *remote.Task, im *image.Image, _ *slog.Logger) error {
	scratch, _ := t.Scratch()
	for _, it := range im.Proc.Itimers {
		b := make([]byte, 32)
		le := binary.LittleEndian
		le.PutUint64(b[0:], uint64(it.Interval/1e9))
		le.PutUint64(b[8:], uint64(it.Interval%1e9/1e3))
		le.PutUint64(b[16:], uint64(it.Value/1e9))
		le.PutUint64(b[24:], uint64(it.Value%1e9/1e3))
		if err := t.WriteMem(scratch, b); err != nil {
			return err
		}
		if _, err := t.Syscall(unix.SYS_SETITIMER, uint64(it.Which), scratch, 0); err != nil {
			return fmt.Errorf("setitimer %d: %w", it.Which, err)
		}
	}
	return nil
}

// createTimers creates the POSIX timers again under their ids, with
// prctl(PR_TIMER_CREATE_RESTORE_IDS) (Linux 6.14+), which makes timer_create take
// the id it is given, whatever the holes between the ids. armTimers arms them.
func createTimers(t *remote.Task, im *image.Image, _ *slog.Logger) error {
	if len(im.Proc.Timers) == 0 {
		return nil
	}
	if _, err := t.Syscall(unix.SYS_PRCTL, kabi.PR_TIMER_CREATE_RESTORE_IDS,
		kabi.PR_TIMER_CREATE_RESTORE_ON); err != nil {
		return fmt.Errorf("prctl PR_TIMER_CREATE_RESTORE_IDS (Linux 6.14+): %w", err)
	}
	scratch, _ := t.Scratch()
	le := binary.LittleEndian
	for _, tm := range im.Proc.Timers {
		// struct sigevent: sigev_value, sigev_signo, sigev_notify, then the tid;
		// the id asked for follows it.
		ev := make([]byte, kabi.SizeofSigevent+4)
		le.PutUint64(ev[0:], tm.Value)
		le.PutUint32(ev[8:], uint32(tm.Signo))
		le.PutUint32(ev[12:], uint32(tm.Notify))
		le.PutUint32(ev[16:], uint32(tm.Tid))
		le.PutUint32(ev[kabi.SizeofSigevent:], uint32(tm.ID))
		if err := t.WriteMem(scratch, ev); err != nil {
			return err
		}
		idAddr := scratch + kabi.SizeofSigevent
		if _, err := t.Syscall(unix.SYS_TIMER_CREATE, uint64(tm.Clock), scratch,
			idAddr); err != nil {
			return fmt.Errorf("timer_create id %d clock %d: %w", tm.ID, tm.Clock, err)
		}
		got := make([]byte, 4)
		if err := t.ReadMem(idAddr, got); err != nil {
			return err
		}
		if id := int32(le.Uint32(got)); id != tm.ID {
			return fmt.Errorf("timer_create gave id %d, want %d", id, tm.ID)
		}
	}
	if _, err := t.Syscall(unix.SYS_PRCTL, kabi.PR_TIMER_CREATE_RESTORE_IDS,
		kabi.PR_TIMER_CREATE_RESTORE_OFF); err != nil {
		return fmt.Errorf("prctl PR_TIMER_CREATE_RESTORE_IDS off: %w", err)
	}
	return nil
}

// armTimers arms each POSIX timer with the time it had left. The overrun count
// and a timer's absolute (TIMER_ABSTIME) nature are not kept: each is armed
// relative, with its remaining time.
func armTimers(t *remote.Task, im *image.Image, _ *slog.Logger) error {
	scratch, _ := t.Scratch()
	le := binary.LittleEndian
	for _, tm := range im.Proc.Timers {
		if tm.Remaining == 0 {
			continue
		}
		its := make([]byte, 32)
		le.PutUint64(its[0:], uint64(tm.Interval/1e9))
		le.PutUint64(its[8:], uint64(tm.Interval%1e9))
		le.PutUint64(its[16:], uint64(tm.Remaining/1e9))
		le.PutUint64(its[24:], uint64(tm.Remaining%1e9))
		if err := t.WriteMem(scratch, its); err != nil {
			return err
		}
		if _, err := t.Syscall(unix.SYS_TIMER_SETTIME, uint64(tm.ID), 0, scratch, 0); err != nil {
			return fmt.Errorf("timer_settime id %d: %w", tm.ID, err)
		}
	}
	return nil
}

// restoreSched sets each thread's scheduling policy, priority, nice, CPU
// affinity and I/O priority from outside (these calls act on any thread for a
// caller with CAP_SYS_NICE). Utilization clamps are left at their defaults.
func restoreSched(t *remote.Task, im *image.Image, _ *slog.Logger) error {
	const schedFlagResetOnFork = 1
	for _, tp := range im.Proc.Threads {
		s := tp.Sched
		a := kabi.SchedAttr{Policy: s.Policy, Flags: s.Flags & schedFlagResetOnFork,
			Nice: s.Nice, Priority: s.Priority, Runtime: s.Runtime, Deadline: s.Deadline,
			Period: s.Period}
		if err := kabi.SchedSetattr(tp.Tid, a); err != nil {
			return fmt.Errorf("sched_setattr tid %d policy %d nice %d: %w", tp.Tid, s.Policy,
				s.Nice, err)
		}
		if len(tp.Affinity) > 0 {
			var set unix.CPUSet
			if len(tp.Affinity) > len(set) {
				return fmt.Errorf("tid %d: CPU affinity of %d words", tp.Tid, len(tp.Affinity))
			}
			set.Zero()
			for cpu := range 64 * len(tp.Affinity) {
				if tp.Affinity[cpu/64]&(1<<(cpu%64)) != 0 {
					set.Set(cpu)
				}
			}
			if err := unix.SchedSetaffinity(tp.Tid, &set); err != nil {
				return fmt.Errorf("tid %d: set CPU affinity %x: %w", tp.Tid, tp.Affinity, err)
			}
		}
		// An I/O priority never set follows nice; setting it would pin it.
		now, _, errno := unix.Syscall(unix.SYS_IOPRIO_GET, kabi.IOPRIO_WHO_PROCESS,
			uintptr(tp.Tid), 0)
		if errno == 0 && int(now) != tp.Ioprio {
			_, _, errno = unix.Syscall(unix.SYS_IOPRIO_SET, kabi.IOPRIO_WHO_PROCESS,
				uintptr(tp.Tid), uintptr(tp.Ioprio))
		}
		if errno != 0 {
			return fmt.Errorf("tid %d: I/O priority %#x: %w", tp.Tid, tp.Ioprio, errno)
		}
	}
	return nil
}

// restoreRlimits sets every resource limit with prlimit64 run in the process,
// which may always set its own limits (a hard limit above the one it inherited
// from cryo needs CAP_SYS_RESOURCE, which it has while it has cryo's
// credentials, if cryo has it).
func restoreRlimits(t *remote.Task, im *image.Image, _ *slog.Logger) error {
	scratch, _ := t.Scratch()
	for _, r := range im.Proc.Rlimits {
		if r.Resource < 0 || r.Resource >= rlimNlimits {
			return fmt.Errorf("unknown resource %d", r.Resource)
		}
		b := binary.LittleEndian.AppendUint64(nil, r.Cur)
		b = binary.LittleEndian.AppendUint64(b, r.Max)
		if err := t.WriteMem(scratch, b); err != nil {
			return err
		}
		if _, err := t.Syscall(unix.SYS_PRLIMIT64, 0, uint64(r.Resource), scratch, 0); err != nil {
			return fmt.Errorf("prlimit resource %d to %d/%d: %w", r.Resource, r.Cur, r.Max, err)
		}
	}
	return nil
}

// restoreCreds gives the process its credentials, from root down:
//
//  1. drop the capabilities outside the bounding set (needs CAP_SETPCAP);
//  2. setgroups, then setresgid (need CAP_SETGID);
//  3. securebits, with SECBIT_KEEP_CAPS added so that setresuid keeps the
//     permitted set (needs CAP_SETPCAP);
//  4. setresuid, then setfsuid and setfsgid when they differ from the
//     effective ids;
//  5. capset: effective, permitted, inheritable; then the ambient set, whose
//     capabilities must be permitted and inheritable;
//  6. clear SECBIT_KEEP_CAPS again if it was added; the dumpable flag, which
//     setresuid reset; no_new_privs.
//
// Then /proc/PID/status must show what was recorded.
func restoreCreds(t *remote.Task, im *image.Image, _ *slog.Logger) error {
	c := im.Proc.Creds
	scratch, _ := t.Scratch()
	le := binary.LittleEndian
	sys := func(what string, nr uintptr, args ...uint64) error {
		if _, err := t.Syscall(nr, args...); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	}

	last, err := lastCap()
	if err != nil {
		return err
	}
	for capn := 0; capn <= last; capn++ {
		if c.CapBnd&(1<<capn) == 0 {
			if err := sys(fmt.Sprintf("drop capability %d from the bounding set", capn),
				unix.SYS_PRCTL, kabi.PR_CAPBSET_DROP, uint64(capn)); err != nil {
				return err
			}
		}
	}

	groups := make([]byte, 4*len(c.Groups)+4)
	for i, g := range c.Groups {
		le.PutUint32(groups[4*i:], g)
	}
	if err := t.WriteMem(scratch, groups); err != nil {
		return err
	}
	if err := sys("setgroups", unix.SYS_SETGROUPS, uint64(len(c.Groups)), scratch); err != nil {
		return err
	}
	if err := sys("setresgid", unix.SYS_SETRESGID, uint64(c.Gid[0]), uint64(c.Gid[1]),
		uint64(c.Gid[2])); err != nil {
		return err
	}
	bits := uint64(c.Securebits)
	addedKeep := bits&(kabi.SECBIT_KEEP_CAPS|kabi.SECBIT_KEEP_CAPS_LOCKED) == 0
	if addedKeep {
		bits |= kabi.SECBIT_KEEP_CAPS
	}
	if err := sys("set securebits", unix.SYS_PRCTL, kabi.PR_SET_SECUREBITS, bits); err != nil {
		return err
	}
	if err := sys("setresuid", unix.SYS_SETRESUID, uint64(c.Uid[0]), uint64(c.Uid[1]),
		uint64(c.Uid[2])); err != nil {
		return err
	}
	if c.Uid[3] != c.Uid[1] {
		t.Syscall(unix.SYS_SETFSUID, uint64(c.Uid[3])) // returns the old fsuid, never an error
	}
	if c.Gid[3] != c.Gid[1] {
		t.Syscall(unix.SYS_SETFSGID, uint64(c.Gid[3]))
	}

	// capset: struct __user_cap_header_struct, then two __user_cap_data_struct
	// (effective, permitted, inheritable) for the low and high 32 bits.
	hdr := make([]byte, 8+24)
	le.PutUint32(hdr[0:], kabi.LINUX_CAPABILITY_VERSION_3)
	for i, set := range []uint64{c.CapEff, c.CapPrm, c.CapInh} {
		le.PutUint32(hdr[8+4*i:], uint32(set))
		le.PutUint32(hdr[8+12+4*i:], uint32(set>>32))
	}
	if err := t.WriteMem(scratch, hdr); err != nil {
		return err
	}
	if err := sys("capset", unix.SYS_CAPSET, scratch, scratch+8); err != nil {
		return err
	}
	for capn := 0; capn <= last; capn++ {
		if c.CapAmb&(1<<capn) != 0 {
			if err := sys(fmt.Sprintf("raise ambient capability %d", capn), unix.SYS_PRCTL,
				kabi.PR_CAP_AMBIENT, kabi.PR_CAP_AMBIENT_RAISE, uint64(capn)); err != nil {
				return err
			}
		}
	}
	if addedKeep {
		if err := sys("clear keepcaps", unix.SYS_PRCTL, kabi.PR_SET_KEEPCAPS, 0); err != nil {
			return err
		}
	}
	// 2 (suid_dumpable) is the kernel's to set; prctl takes 0 or 1.
	if d := im.Proc.Dumpable; d == 0 || d == 1 {
		if err := sys("set dumpable", unix.SYS_PRCTL, kabi.PR_SET_DUMPABLE, uint64(d)); err != nil {
			return err
		}
	}
	if im.Proc.NoNewPrivs {
		if err := sys("set no_new_privs", unix.SYS_PRCTL, kabi.PR_SET_NO_NEW_PRIVS,
			1); err != nil {
			return err
		}
	}
	return checkCreds(t.Pid(), im.Proc)
}

// checkCreds compares the credentials /proc/PID/status shows with p's.
func checkCreds(pid int, p *image.Proc) error {
	st, err := readStatus(pid)
	if err != nil {
		return err
	}
	got, _, nnp, err := parseCreds(st)
	if err != nil {
		return err
	}
	got.Securebits = p.Creds.Securebits
	if fmt.Sprint(got) != fmt.Sprint(p.Creds) || nnp != p.NoNewPrivs {
		return fmt.Errorf("the process has credentials %+v (no_new_privs %v), want %+v (%v)",
			got, nnp, p.Creds, p.NoNewPrivs)
	}
	return nil
}

// lastCap is the highest capability this kernel knows.
func lastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("read cap_last_cap: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 || n > 63 {
		return 0, fmt.Errorf("parse cap_last_cap %q", b)
	}
	return n, nil
}
