package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine"
	"github.com/cryo-dev/cryo/lazy"
)

// restoreFlags are the options of cryo restore.
type restoreFlags struct {
	eager, detach, noPrefetch bool
	pidfile                   string
	stdio                     [3]string

	// readyFD is set in the background process that --detach starts: the fd of
	// the pipe on which it reports the restored pid, or an error.
	readyFD int
}

func (a *app) restoreCmd() *cobra.Command {
	f := &restoreFlags{}
	cmd := &cobra.Command{
		Use:   "restore [SNAPSHOT|latest]",
		Short: "Rebuild a process from a snapshot and run it",
		Long: "Rebuilds the process of a snapshot (default: latest) with its pid, memory, " +
			"registers and file descriptors. Lazy by default: the process runs at once and " +
			"its pages are served on demand while the rest streams in. cryo restore stays " +
			"in the foreground and exits with the process's exit status, unless --detach.\n\n" +
			"Descriptors 0, 1 and 2 that were a terminal or a pipe to outside the process " +
			"are connected to cryo restore's own stdin, stdout and stderr, or to the files " +
			"--stdin, --stdout and --stderr name.\n\n" +
			"With --detach, cryo restore prints the pid and exits once the process runs; " +
			"a background copy serves the pages, its stdin on /dev/null and its stdout " +
			"and stderr (its log) on " + detachedLogDir + "/restore-PID.log, removed if " +
			"left empty. --pidfile is created before the restore starts.",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref := "latest"
			if len(args) == 1 {
				ref = args[0]
			}
			if f.detach && f.readyFD == 0 {
				return a.detachRestore(ref)
			}
			return a.restore(ref, f)
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.eager, "eager", false, "install every page before the process runs")
	fl.BoolVar(&f.detach, "detach", false,
		"return once the process runs; a background page server finishes the restore")
	fl.BoolVar(&f.noPrefetch, "no-prefetch", false, "serve only the pages the process touches")
	fl.StringVar(&f.pidfile, "pidfile", "", "write the restored pid to this file")
	fl.StringVar(&f.stdio[0], "stdin", "", "file for a restored stdin that was a terminal or pipe")
	fl.StringVar(&f.stdio[1], "stdout", "", "file for a restored stdout that was a terminal or pipe")
	fl.StringVar(&f.stdio[2], "stderr", "", "file for a restored stderr that was a terminal or pipe")
	fl.IntVar(&f.readyFD, "ready-fd", 0, "internal: report readiness of a detached restore here")
	fl.MarkHidden("ready-fd")
	return cmd
}

