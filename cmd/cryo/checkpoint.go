package main

import (
	"fmt"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/cryo-dev/cryo/engine"
)

func (a *app) checkpointCmd() *cobra.Command {
	var kill bool
	cmd := &cobra.Command{
		Use:   "checkpoint PID",
		Short: "Take a snapshot of a running process and let it run on",
		Long: "Stops the process briefly, copies its state into the store and lets it run " +
			"on; prints the new snapshot's id. With --kill the process stays stopped until " +
			"the snapshot is durable and is then killed.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pid, err := strconv.Atoi(args[0])
			if err != nil || pid <= 0 {
				return fmt.Errorf("checkpoint: %q is not a process id", args[0])
			}
			st, err := a.openStore()
			if err != nil {
				return err
			}
			defer st.Close()

			res, err := engine.Checkpoint(st, pid, engine.CheckpointOptions{Logger: a.log, Kill: kill})
			if err != nil {
				return err
			}
			s := res.Snapshot.Stats
			fmt.Fprintf(os.Stderr, "checkpoint of pid %d: frozen %v, total %v, %d pages "+
				"(%d new, %d deduplicated, %d zero), %d bytes stored\n",
				pid, res.Frozen.Round(10e3), res.Total.Round(10e3), s.Pages, s.NewPages,
				s.DedupPages, s.ZeroPages, s.StoredBytes)
			fmt.Println(res.Snapshot.ID)
			return nil
		},
	}
	cmd.Flags().BoolVar(&kill, "kill", false, "kill the process once the snapshot is durable")
	return cmd
}
