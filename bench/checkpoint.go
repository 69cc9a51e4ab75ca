package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// env is what every section needs: where things are.
type env struct {
	dir      string // output folder
	cryo     string // the cryo binary
	memfill  string
	rewriter string
	fdholder string
}

func (e *env) cryoArgs(store string, args ...string) []string {
	return append([]string{"--store", store, "--log-level", "info"}, args...)
}

// benchSize checkpoints a memfill of sizeMiB once, copies it naively, then
// restores the snapshot eagerly, lazily with prefetch and lazily without,
// each time letting memfill verify every page.
func benchSize(res *Results, e *env, sizeMiB int) error {
	store := filepath.Join(e.dir, fmt.Sprintf("store-ckpt-%d", sizeMiB))
	os.RemoveAll(store)
	defer os.RemoveAll(store)
	trig := trigger(filepath.Join(e.dir, "trigger"))
	trig.reset()
	timeout := 30*time.Second + time.Duration(sizeMiB)*100*time.Millisecond
	name := fmt.Sprintf("%d MiB", sizeMiB)

	// Every 32nd page is timed on its first touch after a restore: more than
	// the lazy server installs around one fault, so that each is a fault.
	w, err := startEnv([]string{"MEMFILL_TOUCH_STRIDE=32"}, e.memfill, strconv.Itoa(sizeMiB),
		string(trig))
	if err != nil {
		return err
	}
	if _, err := w.stdout.waitFor("ready", timeout); err != nil {
		return w.failed(fmt.Errorf("memfill %d MiB: %w", sizeMiB, err))
	}
	pid := w.cmd.Process.Pid

	// cryo checkpoint, then the naive copy of the same process.
	ck, err := checkpoint(e, store, pid)
	if err != nil {
		w.kill()
		return err
	}

	img := filepath.Join(e.dir, "naive.img")
	defer os.Remove(img)
	nv, err := naiveCopy(pid, img)
	w.kill()
	if err != nil {
		return fmt.Errorf("naive copy: %w", err)
	}
	add(res, "checkpoint", "wall "+name, "ms", ms(ck.wall), ms(nv.wall))
	add(res, "checkpoint", "stopped "+name, "ms", ms(ck.frozen), ms(nv.stopped))
	add(res, "checkpoint", "stored "+name, "MiB", mib(ck.stored), mib(nv.bytes))
	readBack, err := naiveReadBack(img)
	if err != nil {
		return err
	}

	// Eager restore: every page is in before the process runs.
	r, err := restore(e, store, ck.id, trig, timeout, "--eager")
	if err != nil {
		return fmt.Errorf("eager restore: %w", err)
	}
	logical := float64(ck.pages * pageSize)
	add(res, "restore", "eager "+name, "ms", ms(r.toRun), ms(readBack))
	add(res, "restore", "eager GB/s "+name, "GB/s", logical/1e9/r.toRun.Seconds(),
		float64(nv.bytes)/1e9/readBack.Seconds())

	// Lazy with prefetch: runs at once, every page streams in.
	r, err = restore(e, store, ck.id, trig, timeout)
	if err != nil {
		return fmt.Errorf("lazy restore: %w", err)
	}
	add(res, "restore", "lazy to run "+name, "ms", ms(r.toRun), ms(readBack))
	add(res, "restore", "lazy all in, prefetch "+name, "ms", ms(r.allIn), ms(readBack))
	add(res, "restore", "lazy verified, prefetch "+name, "ms", ms(r.verified), ms(readBack))

	// Lazy without prefetch: only touched pages come in, and memfill's verify
	// touches them all, faulting them in one by one: allow 1 ms a page.
	r, err = restore(e, store, ck.id, trig, timeout+time.Duration(ck.pages)*time.Millisecond,
		"--no-prefetch")
	if err != nil {
		return fmt.Errorf("lazy restore --no-prefetch: %w", err)
	}
	add(res, "restore", "lazy all in, no prefetch "+name, "ms", ms(r.allIn), ms(readBack))
	add(res, "restore", "lazy verified, no prefetch "+name, "ms", ms(r.verified),
		ms(readBack))
	for i, q := range []string{"p50", "p99", "p99.9"} {
		addVs(res, "restore", "fault "+q+" restored process "+name, "µs", r.touch[i]/1e3,
			r.anon[i]/1e3, "first touch of fresh memory")
	}
	return nil
}

// ckpt is what one cryo checkpoint reported.
type ckpt struct {
	id     string
	wall   time.Duration // as bench saw it: the command, start to exit
	frozen time.Duration // cryo's own figure: the process was stopped this long
	stored int64         // bytes the snapshot added to the store
	pages  int64         // pages in the snapshot
}

// checkpoint runs cryo checkpoint of pid into store.
func checkpoint(e *env, store string, pid int) (ckpt, error) {
	var ck ckpt
	t0 := time.Now()
	out, err := execOut(e.cryo, e.cryoArgs(store, "checkpoint", strconv.Itoa(pid))...)
	ck.wall = time.Since(t0)
	if err != nil {
		return ck, fmt.Errorf("cryo checkpoint %d: %w", pid, err)
	}
	done := findLine(out, "checkpoint done")
	if ck.frozen, err = durField(done, "frozen"); err != nil {
		return ck, err
	}
	ck.id = field(done, "snapshot")
	if ck.stored, err = intField(done, "stored_bytes"); err != nil {
		return ck, err
	}
	if ck.pages, err = intField(done, "pages"); err != nil {
		return ck, err
	}
	return ck, nil
}

