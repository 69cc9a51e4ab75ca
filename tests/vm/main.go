// Command vm runs cryo's dirty-tracker and checkpoint/restore tests inside a
// virtual machine booting Debian's own kernel, which has soft-dirty tracking
// (CONFIG_MEM_SOFT_DIRTY) that the kernels of the build machines lack.
//
// It fetches the kernel package linux-image-amd64 depends on with `apt-get
// download` and unpacks it with dpkg-deb into a cache folder (it is never
// installed as this machine's kernel); builds the test binaries of
// engine/track, engine and tests/e2e, cryo and this folder's guest init
// statically (CGO_ENABLED=0), and the programs the tests run (build.go): the C
// ones with gcc -static, the e2e tests' Go workloads with CGO_ENABLED=0; packs
// them into an initramfs; boots it under qemu-system-x86_64 with KVM; and reads the
// guest's serial console, which it parses (parse.go). It exits 1 when any step
// failed, a test failed, or the guest did not finish in time, and prints the
// extra pages each tracker reported and the whole time taken.
//
// Run it as root from the repository root: `make test-vm`, or `go run ./tests/vm`.
// Flags: -accel, -cache (default /var/cache/cryo-vm: the kernel, this run's
// builds while it runs, and the last console log), -timeout, -mem.
package main

import (
	"bufio"
	"context"

	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

func main() {
	cache := flag.String("cache", "/var/cache/cryo-vm",
		"folder for the kernel package, the builds and the console log")
	timeout := flag.Duration("timeout", 8*time.Minute+30*time.Second,
		"time the guest may run, from boot to power-off")
	mem := flag.String("mem", "3G", "memory of the VM")
	accel := flag.String("accel", "auto", "kvm, tcg (qemu's emulator) or auto: kvm "+
		"unless /dev/kvm cannot boot a stock kernel")
	flag.Parse()

	start := time.Now()
	res, err := run(*cache, *timeout, *mem, *accel)
	took := time.Since(start).Round(100 * time.Millisecond)
	if res != nil {
		res.print(os.Stdout)
	}
	if err == nil && res != nil {
		err = res.verdict()
	}
	fmt.Printf("\nVM test time: %v in all (build, boot and tests)\n", took)
	if err != nil {
		fmt.Printf("\n*** VM TEST FAILED: %v ***\n", err)
		os.Exit(1)
	}
	fmt.Println("VM TEST PASSED")
}

// run prepares everything, boots the VM and parses what it printed.
func run(cache string, timeout time.Duration, mem, accel string) (*results, error) {
	if _, err := os.Stat("go.mod"); err != nil {
		return nil, fmt.Errorf("run from the repository root: %w", err)
	}
	accel, err := pickAccel(accel)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, err
	}
	if err := installTools(); err != nil {
		return nil, err
	}
	t := time.Now()
	kernel, err := fetchKernel(filepath.Join(cache, "kernel"))
	if err != nil {
		return nil, err
	}
	fmt.Printf("kernel: %s (%v)\n", kernel, time.Since(t).Round(time.Millisecond))

	t = time.Now()
	// A folder of this run's own, so that runs from two worktrees do not mix.
	build, err := os.MkdirTemp(cache, "build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(build)
	rd, err := buildInitramfs(build)
	if err != nil {
		return nil, err
	}
	img := filepath.Join(build, "initramfs.cpio")
	f, err := os.Create(img)
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	err = rd.write(w)
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", img, err)
	}
	fmt.Printf("built the test binaries and the initramfs (%v)\n",
		time.Since(t).Round(time.Millisecond))

	t = time.Now()
	logPath := filepath.Join(cache, "console.log")
	res, err := boot(kernel, img, logPath, timeout, mem, accel)
	fmt.Printf("VM ran %v; its console is in %s\n", time.Since(t).Round(100*time.Millisecond),
		logPath)
	return res, err
}

// installTools installs with apt-get what is missing: qemu, gcc and the static
// C library (libc6-dev holds libc.a), dpkg-deb.
func installTools() error {
	need := []struct{ cmd, pkg string }{
		{"qemu-system-x86_64", "qemu-system-x86"},
		{"gcc", "gcc"},
		{"dpkg-deb", "dpkg"},
	}
	var missing []string
	for _, n := range need {
		if _, err := exec.LookPath(n.cmd); err != nil {
			missing = append(missing, n.pkg)
		}
	}
	if _, err := os.Stat("/usr/lib/x86_64-linux-gnu/libc.a"); err != nil {
		missing = append(missing, "libc6-dev")
	}
	if len(missing) == 0 {
		return nil
	}
	fmt.Printf("installing: %s\n", strings.Join(missing, " "))
	if err := runCmd("", "apt-get", "update"); err != nil {
		return err
	}
	args := append([]string{"install", "-y", "--no-install-recommends"}, missing...)
	return runCmd("", "apt-get", args...)
}

