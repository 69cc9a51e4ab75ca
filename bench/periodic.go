package main

import (
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
	naive      naiveResult // a naive copy taken mid-run (alone runs only)
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
	var rr rewriterRun
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
		p.kill()
		return rr, fmt.Errorf("rewriter: %w", err)
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
		// At least three checkpoints, however slow the machine: the first
		// is full, and the increments after it are what is measured.
		end := time.Now().Add(runFor)
		for i := range 3 {
			if _, err := p.stderr.waitFor("checkpoint done", 2*time.Minute); err != nil {
				p.kill()
				return rr, fmt.Errorf("cryo run --interval %v: %w", interval, err)
			}
			if i == 0 {
				// The store as the first, full checkpoint left it.
				if rr.firstBytes, err = treeBytes(store); err != nil {
					p.kill()
					return rr, err
				}
			}
		}
		time.Sleep(time.Until(end))
	}
	trig.fire()
	if _, err := p.stdout.waitFor("verify ok", 60*time.Second); err != nil {
		p.kill()
		return rr, fmt.Errorf("rewriter did not verify: %w", err)
	}
	if err := p.wait(); err != nil {
		return rr, fmt.Errorf("rewriter run: %w: %s", err, p.stderr.tail())
	}

	rates := 0
	for _, l := range p.stdout.all {
		var r, c float64
		if _, err := fmt.Sscanf(l.text, "rate %f checks %f", &r, &c); err == nil {
			// The first second includes the start of the schedule.
			if rates++; rates > 1 {
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
		s, _ := strconv.ParseInt(field(l.text, "stored_bytes"), 10, 64)
		c, _ := strconv.ParseInt(field(l.text, "copied"), 10, 64)
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
// at each share rewritten per second, one checkpoint a second, per tracker.
func benchRewritten(res *Results, e *env, sizeMiB int, shares []float64,
	trackers []string, runFor time.Duration, naive naiveResult) error {
	for _, tr := range trackers {
		key := "stopped_vs_rewritten/" + tr
		for _, pct := range shares {
			rr, err := runRewriter(e, sizeMiB, pct, time.Second, tr, runFor)
			if err != nil {
				return err
			}
			frozen := median(rr.frozen[1:])
			total := median(rr.total[1:])
			name := fmt.Sprintf("%s %g%%/s %d MiB", tr, pct, sizeMiB)
			add(res, "checkpoint", "stopped incr "+name, "ms", ms(frozen), ms(naive.stopped))
			add(res, "checkpoint", "wall incr "+name, "ms", ms(total), ms(naive.wall))
			add(res, "checkpoint", "stored incr "+name, "MiB",
				mib(int64(median64(rr.stored[1:]))), mib(naive.bytes))
			res.Series[key] = append(res.Series[key], Point{X: pct, Y: ms(frozen)})
		}
	}
	return nil
}

// benchPeriodic measures the rewriter's own throughput alone and under cryo
// run at 1 and 10 checkpoints a second, and records store growth.
func benchPeriodic(res *Results, e *env, sizeMiB int, pct float64,
	runFor time.Duration, alone rewriterRun) error {
	base := mean(alone.checks)
	for _, iv := range []time.Duration{time.Second, 100 * time.Millisecond} {
		rr, err := runRewriter(e, sizeMiB, pct, iv, "auto", runFor)
		if err != nil {
			return err
		}
		nv, err := runRewriter(e, sizeMiB, pct, -iv, "", runFor)
		if err != nil {
			return fmt.Errorf("naive periodic copy every %v: %w", iv, err)
		}
		got, naive := mean(rr.checks), mean(nv.checks)
		name := fmt.Sprintf("every %v, %d MiB %g%%/s", iv, sizeMiB, pct)
		add(res, "periodic", "checks/s alone "+name, "1/s", base, 0)
		add(res, "periodic", "checks/s "+name, "1/s", got, naive)
		add(res, "periodic", "slowdown "+name, "%", 100*(1-got/base), 100*(1-naive/base))
		add(res, "periodic", "stopped median "+name, "ms", ms(median(rr.frozen[1:])),
			ms(median(nv.frozen)))
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
			add(res, "periodic", "store growth per checkpoint "+name, "KiB", growth/1024,
				dirty/1024)
			res.Notes = append(res.Notes, "store growth per checkpoint: the store's size "+
				"after the run less its size after the first (full) checkpoint, over the "+
				"checkpoints after the first; baseline = mean pages copied per checkpoint × "+
				"the mean size of one of the workload's pages zstd-compressed alone (the "+
				"compressed dirty bytes)")
		}
		if iv == 100*time.Millisecond {
			var sum int64
			for i, s := range rr.stored {
				sum += s
				res.Series["store_growth"] = append(res.Series["store_growth"],
					Point{X: float64(i + 1), Y: mib(sum)})
			}
			add(res, "periodic", fmt.Sprintf("store after %d checkpoints", len(rr.stored)),
				"MiB", mib(sum), mib(alone.naive.bytes)*float64(len(rr.stored)))
		}
	}
	return nil
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
