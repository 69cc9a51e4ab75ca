package engine

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
	"github.com/cryo-dev/cryo/internal/procfs"
)

func TestResumeRegs(t *testing.T) {
	const syscallAt = 0x401000 // address of the syscall instruction
	neg := func(e int) uint64 { return uint64(-int64(e)) }
	for _, tc := range []struct {
		name             string
		rax, origRax     uint64
		wantRax, wantRip uint64
	}{
		{"not in a syscall", 42, ^uint64(0), 42, syscallAt + 2},
		{"syscall returned", 7, unix.SYS_READ, 7, syscallAt + 2},
		{"ERESTARTSYS", neg(errRestartSys), unix.SYS_READ, unix.SYS_READ, syscallAt},
		{"ERESTARTNOINTR", neg(errRestartNoIntr), unix.SYS_WAIT4, unix.SYS_WAIT4, syscallAt},
		{"ERESTARTNOHAND", neg(errRestartNoHand), unix.SYS_PAUSE, unix.SYS_PAUSE, syscallAt},
		{"ERESTART_RESTARTBLOCK", neg(errRestartRestartBlock), unix.SYS_NANOSLEEP,
			negErrno(unix.EINTR), syscallAt + 2},
		{"FUTEX_WAIT_BITSET, absolute", neg(errRestartRestartBlock), unix.SYS_FUTEX,
			unix.SYS_FUTEX, syscallAt},
		{"EINTR stays", negErrno(unix.EINTR), unix.SYS_READ, negErrno(unix.EINTR), syscallAt + 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := resumeRegs(image.Regs{Rax: tc.rax, Orig_rax: tc.origRax, Rip: syscallAt + 2,
				Rsi: futexWaitBitset | 128})
			if got.Rax != tc.wantRax || got.Rip != tc.wantRip {
				t.Errorf("rax %#x rip %#x, want rax %#x rip %#x", got.Rax, got.Rip,
					tc.wantRax, tc.wantRip)
			}
			if got.Orig_rax != ^uint64(0) {
				t.Errorf("orig_rax %#x, want -1 so that the kernel restarts nothing again",
					got.Orig_rax)
			}
		})
	}
}

func TestFreeArea(t *testing.T) {
	const size = 0x11000
	vmas := []image.VMA{
		{Start: 1 << 32, End: 1<<32 + 0x5000},
		{Start: 1<<32 + 0x20000, End: 1<<32 + 0x30000},
	}
	host := []procfs.VMA{{Start: 1<<32 + 0x5000, End: 1<<32 + 0x8000}}
	got, err := freeArea(vmas, host, size)
	if err != nil {
		t.Fatal(err)
	}
	if got != 1<<32+0x8000 {
		t.Errorf("freeArea = %#x, want %#x (the first gap of %#x bytes)", got, 1<<32+0x8000, size)
	}
	for _, v := range vmas {
		if got < v.End && v.Start < got+size {
			t.Errorf("area %#x overlaps range %#x-%#x", got, v.Start, v.End)
		}
	}
}

func TestCheckImageRefuses(t *testing.T) {
	good := func() *image.Image {
		return &image.Image{Pid: 100, Threads: []image.Thread{{Tid: 100}},
			VMAs: []image.VMA{{Start: 0x1000, End: 0x2000, Kind: image.VMAAnon}}}
	}
	if err := checkImage(good()); err != nil {
		t.Fatalf("a valid image is refused: %v", err)
	}
	for name, damage := range map[string]func(*image.Image){
		"two threads":     func(im *image.Image) { im.Threads = append(im.Threads, image.Thread{}) },
		"pid 1":           func(im *image.Image) { im.Pid = 1 },
		"unaligned range": func(im *image.Image) { im.VMAs[0].Start = 0x1800 },
		"empty range":     func(im *image.Image) { im.VMAs[0].End = im.VMAs[0].Start },
		"kernel range":    func(im *image.Image) { im.VMAs[0].End = 1 << 63 },
		"overlap": func(im *image.Image) {
			im.VMAs = append(im.VMAs, image.VMA{Start: 0x1000, End: 0x3000})
		},
	} {
		im := good()
		damage(im)
		if err := checkImage(im); err == nil {
			t.Errorf("%s: image accepted", name)
		}
	}
}

func TestImageVMAs(t *testing.T) {
	in := []procfs.VMA{
		{Start: 0x1000, End: 0x2000, Perms: "r-xp", Path: "/usr/bin/x", Ino: 5, Dev: 1},
		{Start: 0x2000, End: 0x3000, Perms: "rw-p", Path: "[heap]"},
		{Start: 0x3000, End: 0x4000, Perms: "rw-s", Path: "/dev/zero", Deleted: true, Ino: 9},
		{Start: 0x4000, End: 0x5000, Perms: "r--p", Path: "[vvar]",
			VmFlags: procfs.VmFlags{"io", "pf"}},
	}
	out, err := imageVMAs(0, in)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		kind  image.VMAKind
		pages bool
	}{{image.VMAFile, true}, {image.VMAAnon, true}, {image.VMAAnon, true}, {image.VMAVvar, false}}
	for i, w := range want {
		if out[i].Kind != w.kind || out[i].Pages != w.pages {
			t.Errorf("range %d: kind %s pages %v, want %s %v", i, out[i].Kind, out[i].Pages,
				w.kind, w.pages)
		}
	}

	for name, v := range map[string]procfs.VMA{
		"deleted file": {Start: 0x1000, End: 0x2000, Perms: "r--p", Path: "/tmp/x", Deleted: true,
			Ino: 3},
		"device memory": {Start: 0x1000, End: 0x2000, Perms: "rw-s", Path: "/dev/mem", Ino: 3,
			VmFlags: procfs.VmFlags{"io"}},
	} {
		if _, err := imageVMAs(0, []procfs.VMA{v}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
