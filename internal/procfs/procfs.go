// Package procfs parses the files of /proc/PID that checkpointing reads: maps and
// smaps, stat, auxv, the task and fd folders, and fdinfo.
//
// Every format has a pure parser over bytes (ParseMaps, ParseSmaps, ParseStat,
// ParseAuxv, ParseFdinfo), tested and fuzzed on text recorded from a 6.18 kernel,
// and a thin reader that takes a pid (ReadSmaps, ReadStat, ...). Readers wrap their
// errors with the file they read and keep the errno reachable.
//
// The process is expected to be stopped (ptrace-seized) while it is read; otherwise
// the files describe a moving target and may disagree with each other.
package procfs

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Root is the mount point of procfs.
const Root = "/proc"

// Path returns the path of a file of process pid: Path(42, "fdinfo", "3") is
// /proc/42/fdinfo/3.
func Path(pid int, elem ...string) string {
	p := Root + "/" + strconv.Itoa(pid)
	for _, e := range elem {
		p += "/" + e
	}
	return p
}

// ReadTasks returns the thread ids of process pid in ascending order. Threads can be
// born and die while the process runs; callers that need a stable list re-read it
// until two reads agree.
func ReadTasks(pid int) ([]int, error) {
	return readNumbers(Path(pid, "task"))
}

// ReadFDs returns the open file descriptor numbers of process pid in ascending
// order.
func ReadFDs(pid int) ([]int, error) {
	return readNumbers(Path(pid, "fd"))
}

// readNumbers lists a folder whose entries are decimal numbers.
func readNumbers(dir string) ([]int, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()

	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", dir, err)
	}
	nums := make([]int, 0, len(names))
	for _, n := range names {
		v, err := strconv.Atoi(n)
		if err != nil {
			return nil, fmt.Errorf("read %s: entry %q is not a number", dir, n)
		}
		nums = append(nums, v)
	}
	slices.Sort(nums)
	return nums, nil
}

// TracerPid returns the pid of the process tracing pid (the TracerPid line of
// /proc/PID/status), or 0.
func TracerPid(pid int) (int, error) {
	b, err := os.ReadFile(Path(pid, "status"))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "TracerPid:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(rest))
			if err != nil {
				return 0, fmt.Errorf("parse %s: TracerPid %q: %w", Path(pid, "status"), rest, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("parse %s: no TracerPid line", Path(pid, "status"))
}
