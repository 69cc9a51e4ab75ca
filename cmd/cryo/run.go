package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine"
	"github.com/cryo-dev/cryo/engine/fds"
	"github.com/cryo-dev/cryo/engine/track"
	"github.com/cryo-dev/cryo/internal/procfs"
	"github.com/cryo-dev/cryo/pagestore"
)

// periodicFlags are the options cryo run and cryo watch share.
type periodicFlags struct {
	interval time.Duration
	keep     int
	metrics  string
	tracker  string
	// established is what a checkpoint does with connections to outside the
	// process: "close" or "refuse".
	established string
}

// trackers are the values --tracker takes.
var trackers = []string{"auto", "uffd-wp", "soft-dirty", "scan"}

func (f *periodicFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.DurationVar(&f.interval, "interval", 10*time.Second, "time between checkpoints")
	fl.IntVar(&f.keep, "keep", 0, "keep only the newest N snapshots of this run "+
		"and reclaim the space of the others (0: keep all)")
	fl.StringVar(&f.metrics, "metrics", "", "serve Prometheus metrics at http://ADDR/metrics "+
		"(HOST:PORT; :PORT or PORT listen on 127.0.0.1)")
	fl.StringVar(&f.tracker, "tracker", "auto", "dirty-page tracker: auto, uffd-wp, "+
		"soft-dirty or scan")
	addEstablishedFlag(cmd, &f.established)
}

// check validates the flags before anything starts.
func (f *periodicFlags) check() error {
	if f.interval <= 0 {
		return fmt.Errorf("--interval %v: must be positive", f.interval)
	}
	if f.keep < 0 {
		return fmt.Errorf("--keep %d: must be 0 (keep all) or more", f.keep)
	}
	if err := checkEstablished(f.established); err != nil {
		return err
	}
	for _, t := range trackers {
		if f.tracker == t {
			return nil
		}
	}
	return fmt.Errorf("--tracker %q: want one of %v", f.tracker, trackers)
}

func (a *app) runCmd() *cobra.Command {
	f := &periodicFlags{}
	cmd := &cobra.Command{
		Use:   "run [flags] -- CMD [ARGS...]",
		Short: "Start a program and checkpoint it periodically",
		Long: "Starts CMD with cryo's stdin, stdout and stderr, and checkpoints it every " +
			"--interval (the first one interval after it starts), each snapshot " +
			"incremental on the one before. Each new snapshot's id is printed on " +
			"stderr as \"cryo: snapshot ID\" (stdout is the program's). cryo run exits " +
			"with the program's exit status (128+signal if a signal ended it).\n\n" +
			"SIGINT, SIGQUIT and SIGHUP stop the checkpoints once the one under way is " +
			"done; they are passed on to the program unless cryo is in the terminal's " +
			"foreground process group (the terminal has sent them to the program " +
			"already). SIGTERM stops the checkpoints and is always passed on. cryo run " +
			"then waits for the program to exit.\n\n" +
			"A failed checkpoint is logged and the next is tried an interval later; one " +
			"that fails because the process is in a state cryo cannot checkpoint stops " +
			"the checkpoints, and the program runs on.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			return a.run(f, args)
		},
	}
	f.add(cmd)
	return cmd
}

func (a *app) watchCmd() *cobra.Command {
	f := &periodicFlags{}
	cmd := &cobra.Command{
		Use:   "watch PID",
		Short: "Checkpoint a running process periodically",
		Long: "Checkpoints process PID every --interval (the first one interval after " +
			"start), each snapshot incremental on the one before, and prints each new " +
			"snapshot's id on stdout, one a line. Ends when the process exits, or on " +
			"SIGINT, SIGTERM or SIGHUP once the checkpoint under way is done; the " +
			"process runs on.\n\n" +
			"A failed checkpoint is logged and the next is tried an interval later; one " +
			"that fails because the process is in a state cryo cannot checkpoint ends " +
			"cryo watch with that error.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pid, err := strconv.Atoi(args[0])
			if err != nil || pid <= 0 {
				return fmt.Errorf("watch: %q is not a process id", args[0])
			}
			if err := f.check(); err != nil {
				return err
			}
			return a.watch(f, pid)
		},
	}
	f.add(cmd)
	return cmd
}

