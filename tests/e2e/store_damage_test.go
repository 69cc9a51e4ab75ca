package e2e

import (
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// damageRE is what a restore refused for damage must say, in some words.
var damageRE = regexp.MustCompile(`(?i)(corrupt|checksum|hash|mismatch|damaged|invalid|` +
	`missing|not found|no such|truncat|short|EOF)`)

// TestStoreDamage is acceptance item 2 of issue 4. A store holds two
// snapshots of two workloads whose pages differ (memfill, then rewriter),
// each written by its own checkpoint and so into its own pack. For each kind
// of damage, on a fresh copy of that store:
//
//   - cryo verify exits non-zero and names the damaged pack (or the snapshot
//     of a damaged manifest) and the snapshot the damage touches;
//   - every snapshot verify names fails to restore, eagerly and lazily, with
//     an error about damage; no process is left, and none reports on its
//     memory (a lazily restored one is killed before it can);
//   - every snapshot verify does not name restores, and the workload finds its
//     memory intact.
//
// The first snapshot cannot use the second's pack (it was sealed later), so
// damage to the second's pack or manifest must leave the first unnamed. The
// second may share a page with the first's pack (a library's data page, say):
// whether it is touched by damage there is then up to verify, and the restore
// must agree with verify's answer.
func TestStoreDamage(t *testing.T) {
	requireE2E(t)
	setup := time.Now()
	g := buildDamageStore(t)
	t.Logf("timing: store of two snapshots built in %v: %s (pack %s), %s (pack %s)",
		time.Since(setup).Round(time.Millisecond), g.snaps[0].id, g.snaps[0].pack,
		g.snaps[1].id, g.snaps[1].pack)

	cases := []storeDamage{
		{name: "pack-flip-frame-data", target: 0, apply: func(t *testing.T, store string,
			s *damageSnap) string {
			flipFrameData(t, packPath(store, s.pack))
			return s.pack
		}},
		{name: "pack-truncate", target: 1, apply: func(t *testing.T, store string,
			s *damageSnap) string {
			truncateHalf(t, packPath(store, s.pack))
			return s.pack
		}},
		{name: "manifest-truncate", target: 0, apply: func(t *testing.T, store string,
			s *damageSnap) string {
			truncateHalf(t, filepath.Join(store, "snapshots", s.id))
			return s.id
		}},
		{name: "pack-delete", target: 1, apply: func(t *testing.T, store string,
			s *damageSnap) string {
			if err := os.Remove(packPath(store, s.pack)); err != nil {
				t.Fatal(err)
			}
			return s.pack
		}},
	}
	for _, d := range cases {
		t.Run(d.name, func(t *testing.T) {
			started := time.Now()
			store := copyStore(t, g.store)
			target := &g.snaps[d.target]
			named := d.apply(t, store, target)

			r := cryo(t, store, "verify")
			t.Logf("timing: cryo verify took %v, exit %d; stdout:\n%s", r.took.Round(
				time.Millisecond), r.exit, r.stdout)
			if r.exit == 0 {
				t.Errorf("cryo verify exited 0 on a store with a damaged %s", named)
			}
			if !strings.Contains(r.stdout, named) {
				t.Errorf("cryo verify does not name the damaged %s", named)
			}
			if !strings.Contains(r.stdout, target.id) {
				t.Errorf("cryo verify does not name snapshot %s, which the damage touches",
					target.id)
			}
			other := &g.snaps[1-d.target]
			otherHit := strings.Contains(r.stdout, other.id)
			if otherHit && d.target == 1 {
				t.Errorf("cryo verify names snapshot %s, which cannot use anything of "+
					"the damaged %s (it was written before)", other.id, named)
			}
			if otherHit && d.target == 0 && !strings.Contains(named, target.pack) {
				t.Errorf("cryo verify names snapshot %s for damage to the manifest of %s",
					other.id, target.id)
			}

			for _, mode := range restoreModes {
				g.restore(t, store, target, mode, false)
				g.restore(t, store, other, mode, !otherHit)
			}
			t.Logf("timing: case %s took %v (other snapshot %s touched: %v)", d.name,
				time.Since(started).Round(time.Millisecond), other.id, otherHit)
		})
	}
}

// storeDamage is one way to damage the store.
type storeDamage struct {
	name   string
	target int // index of the snapshot whose pack or manifest is damaged

	// apply damages the store in the way named and returns what cryo verify
	// must name: the pack (file name without .pack) or the snapshot id.
	apply func(t *testing.T, store string, s *damageSnap) string
}

// damageStore is a store of two snapshots, the original processes gone.
type damageStore struct {
	store string
	snaps [2]damageSnap
}

// damageSnap is one snapshot of damageStore and how to tell its restored
// workload succeeded.
type damageSnap struct {
	id      string
	pack    string // the one pack its checkpoint sealed, without ".pack"
	pid     int
	comm    string
	success string // the line the workload prints once its memory checks out

	// memfill writes to a file, reopened at its offset on restore: before is
	// its content at the checkpoint, written back before each restore.
	// rewriter writes to a pipe: the restore's own stdout.
	file   string
	before string
}

// buildDamageStore checkpoints a 16 MiB memfill and then a 16 MiB rewriter
// (every page of it distinct from memfill's) into a new store, kills both and
// touches their triggers, so that a restored one checks its memory at once.
func buildDamageStore(t *testing.T) *damageStore {
	t.Helper()
	g := &damageStore{store: newStore(t)}

	m := startMemfill(t, 16)
	packs := storePacks(t, g.store)
	id := checkpoint(t, g.store, m.p.pid)
	g.snaps[0] = damageSnap{id: id, pack: newPack(t, g.store, packs), pid: m.p.pid,
		comm: "memfill", success: "OK", file: string(m.p.out.(fileOutput))}
	m.p.kill(t)
	touch(t, m.trigger)
	g.snaps[0].before = m.p.out.String()

	trigger := filepath.Join(t.TempDir(), "trigger")
	rw := start(t, spawn{argv: []string{filepath.Join(binDir, "rewriter"), "16", "1",
		trigger}})
	waitOutput(t, rw.out, "ready pages", readyTimeout)
	packs = storePacks(t, g.store)
	id = checkpoint(t, g.store, rw.pid)
	g.snaps[1] = damageSnap{id: id, pack: newPack(t, g.store, packs), pid: rw.pid,
		comm: "rewriter", success: "verify ok"}
	rw.kill(t)
	touch(t, trigger)

	if r := cryo(t, g.store, "verify"); r.exit != 0 {
		t.Fatalf("cryo verify of the undamaged store: exit %d\nstdout:\n%s\nstderr:\n%s",
			r.exit, r.stdout, r.stderr)
	}
	return g
}

// restoreModes are the flags of the restores each case runs: eager, lazy, and
// lazy without prefetch, where only the workload's own faults read pages.
var restoreModes = [][]string{{"--eager"}, {}, {"--no-prefetch"}}

// restore restores s from store (with the flags of mode) and checks the outcome:
// with wantOK the workload checks its memory and succeeds; otherwise cryo
// restore fails saying why, no process is left, and the workload never
// reported on its memory (eagerly, none even started).
func (g *damageStore) restore(t *testing.T, store string, s *damageSnap, mode []string,
	wantOK bool) {
	t.Helper()
	if s.file != "" {
		if err := os.WriteFile(s.file, []byte(s.before), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	eager := slices.Contains(mode, "--eager")
	r := startRestore(t, store, append([]string{s.id}, mode...)...)
	code := r.wait(t, restoreTimeout)
	out := r.stdout.String()
	if s.file != "" {
		b, _ := os.ReadFile(s.file)
		out = strings.TrimPrefix(string(b), s.before)
	}
	what := fmt.Sprintf("restore %s of %s (%s)", strings.Join(append([]string{"(lazy)"},
		mode...)[min(len(mode), 1):], " "), s.id, s.comm)
	if wantOK {
		if code != 0 || !strings.Contains(out, s.success) || strings.Contains(out, "FAIL") {
			t.Errorf("%s, untouched by the damage: exit %d; workload output:\n%s\n"+
				"cryo stderr:\n%s", what, code, out, r.stderr)
			return
		}
		t.Logf("timing: %s, untouched by the damage: verified in %v", what,
			r.took.Round(time.Millisecond))
		return
	}
	t.Logf("timing: %s, damaged: exit %d after %v; stderr:\n%s", what, code,
		r.took.Round(time.Millisecond), lastLines(r.stderr.String(), 4))
	if code == 0 {
		t.Errorf("%s of a damaged snapshot exited 0", what)
	}
	if !damageRE.MatchString(r.stderr.String()) {
		t.Errorf("%s: the error does not say what is damaged: %q", what, r.stderr)
	}
	if strings.Contains(out, s.success) || strings.Contains(out, "FAIL") {
		t.Errorf("%s: the workload ran on damaged memory and reported:\n%s", what, out)
	}
	if eager {
		if pid := r.readPid(); pid != 0 {
			t.Errorf("%s wrote pidfile %d: a process was started", what, pid)
		}
	}
	requireNoneLeft(t, store, s.pid)
}

// requireNoneLeft checks that pid is not alive and that no process names
// store on its command line (a cryo restore host left behind). Unlike
// requireNoProcess it looks at nothing else, so that processes of other tests
// on the machine do not count.
func requireNoneLeft(t *testing.T, store string, pid int) {
	t.Helper()
	time.Sleep(200 * time.Millisecond) // let a killed process be reaped
	if processAlive(pid) {
		t.Errorf("pid %d is alive after a failed restore", pid)
		syscall.Kill(pid, syscall.SIGKILL)
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil || p == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		if err == nil && processAlive(p) && strings.Contains(string(cmdline), store+"\x00") {
			t.Errorf("pid %d is alive after a failed restore: %q", p, cmdline)
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
}

// storePacks lists the pack names (without ".pack") in store.
func storePacks(t *testing.T, store string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(store, "packs"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if name, ok := strings.CutSuffix(e.Name(), ".pack"); ok {
			names = append(names, name)
		}
	}
	return names
}

// newPack returns the one pack in store that is not among before, failing
// when a checkpoint did not seal exactly one.
func newPack(t *testing.T, store string, before []string) string {
	t.Helper()
	var added []string
	for _, p := range storePacks(t, store) {
		if !slices.Contains(before, p) {
			added = append(added, p)
		}
	}
	if len(added) != 1 {
		t.Fatalf("the checkpoint added packs %q, want exactly one", added)
	}
	return added[0]
}

func packPath(store, name string) string {
	return filepath.Join(store, "packs", name+".pack")
}

// copyStore copies the store folder src into a new folder, modes kept.
func copyStore(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "store")
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		to := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.Mkdir(to, info.Mode().Perm())
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(to, b, info.Mode().Perm())
	})
	if err != nil {
		t.Fatalf("copy store: %v", err)
	}
	return dst
}

// Pack layout (docs/FORMAT.md): a 16-byte header, then frames of a 24-byte
// header (compLen at offset 12, a u8 page count at offset 6), 16 bytes of id
// per page, and the payload.
const (
	packHeaderLen  = 16
	frameHeaderLen = 24
)

// flipFrameData inverts one byte in the middle of the payload of the frame
// that holds the middle of the pack at path.
func flipFrameData(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	mid := int64(len(b) / 2)
	for off := int64(packHeaderLen); off+frameHeaderLen <= int64(len(b)); {
		count := int64(b[off+6])
		compLen := int64(binary.LittleEndian.Uint32(b[off+12:]))
		payload := off + frameHeaderLen + 16*count
		end := payload + compLen
		if end > int64(len(b)) || compLen == 0 {
			t.Fatalf("%s: frame at %d runs past the end or is empty", path, off)
		}
		if end > mid {
			at := payload + compLen/2
			b[at] ^= 0xff
			if err := os.WriteFile(path, b, 0); err != nil {
				t.Fatal(err)
			}
			t.Logf("damaged %s: inverted the byte at %d, in the payload of the frame at %d "+
				"(%d pages, %d bytes)", path, at, off, count, compLen)
			return
		}
		off = end
	}
	t.Fatalf("%s: no frame found around offset %d", path, mid)
}

// truncateHalf cuts the file at path to half its length.
func truncateHalf(t *testing.T, path string) {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, info.Size()/2); err != nil {
		t.Fatal(err)
	}
	t.Logf("damaged %s: truncated from %d to %d bytes", path, info.Size(), info.Size()/2)
}
