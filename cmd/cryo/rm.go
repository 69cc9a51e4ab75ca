package main

import (
	"fmt"
	"os"
	"slices"

	"github.com/spf13/cobra"
)

func (a *app) rmCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rm SNAPSHOT...",
		Short: "Remove snapshots; cryo gc then reclaims the space no snapshot uses",
		Long: "Removes snapshots from the store. Snapshots taken incrementally on a " +
			"removed one stay whole: pages are shared by content, not through the parent. " +
			"The space is reclaimed by cryo gc.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := a.openExisting()
			if err != nil {
				return err
			}
			defer st.Close()
			// Every name must resolve before anything is removed.
			var ids []string
			for _, ref := range args {
				id, err := st.Resolve(ref)
				if err != nil {
					return fmt.Errorf("rm: nothing removed: %w", err)
				}
				if !slices.Contains(ids, id) {
					ids = append(ids, id)
				}
			}
			for _, id := range ids {
				if err := st.Remove(id); err != nil {
					return fmt.Errorf("rm: %w", err)
				}
				fmt.Fprintf(os.Stderr, "removed snapshot %s\n", id)
			}
			return nil
		},
	}
}

func (a *app) gcCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "gc",
		Short: "Reclaim the store space that no snapshot uses",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := a.openExisting()
			if err != nil {
				return err
			}
			defer st.Close()
			g, err := st.GC()
			if err != nil {
				return fmt.Errorf("gc: %w", err)
			}
			fmt.Fprintf(os.Stderr, "gc: %d snapshots, %d packs kept, %d removed, "+
				"%d unsealed packs and %d temporary files cleaned, %s reclaimed\n",
				g.Snapshots, g.PacksKept, g.PacksRemoved, g.UnsealedPacks, g.TempFiles,
				bytesString(g.BytesReclaimed))
			return nil
		},
	}
}
