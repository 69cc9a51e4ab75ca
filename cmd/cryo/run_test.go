package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine"
	"github.com/cryo-dev/cryo/engine/fds"
	"github.com/cryo-dev/cryo/engine/track"
	"github.com/cryo-dev/cryo/pagestore"
)

// TestMain lets this test binary serve as cryo run's reaper, as cryo does.
func TestMain(m *testing.M) {
	if len(os.Args) > 0 && os.Args[0] == reaperArg0 {
		unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
		os.Exit(reap(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func TestMetricsAddr(t *testing.T) {
	for _, tc := range []struct {
		flag, want string
		bad        bool
	}{
		{flag: "9464", want: "127.0.0.1:9464"},
		{flag: ":9464", want: "127.0.0.1:9464"},
		{flag: "127.0.0.1:9464", want: "127.0.0.1:9464"},
		{flag: "0.0.0.0:9464", want: "0.0.0.0:9464"},
		{flag: "localhost:0", want: "localhost:0"},
		{flag: "[::1]:9464", want: "[::1]:9464"},
		{flag: "[::]:9464", want: "[::]:9464"},
		{flag: "127.0.0.1", bad: true},
		{flag: ":http", bad: true},
		{flag: ":70000", bad: true},
		{flag: "", bad: true},
	} {
		got, err := metricsAddr(tc.flag)
		if tc.bad {
			if err == nil {
				t.Errorf("metricsAddr(%q) = %q, want an error", tc.flag, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("metricsAddr(%q) = %q, %v; want %q", tc.flag, got, err, tc.want)
		}
	}
}

// TestMetricsLint checks the names, units and help strings of every metric cryo
// run serves, the way promtool check metrics does.
func TestMetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	engine.NewMetrics(reg)
	m := newPeriodicMetrics(reg)
	if err := m.measureStore(openTestStore(t)); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
}

func TestPermanent(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("checkpoint pid 1: 2 threads: %w", engine.ErrUnsupported), true},
		{fmt.Errorf("checkpoint pid 1: dump fds: %w", &fds.UnsupportedError{}), true},
		{fmt.Errorf("checkpoint pid 1: %w", &track.NotSupportedError{}), true},
		{fmt.Errorf("checkpoint pid 1: seize: %w", unix.ESRCH), false},
		{fmt.Errorf("checkpoint pid 1: %w", pagestore.ErrLocked), false},
		{errors.New("disk full"), false},
	} {
		if got := permanent(tc.err); got != tc.want {
			t.Errorf("permanent(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestRetireKeepsChildren retires the oldest snapshots of an incremental chain
// and collects garbage, then reads every page of the snapshots kept: each must
// hold exactly what was written, although their parents are gone.
func TestRetireKeepsChildren(t *testing.T) {
	st := openTestStore(t)
	const base, pages = 0x7f0000000000, 1024 // 4 MiB: two page-map windows
	const size = pages * pagestore.PageSize
	mem := make([]byte, size)
	for i := range mem {
		mem[i] = byte(i*7 + i/4096)
	}

	// Five snapshots, each rewriting one page of the last and carrying the rest.
	var ids []string
	want := map[string][]byte{}
	for n := range 5 {
		parent := ""
		if n > 0 {
			parent = ids[n-1]
		}
		w, err := st.NewWriter(parent)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			err = w.AddPages(base, mem)
		} else {
			p := (n * 97) % pages
			page := mem[p*pagestore.PageSize : (p+1)*pagestore.PageSize]
			for i := range page {
				page[i] = byte(n)
			}
			if err = w.Carry([]pagestore.Run{{Start: base, End: base + size}}); err == nil {
				err = w.AddPages(base+uint64(p*pagestore.PageSize), page)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		info, err := w.Commit(pagestore.Meta{Image: []byte("{}")})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, info.ID)
		want[info.ID] = bytes.Clone(mem)
	}

	p := &periodic{a: &app{log: slog.New(slog.DiscardHandler)},
		f: &periodicFlags{keep: 2}, store: st}
	kept, removed := p.retire(ids[:3], ids)
	if removed != 3 || len(kept) != 2 || kept[0] != ids[3] || kept[1] != ids[4] {
		t.Fatalf("retire: kept %v, removed %d; want %v, 3", kept, removed, ids[3:])
	}
	if !p.gcDue {
		t.Fatal("retire removed snapshots but did not ask for GC")
	}
	if _, err := st.GC(); err != nil {
		t.Fatal(err)
	}
	// Retiring a snapshot removed meanwhile is not an error.
	if kept, removed = p.retire(ids[:1], kept); removed != 0 || len(kept) != 2 {
		t.Fatalf("retire of a removed snapshot: kept %v, removed %d", kept, removed)
	}

	for _, id := range kept {
		checkSnapshot(t, st, id, base, want[id])
	}
	for _, id := range ids[:3] {
		if _, err := st.OpenSnapshot(id); !errors.Is(err, pagestore.ErrNotFound) {
			t.Errorf("retired snapshot %s: open gives %v, want ErrNotFound", id, err)
		}
	}
}

// checkSnapshot compares every page of snapshot id with want, mapped at base.
func checkSnapshot(t *testing.T, st *pagestore.Store, id string, base uint64, want []byte) {
	t.Helper()
	sn, err := st.OpenSnapshot(id)
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	pm, err := sn.PageMap()
	if err != nil {
		t.Fatal(err)
	}
	if len(pm)*pagestore.PageSize != len(want) {
		t.Fatalf("snapshot %s: %d pages, want %d", id, len(pm), len(want)/pagestore.PageSize)
	}
	buf := make([]byte, pagestore.PageSize)
	for _, e := range pm {
		off := e.Addr - base
		if e.Zero {
			clear(buf)
		} else if err := sn.ReadPage(e.ID, buf); err != nil {
			t.Fatalf("snapshot %s: page %#x: %v", id, e.Addr, err)
		}
		if !bytes.Equal(buf, want[off:off+pagestore.PageSize]) {
			t.Fatalf("snapshot %s: page %#x differs", id, e.Addr)
		}
	}
}

func TestStartReaped(t *testing.T) {
	for _, tc := range []struct {
		script string
		want   int
	}{
		{"exit 0", 0},
		{"exit 7", 7},
		{"kill -TERM $$", 128 + 15},
		{"kill -KILL $$", 128 + 9},
	} {
		r, err := startReaped([]string{"/bin/sh", "-c", tc.script})
		if err != nil {
			t.Fatalf("start %q: %v", tc.script, err)
		}
		if got := <-r.status; got != tc.want {
			t.Errorf("sh -c %q: status %d, want %d", tc.script, got, tc.want)
		}
	}

	// Not found: 127, as a shell says, and the reason on stderr.
	stderr := os.Stderr
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	os.Stderr = pw
	_, err = startReaped([]string{filepath.Join(t.TempDir(), "missing")})
	os.Stderr = stderr
	pw.Close()
	msg, _ := io.ReadAll(pr)
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 127 || !bytes.Contains(msg, []byte("missing")) {
		t.Errorf("start of a missing program: %v, printed %q; want exit status 127", err, msg)
	}
}

func openTestStore(t *testing.T) *pagestore.Store {
	t.Helper()
	st, err := pagestore.Open(filepath.Join(t.TempDir(), "store"), pagestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}
