package e2e

import (
	"fmt"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestUnsupportedFD is acceptance item 5: checkpointing a process that holds
// a netlink socket or an io_uring fails with an error naming the fd number and
// its kind; the process runs on untraced and unharmed (its descriptor still
// works and its memory is intact); and the store is unchanged: `cryo ls`
// lists the same snapshots and no file was added or grown.
func TestUnsupportedFD(t *testing.T) {
	requireE2E(t)
	for _, tc := range []struct {
		kind   string
		wantRE string // what the error must say about the kind
	}{
		{"netlink", `(?i)netlink`},
		{"io_uring", `(?i)io[_-]?uring`},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			store := newStore(t)

			// A snapshot already in the store, which must stay the only one.
			base := startMemfill(t, 8)
			baseID := checkpoint(t, store, base.p.pid)
			base.p.kill(t)
			lsBefore := listSnapshots(t, store)
			filesBefore := storeFiles(t, store)

			dir := t.TempDir()
			trigger := filepath.Join(dir, "trigger")
			p := start(t, spawn{argv: []string{filepath.Join(binDir, "sockholder"), tc.kind,
				trigger}, stdoutFile: filepath.Join(dir, "stdout")})
			out := waitOutput(t, p.out, "\n", readyTimeout)
			if strings.HasPrefix(out, "unsupported:") {
				t.Skipf("SKIPPING: this kernel cannot make a %s: %s", tc.kind, out)
			}
			var fd, port int
			if _, err := fmt.Sscanf(out, "ready fd=%d kind="+tc.kind+" port=%d", &fd,
				&port); err != nil {
				t.Fatalf("sockholder printed %q: %v", out, err)
			}

			r := cryo(t, store, "checkpoint", fmt.Sprint(p.pid))
			t.Logf("cryo checkpoint (exit %d, %v): stderr %q", r.exit, r.took, r.stderr)
			if r.exit == 0 {
				t.Fatalf("checkpoint of a process holding a %s succeeded (printed %q), "+
					"want a clear error", tc.kind, r.stdout)
			}
			if strings.TrimSpace(r.stdout) != "" {
				t.Errorf("failed checkpoint printed %q on stdout, want no snapshot id", r.stdout)
			}
			fdRE := regexp.MustCompile(fmt.Sprintf(`(?i)\bfd[ =:#]*%d\b`, fd))
			if !fdRE.MatchString(r.stderr) || !regexp.MustCompile(tc.wantRE).MatchString(r.stderr) {
				t.Errorf("checkpoint error %q does not name fd %d and its kind %s",
					strings.TrimSpace(r.stderr), fd, tc.kind)
			}

			// The process runs on, untraced, and still works.
			time.Sleep(100 * time.Millisecond)
			requireFree(t, p.pid)
			touch(t, trigger)
			if code := p.wait(t, readyTimeout); code != 0 || lastLine(p.out.String()) != "OK" {
				t.Errorf("sockholder after the failed checkpoint: exit %d, output:\n%s",
					code, p.out)
			}

			// Nothing half-written: the same snapshots, the same files.
			if ls := listSnapshots(t, store); !reflect.DeepEqual(ls, lsBefore) {
				t.Errorf("cryo ls after the failed checkpoint lists %q, want %q", ls, lsBefore)
			}
			if d := diffFiles(filesBefore, storeFiles(t, store)); d != "" {
				t.Errorf("the failed checkpoint changed the store:\n%s", d)
			}
			r = cryo(t, store, "inspect", baseID)
			if r.exit != 0 {
				t.Errorf("cryo inspect %s after the failed checkpoint: exit %d: %s",
					baseID, r.exit, r.stderr)
			}
		})
	}
}

// diffFiles describes files added, removed or resized between two listings of
// a store, ignoring lock files.
func diffFiles(before, after []storeFile) string {
	was := map[string]int64{}
	for _, f := range before {
		was[f.path] = f.size
	}
	var b strings.Builder
	for _, f := range after {
		if strings.Contains(strings.ToLower(filepath.Base(f.path)), "lock") {
			delete(was, f.path)
			continue
		}
		size, ok := was[f.path]
		switch {
		case !ok:
			fmt.Fprintf(&b, "  added %s (%d bytes)\n", f.path, f.size)
		case size != f.size:
			fmt.Fprintf(&b, "  %s: %d bytes, was %d\n", f.path, f.size, size)
		}
		delete(was, f.path)
	}
	for path := range was {
		fmt.Fprintf(&b, "  removed %s\n", path)
	}
	return b.String()
}
