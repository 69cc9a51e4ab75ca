package e2e

import (
	"os"
	"path/filepath"
	"testing"
)

// TestFDHolder is acceptance item 2: fdholder holds an eventfd (semaphore,
// count 5, non-blocking), an epoll with three watches (one EPOLLET) with
// distinct data, a pipe with 1000 unread bytes, a file at offset 12345, an
// O_APPEND file, fd 100 with FD_CLOEXEC and /dev/null, and checks all of them
// after a lazy and after an eager restore. In the lazy case its stdout is a
// pipe (restored onto cryo restore's stdout); in the eager case a file.
func TestFDHolder(t *testing.T) {
	requireE2E(t)
	for _, tc := range []struct {
		name       string
		eager      bool
		stdoutPipe bool
	}{
		{"lazy/stdout-pipe", false, true},
		{"eager/stdout-file", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := newStore(t)
			dir := t.TempDir()
			trigger := filepath.Join(dir, "trigger")
			s := spawn{argv: []string{filepath.Join(binDir, "fdholder"), trigger, dir}}
			if !tc.stdoutPipe {
				s.stdoutFile = filepath.Join(dir, "stdout")
			}
			p := start(t, s)
			waitOutput(t, p.out, "ready\n", readyTimeout)

			checkpoint(t, store, p.pid)
			requireFree(t, p.pid)
			p.kill(t)

			// fdholder's files must be reopened, not recreated: remove nothing.
			args := []string{"latest"}
			if tc.eager {
				args = append(args, "--eager")
			}
			touch(t, trigger)
			r := startRestore(t, store, args...)
			t.Logf("timing: restore (eager=%v): running again after %v", tc.eager,
				r.waitRunning(t, p.pid))

			var out output = r.stdout
			want := "OK\n"
			if !tc.stdoutPipe {
				out = p.out
				want = "ready\nOK\n"
			}
			code := r.wait(t, restoreTimeout)
			if got := out.String(); got != want || code != 0 {
				t.Fatalf("fdholder after restore: exit %d, output %q, want exit 0 and %q\n"+
					"cryo stderr:\n%s", code, got, want, r.stderr)
			}
			logCryo(t, "restore", r.stderr.String())

			// The append file got its second line at its end, through the
			// restored descriptor.
			b, err := os.ReadFile(filepath.Join(dir, "fdholder.log"))
			if err != nil || string(b) != "first\nsecond\n" {
				t.Errorf("fdholder.log = %q (%v), want \"first\\nsecond\\n\"", b, err)
			}
		})
	}
}
