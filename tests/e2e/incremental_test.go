package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cryo-dev/cryo/engine/track"
	"github.com/cryo-dev/cryo/internal/testenv"
)

// The workloads of the incremental tests (issue 3), built with the others.
func init() {
	cWorkloads = append(cWorkloads, "rewriter", "mapper", "carryon")
}

// TestMapperIncremental is acceptance item 3 of issue 3: mapper creates,
// grows, shrinks, moves, splits, unmaps, re-protects and zaps ranges and
// grows and shrinks brk between checkpoints; each `cryo checkpoint` is
// incremental on the one before; every snapshot, restored lazily and eagerly,
// holds exactly the layout and pages of its step, as the program checks
// against its own bookkeeping.
func TestMapperIncremental(t *testing.T) {
	requireE2E(t)
	mapperIncremental(t, "auto")
}

// TestMapperIncrementalScan is TestMapperIncremental with `--tracker scan`
// (acceptance item 4 of issue 3).
func TestMapperIncrementalScan(t *testing.T) {
	requireE2E(t)
	mapperIncremental(t, "scan")
}

// TestMapperWatched is TestMapperIncremental with the checkpoints taken by
// `cryo watch --interval 1s`, which keeps its tracker armed between them: each
// snapshot after the first must come from the tracker auto picks on this
// kernel (testenv.AutoTracker: uffd-wp on the build machines, soft-dirty in the
// test VM). The test moves mapper one step on after each snapshot, so that
// snapshot k holds step k.
func TestMapperWatched(t *testing.T) {
	requireE2E(t)
	mapperWatched(t, "")
}

// TestMapperWatchedTrackers is TestMapperWatched with each other tracker named
// by --tracker, for comparison: one the kernel must run (CRYO_TRACKERS) fails
// when it cannot, another the kernel lacks is skipped, saying so loudly.
func TestMapperWatchedTrackers(t *testing.T) {
	requireE2E(t)
	for _, kind := range []string{"uffd-wp", "soft-dirty", "scan"} {
		if kind == testenv.AutoTracker() {
			continue // TestMapperWatched
		}
		t.Run(kind, func(t *testing.T) {
			if err := track.Probe(kind); err != nil {
				if testenv.TrackerRequired(kind) {
					t.Fatalf("tracker %s must run on this kernel: %v", kind, err)
				}
				t.Logf("WARNING: tracker %s UNAVAILABLE, not tested on this kernel: %v",
					kind, err)
				t.Skipf("SKIP %s: UNAVAILABLE on this kernel: %v", kind, err)
			}
			mapperWatched(t, kind)
		})
	}
}

// mapperWatched runs mapper under cryo watch with --tracker tracker (none when
// "") and restores every snapshot.
func mapperWatched(t *testing.T, tracker string) {
	want := tracker
	if want == "" {
		want = testenv.AutoTracker()
	}
	store := newStore(t)
	dir := t.TempDir()
	stepFile, trigger := filepath.Join(dir, "step"), filepath.Join(dir, "trigger")
	p := start(t, spawn{argv: []string{filepath.Join(binDir, "mapper"), stepFile, trigger}})
	waitOutput(t, p.out, "step 0 ready\n", readyTimeout)
	argv := []string{cryoBin, "--store", store, "--log-level", "info", "watch",
		strconv.Itoa(p.pid), "--interval", "1s"}
	if tracker != "" {
		argv = append(argv, "--tracker", tracker)
	}
	w := start(t, spawn{argv: argv, stderrFile: filepath.Join(dir, "watch.log")})

	var ids []string
	for k := 0; k <= mapperSteps; k++ {
		deadline := time.Now().Add(readyTimeout)
		for ids = strings.Fields(w.out.String()); len(ids) <= k; ids = strings.Fields(
			w.out.String()) {
			if time.Now().After(deadline) {
				log, _ := os.ReadFile(filepath.Join(dir, "watch.log"))
				t.Fatalf("cryo watch printed %d snapshots in %v, want %d; its log:\n%s",
					len(ids), readyTimeout, k+1, log)
			}
			time.Sleep(5 * time.Millisecond)
		}
		if k < mapperSteps {
			writeStep(t, stepFile, k+1)
			waitOutput(t, p.out, fmt.Sprintf("step %d ready\n", k+1), readyTimeout)
		}
	}
	ids = ids[:mapperSteps+1]
	w.cmd.Process.Signal(syscall.SIGTERM)
	if code := w.wait(t, cryoTimeout); code != 0 {
		t.Errorf("cryo watch exited %d after SIGTERM, want 0", code)
	}
	log, _ := os.ReadFile(filepath.Join(dir, "watch.log"))
	if f := frozenTimes(string(log)); len(f) > 0 {
		t.Logf("stopped time: %d checkpoints, median %v, worst %v", len(f), median(f),
			slices.Max(f))
	}
	p.kill(t)

	for k, id := range ids {
		info := inspectSnapshot(t, store, id)
		t.Logf("snapshot %d: %s parent %q tracker %q fallback %q: %d pages, %d new, "+
			"%d carried, %d bytes stored", k, id, info.Parent, info.Labels["tracker"],
			info.Labels["fallback"], info.Stats.Pages, info.Stats.NewPages,
			info.Stats.CarriedPages, info.Stats.StoredBytes)
		if k == 0 {
			continue
		}
		if info.Parent != ids[k-1] {
			t.Errorf("snapshot %d (%s) has parent %q, want the one before, %s", k, id,
				info.Parent, ids[k-1])
		}
		if info.Labels["tracker"] != want {
			t.Errorf("snapshot %d (%s): labels.tracker = %q (fallback %q), want %s on "+
				"this kernel", k, id, info.Labels["tracker"], info.Labels["fallback"], want)
		}
	}

	touch(t, trigger)
	for k, id := range ids {
		for _, eager := range []bool{false, true} {
			out := restoreVerified(t, store, id, eager, p.pid)
			if want := fmt.Sprintf("verify ok step %d ", k); out != "" &&
				!strings.Contains(out, want) {
				t.Errorf("snapshot %d (%s, %s): the restored mapper printed\n%s\nwant a line "+
					"starting %q (or the test moved mapper on before the checkpoint)", k, id,
					restoreMode(eager), out, want)
			}
		}
	}
}

