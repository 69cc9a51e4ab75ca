package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The tests of this file check what the cryo command prints, returns and
// leaves behind in the corner cases of its commands.

// TestLsDamagedManifest checks `cryo ls` on a store where one of three
// manifests is damaged lists the other two, names the damaged one on stderr
// with the reason, and exits 1.
func TestLsDamagedManifest(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	m := startMemfill(t, 8)
	var ids []string
	for range 3 {
		ids = append(ids, checkpoint(t, store, m.p.pid))
	}

	copied := filepath.Join(t.TempDir(), "store")
	if out, err := exec.Command("cp", "-a", store, copied).CombinedOutput(); err != nil {
		t.Fatalf("copy the store: %v\n%s", err, out)
	}
	bad := ids[1]
	path := manifestFile(t, copied, bad)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
	t.Logf("truncated %s from %d to %d bytes", path, fi.Size(), fi.Size()/2)

	r := cryo(t, copied, "ls")
	t.Logf("cryo ls: exit %d\nstdout:\n%s\nstderr:\n%s", r.exit, r.stdout, r.stderr)
	var listed []string
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] != "SNAPSHOT" {
			listed = append(listed, f[0])
		}
	}
	if len(listed) != 2 || listed[0] != ids[0] || listed[1] != ids[2] {
		t.Errorf("cryo ls listed %q, want the undamaged %s and %s", listed, ids[0], ids[2])
	}
	var flagged []string
	for _, line := range strings.Split(r.stderr, "\n") {
		if strings.Contains(line, bad) {
			flagged = append(flagged, line)
		}
	}
	if len(flagged) != 1 || !corruptRE.MatchString(flagged[0]) {
		t.Errorf("cryo ls stderr lines naming %s: %q, want one saying it is damaged", bad,
			flagged)
	}
	if r.exit != 1 {
		t.Errorf("cryo ls exited %d, want 1 (a snapshot could not be listed)", r.exit)
	}
	if got := listSnapshots(t, store); len(got) != 3 {
		t.Errorf("cryo ls on the undamaged original lists %q, want 3 snapshots", got)
	}
}
