package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPythonProgressLazy is acceptance item 1: a python3 program building
// about 300 MiB of objects is checkpointed mid-run, killed with SIGKILL, and
// restored lazily; its progress file and its stdout (a pipe, so restored onto
// cryo restore's stdout) end byte-identical to an uninterrupted run's.
func TestPythonProgressLazy(t *testing.T) {
	requireE2E(t)
	store := newStore(t)
	dir := t.TempDir()
	script := filepath.Join(workloadsDir, "progress.py")
	env := []string{"PYTHONHASHSEED=0"}

	// The reference: an uninterrupted run (short pauses: they change no output).
	refFile := filepath.Join(dir, "reference.txt")
	ref := start(t, spawn{argv: []string{pythonBin, script, refFile, "40", "0.01"}, env: env,
		stderrFile: filepath.Join(dir, "reference.err")})
	if code := ref.wait(t, restoreTimeout); code != 0 {
		t.Fatalf("reference run exited %d: %s", code, ref.out)
	}
	<-ref.out.(*pipeOutput).done
	wantFile, err := os.ReadFile(refFile)
	if err != nil {
		t.Fatal(err)
	}
	wantStdout := ref.out.String()
	if !strings.Contains(string(wantFile), "verify ok") {
		t.Fatalf("reference run did not verify itself:\n%s", wantFile)
	}

	// The run to checkpoint at step 24 of 40 (about 180 MiB built), with 0.3 s
	// between steps: time for the checkpoint to finish before the run does.
	outFile := filepath.Join(dir, "progress.txt")
	p := start(t, spawn{argv: []string{pythonBin, script, outFile, "40", "0.3"}, env: env,
		stderrFile: filepath.Join(dir, "progress.err")})
	waitOutput(t, fileOutput(outFile), "step 24 ", readyTimeout)
	rss, _ := statusField(p.pid, "VmRSS")
	t.Logf("python pid %d at step 24, VmRSS %d MiB", p.pid, rss/1024)

	checkpoint(t, store, p.pid)
	p.kill(t)
	atKill := fileOutput(outFile).String()
	if strings.Contains(atKill, "final") {
		t.Fatalf("the program finished before it was killed (checkpoint too slow for " +
			"the test); nothing left to restore")
	}
	t.Logf("killed the original at %q", lastLine(atKill))

	r := startRestore(t, store, "latest")
	t.Logf("timing: lazy restore: running again after %v", r.waitRunning(t, p.pid))
	r.restoreOK(t, fileOutput(outFile))

	got, err := os.ReadFile(outFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(wantFile) {
		t.Errorf("progress file differs from the uninterrupted run's\n got: %q\nwant: %q",
			tail(string(got), 400), tail(string(wantFile), 400))
	}
	if gotStdout := r.stdout.String(); gotStdout != wantStdout {
		t.Errorf("restored stdout (on cryo restore's stdout) = %q, want %q",
			gotStdout, wantStdout)
	}
}

// lastLine returns the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

// tail returns at most the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
