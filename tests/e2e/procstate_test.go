package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func init() {
	cWorkloads = append(cWorkloads, "statecheck", "stateholdout")
}

// TestProcessState is acceptance item 4 of issue 7: statecheck sets handlers,
// pending signals (process-wide and to its own thread), interval timers, POSIX
// timers, rlimits, umask, cwd, personality, scheduling, CPU affinity, I/O
// priority, timer slack, the subreaper flag,
// no_new_privs, a session of its own, timerfds, a signalfd and a memfd, and drops
// to uid and gid 1000 with saved set ids 0, groups and capabilities; it is
// checkpointed, killed and restored (lazily, then eagerly), then checks every
// piece itself. Any difference it prints fails the test.
func TestProcessState(t *testing.T) {
	requireE2E(t)
	for _, mode := range []string{"lazy", "eager"} {
		t.Run(mode, func(t *testing.T) {
			store := newStore(t)

			// The process runs as uid 1000: its cwd and trigger must be reachable.
			dir, err := os.MkdirTemp("/tmp", "statecheck-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			if err := os.Chmod(dir, 0o777); err != nil {
				t.Fatal(err)
			}
			trigger := filepath.Join(dir, "trigger")
			p := start(t, spawn{argv: []string{filepath.Join(binDir, "statecheck"), trigger,
				dir}, stdoutFile: filepath.Join(t.TempDir(), "stdout")})
			waitOutput(t, p.out, "ready\n", readyTimeout)

			checkpoint(t, store, p.pid)
			p.kill(t)

			args := []string{"latest"}
			if mode == "eager" {
				args = append(args, "--eager")
			}
			r := startRestore(t, store, args...)
			r.waitRunning(t, p.pid)
			touch(t, trigger)
			code := r.wait(t, restoreTimeout)
			out := p.out.String()
			if code != 0 || lastLine(out) != "OK" {
				t.Fatalf("statecheck after restore: exit %d; its output:\n%s\n"+
					"cryo restore stderr:\n%s", code, out, r.stderr)
			}
			logCryo(t, "restore", r.stderr.String())
		})
	}
}

// TestProcessStateTwice: a restored statecheck, which cryo rebuilt with uid 1000,
// capabilities, pending signals and timers, is checkpointed and restored again:
// what cryo reads back from its own work restores as well.
func TestProcessStateTwice(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	dir, err := os.MkdirTemp("/tmp", "statecheck-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	trigger := filepath.Join(dir, "trigger")
	p := start(t, spawn{argv: []string{filepath.Join(binDir, "statecheck"), trigger, dir},
		stdoutFile: filepath.Join(t.TempDir(), "stdout")})
	waitOutput(t, p.out, "ready\n", readyTimeout)
	checkpoint(t, store, p.pid)
	p.kill(t)

	// Eagerly, so that the restored process is not held by a page server.
	first := startRestore(t, store, "latest", "--eager")
	first.waitRunning(t, p.pid)
	res := cryo(t, store, "checkpoint", "--kill", fmt.Sprint(p.pid))
	if res.exit != 0 {
		t.Fatalf("checkpoint of the restored statecheck: exit %d\n%s", res.exit, res.stderr)
	}
	if code := first.wait(t, restoreTimeout); code != 128+9 {
		t.Errorf("first restore exited %d, want %d (its process killed by the checkpoint)",
			code, 128+9)
	}

	second := startRestore(t, store, "latest")
	second.waitRunning(t, p.pid)
	touch(t, trigger)
	code := second.wait(t, restoreTimeout)
	if out := p.out.String(); code != 0 || lastLine(out) != "OK" {
		t.Fatalf("statecheck after two restores: exit %d; its output:\n%s\ncryo restore "+
			"stderr:\n%s", code, out, second.stderr)
	}
}

// TestUnsupportedState is acceptance item 5 of issue 7: a process holding state
// cryo cannot rebuild yet fails to checkpoint with an error naming that state;
// it runs on, untraced, with the state intact, and the store stays empty.
func TestUnsupportedState(t *testing.T) {
	requireE2E(t)
	for _, tc := range []struct {
		kind string
		want string // a regexp the error must match
	}{
		{"seccomp", `seccomp filter`},
		{"tracer", `traces pid \d+`},
		{"personality", `execution domain 0x8`},
		{"namespace", `uts namespace`},
		{"cwd-deleted", `cwd /tmp/stateholdout-\S+ \(deleted\).*deleted or moved`},
		{"timer-thread", `POSIX timer \d+ signals thread \d+, which is not a thread`},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			store := newStore(t)
			trigger := filepath.Join(t.TempDir(), "trigger")
			p := start(t, spawn{argv: []string{filepath.Join(binDir, "stateholdout"), tc.kind,
				trigger}})
			waitOutput(t, p.out, "ready\n", readyTimeout)

			r := cryo(t, store, "checkpoint", fmt.Sprint(p.pid))
			t.Logf("cryo checkpoint (exit %d): %s", r.exit, strings.TrimSpace(r.stderr))
			if r.exit == 0 {
				t.Fatalf("checkpoint of a process with %s succeeded (%q), want an error",
					tc.kind, r.stdout)
			}
			if !regexp.MustCompile(tc.want).MatchString(r.stderr) {
				t.Errorf("checkpoint error %q does not match %q", strings.TrimSpace(r.stderr),
					tc.want)
			}
			if ids := listSnapshots(t, store); len(ids) != 0 {
				t.Errorf("store holds %v after a refused checkpoint", ids)
			}

			time.Sleep(100 * time.Millisecond)
			requireFree(t, p.pid)
			touch(t, trigger)
			if code := p.wait(t, readyTimeout); code != 0 {
				t.Errorf("stateholdout %s after the refused checkpoint: exit %d, output:\n%s",
					tc.kind, code, p.out)
			}
			waitOutput(t, p.out, "OK\n", readyTimeout)
		})
	}
}

// TestChrootRestored: a python3 program that chroots into a folder and works
// there comes back with the same root and cwd (restored with chdir, then chroot,
// by the paths cryo saw), and finds its trigger inside its root.
func TestChrootRestored(t *testing.T) {
	requireE2E(t)
	const prog = `import os, sys, time
d = sys.argv[1]
want = os.stat(d)
os.chroot(d)
os.chdir("/")
print("ready", flush=True)
while not os.path.exists("/trigger"):
    time.sleep(0.01)
got = os.stat("/")
print("same root" if (got.st_dev, got.st_ino) == (want.st_dev, want.st_ino) else "other root",
      os.getcwd(), flush=True)
`
	store := newStore(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	p := start(t, spawn{argv: []string{pythonBin, "-c", prog, root},
		stdoutFile: filepath.Join(dir, "stdout")})
	waitOutput(t, p.out, "ready\n", readyTimeout)
	checkpoint(t, store, p.pid)
	p.kill(t)

	r := startRestore(t, store, "latest")
	r.waitRunning(t, p.pid)
	touch(t, filepath.Join(root, "trigger"))
	r.restoreOK(t, p.out)
	if out := p.out.String(); lastLine(out) != "same root /" {
		t.Errorf("restored program printed:\n%s", out)
	}
}
