package main

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// reaperArg0 is argv[0] of the small copy of cryo that cryo run starts the program
// under (see startReaped).
const reaperArg0 = "cryo-run-reaper"

// A reaper is needed because cryo run ptraces the program: were the program cryo
// run's own child, the wait for its exit (a waitid on another thread) would take
// the ptrace stops the engine waits for, and a checkpoint's wait would reap the
// program's exit status when it ends mid-checkpoint. The kernel reports ptrace
// stops to every thread of the tracer's thread group, so no locking inside one
// process can keep the two apart; a separate parent does.

// reaped is a program cryo run started under a reaper.
type reaped struct {
	pid    int
	reaper *exec.Cmd

	// status receives the program's exit status, shell-style (128+signal when a
	// signal ended it), once it has exited and been reaped.
	status <-chan int
}

// startReaped starts args under a reaper with cryo's stdio, in cryo's process
// group (so that the terminal's Ctrl-C reaches it), and returns once the program
// runs. A program that cannot be started gives an exitError of 127 (not found)
// or 126 (found but not started), as a shell would, after printing why.
func startReaped(args []string) (*reaped, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("start %s: find own executable: %w", args[0], err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", args[0], err)
	}
	defer pr.Close()
	cmd := &exec.Cmd{
		Path:       exe,
		Args:       append([]string{reaperArg0}, args...),
		Stdin:      os.Stdin,
		Stdout:     os.Stdout,
		Stderr:     os.Stderr,
		ExtraFiles: []*os.File{pw}, // fd 3: the report pipe
	}
	err = cmd.Start()
	pw.Close()
	if err != nil {
		return nil, fmt.Errorf("start %s: start reaper: %w", args[0], err)
	}

	// The reaper reports "pid N" or "error CODE MESSAGE", then "exit CODE".
	rd := bufio.NewReader(pr)
	line, rerr := rd.ReadString('\n')
	kind, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
	switch kind {
	case "pid":
		pid, err := strconv.Atoi(rest)
		if err != nil || pid <= 0 {
			break
		}
		status := make(chan int, 1)
		r := &reaped{pid: pid, reaper: cmd, status: status}
		go r.collect(rd, status)
		return r, nil
	case "error":
		cmd.Wait()
		code, msg, _ := strings.Cut(rest, " ")
		n, _ := strconv.Atoi(code)
		fmt.Fprintf(os.Stderr, "cryo: run: %s\n", msg)
		return nil, exitError{code: n}
	}
	cmd.Process.Kill()
	cmd.Wait()
	return nil, fmt.Errorf("start %s: reaper reported %q (%v)", args[0], line, rerr)
}

// collect reads the program's exit status from the reaper, then reaps the
// reaper. A reaper that dies without a report stands for the program: its own
// exit status is sent.
func (r *reaped) collect(rd *bufio.Reader, status chan<- int) {
	line, _ := rd.ReadString('\n')
	kind, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
	code, err := strconv.Atoi(rest)
	werr := r.reaper.Wait()
	if kind == "exit" && err == nil {
		status <- code
		return
	}
	var ee *exec.ExitError
	if errors.As(werr, &ee) {
		status <- exitCode(unix.WaitStatus(ee.Sys().(syscall.WaitStatus)))
		return
	}
	status <- 0
}

// reap is the reaper: it runs args with its own stdio, reports the program's
// pid and then its exit status on descriptor 3, and exits with that status.
//
// It catches (and drops) the signals a terminal or a process-group kill sends,
// so that it outlives the program and reports how that ended. The program gets
// them itself; cryo run passes on those sent to cryo alone. Caught signals, unlike
// ignored ones, are reset to their default in the program at exec.
func reap(args []string) int {
	report := os.NewFile(3, "report")
	signal.Notify(make(chan os.Signal, 1), unix.SIGINT, unix.SIGQUIT, unix.SIGTERM,
		unix.SIGHUP)
	if len(args) == 0 {
		fmt.Fprintf(report, "error 2 no program to run\n")
		return 2
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		code := 126
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
			code = 127
		}
		msg := strings.ReplaceAll(err.Error(), "\n", " ")
		fmt.Fprintf(report, "error %d start %s\n", code, msg)
		return code
	}
	fmt.Fprintf(report, "pid %d\n", cmd.Process.Pid)

	code := 0
	var ee *exec.ExitError
	if err := cmd.Wait(); errors.As(err, &ee) {
		code = exitCode(unix.WaitStatus(ee.Sys().(syscall.WaitStatus)))
	} else if err != nil {
		code = 126
	}
	fmt.Fprintf(report, "exit %d\n", code)
	return code
}
