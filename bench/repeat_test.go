package main

import (
	"errors"
	"math"
	"strings"
	"testing"
)

// TestRepeatMedians checks repeat keeps one row per figure, each the median
// of its runs, baseline and ratio included, and stops at a failing run.
func TestRepeatMedians(t *testing.T) {
	vals := []float64{30, 10, 20}
	run := 0
	res := &Results{Series: map[string][]Point{}}
	err := repeat(res, 3, func(r *Results) error {
		v := vals[run]
		run++
		add(r, "restore", "lazy to run", "ms", v, 2*v)
		add(r, "restore", "no baseline", "ms", v+1, 0)
		r.Series["s"] = []Point{{X: float64(run), Y: v}}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Figures) != 2 {
		t.Fatalf("got %d figures, want 2: %+v", len(res.Figures), res.Figures)
	}
	f := res.Figures[0]
	if f.Value != 20 || f.Baseline != 40 || f.Ratio != 0.5 || f.Runs != 3 {
		t.Errorf("median figure = %+v, want value 20 baseline 40 ratio 0.5 runs 3", f)
	}
	if g := res.Figures[1]; g.Value != 21 || g.Baseline != 0 || g.Ratio != 0 {
		t.Errorf("figure without baseline = %+v, want value 21 and no baseline", g)
	}
	if pts := res.Series["s"]; len(pts) != 1 || pts[0].X != 3 {
		t.Errorf("series = %+v, want the last run's only", pts)
	}

	boom := errors.New("boom")
	err = repeat(&Results{Series: map[string][]Point{}}, 3, func(r *Results) error {
		return boom
	})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "repetition 1 of 3") {
		t.Errorf("repeat of a failing run: %v", err)
	}
}

func TestMedianF(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{[]float64{5}, 5}, {[]float64{4, 1, 3, 2}, 2.5}, {[]float64{9, 1, 5}, 5}} {
		if got := medianF(c.in); got != c.want {
			t.Errorf("medianF(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	if !math.IsNaN(medianF(nil)) {
		t.Error("medianF(nil) is not NaN")
	}
}
