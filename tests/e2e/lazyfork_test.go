package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLazyDontneedFork is acceptance item 4: in a lazily restored process,
// madvise(MADV_DONTNEED) on a range not yet faulted in reads back as zeros
// (never as the snapshot's data), and fork() gives the child correct memory
// (the child's untouched pages are lazy too). With --no-prefetch the region
// is certainly not faulted in, and the test also checks the restore is lazy:
// almost none of it is resident before the trigger.
func TestLazyDontneedFork(t *testing.T) {
	requireE2E(t)
	const mib = 128
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"no-prefetch", []string{"--no-prefetch"}},
		{"prefetch", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := newStore(t)
			dir := t.TempDir()
			trigger := filepath.Join(dir, "trigger")
			p := start(t, spawn{argv: []string{filepath.Join(binDir, "lazyfork"), "128", trigger},
				stdoutFile: filepath.Join(dir, "stdout")})
			waitOutput(t, p.out, "ready\n", readyTimeout)
			checkpoint(t, store, p.pid)
			p.kill(t)

			r := startRestore(t, store, append([]string{"latest"}, tc.args...)...)
			r.waitRunning(t, p.pid)
			if tc.args != nil {
				time.Sleep(300 * time.Millisecond)
				rss, err := statusField(p.pid, "RssAnon")
				if err != nil || rss > mib*1024/4 {
					t.Errorf("lazy restore with --no-prefetch: RssAnon %d kB (%v) before the "+
						"process touched its %d MiB region, want under a quarter of it",
						rss, err, mib)
				}
			}
			touch(t, trigger)
			r.restoreOK(t, p.out)
			out := p.out.String()
			for _, want := range []string{"dontneed ok\n", "child ok\n", "parent ok\n"} {
				if !strings.Contains(out, want) {
					t.Errorf("lazyfork did not report %q", strings.TrimSpace(want))
				}
			}
			if lastLine(out) != "OK" {
				t.Errorf("lazyfork after restore:\n%s", out)
			}
		})
	}
}
