package main

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// results is what the guest's console said.
type results struct {
	kernel   string
	trackers map[string]string // kind: "available" or "UNAVAILABLE: why"
	auto     string            // the kind "auto" picked
	steps    []step
	fails    []string                // "--- FAIL" lines, and panics
	skips    []string                // "--- SKIP" lines, each with the reason the test gave
	extras   map[string][]truthRound // by tracker, and step when not "track"
	wrote    []string                // settings the guest wrote
	setupErr string
	done     bool
}

// step is one test binary the guest ran.
type step struct {
	name    string
	exit    int
	seconds float64
	ended   bool
	passed  []string // the tests and subtests that passed
}

// truthRound is one round of the tracker-truth test (engine/track TestTruth).
type truthRound struct {
	round, written, reported, extra int
}

// truthLine is what TestTruth logs after each round.
var truthLine = regexp.MustCompile(
	`tracker (\S+): (\d+) written, (\d+) reported, (-?\d+) extra \(round (\d+)`)

// parseConsole reads the console to its end.
func parseConsole(r io.Reader) *results {
	res := &results{trackers: map[string]string{}, extras: map[string][]truthRound{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	skipWhy := map[string]string{} // test: the last log line saying SKIP
	current := ""                  // the test running, from "=== RUN"
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		trimmed := strings.TrimSpace(line)
		// The first marker may follow the firmware's terminal escapes.
		if i := strings.Index(line, "CRYO-VM "); i >= 0 {
			res.marker(line[i+len("CRYO-VM "):])
			continue
		}
		switch {
		case strings.HasPrefix(trimmed, "=== RUN"), strings.HasPrefix(trimmed, "=== CONT"):
			current = strings.TrimSpace(trimmed[len("=== RUN"):])
		case strings.HasPrefix(trimmed, "--- FAIL:"), strings.HasPrefix(trimmed, "panic:"),
			strings.HasPrefix(trimmed, "FAIL:"):
			res.fails = append(res.fails, trimmed)
		case strings.HasPrefix(trimmed, "--- PASS:") && len(res.steps) > 0:
			if f := strings.Fields(trimmed); len(f) >= 3 {
				s := &res.steps[len(res.steps)-1]
				s.passed = append(s.passed, f[2])
			}
		case strings.HasPrefix(trimmed, "--- SKIP:"):
			f := strings.Fields(trimmed)
			s := trimmed
			if len(f) >= 3 && skipWhy[f[2]] != "" {
				s += ": " + skipWhy[f[2]]
			}
			res.skips = append(res.skips, s)
		case strings.Contains(trimmed, "SKIP") && current != "":
			skipWhy[current] = trimmed
		}
		if m := truthLine.FindStringSubmatch(line); m != nil {
			n := func(i int) int { v, _ := strconv.Atoi(m[i]); return v }
			key := m[1]
			if len(res.steps) > 0 && res.steps[len(res.steps)-1].name != "track" {
				key += " (" + res.steps[len(res.steps)-1].name + ")"
			}
			res.extras[key] = append(res.extras[key], truthRound{round: n(5),
				written: n(2), reported: n(3), extra: n(4)})
		}
	}
	return res
}

// marker records one CRYO-VM line of the guest.
func (res *results) marker(m string) {
	word, rest, _ := strings.Cut(m, " ")
	switch word {
	case "KERNEL":
		res.kernel = rest
	case "TRACKER":
		kind, state, _ := strings.Cut(rest, " ")
		res.trackers[kind] = state
	case "AUTO":
		res.auto = rest
	case "BEGIN":
		res.steps = append(res.steps, step{name: rest})
	case "END":
		f := strings.Fields(rest)
		if len(f) < 2 || len(res.steps) == 0 || res.steps[len(res.steps)-1].name != f[0] {
			res.fails = append(res.fails, "unexpected END marker: "+m)
			return
		}
		s := &res.steps[len(res.steps)-1]
		s.ended = true
		for _, kv := range f[1:] {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "exit":
				s.exit, _ = strconv.Atoi(v)
			case "seconds":
				s.seconds, _ = strconv.ParseFloat(v, 64)
			}
		}
	case "WROTE":
		res.wrote = append(res.wrote, rest)
	case "SETUP-FAILED", "PLAN-FAILED", "WRITE-FAILED":
		res.setupErr = m
	case "DONE":
		res.done = true
	}
}

