package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
)

// rewriterRun is what one run of the rewriter workload showed.
type rewriterRun struct {
	checks []float64       // the workload's checks per second, one per second
	frozen []time.Duration // per checkpoint, in order (the first is full)
	total  []time.Duration // checkpoint wall time, in order
	stored []int64         // bytes each checkpoint appended
	copied []int64         // pages each checkpoint copied from the process
	// firstBytes and storeBytes are the size of every file in the store after
	// the first checkpoint and after the run.
	firstBytes, storeBytes int64
	naive                  naiveResult // a naive copy taken mid-run (alone runs only)
	// from is when the first, full checkpoint ended (bench's start of the run
	// for the other kinds); window is from then until the trigger.
	from   time.Time
	window time.Duration
	until  time.Time // when the trigger ended the run
	// increments counts the checkpoints that ended between from and until.
	increments int
	// pageZstd is the mean size of one of the process's pages compressed
	// on its own as the store compresses it (alone runs only).
	pageZstd float64
}

// runRewriter runs rewriter (sizeMiB, pct% rewritten per second) for about
// runFor after it is ready, alone (interval 0, with one naive copy midway),
// under cryo run with --interval and --tracker (interval > 0), or under a
// naive full copy every -interval (interval < 0), then lets it verify every
// page.
func runRewriter(e *env, sizeMiB int, pct float64, interval time.Duration,
	tracker string, runFor time.Duration) (rewriterRun, error) {
	rr := rewriterRun{from: time.Now()}
	trig := trigger(filepath.Join(e.dir, "trigger-rw"))
	trig.reset()
	defer trig.reset()
	store := filepath.Join(e.dir, "store-run")
	os.RemoveAll(store)
	defer os.RemoveAll(store)

	args := []string{strconv.Itoa(sizeMiB), strconv.FormatFloat(pct, 'f', -1, 64),
		string(trig)}
	var p *proc
	var err error
	if interval <= 0 {
		p, err = start(e.rewriter, args...)
	} else {
		p, err = start(e.cryo, e.cryoArgs(store, append([]string{"run", "--interval",
			interval.String(), "--tracker", tracker, "--", e.rewriter}, args...)...)...)
	}
	if err != nil {
		return rr, err
	}
	if _, err := p.stdout.waitFor("ready", 60*time.Second); err != nil {
		return rr, p.failed(fmt.Errorf("rewriter: %w", err))
	}
	switch {
	case interval < 0:
		// The naive baseline of periodic checkpoints: a full naive copy
		// every -interval.
		img := filepath.Join(e.dir, "naive-rw.img")
		end := time.Now().Add(runFor)
		// A copy that takes longer than the interval is followed at once by
		// the next, as a fixed-rate timer would.
		next := time.Now()
		for time.Now().Before(end) {
			next = next.Add(-interval)
			time.Sleep(time.Until(next))
			nv, err := naiveCopy(p.cmd.Process.Pid, img)
			if err != nil {
				p.kill()
				return rr, err
			}
			rr.frozen = append(rr.frozen, nv.stopped)
			rr.total = append(rr.total, nv.wall)
			rr.stored = append(rr.stored, nv.bytes)
		}
		os.Remove(img)
	case interval == 0:
		time.Sleep(runFor / 2)
		img := filepath.Join(e.dir, "naive-rw.img")
		rr.naive, err = naiveCopy(p.cmd.Process.Pid, img)
		if err == nil {
			rr.pageZstd, err = meanCompressedPage(img)
		}
		os.Remove(img)
		if err != nil {
			p.kill()
			return rr, err
		}
		time.Sleep(runFor / 2)
	default:
		// The first checkpoint is full; the increments after it are what is
		// measured, for runFor and at least two of them, however slow the
		// machine.
		first, err := p.stderr.waitFor("checkpoint done", 2*time.Minute)
		if err != nil {
			return rr, p.failed(fmt.Errorf("cryo run --interval %v: %w", interval, err))
		}
		rr.from = first.at
		if rr.firstBytes, err = treeBytes(store); err != nil {
			p.kill()
			return rr, err
		}
		for range 2 {
			if _, err := p.stderr.waitFor("checkpoint done", 2*time.Minute); err != nil {
				return rr, p.failed(fmt.Errorf("cryo run --interval %v: %w", interval, err))
			}
		}
		time.Sleep(time.Until(first.at.Add(runFor)))
	}
	rr.window = time.Since(rr.from)
	rr.until = time.Now()
	trig.fire()
	if _, err := p.stdout.waitFor("verify ok", 60*time.Second); err != nil {
		p.kill()
		return rr, fmt.Errorf("rewriter did not verify: %w", err)
	}
	if err := p.wait(2 * time.Minute); err != nil {
		return rr, fmt.Errorf("rewriter run: %w: %s", err, p.stderr.tail())
	}

	rates := 0
	for _, l := range p.stdout.all {
		var r, c float64
		if _, err := fmt.Sscanf(l.text, "rate %f checks %f", &r, &c); err == nil {
			// The first second includes the start of the schedule; under cryo
			// run, only the seconds after the first, full checkpoint count.
			if rates++; rates > 1 && l.at.After(rr.from) {
				rr.checks = append(rr.checks, c)
			}
		}
	}
	for _, l := range p.stderr.all {
		if !strings.Contains(l.text, "checkpoint done") {
			continue
		}
		f, err1 := durField(l.text, "frozen")
		t, err2 := durField(l.text, "total")
		if err1 != nil || err2 != nil {
			continue
		}
		s, err1 := intField(l.text, "stored_bytes")
		c, err2 := intField(l.text, "copied")
		if err1 != nil || err2 != nil {
			return rr, errors.Join(err1, err2)
		}
		if l.at.After(rr.from) && l.at.Before(rr.until) {
			rr.increments++
		}
		rr.frozen = append(rr.frozen, f)
		rr.total = append(rr.total, t)
		rr.stored = append(rr.stored, s)
		rr.copied = append(rr.copied, c)
	}
	if interval > 0 {
		rr.storeBytes, err = treeBytes(store)
		if err != nil {
			return rr, err
		}
	}
	if interval > 0 && len(rr.frozen) < 2 {
		return rr, fmt.Errorf("cryo run --interval %v --tracker %s: %d checkpoints, "+
			"want at least 2: %s", interval, tracker, len(rr.frozen), p.stderr.tail())
	}
	return rr, nil
}

