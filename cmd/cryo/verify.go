package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cryo-dev/cryo/pagestore"
)

func (a *app) verifyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "verify",
		Short: "Check every frame of the store and every snapshot's references",
		Long: "Reads every frame of every sealed pack, checks its checksum and the hash of " +
			"every page in it, and checks that every page each snapshot names is intact. " +
			"Prints each damaged pack, frame offset, snapshot and page range. Exits 0 when " +
			"nothing a snapshot references is damaged, 1 otherwise. Data no snapshot can " +
			"reference (packs of interrupted writes, temporary files) is reported but is " +
			"not a failure: cryo gc reclaims it.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := a.openExisting()
			if err != nil {
				return err
			}
			defer st.Close()
			r, err := st.Verify()
			if err != nil {
				return err
			}
			leftovers, err := unreferencedFiles(a.storeDir)
			if err != nil {
				return fmt.Errorf("verify: %w", err)
			}
			if bad := printVerify(os.Stdout, r, leftovers); bad > 0 {
				fmt.Fprintf(os.Stderr, "cryo: verify: %d problems touch snapshots\n", bad)
				return exitError{1}
			}
			return nil
		},
	}
}

// printVerify writes the report of Verify and the unreferenced files to w, and
// returns how many problems touch a snapshot. A problem that names no snapshot
// (a damaged pack none of whose pages a snapshot uses) is printed but not
// counted: Verify reports every page a snapshot names that it cannot read as a
// problem of that snapshot.
func printVerify(w io.Writer, r *pagestore.VerifyReport, leftovers []string) int {
	fmt.Fprintf(w, "checked %d packs, %d frames, %d pages, %d intact snapshots\n",
		r.Packs, r.Frames, r.Pages, r.Snapshots)
	used := map[string]bool{} // packs whose damage a snapshot meets
	bad := 0
	for _, p := range r.Problems {
		if p.Snapshot != "" {
			bad++
			used[p.Pack] = true
		}
	}
	// Damage no snapshot meets is folded to one line per pack: a truncated pack
	// has a problem for every frame past the cut.
	unused := map[string]int{}
	var unusedOrder []string
	for _, p := range r.Problems {
		if p.Snapshot != "" || used[p.Pack] {
			fmt.Fprintf(w, "DAMAGED %s\n", p)
			continue
		}
		if unused[p.Pack] == 0 {
			unusedOrder = append(unusedOrder, p.Pack)
			fmt.Fprintf(w, "damaged, no snapshot uses it: %s\n", p)
		}
		unused[p.Pack]++
	}
	for _, pack := range unusedOrder {
		if n := unused[pack]; n > 1 {
			fmt.Fprintf(w, "  (pack %s: %d more damaged places no snapshot uses)\n", pack, n-1)
		}
	}
	for _, f := range leftovers {
		fmt.Fprintf(w, "unreferenced: %s\n", f)
	}
	if len(leftovers) > 0 {
		fmt.Fprintf(w, "%d unreferenced files left by interrupted writes: "+
			"run cryo gc to reclaim them\n", len(leftovers))
	}
	switch {
	case bad > 0:
		fmt.Fprintf(w, "FAILED: %d problems touch snapshots\n", bad)
	case len(r.Problems) > 0:
		fmt.Fprintf(w, "OK: every snapshot is intact (%d problems in unreferenced data)\n",
			len(r.Problems))
	default:
		fmt.Fprintln(w, "OK")
	}
	return bad
}

// unreferencedFiles lists, relative to the store, the files no reader ever
// uses (see docs/FORMAT.md, "What a crash leaves"): packs without an index and
// temporary files. A writer running meanwhile may own some of them.
func unreferencedFiles(store string) ([]string, error) {
	var out []string
	for _, sub := range []string{"packs", "snapshots"} {
		ents, err := os.ReadDir(filepath.Join(store, sub))
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			name := e.Name()
			rel := filepath.Join(sub, name)
			switch {
			case strings.HasPrefix(name, ".tmp-"):
				out = append(out, rel+" (temporary file)")
			case sub == "packs" && strings.HasSuffix(name, ".pack"):
				idx := strings.TrimSuffix(name, ".pack") + ".idx"
				if _, err := os.Stat(filepath.Join(store, sub, idx)); os.IsNotExist(err) {
					out = append(out, rel+" (pack never sealed)")
				}
			}
		}
	}
	return out, nil
}