// verdict is nil when the guest ran every step to success on a kernel with
// soft-dirty tracking that "auto" picked, and the tracker-truth test reported
// on soft-dirty; otherwise it says what went wrong.
func (res *results) verdict() error {
	var bad []string
	if res.setupErr != "" {
		bad = append(bad, res.setupErr)
	}
	if !res.done {
		bad = append(bad, "the guest never said DONE (crashed, hung or was killed)")
	}
	for _, s := range res.steps {
		if !s.ended {
			bad = append(bad, fmt.Sprintf("step %s never ended", s.name))
		} else if s.exit != 0 {
			bad = append(bad, fmt.Sprintf("step %s exited %d", s.name, s.exit))
		}
	}
	if len(res.steps) == 0 {
		bad = append(bad, "the guest ran no step")
	}
	if len(res.fails) > 0 {
		bad = append(bad, fmt.Sprintf("%d test failures", len(res.fails)))
	}
	if res.trackers["soft-dirty"] != "available" {
		bad = append(bad, fmt.Sprintf("the soft-dirty tracker is not available in the VM (%q)",
			res.trackers["soft-dirty"]))
	}
	if res.auto != "soft-dirty" {
		bad = append(bad, fmt.Sprintf("--tracker auto picked %q in the VM, want soft-dirty",
			res.auto))
	}
	if len(res.extras["soft-dirty"]) == 0 {
		bad = append(bad, "the tracker-truth test reported no round for soft-dirty")
	}
	if len(bad) > 0 {
		return fmt.Errorf("%s", strings.Join(bad, "; "))
	}
	return nil
}

// print writes the summary: kernel, trackers, steps, failures, skips and the
// extra pages of each tracker.
func (res *results) print(w io.Writer) {
	fmt.Fprintf(w, "\n===== cryo VM test summary =====\nkernel: %s\n", res.kernel)
	kinds := make([]string, 0, len(res.trackers))
	for k := range res.trackers {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		state := res.trackers[k]
		if state != "available" {
			fmt.Fprintf(w, "*** tracker %s %s ***\n", k, state)
		} else {
			fmt.Fprintf(w, "tracker %s: available\n", k)
		}
	}
	fmt.Fprintf(w, "--tracker auto picks: %s\n", res.auto)
	for _, s := range res.steps {
		state := fmt.Sprintf("exit %d", s.exit)
		if !s.ended {
			state = "NEVER ENDED"
		}
		fmt.Fprintf(w, "step %-16s %s in %.1fs; passed: %s\n", s.name, state, s.seconds,
			strings.Join(s.passed, " "))
	}
	for _, s := range res.wrote {
		fmt.Fprintf(w, "set %s\n", s)
	}
	keys := []string{"uffd-wp", "soft-dirty", "scan"}
	for k := range res.extras {
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys[3:])
	for _, k := range keys {
		rounds := res.extras[k]
		if len(rounds) == 0 {
			fmt.Fprintf(w, "extra pages, tracker %-10s: NONE: no truth-test round ran\n", k)
			continue
		}
		var parts []string
		for _, r := range rounds {
			parts = append(parts, fmt.Sprintf("round %d: %d written, %d extra", r.round,
				r.written, r.extra))
		}
		fmt.Fprintf(w, "extra pages, tracker %-10s: %s\n", k, strings.Join(parts, "; "))
	}
	for _, s := range res.skips {
		fmt.Fprintf(w, "*** SKIPPED: %s ***\n", s)
	}
	for _, f := range res.fails {
		fmt.Fprintf(w, "*** FAILED: %s ***\n", f)
	}
}
