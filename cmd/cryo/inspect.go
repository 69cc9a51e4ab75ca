package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/fds"
	"github.com/cryo-dev/cryo/engine/image"
)

func (a *app) lsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List the snapshots in the store, oldest first",
		Long: "Lists the snapshots in the store, oldest first, one a line. A snapshot " +
			"whose manifest cannot be read is left out of the list and named on " +
			"stderr with the reason, and ls then exits 1 once the others are listed.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := a.openExisting()
			if err != nil {
				return err
			}
			defer st.Close()
			snaps, err := st.List()
			damaged := perSnapshot(err)
			if err != nil && damaged == nil {
				return err
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SNAPSHOT\tCREATED\tPID\tCOMM\tPAGES\tSTORED")
			for _, s := range snaps {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", s.ID,
					s.Created.Local().Format(time.DateTime), s.Labels["pid"], s.Labels["comm"],
					s.Stats.Pages, bytesString(s.Stats.StoredBytes))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if len(damaged) == 0 {
				return nil
			}
			// A script must not take the list for the whole store.
			for _, d := range damaged {
				fmt.Fprintf(os.Stderr, "cryo: ls: left out: %v\n", d)
			}
			return exitError{code: 1}
		},
	}
}

// perSnapshot returns the errors of the snapshots pagestore.Store.List could not
// read, one a snapshot, or nil if err is not of that kind (nil, or a failure to
// list at all).
func perSnapshot(err error) []error {
	j, ok := errors.Unwrap(err).(interface{ Unwrap() []error })
	if !ok {
		return nil
	}
	return j.Unwrap()
}

// inspectJSON is the machine-readable form of cryo inspect.
type inspectJSON struct {
	ID      string            `json:"id"`
	Parent  string            `json:"parent,omitempty"`
	Created time.Time         `json:"created"`
	Labels  map[string]string `json:"labels"`
	Stats   statsJSON         `json:"stats"`
	Image   *image.Image      `json:"image"`
}

type statsJSON struct {
	Pages        int64 `json:"pages"`
	ZeroPages    int64 `json:"zero_pages"`
	NewPages     int64 `json:"new_pages"`
	DedupPages   int64 `json:"dedup_pages"`
	CarriedPages int64 `json:"carried_pages"`
	LogicalBytes int64 `json:"logical_bytes"`
	StoredBytes  int64 `json:"stored_bytes"`
}

func (a *app) inspectCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect SNAPSHOT",
		Short: "Show a snapshot: ranges, file descriptors, pages and bytes stored",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := a.openExisting()
			if err != nil {
				return err
			}
			defer st.Close()
			snap, err := st.OpenSnapshot(args[0])
			if err != nil {
				return err
			}
			info := snap.Info()
			im, err := image.Unmarshal(snap.Image())
			if err != nil {
				return fmt.Errorf("inspect snapshot %s: %w", info.ID, err)
			}
			s := info.Stats
			out := inspectJSON{ID: info.ID, Parent: info.Parent, Created: info.Created,
				Labels: info.Labels, Image: im, Stats: statsJSON{Pages: s.Pages,
					ZeroPages: s.ZeroPages, NewPages: s.NewPages, DedupPages: s.DedupPages,
					CarriedPages: s.CarriedPages,
					LogicalBytes: s.LogicalBytes, StoredBytes: s.StoredBytes}}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			printInspect(out)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printInspect(o inspectJSON) {
	im := o.Image
	fmt.Printf("snapshot  %s\n", o.ID)
	if o.Parent != "" {
		fmt.Printf("parent    %s\n", o.Parent)
	}
	fmt.Printf("created   %s\n", o.Created.Local().Format(time.RFC3339))
	if tr := o.Labels["tracker"]; tr != "" {
		fmt.Printf("tracker   %s\n", tr)
	}
	if fb := o.Labels["fallback"]; fb != "" {
		fmt.Printf("scanned   whole memory: %s\n", fb)
	}
	fmt.Printf("process   pid %d, %s (%s), %d thread(s), kernel %s\n", im.Pid, im.Comm, im.Exe,
		len(im.Threads), im.Kernel)
	printProc(im.Proc)
	s := o.Stats
	fmt.Printf("pages     %d (%s): %d zero (stored as nothing), %d new, %d deduplicated, "+
		"%d carried from the parent\n", s.Pages, bytesString(s.LogicalBytes), s.ZeroPages,
		s.NewPages, s.DedupPages, s.CarriedPages)
	fmt.Printf("stored    %s compressed for this snapshot\n", bytesString(s.StoredBytes))

	fmt.Printf("\nranges (%d):\n", len(im.VMAs))
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	for _, v := range im.VMAs {
		share := "p"
		if v.Shared {
			share = "s"
		}
		fmt.Fprintf(tw, "  %#x-%#x\t%s%s\t%s\t%s\t%s\n", v.Start, v.End, protString(v.Prot),
			share, bytesString(int64(v.Len())), v.Kind, v.Name)
	}
	tw.Flush()

	fmt.Printf("\nfile descriptors (%d):\n", len(im.FDs))
	for _, f := range im.FDs {
		fmt.Fprintf(tw, "  %d\t%s\t%s\n", f.Num, f.Kind, fdDetail(f))
	}
	tw.Flush()
}

func fdDetail(f image.FD) string {
	cloexec := ""
	if f.Cloexec {
		cloexec = " cloexec"
	}
	switch {
	case f.Eventfd != nil:
		return fmt.Sprintf("count %d semaphore %v flags %#o%s", f.Eventfd.Count,
			f.Eventfd.Semaphore, f.Flags, cloexec)
	case f.Epoll != nil:
		return fmt.Sprintf("%d watches%s", len(f.Epoll.Watches), cloexec)
	case f.Timerfd != nil:
		return timerfdDetail(f.Timerfd) + cloexec
	case f.Signalfd != nil:
		return fmt.Sprintf("mask %#x%s", f.Signalfd.Mask, cloexec)
	case f.Memfd != nil:
		return fmt.Sprintf("%q %d bytes, seals %#x, pos %d%s", f.Memfd.Name, f.Memfd.Size,
			f.Memfd.Seals, f.Pos, cloexec)
	case f.Socket != nil:
		return fds.SocketString(f.Socket) + cloexec
	case f.Pipe != nil:
		end := "write end"
		if f.Pipe.ReadEnd {
			end = "read end"
		}
		return fmt.Sprintf("pipe %d %s, %d bytes buffered%s", f.Pipe.ID, end,
			len(f.Pipe.Buffered), cloexec)
	}
	return fmt.Sprintf("%s pos %d flags %#o%s", f.Path, f.Pos, f.Flags, cloexec)
}

func protString(p int) string {
	b := []byte("---")
	if p&unix.PROT_READ != 0 {
		b[0] = 'r'
	}
	if p&unix.PROT_WRITE != 0 {
		b[1] = 'w'
	}
	if p&unix.PROT_EXEC != 0 {
		b[2] = 'x'
	}
	return string(b)
}

// bytesString prints a byte count in binary units.
func bytesString(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
