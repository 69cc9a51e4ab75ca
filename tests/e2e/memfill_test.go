package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

const pageSize = 4096

// memfillRun is a memfill workload started and ready.
type memfillRun struct {
	p       *proc
	trigger string
	counts  memfillCounts
	sum     string // the checksum line it printed before the checkpoint
	rssAnon int64  // kB, just before the checkpoint
}

// startMemfill starts `memfill mib` with stdout on a file and waits until it
// is ready.
func startMemfill(t *testing.T, mib int) *memfillRun {
	t.Helper()
	dir := t.TempDir()
	m := &memfillRun{trigger: filepath.Join(dir, "trigger")}
	m.p = start(t, spawn{argv: []string{filepath.Join(binDir, "memfill"), fmt.Sprint(mib),
		m.trigger}, stdoutFile: filepath.Join(dir, "stdout")})
	out := waitOutput(t, m.p.out, "ready\n", readyTimeout)
	m.counts = parseMemfill(t, out)
	m.sum = checksumLines(out)[0]
	m.rssAnon, _ = statusField(m.p.pid, "RssAnon")
	return m
}

// checkRestored waits for the restore to finish and checks memfill saw every
// page intact: the same checksum, and "OK".
func (m *memfillRun) checkRestored(t *testing.T, r *restoreRun) {
	t.Helper()
	r.restoreOK(t, m.p.out)
	out := m.p.out.String()
	sums := checksumLines(out)
	if len(sums) != 2 || sums[1] != m.sum {
		t.Fatalf("memfill checksums %q, want %q twice; output:\n%s", sums, m.sum, out)
	}
	if lastLine(out) != "OK" {
		t.Fatalf("memfill did not report OK after restore:\n%s", out)
	}
}

// TestMemfill512 is acceptance items 3 and 7: memfill fills 512 MiB with
// zero, text, random and duplicated pages; its checksum matches after a lazy
// and after an eager restore; `cryo inspect --json` and the store's size on
// disk show zero pages cost nothing and duplicates are stored once. It logs
// the checkpoint wall time, the lazy restore time until the process runs and
// until every page is in, and the eager restore time.
func TestMemfill512(t *testing.T) {
	requireE2E(t)
	for _, eager := range []bool{false, true} {
		name := "lazy"
		if eager {
			name = "eager"
		}
		t.Run(name, func(t *testing.T) {
			store := newStore(t)
			m := startMemfill(t, 512)
			c := m.counts
			id := checkpoint(t, store, m.p.pid)
			requireFree(t, m.p.pid)
			checkStoreCosts(t, store, id, c)
			m.p.kill(t)

			// Pages that must be resident once every page is in: the non-zero
			// ones (zero pages may come back as the shared zero page).
			nonZeroKB := (c.text + c.random + c.dup) * pageSize / 1024

			if eager {
				touch(t, m.trigger)
				r := startRestore(t, store, "latest", "--eager")
				ran := r.waitRunning(t, m.p.pid)
				rss, err := statusField(m.p.pid, "RssAnon")
				t.Logf("timing: eager restore of 512 MiB: running after %v, RssAnon %d MiB",
					ran, rss/1024)
				if err == nil && rss < nonZeroKB*98/100 {
					t.Errorf("eager restore: RssAnon %d kB when the process runs, want >= %d"+
						" kB: pages were not all written before it ran", rss, nonZeroKB)
				}
				m.checkRestored(t, r)
				return
			}

			// Lazy: the process waits for its trigger without touching its
			// memory, so the resident set grows by prefetch alone.
			r := startRestore(t, store, "latest")
			ran := r.waitRunning(t, m.p.pid)
			t.Logf("timing: lazy restore of 512 MiB: running after %v", ran)
			allIn := waitResident(t, m.p.pid, nonZeroKB*98/100, 3*time.Minute)
			t.Logf("timing: lazy restore of 512 MiB: every page in after %v", ran+allIn)
			touch(t, m.trigger)
			m.checkRestored(t, r)

			// The pages faulted in (the restore's own first writes at least)
			// are recorded as the snapshot's working set for the next restore.
			ws, err := os.ReadFile(filepath.Join(store, "workingset", id))
			if err != nil || !bytes.HasPrefix(ws, []byte("CRYOWSET")) || len(ws) <= 12 {
				t.Errorf("working set of snapshot %s after a lazy restore: %q, %v", id, ws, err)
			}
		})
	}
}

