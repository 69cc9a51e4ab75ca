// Command bench measures cryo on this machine against a naive full copy
// (stop, read every private mapping, write it uncompressed, fsync) taken in
// the same run, and against CRIU when it is installed.
//
//	go run ./bench [-quick] [-out DIR]
//
// It builds cryo and the C workloads of bench/workloads into DIR, runs every
// section, prints a table and writes DIR/bench.json and DIR/bench.html.
// It needs root (ptrace, userfaultfd), gcc and the go tool; run it from the
// module root.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"
)

// plan is what one mode measures.
type plan struct {
	storeMiB   int
	openM      []int
	sizes      []int // MiB, checkpoint and restore
	rwMiB      int
	mixMiB     int // the snapshot of issue 9's target mix
	shares     []float64
	trackers   []string
	runFor     time.Duration
	faultPages int
	// reps is how many times the checkpoint-and-restore and program sections
	// run; the table gives the median of each figure.
	reps int
}

var (
	quickPlan = plan{storeMiB: 64, openM: []int{1}, sizes: []int{64, 256}, rwMiB: 64, mixMiB: 64,
		shares: []float64{0.1, 1, 10, 50}, trackers: []string{"uffd-wp", "scan"},
		runFor: 3500 * time.Millisecond, faultPages: 4096, reps: 1}
	fullPlan = plan{storeMiB: 512, openM: []int{1, 10},
		sizes: []int{64, 256, 1024, 4096}, rwMiB: 1024, mixMiB: 1024,
		shares: []float64{0.1, 1, 10, 50}, trackers: []string{"uffd-wp", "scan"},
		// The first, full checkpoint of 1 GiB takes about 9 s here; the
		// increments after it are what is measured.
		runFor: 20 * time.Second, faultPages: 65536, reps: 3}
)

func main() {
	quick := flag.Bool("quick", false, "small sizes, one repetition (under 3 minutes)")
	out := flag.String("out", filepath.Join(os.TempDir(), "cryo-bench"), "output folder")
	flag.Parse()
	if err := run(*quick, *out); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func run(quick bool, dir string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("bench needs root: cryo ptraces the workloads, restores their " +
			"pids and serves their memory over userfaultfd")
	}
	// Workloads must hold no descriptor of ours beyond 0-2: cryo refuses a
	// pipe whose other end is outside the process.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fmt.Errorf("close_range: %w", err)
	}
	start := time.Now()
	p := fullPlan
	if quick {
		p = quickPlan
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := stopOnSignal(dir); err != nil {
		return err
	}
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	e, err := build(root, dir)
	if err != nil {
		return err
	}
	res := &Results{Quick: quick, Machine: machine(), Series: map[string][]Point{}}
	var failed []string

	step := func(name string, f func() error) error {
		t0 := time.Now()
		fmt.Fprintf(os.Stderr, "bench: %s...\n", name)
		if err := f(); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		fmt.Fprintf(os.Stderr, "bench: %s took %.1fs\n", name, time.Since(t0).Seconds())
		return nil
	}
	steps := []struct {
		name string
		f    func() error
	}{
		{"store ingest", func() error { return benchStore(res, dir, p.storeMiB) }},
		{"store open", func() error { return benchOpen(res, root, p.openM) }},
		{"checkpoint and restore by size", func() error {
			// A size that fails is recorded and the others still run; the
			// run fails at the end.
			for _, s := range p.sizes {
				// 4 GiB takes minutes a run: once is enough to see the trend.
				reps := p.reps
				if s > 1024 {
					reps = 1
				}
				err := repeat(res, reps, func(r *Results) error { return benchSize(r, e, s) })
				if err != nil {
					failed = append(failed, fmt.Sprintf("%d MiB: %v", s, err))
					fmt.Fprintf(os.Stderr, "bench: %d MiB: %v\n", s, err)
				}
			}
			return nil
		}},
		{"snapshot of the target mix", func() error {
			return repeat(res, p.reps, func(r *Results) error { return benchMix(r, e, p.mixMiB) })
		}},
		{"programs", func() error {
			if err := os.MkdirAll(filepath.Join(dir, "fdholder-files"), 0o755); err != nil {
				return err
			}
			for _, prog := range programs(e, root) {
				err := repeat(res, p.reps, func(r *Results) error {
					return benchProgram(r, e, prog)
				})
				if err != nil {
					failed = append(failed, fmt.Sprintf("%s: %v", prog.name, err))
					fmt.Fprintf(os.Stderr, "bench: %s: %v\n", prog.name, err)
				}
			}
			return nil
		}},
		{"fault latency", func() error { return benchFaults(res, p.faultPages) }},
		{"periodic and rewritten", func() error {
			alone, err := runRewriter(e, p.rwMiB, 1, 0, "", p.runFor)
			if err != nil {
				return err
			}
			if err := benchPeriodic(res, e, p.rwMiB, 1, p.runFor, alone); err != nil {
				return err
			}
			return benchRewritten(res, e, p.rwMiB, p.shares, p.trackers, p.runFor,
				alone.naive)
		}},
	}
	// A step that fails is recorded and the others still run, so that the
	// table, the JSON and the report show what was measured; the run fails
	// at the end.
	for _, s := range steps {
		if err := step(s.name, s.f); err != nil {
			failed = append(failed, err.Error())
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		}
	}
	res.Notes = append(res.Notes, criuNote())
	res.Notes = append(res.Notes,
		"naive = SIGSTOP, process_vm_readv of every readable private mapping, "+
			"uncompressed write, SIGCONT, fsync; naive restore = reading that file back "+
			"from the page cache (no process is rebuilt)",
		"store open: baseline = reading the same index files without parsing them; "+
			"index bytes/page: baseline = the index's bytes on disk per page",
		"fault latency (any cpu, same cpu): in-process lazy server on bench's own memory "+
			"(one page per fault, no prefetch); baseline = first touch of plain anonymous "+
			"memory",
		"fault latency (restored process): memfill, restored lazily without prefetch, "+
			"times its first read of every 32nd page; baseline = the same reads of fresh "+
			"anonymous memory in the same process",
		"lazy all in, no prefetch = to_run + trigger to memfill's OK (its verify "+
			"touches every page and includes memfill's own checking work)",
		fmt.Sprintf("total bench time %.0fs", time.Since(start).Seconds()))

	markTargets(res)
	for _, m := range missingFigures(res) {
		failed = append(failed, "figure missing: "+m)
	}
	for _, f := range failed {
		res.Notes = append(res.Notes, "FAILED "+f)
	}

	printTable(res)
	data, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bench.json"), data, 0o644); err != nil {
		return err
	}
	if err := writeReport(filepath.Join(dir, "bench.html"), res); err != nil {
		return err
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d failed, first: %s", len(failed), failed[0])
	}
	return nil
}

