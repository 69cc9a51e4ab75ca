package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/internal/testenv"
)

// The environment TestMain prepares once for every test.
var (
	// cryoBin is the cryo binary under test.
	cryoBin string

	// binDir holds the compiled C workloads.
	binDir string

	// workloadsDir is bench/workloads in the repository.
	workloadsDir string

	// pythonBin is the python3 interpreter the python workloads run under.
	pythonBin string

	// skipReason, when set, is why this machine cannot run the tests at all
	// (not root, no userfaultfd). requireE2E skips or fails with it.
	skipReason string

	// setupErr is a broken build (cryo or a workload): every test fails with it.
	setupErr error

	// javaBin is the java launcher under the name "heapwork" (a symbolic link,
	// so that the harness can tell the workload by its name), and javaErr why
	// there is none: a JDK is an optional test dependency, and only the tests that
	// run Java fail without it.
	javaBin string
	javaErr error
)

// cWorkloads are the C programs in bench/workloads, built with gcc -O2.
var cWorkloads = []string{"fdholder", "memfill", "lazyfork", "sockholder", "sockserve",
	"syscallwait", "threadwait"}

// goWorkloads are the Go programs in tests/e2e/testdata, each a folder of its
// name holding its main.go, built with the Go that runs the tests. (The test
// VM, tests/vm, prebuilds every such folder and every C program of
// bench/workloads, and so every workload of these two lists.)
var goWorkloads = []string{"goroutines"}

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	// Descriptors this test binary inherited without close-on-exec (a CI runner's,
	// a shell's) would leak into every workload and make its checkpoint refuse them.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: mark inherited fds close-on-exec: %v\n", err)
		return 2
	}
	// Every process started from here on carries the run's marker (see ours).
	k, v, _ := strings.Cut(runMarker, "=")
	os.Setenv(k, v)

	tmp, err := os.MkdirTemp("", "cryo-e2e-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 2
	}
	defer os.RemoveAll(tmp)

	skipReason = probeEnvironment()
	if skipReason != "" {
		fmt.Fprintf(os.Stderr, "\n*** e2e: cannot run here: %s ***\n\n", skipReason)
	}
	setupErr = build(tmp)
	if setupErr != nil {
		fmt.Fprintf(os.Stderr, "\n*** e2e: setup: %v ***\n\n", setupErr)
	}
	return m.Run()
}

// requireE2E stops t when the machine cannot run end-to-end tests: it skips
// with the reason, or fails when CRYO_E2E_REQUIRE=1; and it fails when the
// build of cryo or of a workload failed.
func requireE2E(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		if os.Getenv("CRYO_E2E_REQUIRE") == "1" {
			t.Fatalf("e2e tests required (CRYO_E2E_REQUIRE=1) but cannot run: %s", skipReason)
		}
		t.Skipf("SKIPPING end-to-end test (needs root and a kernel with userfaultfd): %s", skipReason)
	}
	if setupErr != nil {
		t.Fatalf("e2e setup: %v", setupErr)
	}
}

// probeEnvironment returns why this machine cannot checkpoint and restore
// processes, or "" when it can.
func probeEnvironment() string {
	if os.Geteuid() != 0 {
		return fmt.Sprintf("these tests need root (running as uid %d): cryo uses "+
			"ptrace on any process, clone3 set_tid and PR_SET_MM", os.Geteuid())
	}

	// userfaultfd(2) exists since Linux 4.3; root may always use it.
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK, 0, 0)
	if errno != 0 {
		return fmt.Sprintf("the kernel refuses userfaultfd(2): %v "+
			"(lazy restore needs CONFIG_USERFAULTFD)", errno)
	}
	unix.Close(int(fd))
	return ""
}

// build compiles cryo (unless CRYO_BIN names one) and the C and Go workloads
// into dir, or takes the workloads prebuilt from CRYO_PREBUILT (the test VM of
// tests/vm, which has neither gcc, go nor python3: there a missing python3
// fails only the python tests).
func build(dir string) error {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return fmt.Errorf("find the repository root: %w", err)
	}
	workloadsDir = filepath.Join(root, "bench", "workloads")
	binDir = filepath.Join(dir, "bin")
	if err := os.Mkdir(binDir, 0o755); err != nil {
		return err
	}

	prebuilt := os.Getenv("CRYO_PREBUILT") != ""
	pythonBin = "/usr/bin/python3"
	if _, err := os.Stat(pythonBin); err != nil {
		if pythonBin, err = exec.LookPath("python3"); err != nil {
			pythonBin = "/nonexistent/python3"
			if !prebuilt {
				return fmt.Errorf("find python3: %w", err)
			}
		}
	}

	var errs []error
	cryoBin = os.Getenv("CRYO_BIN")
	if cryoBin == "" {
		cryoBin = filepath.Join(dir, "cryo")
		cmd := exec.Command("go", "build", "-o", cryoBin, "./cmd/cryo")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("go build ./cmd/cryo: %w\n%s", err, out))
		}
	}
	javaErr = buildJava(root)

	// A prebuilt workload is linked into binDir under its name.
	linkPrebuilt := func(name string) bool {
		bin, ok, err := testenv.Prebuilt(name)
		if ok && err == nil {
			err = os.Symlink(bin, filepath.Join(binDir, name))
		}
		if err != nil {
			errs = append(errs, err)
		}
		return ok
	}
	for _, name := range goWorkloads {
		if linkPrebuilt(name) {
			continue
		}
		gobuild := exec.Command("go", "build", "-o", filepath.Join(binDir, name),
			"./tests/e2e/testdata/"+name)
		gobuild.Dir = root
		if out, err := gobuild.CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("go build %s: %w\n%s", name, err, out))
		}
	}
	for _, name := range cWorkloads {
		if linkPrebuilt(name) {
			continue
		}
		src := filepath.Join(workloadsDir, name+".c")
		cmd := exec.Command("gcc", "-O2", "-Wall", "-o", filepath.Join(binDir, name), src)
		if out, err := cmd.CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("gcc %s: %w\n%s", src,
				err, strings.TrimSpace(string(out))))
		}
	}
	return errors.Join(errs...)
}

// buildJava compiles the Java workload into binDir and links the JDK's java
// launcher there as "heapwork".
func buildJava(root string) error {
	javac, err := exec.LookPath("javac")
	if err != nil {
		return fmt.Errorf("find javac (apt-get install default-jdk-headless): %w", err)
	}
	java, err := exec.LookPath("java")
	if err != nil {
		return fmt.Errorf("find java (apt-get install default-jdk-headless): %w", err)
	}
	if java, err = filepath.EvalSymlinks(java); err != nil {
		return fmt.Errorf("resolve %s: %w", java, err)
	}
	src := filepath.Join(root, "tests", "e2e", "testdata", "java", "Heapwork.java")
	if out, err := exec.Command(javac, "-d", binDir, src).CombinedOutput(); err != nil {
		return fmt.Errorf("javac %s: %w\n%s", src, err, out)
	}
	javaBin = filepath.Join(binDir, "heapwork")
	return os.Symlink(java, javaBin)
}