// mapperSteps is the last step mapper knows (LAST_STEP in mapper.c).
const mapperSteps = 6

func mapperIncremental(t *testing.T, tracker string) {
	store := newStore(t)
	dir := t.TempDir()
	stepFile, trigger := filepath.Join(dir, "step"), filepath.Join(dir, "trigger")
	p := start(t, spawn{argv: []string{filepath.Join(binDir, "mapper"), stepFile, trigger}})
	waitOutput(t, p.out, "step 0 ready\n", readyTimeout)

	// One snapshot before any step, then one after each.
	var ids []string
	for k := 0; k <= mapperSteps; k++ {
		if k > 0 {
			writeStep(t, stepFile, k)
			waitOutput(t, p.out, fmt.Sprintf("step %d ready\n", k), readyTimeout)
		}
		ck := checkpointWith(t, store, p.pid, "--tracker", tracker)
		info := inspectSnapshot(t, store, ck.id)
		t.Logf("step %d: snapshot %s parent %q tracker %q fallback %q: frozen %v, "+
			"%d pages, %d new, %d carried, %d bytes stored", k, ck.id, info.Parent,
			info.Labels["tracker"], info.Labels["fallback"], ck.frozen, info.Stats.Pages,
			info.Stats.NewPages, info.Stats.CarriedPages, info.Stats.StoredBytes)
		if k > 0 && info.Parent != ids[k-1] {
			t.Errorf("step %d: snapshot %s has parent %q, want the previous snapshot %s: "+
				"a second checkpoint of a process must be incremental", k, ck.id,
				info.Parent, ids[k-1])
		}
		if tracker != "auto" && info.Labels["tracker"] != tracker {
			t.Errorf("step %d: snapshot %s: labels.tracker = %q, want %q", k, ck.id,
				info.Labels["tracker"], tracker)
		}
		ids = append(ids, ck.id)
	}
	p.kill(t)

	touch(t, trigger)
	for k, id := range ids {
		for _, eager := range []bool{false, true} {
			out := restoreVerified(t, store, id, eager, p.pid)
			want := fmt.Sprintf("verify ok step %d ", k)
			if out != "" && !strings.Contains(out, want) {
				t.Errorf("snapshot %s of step %d (%s): the restored mapper printed\n%s\nwant "+
					"a line starting %q", id, k, restoreMode(eager), out, want)
			}
		}
	}
}

