// Command cryo checkpoints live Linux processes into a content-addressed page store
// and restores them, lazily by default.
//
//	cryo checkpoint PID [--kill]
//	cryo restore [SNAPSHOT|latest] [--eager] [--detach] [--pidfile FILE]
//	cryo ls
//	cryo inspect SNAPSHOT [--json]
//	cryo run [--interval D] [--keep N] [--metrics ADDR] [--tracker T] -- CMD ARGS...
//	cryo watch PID [--interval D] [--keep N] [--metrics ADDR] [--tracker T]
//
// The store is --store, else $CRYO_STORE, else /var/lib/cryo.
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/pagestore"
)

// defaultStore is where snapshots go when neither --store nor $CRYO_STORE says.
const defaultStore = "/var/lib/cryo"

// exitError carries an exit status through cobra without printing anything more.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	// The restorer runs this executable as the host of a restored process, stopped
	// by ptrace at its execve; it never gets here. Should it run anyway, it must do
	// nothing.
	if len(os.Args) > 0 && os.Args[0] == hostArg0 {
		os.Exit(127)
	}

	// Descriptors inherited without close-on-exec would otherwise leak into the
	// processes cryo starts, a restored process among them.
	unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)

	// cryo run starts the program under a copy of cryo that only waits for it.
	if len(os.Args) > 0 && os.Args[0] == reaperArg0 {
		os.Exit(reap(os.Args[1:]))
	}

	root := newRoot()
	err := root.Execute()
	var ee exitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		os.Exit(ee.code)
	default:
		fmt.Fprintf(os.Stderr, "cryo: %v\n", err)
		os.Exit(1)
	}
}

// hostArg0 is argv[0] of the restore host (see engine.startHost).
const hostArg0 = "cryo-restore-host"

// app holds the global flags and what they open.
type app struct {
	storeDir string
	logLevel string
	log      *slog.Logger

	// interrupt is closed (by interrupted) when a command that catches SIGINT,
	// SIGTERM or SIGHUP gets one: a wait for the store lock then ends at once.
	interrupt     chan struct{}
	interruptOnce sync.Once
}

// interrupted ends every wait for the store lock of this command.
func (a *app) interrupted() { a.interruptOnce.Do(func() { close(a.interrupt) }) }

func newRoot() *cobra.Command {
	a := &app{interrupt: make(chan struct{})}
	root := &cobra.Command{
		Use:           "cryo",
		Short:         "Checkpoint live Linux processes and restore them lazily",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(a.logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: %w", a.logLevel, err)
			}
			a.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
			return nil
		},
	}
	store := os.Getenv("CRYO_STORE")
	if store == "" {
		store = defaultStore
	}
	root.PersistentFlags().StringVar(&a.storeDir, "store", store,
		"snapshot store folder; $CRYO_STORE, else "+defaultStore+", when not given")
	root.PersistentFlags().StringVar(&a.logLevel, "log-level", "warn",
		"log level: debug, info, warn or error")

	root.AddCommand(a.checkpointCmd(), a.restoreCmd(), a.lsCmd(), a.inspectCmd(),
		a.runCmd(), a.watchCmd(), a.rmCmd(), a.gcCmd(), a.verifyCmd())
	return root
}

// openStore opens the store the flags name.
func (a *app) openStore() (*pagestore.Store, error) {
	return pagestore.Open(a.storeDir, pagestore.Options{Logger: a.log, LockWait: lockWait,
		Interrupt: a.interrupt})
}

// lockWait is how long a command waits for another cryo holding the store.
const lockWait = time.Minute

// openExisting opens the store the flags name for commands that only read it:
// a path with no store there is an error, not a new empty store.
func (a *app) openExisting() (*pagestore.Store, error) {
	return pagestore.Open(a.storeDir, pagestore.Options{Logger: a.log, NoCreate: true,
		LockWait: lockWait, Interrupt: a.interrupt})
}
