package main

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// sampleResults is a Results with every kind of series and figure the
// report draws, including a figure with no baseline.
func sampleResults() *Results {
	r := &Results{
		Quick: true,
		Machine: Machine{
			CPU: "Test CPU @ 3.0GHz", Cores: 2, Kernel: "6.1.0-test", Go: "go1.26.8",
		},
		Figures: []Figure{
			{Group: "store", Name: "ingest random", Unit: "GB/s", Value: 1.234, Baseline: 2.5,
				Ratio: 1.234 / 2.5, Versus: "naive copy", HigherBetter: true},
			{Group: "checkpoint", Name: "stopped 1 GiB 1%", Unit: "ms", Value: 12.5,
				Baseline: 410, Ratio: 12.5 / 410, Versus: "naive copy"},
			{Group: "restore", Name: "fault latency p99 <lazy>", Unit: "µs", Value: 87},
		},
		Series: map[string][]Point{},
		Notes:  []string{"criu: not on PATH, no CRIU baseline"},
	}
	shares := []float64{0.1, 0.5, 1, 5, 10, 50}
	for i, tracker := range []string{"uffd-wp", "pagemap-scan"} {
		var pts []Point
		for _, s := range shares {
			pts = append(pts, Point{X: s, Y: float64(i+1) * (2 + 3*s)})
		}
		r.Series["stopped_vs_rewritten/"+tracker] = pts
	}
	var cdf []Point
	for i := 1; i <= 50; i++ {
		us := 3 * math.Pow(1.15, float64(i))
		cdf = append(cdf, Point{X: us, Y: float64(i) / 50})
	}
	r.Series["fault_latency_cdf"] = cdf
	var growth []Point
	for i := 0; i <= 20; i++ {
		growth = append(growth, Point{X: float64(i), Y: 256 + 9.5*float64(i)})
	}
	r.Series["store_growth"] = growth
	return r
}

// plotIDs are the ids of the three plots, in page order.
var plotIDs = []string{"plot-stopped", "plot-latency", "plot-growth"}

// TestReportRendersInChromium writes the report and has headless Chromium
// load it from disk: the DOM Chromium built must hold each plot with its
// drawn lines and a table row per figure, and a screenshot must come out.
// It fails, not skips, without Chromium: CI installs the Debian package
// chromium through `make deps`.
func TestReportRendersInChromium(t *testing.T) {
	chromium := findChromium(t)
	r := sampleResults()
	dir := t.TempDir()
	report := filepath.Join(dir, "report.html")
	if err := writeReport(report, r); err != nil {
		t.Fatal(err)
	}

	dom := runChromium(t, chromium, dir, "--dump-dom", "file://"+report)
	for _, id := range plotIDs {
		svg := svgElement(t, dom, id)
		if n := strings.Count(svg, "<path"); n == 0 {
			t.Errorf("%s: no <path> in the rendered DOM:\n%s", id, svg)
		}
		if strings.Contains(svg, "no data") {
			t.Errorf("%s: says no data, though its series has points", id)
		}
	}
	if n := strings.Count(svgElement(t, dom, "plot-stopped"), `class="series"`); n != 2 {
		t.Errorf("plot-stopped: %d lines, want one per tracker (2)", n)
	}
	rows := regexp.MustCompile(`<tr class="figure">(.*?)</tr>`).FindAllStringSubmatch(dom, -1)
	if len(rows) != len(r.Figures) {
		t.Fatalf("%d figure rows in the rendered table, want %d", len(rows), len(r.Figures))
	}
	want := []string{
		"<td>ingest random</td><td class=\"num\">1.234</td><td>GB/s</td>" +
			"<td class=\"num\">2.500</td><td class=\"num\" title=\"cryo / naive copy (higher is " +
			"better)\">0.494</td><td>naive copy</td>",
		"<td>stopped 1 GiB 1%</td><td class=\"num\">12.50</td><td>ms</td>" +
			"<td class=\"num\">410.0</td><td class=\"num better\" title=\"cryo / naive copy\">" +
			"0.030</td><td>naive copy</td>",
		"<td>fault latency p99 &lt;lazy&gt;</td><td class=\"num\">87.00</td><td>µs</td>" +
			"<td class=\"num\">—</td><td class=\"num\">—</td>",
	}
	for i, w := range want {
		if !strings.Contains(rows[i][1], w) {
			t.Errorf("figure row %d:\n got %s\nwant it to hold %s", i, rows[i][1], w)
		}
	}
	for _, s := range []string{r.Machine.CPU, r.Machine.Kernel, r.Machine.Go, r.Notes[0]} {
		if !strings.Contains(dom, s) {
			t.Errorf("rendered page lacks %q", s)
		}
	}

	png := filepath.Join(dir, "report.png")
	runChromium(t, chromium, dir, "--screenshot="+png, "--window-size=1000,2200",
		"--hide-scrollbars", "file://"+report)
	b, err := os.ReadFile(png)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if len(b) < 1000 || !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("screenshot %s: %d bytes, not a PNG of the page", png, len(b))
	}
	if keep := os.Getenv("CRYO_REPORT_KEEP"); keep != "" {
		copyFile(t, report, filepath.Join(keep, "report.html"))
		copyFile(t, png, filepath.Join(keep, "report.png"))
	}
}

