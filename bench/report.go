package main

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// writeReport writes r as one self-contained HTML page at path: the machine,
// a table of every figure beside its baseline, and three inline SVG plots
// (stopped time against share rewritten, fault latency CDF, store growth over
// periodic checkpoints). The page loads nothing: no scripts, no styles and no
// fonts from elsewhere, so it opens the same offline as on a CI artifact page.
//
// Each plot's <svg> has a fixed id (plot-stopped, plot-latency, plot-growth)
// and is drawn even when its series is missing, saying "no data" instead.
//
// The file is written durably: a temp file in the same folder, fsync, rename,
// fsync of the folder. It holds no process memory, so mode 0644.
func writeReport(path string, r *Results) error {
	page := reportPage{
		Title:   "cryo bench",
		Quick:   r.Quick,
		Machine: r.Machine,
		Notes:   r.Notes,
		Plots: []svgPlot{
			svgStoppedPlot(r.Series),
			svgLatencyPlot(r.Series["fault_latency_cdf"]),
			svgGrowthPlot(r.Series["store_growth"]),
		},
	}
	for _, f := range r.Figures {
		page.Rows = append(page.Rows, newReportRow(f))
	}

	var buf bytes.Buffer
	if err := reportTemplate.Execute(&buf, page); err != nil {
		return fmt.Errorf("write report %s: render: %w", path, err)
	}
	if err := writeReportFile(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write report %s: %w", path, err)
	}
	return nil
}

// reportPage is what reportTemplate renders.
type reportPage struct {
	Title   string
	Quick   bool
	Machine Machine
	Rows    []reportRow
	Notes   []string
	Plots   []svgPlot
}

// reportRow is one row of the figure table, formatted for display.
type reportRow struct {
	Group, Name, Unit      string
	Value, Baseline, Ratio string
	Runs                   int
	Versus                 string
	Target                 string
	HasBaseline, Better    bool
	RatioTitle             string
}

func newReportRow(f Figure) reportRow {
	row := reportRow{
		Group: f.Group, Name: f.Name, Unit: f.Unit,
		Value: reportNum(f.Value), Baseline: "—", Ratio: "—", Runs: max(f.Runs, 1),
	}
	if f.Target != "" {
		row.Target = f.Target + map[bool]string{true: " met", false: " missed"}[f.Met]
	}
	if f.Baseline != 0 {
		row.Baseline = reportNum(f.Baseline)
		row.Versus = f.Versus
	}
	if f.Ratio != 0 {
		row.HasBaseline = true
		row.Ratio = strconv.FormatFloat(f.Ratio, 'f', 3, 64)
		row.RatioTitle = "cryo / " + f.Versus
		if f.HigherBetter {
			row.RatioTitle += " (higher is better)"
		}
		row.Better = f.Ratio > 1 == f.HigherBetter && f.Ratio != 1
	}
	return row
}