// TestRestoreAndCarryOn is acceptance item 5 of issue 3: a lazily restored
// process that writes a known random set of pages while its pages are still
// arriving, checkpointed again (incremental on the snapshot it was restored
// from) and restored, holds the new content in exactly those pages and the
// old in every other, as the program itself checks. The process holds 256
// MiB, or CRYO_E2E_CARRYON_MIB (at least 64): the test VM, whose emulated CPU
// is slow, takes less.
func TestRestoreAndCarryOn(t *testing.T) {
	requireE2E(t)
	const writes = 3000
	mib := 256
	if s := os.Getenv("CRYO_E2E_CARRYON_MIB"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 64 {
			t.Fatalf("CRYO_E2E_CARRYON_MIB=%q: want a number of MiB, at least 64", s)
		}
		mib = n
	}
	pages := int64(mib) << 20 / pageSize
	store := newStore(t)
	dir := t.TempDir()
	plan, trigger := filepath.Join(dir, "plan"), filepath.Join(dir, "trigger")
	p := start(t, spawn{argv: []string{filepath.Join(binDir, "carryon"), fmt.Sprint(mib), plan,
		trigger}})
	waitOutput(t, p.out, "ready pages", readyTimeout)
	first := checkpointWith(t, store, p.pid).id
	p.kill(t)

	// The plan is there before the restore: the restored process starts
	// writing within 5 ms of running again, in 10 bursts 50 ms apart.
	writeAtomic(t, plan, fmt.Sprintf("%d %d 10 20\n", time.Now().UnixNano(), writes))
	r := startRestore(t, store, first)
	ran := r.waitRunning(t, p.pid)
	waitOutput(t, r.stdout, "writing ", readyTimeout)
	startedAt := time.Since(r.started)
	rssStart, _ := statusField(p.pid, "RssAnon")
	out := waitOutput(t, r.stdout, "wrote ", readyTimeout)
	wroteAt := time.Since(r.started)
	tracer, _ := statusField(p.pid, "TracerPid")
	rss, _ := statusField(p.pid, "RssAnon")
	waitUntraced(t, p.pid, cryoTimeout)
	t.Logf("timing: restored process running after %v; its writes began after %v (RssAnon "+
		"%d of %d MiB in) and ended after %v (%d MiB in, restore still serving: %v); every "+
		"page in after %v", ran, startedAt, rssStart>>10, mib, wroteAt, rss>>10, tracer != 0,
		time.Since(r.started))
	if rssStart>>10 >= int64(mib) {
		t.Errorf("every page was in before the restored process began writing: the writes " +
			"did not race with the page server, which is what this test is for")
	}
	t.Logf("restored process: %s", strings.TrimSpace(out))

	second := checkpointWith(t, store, p.pid)
	info := inspectSnapshot(t, store, second.id)
	t.Logf("checkpoint after restore: snapshot %s parent %q tracker %q fallback %q: frozen "+
		"%v, %d pages, %d new, %d carried, %d bytes stored", second.id, info.Parent,
		info.Labels["tracker"], info.Labels["fallback"], second.frozen, info.Stats.Pages,
		info.Stats.NewPages, info.Stats.CarriedPages, info.Stats.StoredBytes)
	if info.Parent != first {
		t.Errorf("the checkpoint of the restored process has parent %q, want the snapshot "+
			"it was restored from, %s", info.Parent, first)
	}
	if info.Stats.NewPages < writes {
		t.Errorf("stats.new_pages = %d, want at least the %d pages written", info.Stats.NewPages,
			writes)
	}
	if info.Stats.NewPages > pages/4 {
		t.Errorf("stats.new_pages = %d of %d pages, want about the %d written", info.Stats.NewPages,
			pages, writes)
	}

	syscall.Kill(p.pid, syscall.SIGKILL)
	if code := r.wait(t, cryoTimeout); code != 128+int(syscall.SIGKILL) {
		t.Errorf("cryo restore exited %d after its process was killed, want %d", code,
			128+int(syscall.SIGKILL))
	}

	touch(t, trigger)
	want := fmt.Sprintf("verify ok pages %d written %d\n", pages, writes)
	for _, eager := range []bool{false, true} {
		out := restoreVerified(t, store, second.id, eager, p.pid)
		if out != "" && !strings.Contains(out, want) {
			t.Errorf("%s restore of %s: the process printed\n%s\nwant %q", restoreMode(eager),
				second.id, out, want)
		}
	}
}

// checkpointed is one `cryo checkpoint` done.
type checkpointed struct {
	id     string
	frozen time.Duration // as cryo reported it; 0 when it did not
	took   time.Duration
}

// checkpointWith checkpoints pid with extra flags (--tracker ...) and returns
// the snapshot id and the stopped time cryo reported.
func checkpointWith(t *testing.T, store string, pid int, flags ...string) checkpointed {
	t.Helper()
	r := cryo(t, store, append([]string{"checkpoint", strconv.Itoa(pid)}, flags...)...)
	if r.exit != 0 {
		t.Fatalf("cryo checkpoint %d %s: exit %d\nstderr:\n%s", pid, strings.Join(flags, " "),
			r.exit, r.stderr)
	}
	id := strings.TrimSpace(r.stdout)
	if id == "" || strings.ContainsAny(id, " \t\n") {
		t.Fatalf("cryo checkpoint %d printed %q, want one snapshot id", pid, r.stdout)
	}
	c := checkpointed{id: id, took: r.took}
	if f := frozenTimes(r.stderr); len(f) > 0 {
		c.frozen = f[len(f)-1]
	}
	return c
}