// benchRewritten measures incremental checkpoints of a rewriter of sizeMiB
// at each share rewritten per second, one checkpoint a second, per tracker. A
// tracker or share that fails is recorded and the others still run; the
// failures come back joined.
func benchRewritten(res *Results, e *env, sizeMiB int, shares []float64,
	trackers []string, runFor time.Duration, naive naiveResult) error {
	var errs []error
	for _, tr := range trackers {
		key := "stopped_vs_rewritten/" + tr
		for _, pct := range shares {
			name := fmt.Sprintf("%s %g%%/s %d MiB", tr, pct, sizeMiB)
			rr, err := runRewriter(e, sizeMiB, pct, time.Second, tr, runFor)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				continue
			}
			frozen := median(rr.frozen[1:])
			total := median(rr.total[1:])
			add(res, "checkpoint", "stopped incr "+name, "ms", ms(frozen), ms(naive.stopped))
			add(res, "checkpoint", "wall incr "+name, "ms", ms(total), ms(naive.wall))
			add(res, "checkpoint", "stored incr "+name, "MiB",
				mib(int64(median64(rr.stored[1:]))), mib(naive.bytes))
			res.Series[key] = append(res.Series[key], Point{X: pct, Y: ms(frozen)})
		}
	}
	return errors.Join(errs...)
}

