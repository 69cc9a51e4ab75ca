package main

import (
	"os/exec"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestKillDescendants starts a shell with a background grandchild and checks
// both are found below this process and killed.
func TestKillDescendants(t *testing.T) {
	cmd := exec.Command("sh", "-c", "sleep 300 & echo $!; wait")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 32)
	n, err := out.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	var grandchild int
	for _, c := range buf[:n] {
		if c >= '0' && c <= '9' {
			grandchild = grandchild*10 + int(c-'0')
		}
	}

	below := descendants(unix.Getpid())
	if !slices.Contains(below, cmd.Process.Pid) || !slices.Contains(below, grandchild) {
		t.Fatalf("descendants = %v, want the shell %d and its sleep %d", below,
			cmd.Process.Pid, grandchild)
	}
	if got := killDescendants(); got < 2 {
		t.Errorf("killDescendants killed %d processes, want at least 2", got)
	}
	cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for unix.Kill(grandchild, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	// The sleep is a zombie of init (or of a subreaper) now, or gone.
	if slices.Contains(descendants(unix.Getpid()), grandchild) {
		t.Errorf("grandchild %d still alive below this process", grandchild)
	}
}
