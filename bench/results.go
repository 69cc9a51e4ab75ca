package main

// Results is everything one bench run measured; it is written to bench.json
// and rendered by writeReport.
type Results struct {
	// Quick is true for a -quick run: small sizes, one repetition.
	Quick   bool    `json:"quick"`
	Machine Machine `json:"machine"`
	// Figures holds one row of the table each.
	Figures []Figure `json:"figures"`
	// Series holds the points of each plot, keyed by plot name:
	// "stopped_vs_rewritten/<tracker>" (X share rewritten in %, Y stopped ms),
	// "fault_latency_cdf" (X latency in µs, Y fraction of faults at or below),
	// "store_growth" (X checkpoint number, Y stored bytes in MiB).
	Series map[string][]Point `json:"series"`
	// Notes are lines printed under the table: baselines not measured,
	// figures left out and why.
	Notes []string `json:"notes"`
}

// Machine records where the figures were measured.
type Machine struct {
	CPU    string `json:"cpu"`
	Cores  int    `json:"cores"`
	Kernel string `json:"kernel"`
	Go     string `json:"go"`
}

// Figure is one measured value, beside its baseline when one applies.
type Figure struct {
	Group string  `json:"group"` // store, checkpoint, periodic, restore, naive
	Name  string  `json:"name"`
	Unit  string  `json:"unit"`
	Value float64 `json:"value"`
	// Baseline is the figure of the baseline named by Versus, measured in the
	// same run; 0 means there is none.
	Baseline float64 `json:"baseline"`
	// Versus names the baseline: "naive copy" unless said otherwise.
	Versus string `json:"versus,omitempty"`
	// HigherBetter is true for figures where more is better (throughputs,
	// ratios of compression): there a Ratio above 1 favours cryo.
	HigherBetter bool `json:"higher_better,omitempty"`
	// Ratio is Value/Baseline, or 0 when there is no baseline.
	Ratio float64 `json:"ratio"`
	// Target is issue 9's target for this figure, as "≤ 6" (on Value) or
	// "ratio ≤ 1.05" (on Ratio); empty when it has none. Met says whether
	// this run meets it.
	Target string `json:"target,omitempty"`
	Met    bool   `json:"met,omitempty"`
	// Runs is how many repetitions Value and Baseline are the medians of
	// (0 for a figure measured once).
	Runs int `json:"runs,omitempty"`
}

// Point is one point of a plotted series.
type Point struct {
	X float64 `json:"x"`
	Y float64 `json:"y"`
}
