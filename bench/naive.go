package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// naiveResult is the cost of the naive full copy of one process.
type naiveResult struct {
	wall    time.Duration // stop, copy, write, fsync, continue
	stopped time.Duration // the process is stopped from start to written (before fsync)
	bytes   int64
}

// naiveCopy stops pid with SIGSTOP, reads every readable private mapping with
// process_vm_readv, writes it uncompressed to path, lets the process go on
// and fsyncs the file: the baseline a checkpointer without tracking, dedup or
// compression would get.
func naiveCopy(pid int, path string) (naiveResult, error) {
	var res naiveResult
	f, err := os.Create(path)
	if err != nil {
		return res, err
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)

	t0 := time.Now()
	if err := unix.Kill(pid, syscall.SIGSTOP); err != nil {
		return res, fmt.Errorf("stop pid %d: %w", pid, err)
	}
	ranges, err := privateRanges(pid)
	if err != nil {
		unix.Kill(pid, syscall.SIGCONT)
		return res, err
	}
	buf := make([]byte, 1<<20)
	for _, r := range ranges {
		for a := r[0]; a < r[1]; a += uint64(len(buf)) {
			n := min(uint64(len(buf)), r[1]-a)
			local := []unix.Iovec{{Base: &buf[0], Len: n}}
			remote := []unix.RemoteIovec{{Base: uintptr(a), Len: int(n)}}
			got, err := unix.ProcessVMReadv(pid, local, remote, 0)
			if err != nil {
				// Ranges the kernel will not read (guard pages, device
				// memory) are skipped, as a naive tool would.
				break
			}
			w.Write(buf[:got])
			res.bytes += int64(got)
		}
	}
	if err := w.Flush(); err != nil {
		unix.Kill(pid, syscall.SIGCONT)
		return res, err
	}
	res.stopped = time.Since(t0)
	unix.Kill(pid, syscall.SIGCONT)
	if err := f.Sync(); err != nil {
		return res, err
	}
	res.wall = time.Since(t0)
	return res, nil
}

// naiveReadBack reads the naive copy back (from the page cache, as cryo's
// restore reads its store) and returns the time it took.
func naiveReadBack(path string) (time.Duration, error) {
	t0 := time.Now()
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if _, err := io.CopyBuffer(io.Discard, f, make([]byte, 1<<20)); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// privateRanges lists the readable private mappings of pid, [start, end).
func privateRanges(pid int) ([][2]uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, err
	}
	var out [][2]uint64
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || f[1][0] != 'r' || f[1][3] != 'p' {
			continue
		}
		if len(f) >= 6 && (f[5] == "[vsyscall]" || f[5] == "[vvar]" || f[5] == "[vvar_vclock]") {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		a, err1 := strconv.ParseUint(lo, 16, 64)
		b, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("parse maps line %q", l)
		}
		out = append(out, [2]uint64{a, b})
	}
	return out, nil
}
