package main

import "fmt"

// target is one of issue 9's speed and size targets: a bound on the value of
// the figure named, or on its ratio to the baseline.
type target struct {
	name    string
	max     float64
	onRatio bool
}

// targets are issue 9's targets, by the names the full run gives its figures
// (a quick run measures smaller sizes and meets none of these names).
var targets = []target{
	{name: "stopped incr uffd-wp 1%/s 1024 MiB", max: 6},
	{name: "stopped 1024 MiB", max: 300},
	{name: "stored/size 1024 MiB target mix", max: 0.35},
	{name: "store growth per checkpoint every 1s, 1024 MiB 1%/s", max: 1.05, onRatio: true},
	{name: "slowdown every 1s, 1024 MiB 1%/s", max: 3},
	{name: "lazy to run 256 MiB", max: 10},
	{name: "lazy to run 1024 MiB", max: 10},
	{name: "lazy all in, prefetch 1024 MiB", max: 400},
	{name: "eager 1024 MiB", max: 400},
	{name: "fault p50 restored process 1024 MiB", max: 15},
	{name: "fault p99 restored process 1024 MiB", max: 100},
	{name: "open 10M pages", max: 1000},
	{name: "index heap bytes/page 10M", max: 64},
}

// markTargets sets Target and Met on the figures that have a target.
func markTargets(res *Results) {
	for i := range res.Figures {
		f := &res.Figures[i]
		for _, t := range targets {
			if f.Name != t.name {
				continue
			}
			v := f.Value
			f.Target = fmt.Sprintf("≤ %g", t.max)
			if t.onRatio {
				v = f.Ratio
				f.Target = "ratio " + f.Target
			}
			f.Met = v <= t.max && (!t.onRatio || f.Ratio != 0)
		}
	}
}