// restore rebuilds the process and serves its pages. In the foreground it returns the
// process's exit status as an exitError; detached, it reports the pid on the ready
// pipe and returns when every page is in (or the process is gone).
func (a *app) restore(ref string, f *restoreFlags) (err error) {
	var ready *os.File
	if f.readyFD != 0 {
		ready = os.NewFile(uintptr(f.readyFD), "ready")
		defer func() {
			if ready == nil {
				return
			}
			if err != nil {
				// The foreground prints the error; this copy exits without.
				fmt.Fprintf(ready, "error %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
				err = exitError{code: 1}
			}
			ready.Close()
		}()
	}

	// The pid file is made before anything is restored: a path that cannot be
	// written must fail the restore before there is a process to deal with.
	var pidfile *os.File
	if f.pidfile != "" {
		pidfile, err = createPidfile(f.pidfile)
		if err != nil {
			return err
		}
		defer func() {
			if pidfile != nil { // not written: leave no empty pid file behind
				pidfile.Close()
				removePidfile(f.pidfile)
			}
		}()
	}

	var stdio [3]*os.File
	for i, p := range f.stdio {
		if p == "" {
			continue
		}
		flag := os.O_WRONLY | os.O_CREATE | os.O_APPEND
		if i == 0 {
			flag = os.O_RDONLY
		}
		file, err := os.OpenFile(p, flag, 0o644)
		if err != nil {
			return fmt.Errorf("restore: open stdio file: %w", err)
		}
		defer file.Close()
		stdio[i] = file
	}

	st, err := a.openExisting()
	if err != nil {
		return err
	}
	defer st.Close()

	// Ctrl-C reaches the restored process directly (it shares our process group);
	// cryo must stay alive to serve its pages. Termination requests are passed on.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT)
	defer signal.Stop(sigs)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := engine.Restore(ctx, st, ref, engine.RestoreOptions{
		Logger:     a.log,
		Eager:      f.eager,
		NoPrefetch: f.noPrefetch,
		Stdio:      stdio,
	})
	if err != nil {
		return err
	}
	if pidfile != nil {
		werr := writePid(pidfile, r.Pid)
		pidfile = nil
		if werr != nil {
			// Whoever asked for the pid file would not find the process: end it,
			// rather than leave it running unaccounted for, and reap it.
			unix.Kill(r.Pid, unix.SIGKILL)
			cancel()
			r.Serve(ctx)
			r.Wait()
			removePidfile(f.pidfile)
			return fmt.Errorf("restore snapshot %s: %w; pid %d was killed", r.Snapshot,
				werr, r.Pid)
		}
	}
	a.log.Info("restored", "snapshot", r.Snapshot, "pid", r.Pid, "to_run", r.ToRun)

	if ready != nil {
		logPath := a.leaveCallerStdio(r.Pid)
		fmt.Fprintf(ready, "pid %d\n", r.Pid)
		ready.Close()
		ready = nil
		serr := r.Serve(ctx)
		if errors.Is(serr, lazy.ErrSource) {
			return killedErr(r, serr)
		}
		if serr == nil && logPath != "" {
			removeIfEmpty(logPath)
		}
		return serr
	}

	served := make(chan error, 1)
	go func() { served <- r.Serve(ctx) }()
	go func() {
		for s := range sigs {
			if s == unix.SIGTERM || s == unix.SIGHUP {
				unix.Kill(r.Pid, s.(syscall.Signal))
			}
		}
	}()
	ps, err := r.Wait()

	// The server notices the exit by itself; only a stuck one is stopped.
	var serr error
	select {
	case serr = <-served:
	case <-time.After(2 * time.Second):
		cancel()
		serr = <-served
	}
	if err != nil {
		return fmt.Errorf("restore: wait for pid %d: %w", r.Pid, err)
	}
	if errors.Is(serr, lazy.ErrSource) {
		// The process was killed because its memory could not be read back:
		// that is cryo's failure, not the program's exit.
		return killedErr(r, serr)
	}
	if serr != nil && !errors.Is(serr, context.Canceled) && !errors.Is(serr, lazy.ErrKilled) {
		a.log.Warn("page server stopped with an error", "pid", r.Pid, "err", serr)
	}
	return exitError{code: exitCode(ps)}
}

// killedErr is the error of a restore whose process the page server killed
// because it could not read the process's memory (serr matches lazy.ErrSource).
func killedErr(r *engine.Restored, serr error) error {
	return fmt.Errorf("restore snapshot %s: pid %d was killed rather than run with "+
		"missing memory: %w", r.Snapshot, r.Pid, serr)
}

// exitCode turns a wait status into a shell-style exit status.
func exitCode(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// detachRestore runs the restore in a background copy of cryo, in its own session,
// and returns once that copy reports the process running (or its error).
func (a *app) detachRestore(ref string) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("restore --detach: find own executable: %w", err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("restore --detach: %w", err)
	}
	defer pr.Close()

	args := append([]string{}, os.Args[1:]...)
	args = append(args, "--ready-fd=3")
	cmd := exec.Command(exe, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{pw}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		pw.Close()
		return fmt.Errorf("restore --detach: start page server: %w", err)
	}
	pw.Close()
	cmd.Process.Release()

	line, err := bufio.NewReader(pr).ReadString('\n')
	line = strings.TrimSpace(line)
	switch {
	case strings.HasPrefix(line, "pid "):
		fmt.Println(strings.TrimPrefix(line, "pid "))
		return nil
	case strings.HasPrefix(line, "error "):
		return errors.New(strings.TrimPrefix(line, "error "))
	default:
		return fmt.Errorf("restore --detach: background restore ended without a report (%v)", err)
	}
}

// createPidfile creates (or truncates) the pid file at path and opens it for the
// pid to be written once it is known.
func createPidfile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("restore: create pid file: %w", err)
	}
	return f, nil
}

// writePid writes pid to the pid file f and closes it.
func writePid(f *os.File, pid int) error {
	_, err := f.WriteString(strconv.Itoa(pid) + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write pid file %s: %w", f.Name(), err)
	}
	return nil
}

// removePidfile removes a pid file that holds no pid, if it is a regular file
// (a pid file on /dev/stdout or a fifo is left alone).
func removePidfile(path string) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode().IsRegular() {
		os.Remove(path)
	}
}

// detachedLogDir holds the logs of the page servers of detached restores, one
// file a restore: restore-PID.log, PID the restored pid. A log a server leaves
// empty is removed when it exits.
const detachedLogDir = "/run/cryo"

// leaveCallerStdio points the descriptors 0, 1 and 2 of the background copy of
// a detached restore away from those of the command that started it, once the
// restored process holds its own copies: the caller's stdout may be a pipe that
// must see end of file when the pid is printed (as in pid=$(cryo restore
// --detach)). Stdin becomes /dev/null; stdout and stderr, where the page
// server's log and final error go, the file detachedLogDir/restore-PID.log, or
// /dev/null if that cannot be created. It returns the log's path, or "".
func (a *app) leaveCallerStdio(pid int) string {
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		// Without /dev/null nothing else is likely to work either.
		a.log.Warn("the page server keeps the caller's stdio", "err", err)
		return ""
	}
	defer null.Close()
	out := null
	path := filepath.Join(detachedLogDir, fmt.Sprintf("restore-%d.log", pid))
	lf, err := openLog(path)
	if err != nil {
		a.log.Warn("the page server's log is discarded", "err", err)
		path = ""
	} else {
		defer lf.Close()
		out = lf
		a.log.Info("the page server logs to a file", "pid", pid, "log", path)
	}
	for fd, f := range []*os.File{null, out, out} {
		if err := unix.Dup3(int(f.Fd()), fd, 0); err != nil {
			a.log.Warn("the page server keeps the caller's stdio", "fd", fd, "err", err)
		}
	}
	return path
}

// openLog creates (or truncates) the log file at path, and its folder; it does not
// follow a symbolic link planted at path.
func openLog(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, 0o600)
}

// removeIfEmpty removes the file at path if nothing was written to it.
func removeIfEmpty(path string) {
	if fi, err := os.Stat(path); err == nil && fi.Size() == 0 {
		os.Remove(path)
	}
}