// waitResident waits until pid's RssAnon reaches kb and returns how long
// that took.
func waitResident(t *testing.T, pid int, kb int64, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		rss, err := statusField(pid, "RssAnon")
		if err != nil {
			t.Fatalf("restored pid %d: %v", pid, err)
		}
		if rss >= kb {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("restored pid %d: RssAnon %d kB after %v, want %d kB: "+
				"the background prefetch did not bring every page in", pid, rss, timeout, kb)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkStoreCosts checks what memfill's snapshot cost in the store: zero
// pages nothing, the duplicated pages one copy per distinct content, the
// random pages (incompressible) their full size, and nothing much besides.
func checkStoreCosts(t *testing.T, store, id string, c memfillCounts) {
	t.Helper()
	s := inspectStats(t, store, id)

	// Slack for the rest of the process: libc, stack, heap, page tables of
	// the manifest. memfill's own pages outside the region are a few hundred.
	const slackPages = 4096
	const slackBytes = 32 << 20
	presentZero := c.zero / 2 // written then zeroed; the other half never touched
	distinct := c.text + c.random + c.templates

	if s.Pages < c.text+c.random+c.dup+presentZero {
		t.Errorf("stats.pages = %d, want at least the %d present pages of the region",
			s.Pages, c.text+c.random+c.dup+presentZero)
	}
	if s.ZeroPages < presentZero {
		t.Errorf("stats.zero_pages = %d, want at least the %d zeroed pages", s.ZeroPages,
			presentZero)
	}
	if s.DedupPages < c.dup-c.templates {
		t.Errorf("stats.dedup_pages = %d, want at least %d (%d duplicate pages of %d "+
			"contents)", s.DedupPages, c.dup-c.templates, c.dup, c.templates)
	}
	if s.NewPages < c.text+c.random || s.NewPages > distinct+slackPages {
		t.Errorf("stats.new_pages = %d, want between %d (distinct non-zero pages) and %d",
			s.NewPages, c.text+c.random, distinct+slackPages)
	}

	// Random pages do not compress; text pages compress at least 2:1;
	// neither zero pages nor duplicates may add anything.
	minBytes := c.random * pageSize * 98 / 100
	maxBytes := (c.random+c.templates)*pageSize*105/100 + c.text*pageSize/2 + slackBytes
	if s.StoredBytes < minBytes || s.StoredBytes > maxBytes {
		t.Errorf("stats.stored_bytes = %d, want between %d and %d", s.StoredBytes,
			minBytes, maxBytes)
	}
	onDisk := storeBytes(t, store)
	if onDisk > maxBytes+slackBytes {
		t.Errorf("the store holds %d bytes on disk, want at most %d: zero or duplicate "+
			"pages are stored", onDisk, maxBytes+slackBytes)
	}
	t.Logf("store: %d MiB on disk for a %d MiB region (%d pages: %d zero, %d duplicates "+
		"of %d contents)", onDisk>>20, c.pages*pageSize>>20, c.pages, c.zero, c.dup,
		c.templates)

	text := cryo(t, store, "inspect", id)
	if text.exit != 0 || text.stdout == "" {
		t.Errorf("cryo inspect %s: exit %d, stdout %q; stderr:\n%s", id, text.exit,
			text.stdout, text.stderr)
	}
}

// TestDedupAcrossSnapshots checks a second checkpoint of an unchanged
// process stores next to nothing, and that the first snapshot, named by id,
// still restores intact after the second was taken.
func TestDedupAcrossSnapshots(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	m := startMemfill(t, 64)
	first := checkpoint(t, store, m.p.pid)
	size1 := storeBytes(t, store)
	second := checkpoint(t, store, m.p.pid)
	size2 := storeBytes(t, store)
	m.p.kill(t)

	if first == second {
		t.Fatalf("two checkpoints returned the same id %s", first)
	}
	if ids := listSnapshots(t, store); len(ids) != 2 {
		t.Errorf("cryo ls lists %q, want the two snapshots", ids)
	}
	if grew := size2 - size1; grew > 4<<20 {
		t.Errorf("the second checkpoint of an unchanged process grew the store by %d "+
			"bytes (first took %d), want under 4 MiB", grew, size1)
	}
	if s := inspectStats(t, store, second); s.NewPages > 1024 {
		t.Errorf("second snapshot: stats.new_pages = %d, want few (memory unchanged)",
			s.NewPages)
	}

	touch(t, m.trigger)
	r := startRestore(t, store, first)
	r.waitRunning(t, m.p.pid)
	m.checkRestored(t, r)
}

// TestDetach checks `cryo restore --detach` returns, exit 0, once the process
// runs, leaving it running on its own (its memory still served lazily), and
// that the background page server exits once every page is in, having logged
// to its file.
func TestDetach(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	m := startMemfill(t, 64)
	checkpoint(t, store, m.p.pid)
	m.p.kill(t)

	r := startRestore(t, store, "latest", "--detach")
	if code := r.wait(t, cryoTimeout); code != 0 {
		t.Fatalf("cryo restore --detach exited %d; stderr:\n%s", code, r.stderr)
	}
	t.Logf("timing: cryo restore --detach returned after %v", r.took)
	if pid := r.readPid(); pid != m.p.pid {
		t.Fatalf("pidfile holds %d after --detach returned, want %d", pid, m.p.pid)
	}
	if !processAlive(m.p.pid) {
		t.Fatalf("restored pid %d is not running after --detach returned", m.p.pid)
	}

	touch(t, m.trigger)
	waitOutput(t, m.p.out, "OK\n", restoreTimeout)
	sums := checksumLines(m.p.out.String())
	if len(sums) != 2 || sums[1] != m.sum {
		t.Errorf("memfill checksums %q, want %q twice", sums, m.sum)
	}

	deadline := time.Now().Add(readyTimeout)
	for len(procsRunning(cryoBin)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("cryo processes %v still running %v after every page was in",
				procsRunning(cryoBin), readyTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The background server logged at the level asked for (info) to its file.
	logFile := detachedLog(t, m.p.pid)
	b, err := os.ReadFile(logFile)
	if err != nil || !bytes.Contains(b, []byte("page server done")) {
		t.Errorf("page server log %s: %v, holding:\n%s\nwant its info log (\"page server "+
			"done\")", logFile, err, b)
	}
}