// benchPeriodic measures the rewriter's own throughput under cryo run at 1
// and 10 checkpoints a second, each beside a run alone just before it and a
// run under naive copies at the same interval, and records store growth.
func benchPeriodic(res *Results, e *env, sizeMiB int, pct float64,
	runFor time.Duration, first rewriterRun) error {
	var errs []error
	for k, iv := range []time.Duration{time.Second, 100 * time.Millisecond} {
		name := fmt.Sprintf("every %v, %d MiB %g%%/s", iv, sizeMiB, pct)
		alone := first
		if k > 0 {
			var err error
			if alone, err = runRewriter(e, sizeMiB, pct, 0, "", runFor); err != nil {
				errs = append(errs, fmt.Errorf("%s, alone: %w", name, err))
				continue
			}
		}
		rr, err := runRewriter(e, sizeMiB, pct, iv, "auto", runFor)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		nv, err := runRewriter(e, sizeMiB, pct, -iv, "", runFor)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s, naive copies: %w", name, err))
			continue
		}
		base, got, naive := mean(alone.checks), mean(rr.checks), mean(nv.checks)
		addVs(res, "periodic", "checks/s "+name, "1/s", got, base, "alone")
		addVs(res, "periodic", "checks/s under naive copies "+name, "1/s", naive, base,
			"alone")
		// A slowdown is a difference: its baseline is the naive copies'
		// slowdown, and a ratio of the two would mean nothing.
		res.Figures = append(res.Figures, Figure{Group: "periodic", Name: "slowdown " + name,
			Unit: "%", Value: 100 * (1 - got/base), Baseline: 100 * (1 - naive/base),
			Versus: "naive copies' slowdown"})
		add(res, "periodic", "stopped median "+name, "ms", ms(median(rr.frozen[1:])),
			ms(median(nv.frozen)))
		// Checkpoints after the first, full one, over the time they had.
		rate := float64(rr.increments) / rr.window.Seconds()
		addVs(res, "periodic", "checkpoints/s "+name, "1/s", rate, float64(time.Second)/
			float64(iv), "the interval asked for")
		if iv == time.Second {
			// Store growth per incremental checkpoint, every file counted
			// (packs, indexes, manifests), beside the dirty pages compressed
			// one by one.
			growth := float64(rr.storeBytes-rr.firstBytes) / float64(len(rr.stored)-1)
			var copied int64
			for _, c := range rr.copied[1:] {
				copied += c
			}
			dirty := float64(copied) / float64(len(rr.copied)-1) * alone.pageZstd
			addVs(res, "periodic", "store growth per checkpoint "+name, "KiB", growth/1024,
				dirty/1024, "compressed dirty bytes")
		}
		if iv == 100*time.Millisecond {
			var sum int64
			for i, s := range rr.stored {
				sum += s
				res.Series["store_growth"] = append(res.Series["store_growth"],
					Point{X: float64(i + 1), Y: mib(sum)})
			}
			add(res, "periodic", fmt.Sprintf("store after %d checkpoints", len(rr.stored)),
				"MiB", mib(rr.storeBytes), mib(alone.naive.bytes)*float64(len(rr.stored)))
		}
	}
	return errors.Join(errs...)
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func median64(v []int64) int64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func mean(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	var s float64
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

// meanCompressedPage compresses every page of the naive image at path on its
// own, as the store compresses a page frame, and returns the mean size.
func meanCompressedPage(path string) (float64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false))
	if err != nil {
		return 0, err
	}
	defer enc.Close()
	var total, n int
	var buf []byte
	for off := 0; off+pageSize <= len(data); off += pageSize {
		buf = enc.EncodeAll(data[off:off+pageSize], buf[:0])
		total += len(buf)
		n++
	}
	if n == 0 {
		return 0, fmt.Errorf("naive image %s holds no page", path)
	}
	return float64(total) / float64(n), nil
}

// treeBytes is the size of every regular file under dir.
func treeBytes(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		n += info.Size()
		return nil
	})
	return n, err
}
