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
	"errors"
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

	"github.com/cryo-dev/cryo/engine/track"
)

// plan is what one mode measures.
type plan struct {
	storeMiB   int
	openM      []int
	sizes      []int // MiB, checkpoint and restore
	rwMiB      int
	mixMiB     int // the snapshot of issue 9's target mix
	shares     []float64
	trackers   []string // filled in by run: those this kernel runs
	runFor     time.Duration
	faultPages int
	// reps is how many times the checkpoint-and-restore and program sections
	// run; the table gives the median of each figure.
	reps int
}

var (
	quickPlan = plan{storeMiB: 64, openM: []int{1}, sizes: []int{64, 256}, rwMiB: 64,
		mixMiB: 64, shares: []float64{0.1, 1, 10, 50}, runFor: 3500 * time.Millisecond,
		faultPages: 4096, reps: 1}
	fullPlan = plan{storeMiB: 512, openM: []int{1, 10},
		sizes: []int{64, 256, 1024, 4096}, rwMiB: 1024, mixMiB: 1024,
		shares: []float64{0.1, 1, 10, 50},
		// Periodic runs last this long after their first, full checkpoint.
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
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	// The go build runs in the module root: a relative folder must not mean
	// two places.
	if dir, err = filepath.Abs(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return err
	}
	defer unlock()
	if err := stopOnSignal(dir); err != nil {
		return err
	}
	e, err := build(root, dir)
	if err != nil {
		return err
	}
	res := &Results{Quick: quick, Machine: machine(), Series: map[string][]Point{}}
	var trackerNote string
	p.trackers, trackerNote = workingTrackers()
	if trackerNote != "" {
		res.Notes = append(res.Notes, trackerNote)
	}
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
			return errors.Join(benchPeriodic(res, e, p.rwMiB, 1, p.runFor, alone),
				benchRewritten(res, e, p.rwMiB, p.shares, p.trackers, p.runFor, alone.naive))
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
			"index heap bytes/page: the index in memory once open, baseline = the index's "+
			"bytes on disk per page",
		"store growth per checkpoint: the store's size after the run less its size "+
			"after the first (full) checkpoint, over the checkpoints after the first; "+
			"baseline = mean pages copied per checkpoint × the mean size of one of the "+
			"workload's pages zstd-compressed alone (the compressed dirty bytes)",
		"periodic: throughput counted only after the first, full checkpoint; the run "+
			"alone is measured just before each interval's run",
		"fault latency (any cpu, same cpu): in-process lazy server on bench's own memory "+
			"(one page per fault, no prefetch); baseline = first touch of plain anonymous "+
			"memory",
		"fault latency (restored process): memfill, restored lazily without prefetch, "+
			"times its first read of every 32nd page; baseline = the same reads of fresh "+
			"anonymous memory in the same process",
		"lazy all in: from starting cryo restore until it logs every page in; lazy "+
			"verified: until memfill, triggered as soon as it runs, has checked every page "+
			"(without prefetch, its reads are what brings the pages in)",
		fmt.Sprintf("total bench time %.0fs", time.Since(start).Seconds()))

	markTargets(res)
	for _, m := range missingFigures(res, requiredFigures(p)) {
		failed = append(failed, "figure missing: "+m)
	}
	for _, f := range failed {
		if len(f) > 400 {
			f = f[:400] + " …"
		}
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

// requiredFigures names every figure a run of plan p must produce (issue 5's
// list, at this plan's sizes); a run without one of them fails.
func requiredFigures(p plan) []string {
	var req []string
	for _, k := range fillKinds {
		req = append(req, "ingest "+k, "stored bytes "+k)
	}
	req = append(req, "compression ratio text", "compression ratio random",
		"compression ratio mixed", "dedup ratio mixed", "dedup ratio dup50")
	for _, m := range p.openM {
		req = append(req, fmt.Sprintf("open %dM pages", m),
			fmt.Sprintf("index heap bytes/page %dM", m))
	}
	for _, s := range p.sizes {
		for _, f := range []string{"wall", "stopped", "stored", "eager", "eager GB/s",
			"lazy to run", "lazy all in, prefetch", "lazy verified, prefetch",
			"lazy all in, no prefetch", "lazy verified, no prefetch",
			"fault p50 restored process", "fault p99 restored process",
			"fault p99.9 restored process"} {
			req = append(req, fmt.Sprintf("%s %d MiB", f, s))
		}
	}
	req = append(req, fmt.Sprintf("stored/size %d MiB target mix", p.mixMiB))
	for _, prog := range []string{"fdholder", "python3"} {
		for _, f := range []string{"checkpoint wall", "checkpoint stopped", "stored",
			"lazy to run", "lazy all in"} {
			req = append(req, f+" "+prog)
		}
	}
	for _, c := range []string{"any cpu", "same cpu"} {
		for _, q := range []string{"p50", "p99", "p99.9"} {
			req = append(req, fmt.Sprintf("fault %s %s", q, c))
		}
	}
	for _, iv := range []string{"1s", "100ms"} {
		name := fmt.Sprintf("every %s, %d MiB 1%%/s", iv, p.rwMiB)
		for _, f := range []string{"checks/s", "slowdown", "stopped median",
			"checkpoints/s"} {
			req = append(req, f+" "+name)
		}
	}
	req = append(req, fmt.Sprintf("store growth per checkpoint every 1s, %d MiB 1%%/s",
		p.rwMiB))
	for _, tr := range p.trackers {
		for _, pct := range p.shares {
			for _, f := range []string{"stopped incr", "wall incr", "stored incr"} {
				req = append(req, fmt.Sprintf("%s %s %g%%/s %d MiB", f, tr, pct, p.rwMiB))
			}
		}
	}
	return req
}

// missingFigures returns the names of req that no figure of res has.
func missingFigures(res *Results, req []string) []string {
	have := map[string]bool{}
	for _, f := range res.Figures {
		have[f.Name] = true
	}
	var missing []string
	for _, r := range req {
		if !have[r] {
			missing = append(missing, r)
		}
	}
	return missing
}

// workingTrackers returns the dirty-page trackers this kernel runs, scan
// always among them, and a note naming those it does not run and why.
func workingTrackers() ([]string, string) {
	var ok, not []string
	for _, k := range []string{track.KindUffdWP, track.KindSoftDirty} {
		if err := track.Probe(k); err != nil {
			not = append(not, fmt.Sprintf("%s (%v)", k, err))
			continue
		}
		ok = append(ok, k)
	}
	ok = append(ok, "scan")
	if len(not) == 0 {
		return ok, ""
	}
	return ok, "trackers this kernel does not run, so not measured: " + strings.Join(not, "; ")
}

// add appends a figure, its naive-copy baseline and their ratio.
func add(res *Results, group, name, unit string, v, baseline float64) {
	addVs(res, group, name, unit, v, baseline, "naive copy")
}

// addVs appends a figure, its baseline (named by vs) and their ratio. A value
// that is not a number (a division by a zero count) is left out, with a note.
func addVs(res *Results, group, name, unit string, v, baseline float64, vs string) {
	if math.IsNaN(v) || math.IsInf(v, 0) || math.IsNaN(baseline) || math.IsInf(baseline, 0) {
		res.Notes = append(res.Notes, fmt.Sprintf("left out %s %s: value %v, baseline %v",
			group, name, v, baseline))
		return
	}
	f := Figure{Group: group, Name: name, Unit: unit, Value: v, Baseline: baseline,
		HigherBetter: unit == "GB/s" || unit == "MB/s" || unit == "1/s" || unit == "x"}
	if baseline != 0 {
		f.Versus = vs
		f.Ratio = v / baseline
	}
	res.Figures = append(res.Figures, f)
}

func printTable(res *Results) {
	m := res.Machine
	fmt.Printf("machine: %s, %d cores, kernel %s, %s\n\n", m.CPU, m.Cores, m.Kernel, m.Go)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "group\tfigure\tvalue\tunit\tbaseline\tcryo/baseline\truns\ttarget\t"+
		"baseline is\t")
	for _, f := range res.Figures {
		base, ratio := "-", "-"
		if f.Baseline != 0 {
			base = num(f.Baseline)
		}
		if f.Ratio != 0 {
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", f.Group, f.Name,
			num(f.Value), f.Unit, base, ratio, runs, tgt, f.Versus)
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

// lockDir takes an exclusive lock on dir/.bench.lock, so that two runs do not
// remove each other's stores, and returns its release.
func lockDir(dir string) (func(), error) {
	path := filepath.Join(dir, ".bench.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock output folder: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		return nil, fmt.Errorf("output folder %s is in use by another bench run (pid %s): "+
			"choose another -out", dir, strings.TrimSpace(string(holder)))
	}
	f.Truncate(0)
	fmt.Fprintf(f, "%d\n", os.Getpid())
	return func() { f.Close() }, nil
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
