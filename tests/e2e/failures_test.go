package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// corruptRE is what an error about damaged data must say, in some words.
var corruptRE = regexp.MustCompile(`(?i)(corrupt|checksum|hash|mismatch|damaged|invalid)`)

// TestRestoreMissing is acceptance item 6, missing half: restoring from an
// empty store, or a snapshot id the store does not hold, fails with a clear
// error and starts no process.
func TestRestoreMissing(t *testing.T) {
	requireE2E(t)
	store := newStore(t)

	r := cryo(t, store, "restore", "latest")
	if r.exit == 0 || strings.TrimSpace(r.stderr) == "" {
		t.Errorf("restore latest from an empty store: exit %d, stderr %q, want an error",
			r.exit, r.stderr)
	}

	m := startMemfill(t, 8)
	checkpoint(t, store, m.p.pid)
	m.p.kill(t)
	touch(t, m.trigger)
	before := m.p.out.String()

	const missing = "0123456789abcdef0123456789abcdef"
	r = cryo(t, store, "restore", missing)
	t.Logf("restore %s: exit %d, stderr %q", missing, r.exit, r.stderr)
	notFound := regexp.MustCompile(`(?i)(not found|no such|unknown|does not exist|missing|` +
		`no snapshot)`)
	if r.exit == 0 || !(strings.Contains(r.stderr, missing) || notFound.MatchString(r.stderr)) {
		t.Errorf("restore of missing snapshot %s: exit %d, stderr %q, want an error that "+
			"names it or says it is not found", missing, r.exit, r.stderr)
	}
	requireNoProcess(t, "memfill", m.p.pid)
	if after := m.p.out.String(); after != before {
		t.Errorf("a memfill ran: its output grew to:\n%s", after)
	}

	// The control: the snapshot the store does hold restores.
	rr := startRestore(t, store, "latest")
	rr.waitRunning(t, m.p.pid)
	rr.restoreOK(t, m.p.out)
	if lastLine(m.p.out.String()) != "OK" {
		t.Errorf("memfill restored from the store's snapshot did not report OK:\n%s", m.p.out)
	}
}

// damage is one way to break a stored snapshot.
type damage struct {
	name string

	// apply damages the store; id is the snapshot. Nil for the control.
	apply func(t *testing.T, store, id string)

	// lazyMayStart: the damage is in page data, which a lazy restore may only
	// find after the process runs; it must then be killed before it reports.
	lazyMayStart bool
}

// TestRestoreCorrupt is acceptance item 6, corrupt half: for each kind of
// damage to a stored snapshot, restore fails with an error about corruption
// and no process is left running, nor did one report on its memory. Damage
// to the manifest must be found before anything starts; damage to page data
// must stop an eager restore before the process runs, and kill a lazily
// restored process before it can use the bad page. A control case runs the
// same steps on an undamaged snapshot, which must restore.
func TestRestoreCorrupt(t *testing.T) {
	requireE2E(t)
	damages := []damage{
		{"none", nil, true}, // the control: the same steps restore an undamaged snapshot
		{"manifest-flip", func(t *testing.T, store, id string) {
			flipMiddle(t, manifestFile(t, store, id))
		}, false},
		{"manifest-truncate", func(t *testing.T, store, id string) {
			path := manifestFile(t, store, id)
			info, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, info.Size()/2); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"pack-flip", func(t *testing.T, store, id string) {
			flipMiddle(t, largestFile(t, store, manifestFile(t, store, id)))
		}, true},
	}
	for _, d := range damages {
		for _, eager := range []bool{true, false} {
			if eager && !d.lazyMayStart {
				// Manifest damage is found before any page is read, whatever
				// the mode: run it once, in the default (lazy) mode.
				continue
			}
			mode := "lazy"
			if eager {
				mode = "eager"
			}
			t.Run(d.name+"/"+mode, func(t *testing.T) {
				store := newStore(t)
				m := startMemfill(t, 32)
				id := checkpoint(t, store, m.p.pid)
				m.p.kill(t)
				if d.apply != nil {
					d.apply(t, store, id)
				}
				touch(t, m.trigger)
				before := m.p.out.String()

				args := []string{id}
				if eager {
					args = append(args, "--eager")
				}
				r := startRestore(t, store, args...)
				if d.apply == nil {
					r.waitRunning(t, m.p.pid)
					r.restoreOK(t, m.p.out)
					if lastLine(m.p.out.String()) != "OK" {
						t.Errorf("undamaged snapshot: memfill did not report OK:\n%s", m.p.out)
					}
					return
				}
				code := r.wait(t, restoreTimeout)
				t.Logf("restore of damaged snapshot: exit %d after %v, stderr:\n%s",
					code, r.took, r.stderr)
				if code == 0 {
					t.Errorf("restore of a damaged snapshot exited 0")
				}
				if !corruptRE.MatchString(r.stderr.String()) {
					t.Errorf("restore error does not say the snapshot is damaged: %q",
						r.stderr)
				}
				requireNoProcess(t, "memfill", m.p.pid)
				after := m.p.out.String()
				if eager || !d.lazyMayStart {
					if pid := r.readPid(); pid != 0 {
						t.Errorf("restore wrote pidfile %d: a process was started", pid)
					}
					if after != before {
						t.Errorf("the damaged snapshot ran:\n%s", after)
					}
				} else if strings.Contains(strings.TrimPrefix(after, before), "OK") {
					t.Errorf("the lazily restored process ran on and reported on damaged "+
						"memory:\n%s", after)
				}
			})
		}
	}
}

