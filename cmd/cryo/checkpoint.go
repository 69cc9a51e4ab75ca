package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine"
	"github.com/cryo-dev/cryo/engine/fds"
	"github.com/cryo-dev/cryo/pagestore"
)

func (a *app) checkpointCmd() *cobra.Command {
	var (
		kill                         bool
		tracker, parent, established string
	)
	cmd := &cobra.Command{
		Use:   "checkpoint PID",
		Short: "Take a snapshot of a running process and let it run on",
		Long: "Stops the process briefly, copies its state into the store and lets it run " +
			"on; prints the new snapshot's id. With --kill the process stays stopped until " +
			"the snapshot is durable and is then killed.\n\n" +
			"SIGINT, SIGTERM or SIGHUP give the checkpoint up: the process runs on as it " +
			"was (not killed, even with --kill), no snapshot is taken, and cryo exits " +
			"128+signal. SIGKILL cannot be caught: the process runs on as well, unless " +
			"cryo dies in the instant a system call runs inside the process, which " +
			"then kills the process rather than let it run on with wrong registers.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pid, err := strconv.Atoi(args[0])
			if err != nil || pid <= 0 {
				return fmt.Errorf("checkpoint: %q is not a process id", args[0])
			}
			if err := checkEstablished(established); err != nil {
				return fmt.Errorf("checkpoint: %w", err)
			}
			st, err := a.openStore()
			if err != nil {
				return err
			}
			defer st.Close()

			// From here on a signal that would end cryo gives the checkpoint up
			// instead, at a point where the process can be let go as it was.
			ctx, stop := interruptible(a.interrupted)
			defer stop()
			res, err := engine.Checkpoint(ctx, st, pid, engine.CheckpointOptions{
				Logger: a.log, Kill: kill, Tracker: tracker, Parent: parent,
				Established: fds.Established(established),
			})
			var ie interruptedError
			if errors.As(err, &ie) || errors.Is(err, pagestore.ErrInterrupted) &&
				errors.As(context.Cause(ctx), &ie) {
				fmt.Fprintf(os.Stderr, "cryo: %v\n", err)
				return exitError{code: 128 + int(ie.sig)}
			}
			if err != nil {
				return err
			}
			s := res.Snapshot.Stats
			fmt.Fprintf(os.Stderr, "checkpoint of pid %d: frozen %v, total %v, %d pages "+
				"(%d copied, %d new, %d deduplicated, %d zero), %d bytes stored, tracker %s\n",
				pid, res.Frozen.Round(10e3), res.Total.Round(10e3), s.Pages, res.DirtyPages,
				s.NewPages, s.DedupPages, s.ZeroPages, s.StoredBytes, res.Tracker)
			if res.Fallback != "" {
				fmt.Fprintf(os.Stderr, "  whole memory scanned: %s\n", res.Fallback)
			}
			fmt.Println(res.Snapshot.ID)
			return nil
		},
	}
	cmd.Flags().BoolVar(&kill, "kill", false, "kill the process once the snapshot is durable")
	cmd.Flags().StringVar(&tracker, "tracker", "auto",
		"dirty-page tracker: auto, uffd-wp, soft-dirty or scan")
	cmd.Flags().StringVar(&parent, "parent", "",
		"snapshot to be incremental on (default: the process's previous snapshot, or the "+
			"one it was restored from)")
	addEstablishedFlag(cmd, &established)
	return cmd
}

// interruptedError is the cause of a command given up because cryo received sig.
type interruptedError struct{ sig unix.Signal }

func (e interruptedError) Error() string {
	return "interrupted by " + unix.SignalName(e.sig)
}

// interruptible returns a context cancelled, with an interruptedError as its
// cause, when cryo receives SIGINT, SIGTERM or SIGHUP (calling onSignal first),
// and a function that stops listening. Until then those signals do not end cryo:
// a signal that comes after the work is done is ignored.
func interruptible(onSignal func()) (context.Context, func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM, unix.SIGHUP)
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan struct{})
	go func() {
		select {
		case s := <-sigs:
			onSignal()
			cancel(interruptedError{s.(unix.Signal)})
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		close(done)
		cancel(nil)
	}
}

// addEstablishedFlag adds --established, which says what a checkpoint does with
// the process's connections to outside it.
func addEstablishedFlag(cmd *cobra.Command, v *string) {
	cmd.Flags().StringVar(v, "established", string(fds.EstablishedClose),
		"connections to outside the process (TCP, unix stream): close (restored as "+
			"reset: the program reads ECONNRESET or end of file) or refuse (the "+
			"checkpoint fails, naming the fd)")
}

func checkEstablished(v string) error {
	switch fds.Established(v) {
	case fds.EstablishedClose, fds.EstablishedRefuse:
		return nil
	}
	return fmt.Errorf("--established %q: want close or refuse", v)
}
