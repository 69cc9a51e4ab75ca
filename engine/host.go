package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/remote"
	"github.com/cryo-dev/cryo/internal/procfs"
	"github.com/cryo-dev/cryo/internal/ptrace"
)

// ErrPidInUse is returned when the pid a snapshot was taken with belongs to a live
// process, so the restored process cannot have it.
var ErrPidInUse = errors.New("pid is in use")

// startHost starts the process that the restored process is cloned from: this very
// executable, stopped by PTRACE_TRACEME at its execve before it runs an instruction.
// stdio become its descriptors 0, 1 and 2, which the restored process inherits.
//
// Precondition: the calling goroutine is locked to its OS thread, which becomes the
// tracer.
func startHost(stdio [3]*os.File) (*os.Process, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("start host: find own executable: %w", err)
	}
	attr := &os.ProcAttr{
		Files: stdio[:],
		Sys:   &syscall.SysProcAttr{Ptrace: true, Setpgid: false},
	}
	proc, err := os.StartProcess(exe, []string{"cryo-restore-host"}, attr)
	if err != nil {
		return nil, fmt.Errorf("start host %s: %w", exe, err)
	}

	ws, err := ptrace.Wait(proc.Pid)
	if err != nil {
		proc.Kill()
		return nil, fmt.Errorf("start host: %w", err)
	}
	if !ws.Stopped() || ws.StopSignal() != unix.SIGTRAP {
		proc.Kill()
		return nil, fmt.Errorf("start host pid %d: expected the exec stop, got status %#x",
			proc.Pid, uint32(ws))
	}
	opts := ptrace.PTRACE_O_TRACESYSGOOD | ptrace.PTRACE_O_EXITKILL | unix.PTRACE_O_TRACECLONE
	if err := unix.PtraceSetOptions(proc.Pid, opts); err != nil {
		killHost(proc)
		return nil, fmt.Errorf("start host pid %d: set ptrace options: %w", proc.Pid, err)
	}
	return proc, nil
}

// killHost ends the host and reaps it.
func killHost(proc *os.Process) {
	unix.Kill(proc.Pid, unix.SIGKILL)
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(proc.Pid, &ws, unix.WALL, nil)
		if err == unix.EINTR {
			continue
		}
		return
	}
}

// cloneWithPid makes the host clone a child whose pid is pid (clone3 with set_tid,
// Linux 5.5+) and whose parent is the host's parent, this process (CLONE_PARENT), so
// that cryo can wait for its exit status. The child starts traced (PTRACE_O_TRACECLONE)
// and stopped, as a copy of the host: the trampoline is already in it.
func cloneWithPid(host *remote.Task, pid int) (int, error) {
	// struct clone_args (CLONE_ARGS_SIZE_VER2, 88 bytes), then the set_tid array.
	scratch, _ := host.Scratch()
	args := make([]byte, 88+8)
	le := binary.LittleEndian
	le.PutUint64(args[0:], unix.CLONE_PARENT) // flags
	le.PutUint64(args[32:], 0)                // exit_signal: must be 0 with CLONE_PARENT
	le.PutUint64(args[64:], scratch+88)       // set_tid
	le.PutUint64(args[72:], 1)                // set_tid_size
	le.PutUint32(args[88:], uint32(pid))
	if err := host.WriteMem(scratch, args); err != nil {
		return 0, fmt.Errorf("clone pid %d: %w", pid, err)
	}

	child, err := host.Syscall(unix.SYS_CLONE3, scratch, 88)
	if errors.Is(err, unix.EEXIST) {
		holder := "another process"
		if st, serr := procfs.ReadStat(pid); serr == nil && st.State == 'Z' {
			holder = fmt.Sprintf("a zombie (%s, exited but not yet reaped by its parent, "+
				"pid %d)", st.Comm, st.Ppid)
		} else if serr == nil {
			holder = fmt.Sprintf("another process (%s)", st.Comm)
		}
		return 0, fmt.Errorf("restore as pid %d: %w by %s", pid, ErrPidInUse, holder)
	}
	if err != nil {
		return 0, fmt.Errorf("clone pid %d: %w", pid, err)
	}
	if int(child) != pid {
		return 0, fmt.Errorf("clone pid %d: kernel gave pid %d", pid, child)
	}

	// The child's first stop: SIGSTOP (or PTRACE_EVENT_STOP) as it is auto-attached.
	ws, err := ptrace.Wait(pid)
	if err != nil {
		return 0, fmt.Errorf("clone pid %d: %w", pid, err)
	}
	if !ws.Stopped() {
		return 0, fmt.Errorf("clone pid %d: expected a stop, got status %#x", pid, uint32(ws))
	}
	return pid, nil
}