// TestReportEmptySeries checks each plot is still on the page, saying "no
// data", when the run measured nothing for it, and that points a log axis
// cannot place are counted rather than drawn.
func TestReportEmptySeries(t *testing.T) {
	r := &Results{
		Machine: Machine{CPU: "x", Cores: 1, Kernel: "k", Go: "go"},
		Series:  map[string][]Point{"fault_latency_cdf": {{X: 0, Y: 0.5}}},
	}
	report := filepath.Join(t.TempDir(), "report.html")
	if err := writeReport(report, r); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	page := string(b)
	for _, id := range plotIDs {
		svg := svgElement(t, page, id)
		if !strings.Contains(svg, "no data") {
			t.Errorf("%s: empty plot does not say no data:\n%s", id, svg)
		}
		if strings.Contains(svg, "<path") {
			t.Errorf("%s: empty plot draws a line", id)
		}
	}
	if !strings.Contains(svgElement(t, page, "plot-latency"), "1 point(s) not drawn") {
		t.Errorf("plot-latency: the point at x=0 is not reported as left out")
	}
	if fi, err := os.Stat(report); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("report mode: %v, %v; want 0644", fi.Mode(), err)
	}
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(report), ".*tmp*")); len(m) != 0 {
		t.Errorf("temp files left beside the report: %v", m)
	}
}

// TestReportSelfContained checks the page fetches nothing: no scripts, no
// links to stylesheets or fonts, no addresses but the SVG namespace.
func TestReportSelfContained(t *testing.T) {
	report := filepath.Join(t.TempDir(), "report.html")
	if err := writeReport(report, sampleResults()); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	page := strings.ReplaceAll(string(b), `xmlns="http://www.w3.org/2000/svg"`, "")
	for _, s := range []string{"<script", "<link", "<img", "<iframe", "@import", "http:", "https:",
		"src="} {
		if strings.Contains(page, s) {
			t.Errorf("report holds %q: it must load nothing from outside the file", s)
		}
	}
}

// findChromium returns Debian's chromium, failing the test when it is not
// installed.
func findChromium(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/chromium", "chromium"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	t.Fatal("chromium not found: install the Debian package chromium " +
		"(apt-get install -y chromium; `make deps` does it) to render the bench report")
	return ""
}

// runChromium runs headless Chromium on args with a fresh profile in dir,
// with the flags that keep it off the network, and returns its stdout.
func runChromium(t *testing.T, chromium, dir string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	profile, err := os.MkdirTemp(dir, "chromium-profile")
	if err != nil {
		t.Fatal(err)
	}
	flags := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + profile,
	}
	cmd := exec.CommandContext(ctx, chromium, append(flags, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", chromium, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// svgElement returns the <svg> element with the given id in page, failing
// the test when there is none.
func svgElement(t *testing.T, page, id string) string {
	t.Helper()
	start := strings.Index(page, fmt.Sprintf(`<svg class="plot" id="%s"`, id))
	if start < 0 {
		t.Fatalf("no <svg id=%q> in the page", id)
	}
	end := strings.Index(page[start:], "</svg>")
	if end < 0 {
		t.Fatalf("<svg id=%q> is not closed", id)
	}
	return page[start : start+end]
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
