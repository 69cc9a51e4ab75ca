package testenv

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestTrackers(t *testing.T) {
	for _, c := range []struct {
		env  string
		want []string
	}{
		{"", []string{"uffd-wp", "scan"}},
		{"soft-dirty,scan", []string{"soft-dirty", "scan"}},
		{" soft-dirty , scan ,", []string{"soft-dirty", "scan"}},
	} {
		t.Setenv("CRYO_TRACKERS", c.env)
		if got := Trackers(); !slices.Equal(got, c.want) {
			t.Errorf("CRYO_TRACKERS=%q: Trackers() = %q, want %q", c.env, got, c.want)
		}
		if got := AutoTracker(); got != c.want[0] {
			t.Errorf("CRYO_TRACKERS=%q: AutoTracker() = %q, want %q", c.env, got, c.want[0])
		}
		if !TrackerRequired("scan") || TrackerRequired("bogus") {
			t.Errorf("CRYO_TRACKERS=%q: TrackerRequired wrong", c.env)
		}
	}
}

func TestPrebuilt(t *testing.T) {
	t.Setenv("CRYO_PREBUILT", "")
	if _, ok, err := Prebuilt("toucher"); ok || err != nil {
		t.Errorf("unset: ok %v, err %v; want neither", ok, err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "toucher"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CRYO_PREBUILT", dir)
	if p, ok, err := Prebuilt("toucher"); !ok || err != nil || p != filepath.Join(dir, "toucher") {
		t.Errorf("present: %q, %v, %v", p, ok, err)
	}
	if _, ok, err := Prebuilt("writer"); !ok || err == nil {
		t.Errorf("missing: ok %v, err %v; want ok and an error", ok, err)
	}
}
