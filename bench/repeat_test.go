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

// TestMarkTargets checks a target on the value and one on the ratio, met and
// missed, and that a figure without a target gets none.
func TestMarkTargets(t *testing.T) {
	res := &Results{}
	add(res, "checkpoint", "stopped incr uffd-wp 1%/s 1024 MiB", "ms", 5.5, 400)
	add(res, "restore", "eager 1024 MiB", "ms", 650, 300)
	add(res, "periodic", "store growth per checkpoint every 1s, 1024 MiB 1%/s", "KiB", 100, 98)
	add(res, "restore", "eager 64 MiB", "ms", 10, 5)
	markTargets(res)
	want := []struct {
		target string
		met    bool
	}{{"≤ 6", true}, {"≤ 400", false}, {"ratio ≤ 1.05", true}, {"", false}}
	for i, w := range want {
		if f := res.Figures[i]; f.Target != w.target || f.Met != w.met {
			t.Errorf("%s: target %q met %v, want %q %v", f.Name, f.Target, f.Met, w.target,
				w.met)
		}
	}
}
