package main

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// TestParseConsole parses a console of a passing run, then the same console
// damaged in the ways a run fails, each of which the verdict must catch.
func TestParseConsole(t *testing.T) {
	good, err := os.ReadFile("testdata/console-pass.txt")
	if err != nil {
		t.Fatal(err)
	}
	res := parseConsole(strings.NewReader(string(good)))
	if err := res.verdict(); err != nil {
		t.Fatalf("verdict on a passing console: %v", err)
	}
	if res.kernel != "6.1.0-57-amd64" || res.auto != "soft-dirty" {
		t.Errorf("kernel %q, auto %q", res.kernel, res.auto)
	}
	if !strings.HasPrefix(res.trackers["uffd-wp"], "UNAVAILABLE:") {
		t.Errorf("uffd-wp state %q, want UNAVAILABLE", res.trackers["uffd-wp"])
	}
	want := []truthRound{{0, 460, 460, 0}, {1, 461, 463, 2}}
	if !slices.Equal(res.extras["soft-dirty"], want) {
		t.Errorf("soft-dirty rounds %v, want %v", res.extras["soft-dirty"], want)
	}
	if got := res.extras["soft-dirty (track-thp-always)"]; len(got) != 1 || got[0].extra != 15421 {
		t.Errorf("soft-dirty rounds under THP always %v", got)
	}
	if len(res.skips) != 1 || !strings.Contains(res.skips[0], "UNAVAILABLE") {
		t.Errorf("skips %q, want one giving its reason", res.skips)
	}
	var out strings.Builder
	res.print(&out)
	for _, s := range []string{"*** tracker uffd-wp UNAVAILABLE", "round 1: 461 written, 2 extra",
		"passed: TestTruth TestTruth/soft-dirty TestTruth/scan\n",
		"*** SKIPPED: --- SKIP: TestTruth/uffd-wp"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("summary lacks %q:\n%s", s, out.String())
		}
	}

	damage := []struct {
		name      string
		old, new  string
		wantInErr string
	}{
		{"test failed", "--- PASS: TestTruth/scan", "--- FAIL: TestTruth/scan", "test failures"},
		{"step exit", "END track exit=0", "END track exit=1", "step track exited 1"},
		{"step never ended", "CRYO-VM END track exit=0 seconds=4.7\n", "",
			"step track never ended"},
		{"guest crashed", "CRYO-VM DONE", "", "never said DONE"},
		{"panic", "PASS\nCRYO-VM END track ", "panic: test timed out\nCRYO-VM END track ",
			"test failures"},
		{"auto", "AUTO soft-dirty", "AUTO scan", "picked \"scan\""},
		{"no soft-dirty", "TRACKER soft-dirty available", "TRACKER soft-dirty UNAVAILABLE: x",
			"soft-dirty tracker is not available"},
		{"no truth rounds", "tracker soft-dirty: 4", "tracker soft_dirty: 4",
			"no round for soft-dirty"},
		{"setting refused", "CRYO-VM WROTE /sys/kernel/mm/transparent_hugepage/enabled always",
			"CRYO-VM WRITE-FAILED /sys/kernel/mm/transparent_hugepage/enabled: EPERM",
			"WRITE-FAILED"},
	}
	for _, d := range damage {
		if !strings.Contains(string(good), d.old) {
			t.Fatalf("%s: the console lacks %q", d.name, d.old)
		}
		bad := strings.ReplaceAll(string(good), d.old, d.new)
		err := parseConsole(strings.NewReader(bad)).verdict()
		if err == nil || !strings.Contains(err.Error(), d.wantInErr) {
			t.Errorf("%s: verdict %v, want an error saying %q", d.name, err, d.wantInErr)
		}
	}
}