// TestRestorePidTaken checks restore fails clearly, starting nothing, when
// the snapshot's pid is in use (here by the original, still running), and
// leaves the running original unharmed.
func TestRestorePidTaken(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	m := startMemfill(t, 8)
	id := checkpoint(t, store, m.p.pid)

	r := startRestore(t, store, id)
	code := r.wait(t, restoreTimeout)
	t.Logf("restore with pid %d taken: exit %d, stderr %q", m.p.pid, code, r.stderr)
	stderr := r.stderr.String()
	taken := regexp.MustCompile(`(?i)(in use|taken|exists|busy|occupied|not free)`)
	if code == 0 || !strings.Contains(stderr, fmt.Sprint(m.p.pid)) || !taken.MatchString(stderr) {
		t.Errorf("restore with pid %d taken: exit %d, stderr %q, want an error naming "+
			"the pid and saying it is in use", m.p.pid, code, stderr)
	}
	if pids := procsNamed("memfill"); len(pids) != 1 || pids[0] != m.p.pid {
		t.Errorf("memfill processes %v, want only the original %d", pids, m.p.pid)
	}

	requireFree(t, m.p.pid)
	touch(t, m.trigger)
	if code := m.p.wait(t, readyTimeout); code != 0 || lastLine(m.p.out.String()) != "OK" {
		t.Errorf("the original after the failed restore: exit %d, output:\n%s", code, m.p.out)
	}
}

// requireNoProcess checks no process named name is alive, nor pid, nor any
// process still running the cryo binary (a restore host left behind).
func requireNoProcess(t *testing.T, name string, pid int) {
	t.Helper()
	time.Sleep(200 * time.Millisecond) // let a killed process be reaped
	pids := procsNamed(name)
	pids = append(pids, procsRunning(cryoBin)...)
	if len(pids) > 0 {
		t.Errorf("processes named %s or running cryo are alive: %v", name, pids)
		for _, p := range pids {
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
	if processAlive(pid) {
		t.Errorf("pid %d is alive after a failed restore", pid)
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// manifestFile finds the file holding snapshot id's manifest: the one file
// whose path within the store contains the id. This is the one place that
// assumes how the store names manifests; adapt it to docs/FORMAT.md.
func manifestFile(t *testing.T, store, id string) string {
	t.Helper()
	var found []string
	var all []string
	for _, f := range storeFiles(t, store) {
		all = append(all, fmt.Sprintf("%s (%d)", f.path, f.size))
		if strings.Contains(f.path, id) {
			found = append(found, f.path)
		}
	}
	if len(found) == 0 {
		t.Fatalf("no file in the store names snapshot %s, so the test cannot find its "+
			"manifest (adapt manifestFile to docs/FORMAT.md); store files:\n  %s", id,
			strings.Join(all, "\n  "))
	}
	// With several (a folder per snapshot), take the largest.
	sort.Slice(found, func(i, j int) bool {
		return fileSize(store, found[i]) > fileSize(store, found[j])
	})
	return filepath.Join(store, found[0])
}

// largestFile returns the largest file under store other than except: with
// a memfill of random pages, a pack.
func largestFile(t *testing.T, store, except string) string {
	t.Helper()
	best, size := "", int64(-1)
	for _, f := range storeFiles(t, store) {
		path := filepath.Join(store, f.path)
		if path != except && f.size > size {
			best, size = path, f.size
		}
	}
	if best == "" {
		t.Fatalf("no page data file in the store")
	}
	return best
}

func fileSize(store, rel string) int64 {
	info, err := os.Stat(filepath.Join(store, rel))
	if err != nil {
		return 0
	}
	return info.Size()
}

// flipMiddle inverts 16 bytes in the middle of the file at path.
func flipMiddle(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 {
		t.Fatalf("%s is empty", path)
	}
	mid := len(b) / 2
	for i := mid; i < mid+16 && i < len(b); i++ {
		b[i] ^= 0xff
	}
	if err := os.WriteFile(path, b, 0); err != nil {
		t.Fatal(err)
	}
	t.Logf("damaged %s: inverted 16 bytes at offset %d of %d", path, mid, len(b))
}

// procsRunning returns the live processes whose executable is path.
func procsRunning(path string) []int {
	want, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil
	}
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err == nil && exe == want && processAlive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}