// fetchKernel returns the path of the vmlinuz of the kernel package
// linux-image-amd64 depends on, downloading and unpacking it into dir unless
// it is there already.
func fetchKernel(dir string) (string, error) {
	out, err := exec.Command("apt-cache", "depends", "linux-image-amd64").Output()
	if err != nil || !strings.Contains(string(out), "Depends:") {
		if err := runCmd("", "apt-get", "update"); err != nil {
			return "", err
		}
		out, err = exec.Command("apt-cache", "depends", "linux-image-amd64").Output()
		if err != nil {
			return "", fmt.Errorf("apt-cache depends linux-image-amd64: %w", err)
		}
	}
	pkg := ""
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "Depends:" &&
			strings.HasPrefix(f[1], "linux-image-") {
			pkg = f[1]
		}
	}
	if pkg == "" {
		return "", fmt.Errorf("linux-image-amd64 depends on no linux-image package:\n%s", out)
	}
	unpacked := filepath.Join(dir, pkg)
	vmlinuz, _ := filepath.Glob(filepath.Join(unpacked, "boot", "vmlinuz-*"))
	if len(vmlinuz) == 1 {
		return vmlinuz[0], nil
	}

	fmt.Printf("downloading %s\n", pkg)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	// apt-get download writes to the current folder; as root it warns that the
	// _apt user cannot write there, which is harmless.
	if err := runCmd(dir, "apt-get", "download", pkg); err != nil {
		return "", err
	}
	debs, _ := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
	if len(debs) == 0 {
		return "", fmt.Errorf("apt-get download %s left no .deb in %s", pkg, dir)
	}
	tmp := unpacked + ".tmp"
	os.RemoveAll(tmp)
	if err := runCmd("", "dpkg-deb", "-x", debs[len(debs)-1], tmp); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, unpacked); err != nil {
		return "", err
	}
	for _, d := range debs {
		os.Remove(d)
	}
	vmlinuz, _ = filepath.Glob(filepath.Join(unpacked, "boot", "vmlinuz-*"))
	if len(vmlinuz) != 1 {
		return "", fmt.Errorf("package %s holds %d boot/vmlinuz-* files, want 1", pkg,
			len(vmlinuz))
	}
	return vmlinuz[0], nil
}

// boot runs qemu with the kernel and initramfs, copies the console to logPath
// and to stdout as it comes, and parses it.
func boot(kernel, initrd, logPath string, timeout time.Duration, mem, accel string) (*results,
	error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// KVM's "host" CPU model fails on some nested hosts (an MSR qemu cannot
	// set); "max" is what either accelerator offers.
	args := []string{"-enable-kvm", "-cpu", "host,-arch-capabilities"}
	if accel == "tcg" {
		args = []string{"-accel", "tcg,thread=multi", "-cpu", "qemu64"}
	}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", append(args,
		"-smp", "2", "-m", mem,
		"-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init",
		"-nographic", "-no-reboot", "-monitor", "none", "-serial", "stdio",
		"-nic", "none")...)
	cmd.Stdin = nil
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	res := parseConsole(io.TeeReader(out, io.MultiWriter(logf, os.Stdout)))
	err = cmd.Wait()
	if ctx.Err() != nil {
		return res, fmt.Errorf("the VM did not finish within %v (killed)", timeout)
	}
	if err != nil {
		return res, fmt.Errorf("qemu: %w", err)
	}
	return res, nil
}

// pickAccel returns the accelerator to boot with. auto is kvm when /dev/kvm
// exists and is a KVM that runs stock kernels. The KVM of PVM hosts (module
// kvm_pvm, nested virtualization without hardware support) runs only guest
// kernels built for PVM, which Debian's is not: the guest hangs at boot. There
// auto takes qemu's emulator, TCG, and says so loudly: slower, and the kernel
// is the same.
func pickAccel(accel string) (string, error) {
	switch accel {
	case "kvm", "tcg":
		return accel, nil
	case "auto":
	default:
		return "", fmt.Errorf("-accel %q: want kvm, tcg or auto", accel)
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		fmt.Printf("\n*** NO KVM (%v): booting under qemu's emulator (TCG) ***\n\n", err)
		return "tcg", nil
	}
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		fmt.Printf("\n*** /dev/kvm here is PVM (module kvm_pvm), which boots only PVM " +
			"guest kernels, not Debian's: booting under qemu's emulator (TCG) instead " +
			"of KVM ***\n\n")
		return "tcg", nil
	}
	return "kvm", nil
}

// runCmd runs a command with its output on ours.
func runCmd(dir, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}
