package track

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/cryo-dev/cryo/engine/remote"
	"github.com/cryo-dev/cryo/internal/procfs"
	"github.com/cryo-dev/cryo/internal/ptrace"
	"github.com/cryo-dev/cryo/internal/testenv"
)

// toucher is a running testdata/toucher.c.
type toucher struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Reader
	pid   int
	base  uint64 // the region it stamps
	pages int

	prev []Range // the ranges given to the previous Collect
}

var buildToucher = sync.OnceValues(func() (string, error) {
	if bin, ok, err := testenv.Prebuilt("toucher"); ok {
		return bin, err
	}
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "cryo-track-test")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "toucher")
	out, err := exec.Command(gcc, "-O1", "-Wall", "-Werror", "-o", bin,
		"testdata/toucher.c").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build toucher: %v\n%s", err, out)
	}
	return bin, nil
})

// startToucher runs a toucher with a region of mib MiB, every page stamped.
func startToucher(t *testing.T, mib int) *toucher {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to trace a child and take its descriptors")
	}
	bin, err := buildToucher()
	if err != nil {
		t.Fatalf("build testdata/toucher.c (make deps installs gcc): %v", err)
	}
	c := &toucher{cmd: exec.Command(bin, strconv.Itoa(mib))}
	c.cmd.Stderr = os.Stderr
	if c.in, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.out = bufio.NewReader(out)
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c.pid = c.cmd.Process.Pid
	t.Cleanup(func() {
		c.in.Close()
		c.cmd.Process.Kill()
		c.cmd.Wait()
	})
	f := c.reply(t, "ready")
	c.base = hexArg(t, f[0])
	if c.pages, err = strconv.Atoi(f[1]); err != nil {
		t.Fatal(err)
	}
	return c
}

// do sends a command and returns the fields of its "ok" answer.
func (c *toucher) do(t *testing.T, format string, args ...any) []string {
	t.Helper()
	if _, err := fmt.Fprintf(c.in, format+"\n", args...); err != nil {
		t.Fatal(err)
	}
	return c.reply(t, "ok")
}

func (c *toucher) reply(t *testing.T, want string) []string {
	t.Helper()
	line, err := c.out.ReadString('\n')
	if err != nil {
		t.Fatalf("toucher pid %d: read answer: %v", c.pid, err)
	}
	f := strings.Fields(line)
	if len(f) == 0 || f[0] != want {
		t.Fatalf("toucher pid %d: %q, want %q", c.pid, strings.TrimSpace(line), want)
	}
	return f[1:]
}

// write makes the toucher write the pages of its region at indexes pages.
func (c *toucher) write(t *testing.T, pages []int) {
	t.Helper()
	var b strings.Builder
	b.WriteString("w")
	for _, i := range pages {
		fmt.Fprintf(&b, " %d", i)
	}
	c.do(t, "%s", b.String())
}

func hexArg(t *testing.T, s string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// collect seizes the toucher, runs tr.Collect over its ranges (every mapping but
// the kernel's special ones), puts its registers back and lets it go. It checks
// the invariants every tracker keeps: a tracked range was given to the previous
// Collect with the same bounds, and pages are ascending and inside tracked
// ranges. The caller's goroutine must be locked to its thread.
func (c *toucher) collect(t *testing.T, tr Tracker) ([]Range, Dirty) {
	t.Helper()
	if err := ptrace.Seize(c.pid, ptrace.PTRACE_O_TRACESYSGOOD); err != nil {
		t.Fatalf("seize pid %d: %v", c.pid, err)
	}
	if err := ptrace.Interrupt(c.pid); err != nil {
		t.Fatalf("interrupt pid %d: %v", c.pid, err)
	}
	ws, err := ptrace.Wait(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	if !ws.Stopped() || ptrace.Event(ws) != ptrace.PTRACE_EVENT_STOP {
		t.Fatalf("pid %d: state %#x, want an interrupt stop", c.pid, uint32(ws))
	}
	ranges := c.ranges(t)
	b, err := remote.Borrow(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	d, cerr := tr.Collect(b, ranges)
	if err := b.Release(); err != nil {
		t.Fatal(err)
	}
	if err := ptrace.Detach(c.pid, 0); err != nil {
		t.Fatalf("detach pid %d: %v", c.pid, err)
	}
	if cerr != nil {
		t.Fatalf("tracker %s: %v", tr.Name(), cerr)
	}

	for _, r := range d.Tracked {
		if !slices.Contains(c.prev, r) || !slices.Contains(ranges, r) {
			t.Errorf("tracker %s: range %#x-%#x tracked but not given with these bounds "+
				"to this and the previous Collect", tr.Name(), r.Start, r.End)
		}
	}
	for i, p := range d.Pages {
		if i > 0 && p <= d.Pages[i-1] {
			t.Errorf("tracker %s: pages not ascending at %#x", tr.Name(), p)
		}
		if rangeOf(d.Tracked, p) < 0 {
			t.Errorf("tracker %s: page %#x outside every tracked range", tr.Name(), p)
		}
	}
	c.prev = ranges
	return ranges, d
}

// ranges lists the mappings of the stopped toucher, leaving out [vdso], [vvar],
// [vvar_vclock] and [vsyscall], which the engine does not copy.
func (c *toucher) ranges(t *testing.T) []Range {
	t.Helper()
	vmas, err := procfs.ReadMaps(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	var rs []Range
	for _, v := range vmas {
		if strings.HasPrefix(v.Path, "[v") {
			continue
		}
		rs = append(rs, Range{v.Start, v.End})
	}
	return rs
}

// rangeOf returns the index of the range holding addr, or -1.
func rangeOf(rs []Range, addr uint64) int {
	for i, r := range rs {
		if r.Start <= addr && addr < r.End {
			return i
		}
	}
	return -1
}

// covered reports whether the page at addr is reported by d: in Pages, or in a
// range given that is not tracked (copied whole).
func covered(ranges []Range, d Dirty, addr uint64) bool {
	if rangeOf(d.Tracked, addr) < 0 {
		return rangeOf(ranges, addr) >= 0
	}
	_, found := slices.BinarySearch(d.Pages, addr)
	return found
}
