// Command guest is the init process of the cryo test VM (tests/vm): the kernel
// runs it as /init from the initramfs. It mounts /proc, /sys, /dev and a /tmp,
// says which dirty-page trackers this kernel runs, runs the test binaries the
// plan lists one after the other, prints everything on the console (the VM's
// serial port, which the host reads), and powers the VM off.
//
// The console protocol, one marker per line, the rest being the tests' own
// output:
//
//	CRYO-VM KERNEL <uname release>
//	CRYO-VM TRACKER <kind> available|UNAVAILABLE: <why>
//	CRYO-VM AUTO <kind>
//	CRYO-VM WROTE <path> <value>
//	CRYO-VM WRITE-FAILED <path>: <why>
//	CRYO-VM BEGIN <step>
//	CRYO-VM END <step> exit=<code> seconds=<s>
//	CRYO-VM DONE
package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/track"
)

// planPath lists the steps, one a line: a name, the folder to run in, and the
// command with its arguments, separated by spaces. A line "env KEY=VALUE" sets
// a variable for the steps after it, a line "write PATH VALUE" writes VALUE to
// the file PATH (a sysfs knob); lines starting with # are comments.
const planPath = "/plan"

func main() {
	if err := setup(); err != nil {
		fmt.Printf("CRYO-VM SETUP-FAILED %v\n", err)
		powerOff()
	}
	report()
	if err := runPlan(); err != nil {
		fmt.Printf("CRYO-VM PLAN-FAILED %v\n", err)
	}
	fmt.Println("CRYO-VM DONE")
	powerOff()
}

// setup mounts the file systems the tests need and sets the environment they
// run in.
func setup() error {
	mounts := []struct{ src, dir, fs string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"tmpfs", "/tmp", "tmpfs"},
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.dir, 0o755); err != nil {
			return fmt.Errorf("make %s: %w", m.dir, err)
		}
		if err := unix.Mount(m.src, m.dir, m.fs, 0, ""); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.fs, m.dir, err)
		}
	}
	os.Setenv("PATH", "/bin")
	os.Setenv("TMPDIR", "/tmp")
	os.Setenv("HOME", "/tmp")
	return nil
}

// report prints the kernel release, which trackers it runs and which one
// "auto" picks.
func report() {
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		fmt.Printf("CRYO-VM KERNEL %s\n", unix.ByteSliceToString(u.Release[:]))
	}
	for _, k := range []string{track.KindUffdWP, track.KindSoftDirty, track.KindScan} {
		if err := track.Probe(k); err != nil {
			fmt.Printf("CRYO-VM TRACKER %s UNAVAILABLE: %v\n", k, err)
		} else {
			fmt.Printf("CRYO-VM TRACKER %s available\n", k)
		}
	}
	tr, err := track.New(track.KindAuto, os.Getpid())
	if err != nil {
		fmt.Printf("CRYO-VM AUTO error: %v\n", err)
		return
	}
	fmt.Printf("CRYO-VM AUTO %s\n", tr.Name())
	tr.Close()
}

// runPlan runs every step of the plan, whatever the outcome of the ones
// before.
func runPlan() error {
	f, err := os.Open(planPath)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if pv, ok := strings.CutPrefix(line, "write "); ok {
			path, v, _ := strings.Cut(pv, " ")
			if err := os.WriteFile(path, []byte(v), 0); err != nil {
				fmt.Printf("CRYO-VM WRITE-FAILED %s: %v\n", path, err)
			} else {
				fmt.Printf("CRYO-VM WROTE %s %s\n", path, v)
			}
			continue
		}
		if kv, ok := strings.CutPrefix(line, "env "); ok {
			k, v, _ := strings.Cut(kv, "=")
			os.Setenv(k, v)
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 3 {
			return fmt.Errorf("plan line %q: want a name, a folder and a command", line)
		}
		runStep(fields[0], fields[1], fields[2:])
	}
	return sc.Err()
}

// runStep runs one command in dir with the console as its output.
func runStep(name, dir string, argv []string) {
	fmt.Printf("CRYO-VM BEGIN %s\n", name)
	start := time.Now()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stdout
	code := 0
	if err := cmd.Run(); err != nil {
		code = -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else {
			fmt.Printf("run %s: %v\n", name, err)
		}
	}
	fmt.Printf("CRYO-VM END %s exit=%d seconds=%.1f\n", name, code,
		time.Since(start).Seconds())
	reapOrphans()
}

// reapOrphans waits for the processes that ended orphaned during a step and
// were handed to this init (a detached page server, a workload a test left).
// It runs between steps, when no step's own child is left to wait for.
func reapOrphans() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}

// powerOff syncs nothing (everything is in memory) and turns the VM off; qemu
// then exits.
func powerOff() {
	os.Stdout.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	for {
		time.Sleep(time.Hour)
	}
}
