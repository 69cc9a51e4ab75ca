package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDiskFull is issue 4, acceptance 3: the store is on a 64 MiB tmpfs. A
// snapshot of an 8 MiB memfill fits; a checkpoint of a 256 MiB memfill (64 MiB
// of it random, incompressible) does not, and must fail saying there is no
// space, leaving its target running untraced and the earlier snapshot intact
// (verify passes, it restores). Once gc has reclaimed what the failed
// checkpoint left and the tmpfs is grown, the same checkpoint succeeds, and its
// snapshot restores with the checksum memfill computed before the failure.
func TestDiskFull(t *testing.T) {
	requireE2E(t)
	began := time.Now()
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	mount(t, "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", mnt)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
			exec.Command("umount", "-l", mnt).Run()
		}
	})
	store := filepath.Join(mnt, "store")
	if err := os.Mkdir(store, 0o700); err != nil {
		t.Fatal(err)
	}

	small := startOwnMemfill(t, 8)
	keep := checkpoint(t, store, small.p.pid)
	t.Logf("store after the small snapshot: %d KiB", storeBytes(t, store)>>10)

	big := startOwnMemfill(t, 256)
	r := cryo(t, store, "checkpoint", strconv.Itoa(big.p.pid))
	t.Logf("timing: checkpoint into a full store failed after %v", r.took)
	logCryo(t, "checkpoint", r.stderr)
	if r.exit == 0 {
		t.Fatalf("checkpoint of 256 MiB into a 64 MiB tmpfs succeeded (snapshot %s)",
			strings.TrimSpace(r.stdout))
	}
	last := lastLine(strings.TrimSpace(r.stderr))
	if !strings.Contains(last, "no space left on device") && !strings.Contains(last, "ENOSPC") {
		t.Errorf("checkpoint into a full store: error %q does not say the disk is full", last)
	}
	requireFree(t, big.p.pid)
	if ids := listSnapshots(t, store); len(ids) != 1 || ids[0] != keep {
		t.Fatalf("after the failed checkpoint cryo ls lists %q, want only %s", ids, keep)
	}
	t.Logf("store after the failed checkpoint: %d KiB", storeBytes(t, store)>>10)
	verifyStore(t, store, true)

	// Free space: gc removes what the failed checkpoint left; then grow the
	// tmpfs, since the big snapshot would not fit in 64 MiB even when empty.
	gcStore(t, store)
	verifyStore(t, store, false)
	t.Logf("store after gc: %d KiB", storeBytes(t, store)>>10)
	mount(t, "-o", "remount,size=512m", mnt)
	id := checkpoint(t, store, big.p.pid)
	requireFree(t, big.p.pid)
	verifyStore(t, store, false)

	restoreMemfill(t, store, small, keep)
	restoreMemfill(t, store, big, id)
	t.Logf("timing: TestDiskFull took %v", time.Since(began))
}

// mount runs mount(8) with args.
func mount(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
		t.Fatalf("mount %s: %v: %s", strings.Join(args, " "), err, out)
	}
}
