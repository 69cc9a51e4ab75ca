package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// The environment of the tests in the VM.
var guestEnv = []string{
	// The trackers Debian's kernel must run, the first being the one "auto"
	// must pick; the others are reported unavailable, loudly, where they are.
	"CRYO_TRACKERS=soft-dirty,scan",
	"CRYO_E2E_REQUIRE=1",
	"CRYO_BIN=/bin/cryo",
	"CRYO_PREBUILT=/prebuilt",
	// The emulated CPU of the VM lazily restores 256 MiB in about a minute.
	"CRYO_E2E_CARRYON_MIB=64",
}

// thp is the transparent huge page setting of the VM's kernel.
const thp = "/sys/kernel/mm/transparent_hugepage/enabled"

// testSteps are what the guest does, in order: write a setting (write), or run
// a test binary: the package, the tests (-test.run) and the time they may take.
//
// Debian's kernel backs large anonymous mappings with transparent huge pages
// (THP "always"); the build machines' kernels only where a program asks
// ("madvise"). Soft-dirty bits of a huge page are one bit for its 512 pages,
// so under "always" one write makes 2 MiB dirty. The tests run under
// "madvise", as on the build machines; then the tracker-truth test runs again
// under "always" to show what that costs in extra pages.
var testSteps = []struct {
	name, pkg, run, timeout string
	write                   [2]string
}{
	{write: [2]string{thp, "madvise"}},
	{name: "track", pkg: "./engine/track", timeout: "3m"},
	{name: "engine-session", pkg: "./engine", run: "TestSessionIncrementalMatchesFull",
		timeout: "2m"},
	{name: "e2e-incremental", pkg: "./tests/e2e",
		run: "TestMapperIncremental$|TestMapperWatched", timeout: "5m"},
	{name: "e2e-carryon", pkg: "./tests/e2e", run: "TestRestoreAndCarryOn", timeout: "3m"},
	{write: [2]string{thp, "always"}},
	{name: "track-thp-always", pkg: "./engine/track", run: "TestTruth", timeout: "1m"},
}

// programs are the C programs the tests run besides the workloads, built with
// gcc -static into /prebuilt under the name of their source.
var programs = []string{
	"engine/track/testdata/toucher.c",
	"engine/testdata/writer.c",
}

// The workloads the end-to-end tests build (tests/e2e: cWorkloads and
// goWorkloads) are every C program of bench/workloads and every Go program in
// a folder of tests/e2e/testdata; the VM prebuilds all that these patterns
// find, so that a workload added there needs no change here.
const (
	cWorkloadsGlob  = "bench/workloads/*.c"
	goWorkloadsGlob = "tests/e2e/testdata/*/main.go"
)

// prebuilt returns the sources of the programs to prebuild: C files, and Go
// package folders (with a "./" prefix), each built under its base name
// without ".c". Two of one name would overwrite each other: an error.
func prebuilt() ([]string, error) {
	srcs := slices.Clone(programs)
	c, err := filepath.Glob(cWorkloadsGlob)
	if err != nil {
		return nil, err
	}
	srcs = append(srcs, c...)
	mains, err := filepath.Glob(goWorkloadsGlob)
	if err != nil {
		return nil, err
	}
	for _, m := range mains {
		srcs = append(srcs, "./"+filepath.Dir(m))
	}
	seen := map[string]string{}
	for _, src := range srcs {
		name := prebuiltName(src)
		if seen[name] != "" {
			return nil, fmt.Errorf("prebuilt programs %s and %s have one name, %s", seen[name],
				src, name)
		}
		seen[name] = src
	}
	return srcs, nil
}

// prebuiltName is the name under /prebuilt of the program built from src.
func prebuiltName(src string) string { return strings.TrimSuffix(filepath.Base(src), ".c") }

// testdata are the folders copied to /src as they are in the repository: the
// tests read their fixtures relative to their package folder, and the e2e tests
// look for the repository root (go.mod) two folders up.
var testdata = []string{"engine/track/testdata", "engine/testdata", "bench/workloads"}

// buildInitramfs builds everything into dir and returns the initramfs to
// write: /init (the guest), /bin/cryo, /tests/*.test, /prebuilt/* and /src.
func buildInitramfs(dir string) (*initramfs, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	rd := newInitramfs()
	goBuild := func(out string, args ...string) error {
		cmd := exec.Command("go", args...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if o, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("CGO_ENABLED=0 go %s: %w\n%s", strings.Join(args, " "), err, o)
		}
		return nil
	}

	bin := filepath.Join(dir, "init")
	if err := goBuild(bin, "build", "-o", bin, "./tests/vm/guest"); err != nil {
		return nil, err
	}
	rd.addFile("/init", bin, 0o755)
	bin = filepath.Join(dir, "cryo")
	if err := goBuild(bin, "build", "-o", bin, "./cmd/cryo"); err != nil {
		return nil, err
	}
	rd.addFile("/bin/cryo", bin, 0o755)

	var plan strings.Builder
	plan.WriteString("# written by tests/vm on the host\n")
	for _, e := range guestEnv {
		fmt.Fprintf(&plan, "env %s\n", e)
	}
	built := map[string]string{} // package: test binary in the VM
	for _, s := range testSteps {
		if s.write[0] != "" {
			fmt.Fprintf(&plan, "write %s %s\n", s.write[0], s.write[1])
			continue
		}
		if built[s.pkg] == "" {
			name := strings.ReplaceAll(strings.TrimPrefix(s.pkg, "./"), "/", "-") + ".test"
			bin := filepath.Join(dir, name)
			if err := goBuild(bin, "test", "-c", "-o", bin, s.pkg); err != nil {
				return nil, err
			}
			built[s.pkg] = "/tests/" + name
			rd.addFile(built[s.pkg], bin, 0o755)
		}
		argv := []string{built[s.pkg], "-test.v", "-test.count=1",
			"-test.timeout=" + s.timeout}
		if s.run != "" {
			argv = append(argv, "-test.run="+s.run)
		}
		fmt.Fprintf(&plan, "%s /src/%s %s\n", s.name, strings.TrimPrefix(s.pkg, "./"),
			strings.Join(argv, " "))
		rd.addDir("/src/" + strings.TrimPrefix(s.pkg, "./"))
	}
	rd.addData("/plan", []byte(plan.String()), 0o644)

	srcs, err := prebuilt()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "prebuilt"), 0o755); err != nil {
		return nil, err
	}
	for _, src := range srcs {
		name := prebuiltName(src)
		out := filepath.Join(dir, "prebuilt", name)
		if !strings.HasSuffix(src, ".c") {
			if err := goBuild(out, "build", "-o", out, src); err != nil {
				return nil, err
			}
			rd.addFile("/prebuilt/"+name, out, 0o755)
			continue
		}
		cmd := exec.Command("gcc", "-static", "-O2", "-Wall", "-o", out, src)
		if o, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("gcc -static %s: %w\n%s", src, err, o)
		}
		rd.addFile("/prebuilt/"+name, out, 0o755)
	}

	rd.addData("/src/go.mod", []byte("module github.com/cryo-dev/cryo\n"), 0o644)
	for _, d := range testdata {
		files, err := os.ReadDir(d)
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			if f.Type().IsRegular() {
				rd.addFile("/src/"+d+"/"+f.Name(), filepath.Join(d, f.Name()), 0o644)
			}
		}
	}
	return rd, nil
}
