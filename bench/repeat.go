package main

import (
	"context"
	"fmt"
	"math"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// repeat runs f n times, each time into results of its own, and adds to res
// the median of every figure over the runs (baselines too: each run measures
// its own), the series of the last run and the notes of all of them.
func repeat(res *Results, n int, f func(r *Results) error) error {
	var runs []*Results
	var failed error
	for i := range max(n, 1) {
		r := &Results{Series: map[string][]Point{}}
		if err := f(r); err != nil {
			// The repetitions that worked still give their figures.
			failed = fmt.Errorf("repetition %d of %d: %w", i+1, n, err)
			break
		}
		runs = append(runs, r)
	}
	if len(runs) == 0 {
		return failed
	}

	for i, fig := range runs[0].Figures {
		var vals, bases []float64
		for _, r := range runs {
			if i < len(r.Figures) && r.Figures[i].Name == fig.Name {
				vals = append(vals, r.Figures[i].Value)
				bases = append(bases, r.Figures[i].Baseline)
			}
		}
		addVs(res, fig.Group, fig.Name, fig.Unit, medianF(vals), medianF(bases), fig.Versus)
		res.Figures[len(res.Figures)-1].Runs = len(vals)
	}
	last := runs[len(runs)-1]
	for k, pts := range last.Series {
		res.Series[k] = append(res.Series[k], pts...)
	}
	for _, r := range runs {
		res.Notes = append(res.Notes, r.Notes...)
	}
	return failed
}

// medianF is the median of v (the mean of the middle two for an even count).
func medianF(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// criuNote says whether a CRIU baseline could be taken on this machine.
// bench takes none yet: see the closing comment of this function.
func criuNote() string {
	path, err := exec.LookPath("criu")
	if err != nil {
		return "no CRIU baseline: criu is not on PATH"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "check").CombinedOutput()
	if err != nil {
		var errs []string
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "Error") && !strings.Contains(l, "exited, status") {
				errs = append(errs, strings.TrimSpace(l))
			}
		}
		if len(errs) > 2 {
			errs = errs[:2]
		}
		return fmt.Sprintf("no CRIU baseline: %s is on PATH but `criu check` fails on this "+
			"kernel (%v): %s", path, err, strings.Join(errs, "; "))
	}
	// Debian 12's criu 3.17 fails `criu check` on Linux 6.18 (it does not
	// know the vvar_vclock mapping), so a CRIU driver could not be run, and
	// bench does not carry one it never ran. A machine where the check passes
	// gets this note instead of figures; a driver (criu dump -t PID -D DIR,
	// criu restore -D DIR -d, memfill verifying after) would lift it.
	return fmt.Sprintf("no CRIU baseline: %s passes `criu check` but bench has no CRIU "+
		"driver yet (none could be tested where it was written)", path)
}
