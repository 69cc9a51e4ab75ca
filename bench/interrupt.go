package main

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// stopOnSignal makes bench a child subreaper, so that every process it starts
// stays its descendant even when an intermediate parent dies (a process
// restored by cryo restore is cryo's child), and on SIGINT, SIGTERM or SIGHUP
// kills them all, removes the stores and images it wrote into dir, and exits
// with status 130. Without this an interrupted run would leave workloads
// running, stopped or seized behind it.
func stopOnSignal(dir string) error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("become child subreaper: %w", err)
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, unix.SIGINT, unix.SIGTERM, unix.SIGHUP)
	go func() {
		sig := <-ch
		fmt.Fprintf(os.Stderr, "bench: %v: stopping every process bench started\n", sig)
		n := killDescendants()
		removeScratch(dir)
		fmt.Fprintf(os.Stderr, "bench: killed %d processes, removed stores and images "+
			"from %s\n", n, dir)
		os.Exit(130)
	}()
	return nil
}

// killDescendants sends SIGKILL to every descendant of this process, again
// until a walk of /proc finds none (a dying cryo may still be starting one),
// and returns how many it killed.
func killDescendants() int {
	killed := map[int]bool{}
	for range 10 {
		found := 0
		for _, pid := range descendants(os.Getpid()) {
			if !killed[pid] {
				unix.Kill(pid, unix.SIGKILL)
				killed[pid] = true
				found++
			}
		}
		if found == 0 {
			break
		}
	}
	return len(killed)
}

// descendants returns the live processes below pid, from /proc.
func descendants(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	children := map[int][]int{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The fields after the command name, which may hold spaces and
		// parentheses: state, then ppid.
		s := string(data)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 || f[0] == "Z" {
			continue
		}
		if ppid, err := strconv.Atoi(f[1]); err == nil {
			children[ppid] = append(children[ppid], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// removeScratch removes what bench writes into dir besides its results: the
// stores (which hold workload memory), naive images and trigger files.
func removeScratch(dir string) {
	for _, pat := range []string{"store-*", "naive*.img", "trigger*", "progress.out",
		"fdholder-files"} {
		matches, _ := filepath.Glob(filepath.Join(dir, pat))
		for _, m := range matches {
			os.RemoveAll(m)
		}
	}
}