// run is cryo run: it returns the program's exit status as an exitError.
func (a *app) run(f *periodicFlags, args []string) error {
	st, err := a.openStore()
	if err != nil {
		return err
	}
	defer st.Close()
	p, err := a.newPeriodic(f, st)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	defer p.close()

	// Catch the signals before the program starts, so that none ends cryo.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGINT, unix.SIGQUIT, unix.SIGHUP, unix.SIGTERM)
	defer signal.Stop(sigs)

	prog, err := startReaped(args)
	if err != nil {
		return err
	}
	pid := prog.pid
	a.log.Info("started", "pid", pid, "program", args[0], "interval", f.interval)

	exited := make(chan struct{})
	status := make(chan int, 1)
	var gone atomic.Bool // the program has been reaped: its pid may be reused
	go func() {
		code := <-prog.status
		gone.Store(true)
		status <- code
		close(exited)
	}()

	stop := make(chan struct{})
	go func() {
		var once sync.Once
		for s := range sigs {
			once.Do(func() {
				a.log.Info("stopping checkpoints", "signal", s)
				a.interrupted()
				close(stop)
			})
			if s != unix.SIGTERM && inForeground() || gone.Load() {
				continue
			}
			a.log.Info("passing signal on", "pid", pid, "signal", s)
			unix.Kill(pid, s.(unix.Signal))
		}
	}()

	p.emit = func(id string) { fmt.Fprintf(os.Stderr, "cryo: snapshot %s\n", id) }
	if err := p.loop(pid, exited, stop); err != nil {
		a.log.Error("checkpoints stopped; the program runs on", "pid", pid, "err", err)
	}
	code := <-status
	a.log.Info("program exited", "pid", pid, "status", code, "snapshots", p.count)
	if code != 0 {
		return exitError{code: code}
	}
	return nil
}

// watch is cryo watch.
func (a *app) watch(f *periodicFlags, pid int) error {
	// The pidfd says when the process exits, whoever its parent is (Linux 5.3).
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("watch pid %d: open pidfd: %w", pid, err)
	}
	exited := make(chan struct{})
	go func() {
		defer unix.Close(pidfd)
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		for {
			_, err := unix.Poll(fds, -1)
			if !errors.Is(err, unix.EINTR) {
				break
			}
		}
		close(exited)
	}()

	st, err := a.openStore()
	if err != nil {
		return err
	}
	defer st.Close()
	p, err := a.newPeriodic(f, st)
	if err != nil {
		return fmt.Errorf("watch pid %d: %w", pid, err)
	}
	defer p.close()

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGINT, unix.SIGHUP, unix.SIGTERM)
	defer signal.Stop(sigs)
	stop := make(chan struct{})
	go func() {
		s := <-sigs
		a.log.Info("stopping checkpoints", "signal", s)
		a.interrupted()
		close(stop)
	}()

	p.emit = func(id string) { fmt.Println(id) }
	if err := p.loop(pid, exited, stop); err != nil {
		return fmt.Errorf("watch pid %d: checkpoints stopped, the process runs on: %w",
			pid, err)
	}
	return nil
}

// inForeground says whether cryo's process group is the foreground group of the
// terminal on its stdin, stdout or stderr: then keyboard signals reach the
// program it started as well.
func inForeground() bool {
	for fd := range 3 {
		if pgrp, err := unix.IoctlGetInt(fd, unix.TIOCGPGRP); err == nil {
			return pgrp == unix.Getpgrp()
		}
	}
	return false
}

// periodic checkpoints one process every interval with one engine.Session.
type periodic struct {
	a       *app
	f       *periodicFlags
	store   *pagestore.Store
	metrics *metricsServer
	em      *engine.Metrics  // nil without --metrics
	pm      *periodicMetrics // nil without --metrics

	// emit prints a new snapshot's id.
	emit func(id string)

	// taken are the snapshots of this run still kept, oldest first; count is how
	// many were taken in all. gcDue says a snapshot was removed and GC has not run
	// since.
	taken []string
	count int
	gcDue bool
}

// newPeriodic prepares the checkpoints and starts the metrics server if asked.
func (a *app) newPeriodic(f *periodicFlags, st *pagestore.Store) (*periodic, error) {
	p := &periodic{a: a, f: f, store: st}
	if f.metrics == "" {
		return p, nil
	}
	reg := prometheus.NewRegistry()
	p.em = engine.NewMetrics(reg)
	p.pm = newPeriodicMetrics(reg)
	var err error
	if p.metrics, err = serveMetrics(f.metrics, reg, a.log); err != nil {
		return nil, err
	}
	if err := p.pm.measureStore(st); err != nil {
		a.log.Warn("cannot measure the store", "err", err)
	}
	return p, nil
}

// close stops the metrics server.
func (p *periodic) close() {
	if p.metrics != nil {
		p.metrics.Close()
	}
}