// snapshotInfo is the part of `cryo inspect --json` the incremental tests
// read: the parent, the labels (tracker, fallback) and the stats.
type snapshotInfo struct {
	ID      string            `json:"id"`
	Parent  string            `json:"parent"`
	Created time.Time         `json:"created"`
	Labels  map[string]string `json:"labels"`
	Stats   struct {
		snapshotStats
		CarriedPages int64 `json:"carried_pages"`
	} `json:"stats"`
}

// inspectSnapshot runs `cryo inspect id --json`.
func inspectSnapshot(t *testing.T, store, id string) snapshotInfo {
	t.Helper()
	r := cryo(t, store, "inspect", id, "--json")
	if r.exit != 0 {
		t.Fatalf("cryo inspect %s --json: exit %d\nstderr:\n%s", id, r.exit, r.stderr)
	}
	var s snapshotInfo
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("cryo inspect %s --json: %v\n%s", id, err, r.stdout)
	}
	return s
}

// frozenRE finds the stopped time in cryo's log (`frozen=12.3ms`) or in the
// line `cryo checkpoint` prints (`frozen 12.3ms,`).
var frozenRE = regexp.MustCompile(`frozen[= ]([0-9.]+[a-zµ]+)`)

// frozenTimes returns the stopped times in a cryo log, one per checkpoint:
// from the lines that end a checkpoint when there are such lines, else from
// every line that has one.
func frozenTimes(log string) []time.Duration {
	var done, any []time.Duration
	for _, line := range strings.Split(log, "\n") {
		m := frozenRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		d, err := time.ParseDuration(m[1])
		if err != nil {
			continue
		}
		any = append(any, d)
		if strings.Contains(line, "checkpoint done") {
			done = append(done, d)
		}
	}
	if len(done) > 0 {
		return done
	}
	return any
}

// restoreVerified restores snapshot id (lazily or eagerly) into pid, with
// the workload's trigger already there, waits for the restored process to
// verify itself and exit 0, and returns what it printed; or fails t (going
// on) and returns "".
func restoreVerified(t *testing.T, store, id string, eager bool, pid int) string {
	t.Helper()
	args := []string{id}
	if eager {
		args = append(args, "--eager")
	}
	r := startRestore(t, store, args...)
	ran := r.waitRunning(t, pid)
	code := r.wait(t, restoreTimeout)
	out := r.stdout.String()
	if code != 0 || strings.Contains(out, "FAIL") || !strings.Contains(out, "verify ok") {
		t.Errorf("%s restore of %s: cryo restore exited %d; the restored process printed:\n%s"+
			"\ncryo stderr:\n%s", restoreMode(eager), id, code, out, r.stderr)
		return ""
	}
	t.Logf("timing: %s restore of %s: running after %v, verified and exited after %v",
		restoreMode(eager), id, ran.Round(time.Millisecond), r.took.Round(time.Millisecond))
	return out
}

func restoreMode(eager bool) string {
	if eager {
		return "eager"
	}
	return "lazy"
}

// waitUntraced waits until nothing ptraces pid any more (a lazy restore lets
// go of its process once every page is in) and returns how long that took.
func waitUntraced(t *testing.T, pid int, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		tracer, err := statusField(pid, "TracerPid")
		if err != nil {
			t.Fatalf("restored pid %d: %v", pid, err)
		}
		if tracer == 0 {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("restored pid %d still traced by %d after %v", pid, tracer, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// writeStep writes step number k into the mapper's step file in place. A rename
// would give the file a new inode, and a checkpoint that catches the mapper with
// the step file open (it opens, reads and closes it every 10 ms) records the old
// one: restore then rightly refuses the descriptor as "file changed". The mapper
// reads an empty file, which a truncating write may show it, as "no step".
func writeStep(t *testing.T, path string, k int) {
	t.Helper()
	if err := os.WriteFile(path, []byte(fmt.Sprintf("%d\n", k)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeAtomic replaces path with data through a rename, so that a workload
// polling it never reads half of it.
func writeAtomic(t *testing.T, path, data string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// median returns the median of xs (0 for none); it sorts a copy.
func median[T int64 | float64 | time.Duration](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := append([]T(nil), xs...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
