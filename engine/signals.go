package engine

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
	"github.com/cryo-dev/cryo/engine/remote"
	"github.com/cryo-dev/cryo/internal/procfs"
)

// sigactionSize is struct sigaction as rt_sigaction(2) takes it on x86-64: handler,
// flags, restorer, mask.
const sigactionSize = 32

// readSigactions reads the signal handlers of the stopped process: every signal
// that /proc/PID/status lists as caught or ignored is asked with rt_sigaction run in
// the process. The kernel writes the answer below the process's stack pointer,
// beyond the 128-byte red zone, memory the ABI leaves free while the thread is not
// running; the bytes there are put back afterwards.
//
// Precondition: the process is stopped and seized with PTRACE_O_TRACESYSGOOD, on
// the tracer thread.
func readSigactions(pid int) ([]image.Sigaction, error) {
	sigs, err := handledSignals(pid)
	if err != nil || len(sigs) == 0 {
		return nil, err
	}
	b, err := remote.Borrow(pid)
	if err != nil {
		return nil, err
	}
	defer b.Release()

	regs := b.Saved()
	addr := (regs.Rsp - 128 - 256) &^ 15
	saved := make([]byte, sigactionSize)
	if err := remote.ReadMem(pid, addr, saved); err != nil {
		return nil, fmt.Errorf("read signal handlers: no room below the stack: %w", err)
	}
	defer remote.WriteMem(pid, addr, saved)

	out := make([]image.Sigaction, 0, len(sigs))
	buf := make([]byte, sigactionSize)
	le := binary.LittleEndian
	for _, sig := range sigs {
		if _, err := b.Syscall(unix.SYS_RT_SIGACTION, uint64(sig), 0, addr, 8); err != nil {
			return nil, fmt.Errorf("read handler of signal %d: %w", sig, err)
		}
		if err := remote.ReadMem(pid, addr, buf); err != nil {
			return nil, fmt.Errorf("read handler of signal %d: %w", sig, err)
		}
		out = append(out, image.Sigaction{Sig: sig, Handler: le.Uint64(buf[0:]),
			Flags: le.Uint64(buf[8:]), Restorer: le.Uint64(buf[16:]), Mask: le.Uint64(buf[24:])})
	}
	return out, nil
}

// handledSignals lists the signals whose disposition is not the default: the
// SigCgt and SigIgn masks of /proc/PID/status.
func handledSignals(pid int) ([]int, error) {
	b, err := os.ReadFile(procfs.Path(pid, "status"))
	if err != nil {
		return nil, fmt.Errorf("read status: %w", err)
	}
	var mask uint64
	for _, line := range strings.Split(string(b), "\n") {
		for _, field := range []string{"SigCgt:", "SigIgn:"} {
			if rest, ok := strings.CutPrefix(line, field); ok {
				m, err := strconv.ParseUint(strings.TrimSpace(rest), 16, 64)
				if err != nil {
					return nil, fmt.Errorf("parse status %s %q: %w", field, rest, err)
				}
				mask |= m
			}
		}
	}
	var sigs []int
	for sig := 1; sig <= 64; sig++ {
		if mask&(1<<(sig-1)) != 0 && sig != int(unix.SIGKILL) && sig != int(unix.SIGSTOP) {
			sigs = append(sigs, sig)
		}
	}
	return sigs, nil
}

// restoreSigactions installs the recorded handlers with rt_sigaction run in the
// process under restore.
func restoreSigactions(t *remote.Task, acts []image.Sigaction) error {
	scratch, _ := t.Scratch()
	buf := make([]byte, sigactionSize)
	le := binary.LittleEndian
	for _, a := range acts {
		if a.Sig < 1 || a.Sig > 64 || a.Sig == int(unix.SIGKILL) || a.Sig == int(unix.SIGSTOP) {
			return fmt.Errorf("restore handler: invalid signal %d", a.Sig)
		}
		le.PutUint64(buf[0:], a.Handler)
		le.PutUint64(buf[8:], a.Flags)
		le.PutUint64(buf[16:], a.Restorer)
		le.PutUint64(buf[24:], a.Mask)
		if err := t.WriteMem(scratch, buf); err != nil {
			return err
		}
		if _, err := t.Syscall(unix.SYS_RT_SIGACTION, uint64(a.Sig), scratch, 0, 8); err != nil {
			return fmt.Errorf("restore handler of signal %d: %w", a.Sig, err)
		}
	}
	return nil
}