// loop checkpoints pid every interval until exited or stop is closed, always
// finishing the checkpoint under way first. A checkpoint that fails because the
// process exited ends the loop without error; other failures are logged and the
// next interval tries again, except a permanent one, which loop returns.
func (p *periodic) loop(pid int, exited, stop <-chan struct{}) error {
	log := p.a.log
	sess, err := engine.NewSession(p.store, pid, engine.CheckpointOptions{
		Logger: log, Tracker: p.f.tracker, Metrics: p.em,
		Established: fds.Established(p.f.established)})
	if err != nil {
		if isGone(pid, exited) {
			return nil
		}
		return err
	}
	defer sess.Close()

	tick := time.NewTicker(p.f.interval)
	defer tick.Stop()
	for {
		select {
		case <-exited:
			return nil
		case <-stop:
			return nil
		case <-tick.C:
		}
		// Both may have happened while the last checkpoint ran.
		select {
		case <-exited:
			return nil
		case <-stop:
			return nil
		default:
		}

		res, err := sess.Checkpoint(context.Background(), false)
		switch {
		case err == nil:
			p.done(res)
		case isGone(pid, exited):
			log.Info("process exited during a checkpoint", "pid", pid, "err", err)
			return nil
		case permanent(err):
			return err
		default:
			if p.pm != nil {
				p.pm.failures.Inc()
			}
			log.Error("checkpoint failed; trying again at the next interval", "pid", pid,
				"interval", p.f.interval, "err", err)
		}
	}
}

// done prints the new snapshot, retires the snapshots --keep no longer keeps and
// measures the store.
func (p *periodic) done(res *engine.Result) {
	id := res.Snapshot.ID
	p.count++
	p.taken = append(p.taken, id)
	p.emit(id)
	if res.Fallback != "" {
		p.a.log.Debug("snapshot copied every page", "snapshot", id, "why", res.Fallback)
	}

	if p.f.keep > 0 && len(p.taken) > p.f.keep {
		var removed int
		p.taken, removed = p.retire(p.taken[:len(p.taken)-p.f.keep], p.taken)
		if p.pm != nil {
			p.pm.removed.Add(float64(removed))
		}
	}
	if p.gcDue {
		start := time.Now()
		gs, err := p.store.GC()
		if err != nil {
			p.a.log.Warn("reclaim space; trying again after the next checkpoint", "err", err)
		} else {
			p.gcDue = false
			p.a.log.Info("reclaimed space", "packs_removed", gs.PacksRemoved,
				"bytes", gs.BytesReclaimed, "duration", time.Since(start))
			if p.pm != nil {
				p.pm.reclaimed.Add(float64(gs.BytesReclaimed))
			}
		}
	}
	if p.pm != nil {
		if err := p.pm.measureStore(p.store); err != nil {
			p.a.log.Warn("cannot measure the store", "err", err)
		}
	}
}

// retire removes the snapshots old from the store and returns taken without
// those it removed (or found removed already), and how many it removed. A
// snapshot that cannot be removed stays in taken, to be tried again next time.
// Removing a parent leaves its incremental children whole: each manifest names
// every page of its snapshot, and GC keeps whatever any manifest names.
func (p *periodic) retire(old, taken []string) ([]string, int) {
	gone := map[string]bool{}
	removed := 0
	for _, id := range old {
		err := p.store.Remove(id)
		switch {
		case err == nil:
			removed++
			gone[id] = true
			p.gcDue = true
			p.a.log.Info("retired snapshot", "snapshot", id, "keep", p.f.keep)
		case errors.Is(err, pagestore.ErrNotFound):
			gone[id] = true
		default:
			p.a.log.Warn("cannot retire snapshot; trying again after the next checkpoint",
				"snapshot", id, "err", err)
		}
	}
	var out []string
	for _, id := range taken {
		if !gone[id] {
			out = append(out, id)
		}
	}
	return out, removed
}

// permanent says whether a checkpoint error is taken to repeat at every try: the
// process is in a state cryo cannot checkpoint (threads, a descriptor or mapping
// of a kind it cannot rebuild), or the kernel lacks the tracker asked for.
//
// Shortcoming: such a state may pass (a socket closed, a thread ended), and the
// checkpoints stay stopped anyway. Trying again at a growing interval would lift
// this at the cost of a stop of the process per try.
func permanent(err error) bool {
	return errors.Is(err, engine.ErrUnsupported) || errors.Is(err, fds.ErrUnsupported) ||
		errors.Is(err, track.ErrNotSupported)
}

// isGone says whether the process has exited (exited is closed, or it is gone from
// /proc or a zombie).
func isGone(pid int, exited <-chan struct{}) bool {
	select {
	case <-exited:
		return true
	default:
	}
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH)
	}
	return st.State == 'Z' || st.State == 'X'
}