// required lists, by the start of their names, the figures issue 5 asks for;
// a run without one of them fails.
var required = []string{
	"ingest zero", "ingest text", "ingest random", "ingest mixed", "dedup ratio",
	"compression ratio", "open 1M pages", "index bytes/page 1M",
	"wall ", "stopped ", "stopped incr uffd-wp", "stopped incr scan",
	"slowdown every 1s", "slowdown every 100ms", "store growth per checkpoint",
	"eager GB/s", "lazy to run", "fault p50", "fault p99 ", "fault p99.9",
	"lazy all in, prefetch", "lazy all in, no prefetch", "fault p50 restored process",
	"stored/size", "checkpoint stopped fdholder", "checkpoint stopped python3",
	"lazy to run python3",
}

// missingFigures returns the entries of required that no figure of res
// starts with.
func missingFigures(res *Results) []string {
	var missing []string
	for _, r := range required {
		found := false
		for _, f := range res.Figures {
			if strings.HasPrefix(f.Name, r) {
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, r)
		}
	}
	return missing
}

// add appends a figure and its ratio to the baseline.
func add(res *Results, group, name, unit string, v, baseline float64) {
	f := Figure{Group: group, Name: name, Unit: unit, Value: v, Baseline: baseline}
	if baseline != 0 && !math.IsInf(v/baseline, 0) {
		f.Ratio = v / baseline
	}
	res.Figures = append(res.Figures, f)
}

func printTable(res *Results) {
	m := res.Machine
	fmt.Printf("machine: %s, %d cores, kernel %s, %s\n\n", m.CPU, m.Cores, m.Kernel, m.Go)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "group\tfigure\tvalue\tunit\tnaive\tcryo/naive\truns\ttarget\t")
	for _, f := range res.Figures {
		base, ratio := "-", "-"
		if f.Baseline != 0 {
			base = num(f.Baseline)
			ratio = strconv.FormatFloat(f.Ratio, 'f', 3, 64)
		}
		runs := "1"
		if f.Runs > 1 {
			runs = strconv.Itoa(f.Runs)
		}
		tgt := ""
		if f.Target != "" {
			tgt = f.Target + map[bool]string{true: " met", false: " MISSED"}[f.Met]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", f.Group, f.Name, num(f.Value),
			f.Unit, base, ratio, runs, tgt)
	}
	tw.Flush()
	fmt.Println()
	for _, n := range res.Notes {
		fmt.Println("note:", n)
	}
}

func num(v float64) string {
	switch a := math.Abs(v); {
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}

// build compiles cryo and the workloads into dir.
func build(root, dir string) (*env, error) {
	e := &env{dir: dir, cryo: filepath.Join(dir, "cryo"), memfill: filepath.Join(dir, "memfill"),
		rewriter: filepath.Join(dir, "rewriter"), fdholder: filepath.Join(dir, "fdholder")}
	cmd := exec.Command("go", "build", "-o", e.cryo, "./cmd/cryo")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build cryo: %w: %s", err, out)
	}
	for _, w := range []string{"memfill", "rewriter", "fdholder"} {
		src := filepath.Join(root, "bench", "workloads", w+".c")
		out, err := exec.Command("gcc", "-O2", "-o", filepath.Join(dir, w), src).
			CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("build %s: %w: %s", w, err, out)
		}
	}
	return e, nil
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("run bench from inside the cryo module")
	}
	return filepath.Dir(mod), nil
}

// machine describes where bench runs.
func machine() Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version()}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	return m
}

// execOut runs name and returns its stdout and stderr together.
func execOut(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%w: %s", err, out)
	}
	return string(out), nil
}