// benchMix checkpoints a memfill of sizeMiB filled with issue 9's target mix
// (40% zero, 30% text, 30% random of which 10% of all pages duplicate) and
// records the snapshot's size beside the naive copy's.
func benchMix(res *Results, e *env, sizeMiB int) error {
	store := filepath.Join(e.dir, "store-mix")
	os.RemoveAll(store)
	defer os.RemoveAll(store)
	trig := trigger(filepath.Join(e.dir, "trigger-mix"))
	trig.reset()
	w, err := start(e.memfill, strconv.Itoa(sizeMiB), string(trig), "target")
	if err != nil {
		return err
	}
	defer w.kill()
	if _, err := w.stdout.waitFor("ready", 30*time.Second+time.Duration(sizeMiB)*
		100*time.Millisecond); err != nil {
		return w.failed(fmt.Errorf("memfill %d MiB target mix: %w", sizeMiB, err))
	}
	ck, err := checkpoint(e, store, w.cmd.Process.Pid)
	if err != nil {
		return err
	}
	img := filepath.Join(e.dir, "naive-mix.img")
	defer os.Remove(img)
	nv, err := naiveCopy(w.cmd.Process.Pid, img)
	if err != nil {
		return fmt.Errorf("naive copy: %w", err)
	}
	name := fmt.Sprintf("%d MiB target mix", sizeMiB)
	add(res, "checkpoint", "stored "+name, "MiB", mib(ck.stored), mib(nv.bytes))
	add(res, "checkpoint", "stored/size "+name, "fraction", float64(ck.stored)/float64(sizeMiB<<20),
		float64(nv.bytes)/float64(sizeMiB<<20))
	return nil
}

// restoreResult is what one cryo restore of memfill took.
type restoreResult struct {
	toRun time.Duration // cryo's to_run: until the process runs again
	// allIn is from starting cryo restore until it logs that every page is in
	// (for an eager restore, that is before the process runs).
	allIn time.Duration
	// verified is from starting cryo restore until memfill, triggered as soon
	// as it runs, has checked every page.
	verified time.Duration
	// touch and anon are memfill's timed first touches (p50, p99, p99.9 in
	// ns) of its restored memory and of fresh anonymous memory.
	touch, anon [3]float64
}

// restore runs cryo restore of id in the foreground with flags, fires the
// trigger as soon as the process runs, and waits for memfill's verdict and
// for cryo restore to end.
func restore(e *env, store, id string, trig trigger, timeout time.Duration,
	flags ...string) (restoreResult, error) {
	var rr restoreResult
	trig.reset()
	args := e.cryoArgs(store, append([]string{"restore", id}, flags...)...)
	t0 := time.Now()
	p, err := start(e.cryo, args...)
	if err != nil {
		return rr, err
	}
	l, err := p.stderr.waitFor("msg=restored", timeout)
	if err != nil {
		return rr, p.failed(err)
	}
	if rr.toRun, err = durField(l.text, "to_run"); err != nil {
		return rr, p.failed(err)
	}
	if err := trig.fire(); err != nil {
		return rr, p.failed(err)
	}
	ok, err := p.stdout.waitFor("OK", timeout)
	if err != nil {
		return rr, p.failed(fmt.Errorf("memfill did not verify: %w", err))
	}
	rr.verified = ok.at.Sub(t0)
	if err := p.wait(timeout); err != nil {
		return rr, fmt.Errorf("cryo restore: %w: %s", err, p.stderr.tail())
	}
	for _, l := range p.stderr.all {
		if strings.Contains(l.text, "lazy restore done") {
			rr.allIn = l.at.Sub(t0)
		}
	}
	if rr.allIn == 0 {
		return rr, fmt.Errorf("cryo restore %s logged no \"lazy restore done\": %s", id,
			p.stderr.tail())
	}
	noPrefetch := slices.Contains(flags, "--no-prefetch")
	for _, l := range p.stdout.all {
		var n int
		var q [3]float64
		if _, err := fmt.Sscanf(l.text, "touch n %d p50 %g p99 %g p999 %g", &n, &q[0], &q[1],
			&q[2]); err == nil {
			rr.touch = q
		}
		if _, err := fmt.Sscanf(l.text, "anon n %d p50 %g p99 %g p999 %g", &n, &q[0], &q[1],
			&q[2]); err == nil {
			rr.anon = q
		}
	}
	if noPrefetch && rr.touch[0] == 0 {
		return rr, fmt.Errorf("memfill printed no touch latencies: %s", p.stdout.tail())
	}
	trig.reset()
	return rr, nil
}

// findLine returns the last line of out containing sub.
func findLine(out, sub string) string {
	var found string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, sub) {
			found = l
		}
	}
	return found
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