// reportNum prints v with four significant digits, without an exponent for
// the magnitudes the bench produces.
func reportNum(v float64) string {
	if v == 0 {
		return "0"
	}
	if a := math.Abs(v); a >= 1e-3 && a < 1e9 {
		return reportDigits(v)
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

// reportDigits is v with four significant digits in plain notation.
func reportDigits(v float64) string {
	digits := 4 - int(math.Floor(math.Log10(math.Abs(v)))) - 1
	if digits < 0 {
		digits = 0
	}
	return strconv.FormatFloat(v, 'f', digits, 64)
}

// Plot geometry, in SVG user units. The plot area is the rectangle inside
// the margins; axes run along its left and bottom edges.
const (
	svgW, svgH                                     = 720, 400
	svgMarginL, svgMarginR, svgMarginT, svgMarginB = 70, 160, 36, 56
	svgX0, svgX1                                   = svgMarginL, svgW - svgMarginR
	svgY0, svgY1                                   = svgMarginT, svgH - svgMarginB
)

// svgPalette colours the lines of a plot in order; it is chosen to stay
// distinguishable for the common colour-vision deficiencies.
var svgPalette = []string{"#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9"}

// svgPlot is one SVG figure, laid out in Go so the template only places
// precomputed coordinates and path data.
type svgPlot struct {
	ID, Title, XLabel, YLabel string
	W, H                      int
	AreaX0, AreaX1            float64
	AreaY0, AreaY1            float64
	XTicks, YTicks            []svgTick
	Lines                     []svgLine
	// Empty is true when no series has a point to draw; the plot then shows
	// its axes frame and "no data".
	Empty bool
	// Dropped counts points left out because a log axis cannot place them
	// (X at or below zero).
	Dropped int
}

// svgTick is one labelled tick mark; Pos is in SVG units along its axis.
type svgTick struct {
	Pos   float64
	Label string
	Major bool
}

// svgLine is one series drawn as a path, with a legend entry.
type svgLine struct {
	Name, Color, D string
	Dots           []svgDot
	LegendY        float64
}

type svgDot struct{ X, Y float64 }

// svgStoppedPlot draws one line per tracker from the series named
// "stopped_vs_rewritten/<tracker>", X on a log scale.
func svgStoppedPlot(series map[string][]Point) svgPlot {
	const prefix = "stopped_vs_rewritten/"
	var names []string
	for k := range series {
		if strings.HasPrefix(k, prefix) {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	var ss []svgSeries
	for _, k := range names {
		ss = append(ss, svgSeries{strings.TrimPrefix(k, prefix), series[k]})
	}
	return svgLayout("plot-stopped", "Stopped time against share rewritten",
		"pages rewritten between checkpoints (%, log)", "stopped time (ms)", true, ss)
}

// svgLatencyPlot draws the fault latency CDF, X on a log scale.
func svgLatencyPlot(pts []Point) svgPlot {
	return svgLayout("plot-latency", "Lazy restore: fault latency CDF",
		"fault latency (µs, log)", "fraction of faults ≤ x", true,
		[]svgSeries{{"faults", pts}})
}

// svgGrowthPlot draws the bytes appended to packs by the periodic checkpoints so
// far, after each one.
func svgGrowthPlot(pts []Point) svgPlot {
	return svgLayout("plot-growth", "Store growth over periodic checkpoints",
		"checkpoint", "appended to packs (MiB)", false, []svgSeries{{"store", pts}})
}

type svgSeries struct {
	Name   string
	Points []Point
}

// svgLayout maps the series onto the plot area: X linear or log10, Y
// linear from zero (or from the smallest value when it is negative).
func svgLayout(id, title, xlabel, ylabel string, logX bool, ss []svgSeries) svgPlot {
	p := svgPlot{
		ID: id, Title: title, XLabel: xlabel, YLabel: ylabel, W: svgW, H: svgH,
		AreaX0: svgX0, AreaX1: svgX1, AreaY0: svgY0, AreaY1: svgY1,
	}

	// Keep the points each axis can place, sorted by X so lines run left to
	// right, and find the data range.
	xmin, xmax := math.Inf(1), math.Inf(-1)
	ymin, ymax := 0.0, math.Inf(-1)
	kept := make([][]Point, len(ss))
	for i, s := range ss {
		for _, pt := range s.Points {
			if math.IsNaN(pt.X) || math.IsNaN(pt.Y) || math.IsInf(pt.X, 0) ||
				math.IsInf(pt.Y, 0) || (logX && pt.X <= 0) {
				p.Dropped++
				continue
			}
			kept[i] = append(kept[i], pt)
			xmin, xmax = math.Min(xmin, pt.X), math.Max(xmax, pt.X)
			ymin, ymax = math.Min(ymin, pt.Y), math.Max(ymax, pt.Y)
		}
		sort.SliceStable(kept[i], func(a, b int) bool { return kept[i][a].X < kept[i][b].X })
	}
	if math.IsInf(xmin, 1) {
		p.Empty = true
		return p
	}

	// X scale.
	var xs func(float64) float64
	if logX {
		lo := math.Floor(math.Log10(xmin))
		hi := math.Ceil(math.Log10(xmax))
		if hi == lo {
			hi = lo + 1
		}
		xs = func(x float64) float64 {
			return svgX0 + (math.Log10(x)-lo)/(hi-lo)*(svgX1-svgX0)
		}
		p.XTicks = svgLogTicks(lo, hi, xs)
	} else {
		lo, hi, step := svgNiceRange(math.Min(xmin, 0), xmax)
		xs = func(x float64) float64 { return svgX0 + (x-lo)/(hi-lo)*(svgX1-svgX0) }
		p.XTicks = svgLinearTicks(lo, hi, step, xs)
	}

	// Y scale.
	ylo, yhi, ystep := svgNiceRange(ymin, ymax)
	ys := func(y float64) float64 { return svgY1 - (y-ylo)/(yhi-ylo)*(svgY1-svgY0) }
	p.YTicks = svgLinearTicks(ylo, yhi, ystep, ys)

	for i, s := range ss {
		if len(kept[i]) == 0 {
			continue
		}
		l := svgLine{
			Name:    s.Name,
			Color:   svgPalette[len(p.Lines)%len(svgPalette)],
			LegendY: svgY0 + 14 + 20*float64(len(p.Lines)),
		}
		var d strings.Builder
		for j, pt := range kept[i] {
			x, y := xs(pt.X), ys(pt.Y)
			cmd := "L"
			if j == 0 {
				cmd = "M"
			}
			fmt.Fprintf(&d, "%s%.2f,%.2f ", cmd, x, y)
			l.Dots = append(l.Dots, svgDot{x, y})
		}
		l.D = strings.TrimSpace(d.String())
		p.Lines = append(p.Lines, l)
	}
	return p
}

// svgNiceRange widens [lo, hi] to multiples of a 1, 2 or 5 step giving about
// five intervals.
func svgNiceRange(lo, hi float64) (float64, float64, float64) {
	if hi <= lo {
		hi = lo + 1
	}
	raw := (hi - lo) / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := 10 * mag
	for _, m := range []float64{1, 2, 5} {
		if raw <= m*mag {
			step = m * mag
			break
		}
	}
	return math.Floor(lo/step) * step, math.Ceil(hi/step) * step, step
}

func svgLinearTicks(lo, hi, step float64, scale func(float64) float64) []svgTick {
	var ts []svgTick
	for i := 0; ; i++ {
		v := lo + float64(i)*step
		if v > hi+step/1e6 {
			break
		}
		ts = append(ts, svgTick{Pos: scale(v), Label: svgTickLabel(v, step), Major: true})
	}
	return ts
}

// svgLogTicks puts a labelled tick at each power of ten from 10^lo to 10^hi and
// unlabelled minor ticks at 2..9 times each.
func svgLogTicks(lo, hi float64, scale func(float64) float64) []svgTick {
	var ts []svgTick
	for e := lo; e <= hi; e++ {
		base := math.Pow(10, e)
		ts = append(ts, svgTick{Pos: scale(base), Label: svgTickLabel(base, base), Major: true})
		if e == hi {
			break
		}
		for m := 2.0; m <= 9; m++ {
			ts = append(ts, svgTick{Pos: scale(m * base)})
		}
	}
	return ts
}

// svgTickLabel prints v with as many decimals as step needs.
func svgTickLabel(v, step float64) string {
	if math.Abs(v) < step/1e6 {
		return "0"
	}
	decimals := 0
	if step < 1 {
		decimals = int(math.Ceil(-math.Log10(step) - 1e-9))
	}
	if math.Abs(v) >= 1e6 || math.Abs(v) < 1e-4 {
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
	return strconv.FormatFloat(v, 'f', decimals, 64)
}

// writeReportFile writes data to path through a temp file in the same
// folder: write, fsync, close, rename, fsync the folder. The temp file is
// removed on any error, so a reader sees the old report or the new one.
func writeReportFile(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()

	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true

	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// reportFuncs does the little arithmetic the template needs to offset
// labels from the coordinates svgLayout computed.
var reportFuncs = template.FuncMap{
	"add":  func(a, b any) float64 { return reportFloat(a) + reportFloat(b) },
	"sub":  func(a, b any) float64 { return reportFloat(a) - reportFloat(b) },
	"half": func(a, b any) float64 { return (reportFloat(a) + reportFloat(b)) / 2 },
}

func reportFloat(v any) float64 {
	switch v := v.(type) {
	case int:
		return float64(v)
	case float64:
		return v
	}
	panic(fmt.Sprintf("report template: number of type %T", v))
}

//go:embed report.html.tmpl
var reportHTML string

var reportTemplate = template.Must(template.New("report").Funcs(reportFuncs).
	Parse(reportHTML))
