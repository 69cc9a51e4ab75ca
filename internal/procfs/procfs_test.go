package procfs

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The files in testdata were recorded on a 6.18 kernel from two C programs: one
// holding an eventfd, a pipe, files and an epoll instance (holder), the other a
// timerfd, a signalfd, sockets, inotify, a memfd, a deleted file and a command
// name "a) (b c)" (misc).

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseFdinfo(t *testing.T) {
	tests := []struct {
		file string
		want Fdinfo
	}{
		{"fdinfo-holder-3", Fdinfo{Pos: 0, Flags: 04002, MntID: 17, Ino: 26,
			Eventfd: &EventfdInfo{Count: 5, ID: 1, Semaphore: true, HasSemaphore: true}}},
		{"fdinfo-holder-4", Fdinfo{Flags: 04000, MntID: 16, Ino: 8162}},
		{"fdinfo-holder-6", Fdinfo{Pos: 12345, Flags: 0100002, MntID: 27, Ino: 9977996}},
		{"fdinfo-holder-100", Fdinfo{Pos: 12345, Flags: 02100002, MntID: 27, Ino: 9977996}},
		{"fdinfo-holder-7", Fdinfo{Pos: 6, Flags: 0102001, MntID: 27, Ino: 9977997}},
		{"fdinfo-holder-10", Fdinfo{Flags: 02, MntID: 17, Ino: 26, Epoll: []EpollTfd{
			{TFD: 4, Events: 0x80000019, Data: 0xdeadbeef, Ino: 0x1fe2, Sdev: 0xf},
			{TFD: 3, Events: 0x19, Data: 0x1111222233334444, Ino: 0x1a, Sdev: 0x10},
			{TFD: 5, Events: 0x4000001c, Data: 7, Ino: 0x1fe2, Sdev: 0xf},
		}}},
		{"fdinfo-misc-3", Fdinfo{Flags: 02004002, MntID: 17, Ino: 26, Timerfd: &TimerfdInfo{
			ClockID: 1, Value: Timespec{89, 888327856}, Interval: Timespec{1, 500}}}},
		{"fdinfo-misc-4", Fdinfo{Flags: 02, MntID: 17, Ino: 26, Timerfd: &TimerfdInfo{
			ClockID: 0, SettimeFlags: 1, Value: Timespec{203682457, 451038036}}}},
		{"fdinfo-misc-5", Fdinfo{Flags: 04002, MntID: 17, Ino: 26,
			Signalfd: &SignalfdInfo{Sigmask: 0x800004200}}},
		{"fdinfo-misc-7", Fdinfo{Flags: 02, MntID: 10, Ino: 8910}}, // unix socket: scm_fds skipped
		{"fdinfo-misc-9", Fdinfo{Flags: 0100002, MntID: 0, Ino: 1025}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got, err := ParseFdinfo(readTestdata(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("got  %+v %+v\nwant %+v %+v", *got, got.Timerfd, tt.want, tt.want.Timerfd)
			}
		})
	}
}

func TestParseFdinfoErrors(t *testing.T) {
	for _, in := range []string{
		"",
		"pos:\t0\n",
		"pos:\tx\nflags:\t02\n",
		"pos:\t0\nflags:\t09\n",
		"pos:\t0\nflags:\t02\neventfd-count: zz\n",
		"pos:\t0\nflags:\t02\ntfd: 1 events: 19\n",
		"pos:\t0\nflags:\t02\nit_value: (1 2)\n",
	} {
		if fi, err := ParseFdinfo([]byte(in)); err == nil {
			t.Errorf("ParseFdinfo(%q) = %+v, want an error", in, fi)
		}
	}
}

func TestParseMaps(t *testing.T) {
	vmas, err := ParseMaps(readTestdata(t, "maps-misc"))
	if err != nil {
		t.Fatal(err)
	}
	if len(vmas) != 27 {
		t.Fatalf("got %d VMAs, want 27", len(vmas))
	}
	want := map[int]VMA{
		0: {Start: 0x55f66bd23000, End: 0x55f66bd24000, Perms: "r--p",
			Dev: unix.Mkdev(0xfe, 0), Ino: 9978391, Path: "/tmp/misc"},
		5: {Start: 0x55f68b033000, End: 0x55f68b054000, Perms: "rw-p", Path: "[heap]"},
		6: {Start: 0x7fcda712b000, End: 0x7fcda722b000, Perms: "rw-p"},
		8: {Start: 0x7fcda722e000, End: 0x7fcda7254000, Perms: "r--p",
			Dev: unix.Mkdev(0xfe, 0), Ino: 326269, Path: "/usr/lib/x86_64-linux-gnu/libc.so.6"},
		9: {Start: 0x7fcda7254000, End: 0x7fcda73aa000, Perms: "r-xp", Pgoff: 0x26000,
			Dev: unix.Mkdev(0xfe, 0), Ino: 326269, Path: "/usr/lib/x86_64-linux-gnu/libc.so.6"},
		14: {Start: 0x7fcda7416000, End: 0x7fcda7417000, Perms: "r--p",
			Dev: unix.Mkdev(0, 1), Ino: 1025, Path: "/memfd:my mem", Deleted: true},
		15: {Start: 0x7fcda7417000, End: 0x7fcda7419000, Perms: "rw-s",
			Dev: unix.Mkdev(0xfe, 0), Ino: 9978387, Path: "/tmp/delme file", Deleted: true},
		26: {Start: 0xffffffffff600000, End: 0xffffffffff601000, Perms: "--xp",
			Path: "[vsyscall]"},
	}
	for i, w := range want {
		if !reflect.DeepEqual(vmas[i], w) {
			t.Errorf("VMA %d:\ngot  %+v\nwant %+v", i, vmas[i], w)
		}
	}
	if v := vmas[15]; !v.Shared() || !v.Write() || v.Exec() ||
		v.Prot() != unix.PROT_READ|unix.PROT_WRITE {
		t.Errorf("VMA 15 permissions wrong: %+v", v)
	}
}

func TestParseSmaps(t *testing.T) {
	smaps, err := ParseSmaps(readTestdata(t, "smaps-misc"))
	if err != nil {
		t.Fatal(err)
	}
	maps, err := ParseMaps(readTestdata(t, "maps-misc"))
	if err != nil {
		t.Fatal(err)
	}
	if len(smaps) != len(maps) {
		t.Fatalf("smaps has %d VMAs, maps %d", len(smaps), len(maps))
	}
	for i := range maps {
		if smaps[i].VmFlags == nil {
			t.Errorf("VMA %d has no VmFlags", i)
		}
		s := smaps[i]
		s.VmFlags = nil
		if !reflect.DeepEqual(s, maps[i]) {
			t.Errorf("VMA %d: smaps %+v, maps %+v", i, s, maps[i])
		}
	}
	// The 1 MiB range with MADV_DONTDUMP, the shared file, the stack.
	if fl := smaps[6].VmFlags; !fl.Has(VmDontDump) || fl.Has(VmShared) {
		t.Errorf("VMA 6 flags %v, want dd and not sh", fl)
	}
	if fl := smaps[15].VmFlags; !fl.Has(VmShared) || !fl.Has(VmWrite) {
		t.Errorf("VMA 15 flags %v, want sh and wr", fl)
	}
	if fl := smaps[25].VmFlags; !fl.Has(VmGrowsDown) {
		t.Errorf("[stack] flags %v, want gd", fl)
	}
	if fl := smaps[19].VmFlags; smaps[19].Path != "[vdso]" || !fl.Has(VmExec) {
		t.Errorf("[vdso] %+v, want ex", smaps[19])
	}
}

func TestParseStat(t *testing.T) {
	st, err := ParseStat(readTestdata(t, "stat-comm-parens"))
	if err != nil {
		t.Fatal(err)
	}
	want := Stat{Pid: 5278, Comm: "a) (b c)", State: 'S', Ppid: 1, Flags: 4194304, NumThreads: 1,
		StartTime: 43649, StartCode: 94516859256832, EndCode: 94516859258081,
		StartStack: 140736918517600, Processor: 1, StartData: 94516859268560,
		EndData: 94516859269280, StartBrk: 94517382557696, ArgStart: 140736918522585,
		ArgEnd: 140736918522592, EnvStart: 140736918522592, EnvEnd: 140736918523889}
	if *st != want {
		t.Errorf("got  %+v\nwant %+v", *st, want)
	}

	vmas, err := ParseMaps(readTestdata(t, "maps-misc"))
	if err != nil {
		t.Fatal(err)
	}
	if b := Brk(vmas, st); b != 0x55f68b054000 {
		t.Errorf("Brk = %#x, want the end of [heap] 0x55f68b054000", b)
	}
	if b := Brk(nil, st); b != st.StartBrk {
		t.Errorf("Brk without heap = %#x, want start_brk %#x", b, st.StartBrk)
	}
}

func TestParseStatErrors(t *testing.T) {
	for _, in := range []string{"", "1 (x", "1 (x) S 2", "x (y) S"} {
		if _, err := ParseStat([]byte(in)); err == nil {
			t.Errorf("ParseStat(%q) succeeded", in)
		}
	}
}

func TestParseAuxv(t *testing.T) {
	av, err := ParseAuxv(readTestdata(t, "auxv-misc"))
	if err != nil {
		t.Fatal(err)
	}
	if len(av)%2 != 0 || av[len(av)-2] != 0 {
		t.Fatalf("auxv %v does not end with AT_NULL", av)
	}
	const atSysinfoEhdr = 33
	if av[0] != atSysinfoEhdr || av[1] != 0x7fcda7421000 {
		t.Errorf("first pair %#x %#x, want AT_SYSINFO_EHDR at the [vdso]", av[0], av[1])
	}
	if _, err := ParseAuxv(make([]byte, 15)); err == nil {
		t.Error("odd length accepted")
	}
	if _, err := ParseAuxv([]byte{1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0}); err == nil {
		t.Error("auxv without AT_NULL accepted")
	}
}

// TestReadSelf runs every reader on the test process itself.
func TestReadSelf(t *testing.T) {
	pid := os.Getpid()

	vmas, err := ReadSmaps(pid)
	if err != nil {
		t.Fatal(err)
	}
	var stack bool
	for _, v := range vmas {
		if v.VmFlags == nil {
			t.Errorf("%+v has no VmFlags", v)
		}
		if v.Path == "[stack]" && v.VmFlags.Has(VmGrowsDown) {
			stack = true
		}
	}
	if !stack {
		t.Error("no [stack] with gd")
	}
	maps, err := ReadMaps(pid)
	if err != nil || len(maps) == 0 {
		t.Fatalf("ReadMaps: %d VMAs, %v", len(maps), err)
	}

	st, err := ReadStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	// The state is the main thread's, which may sleep while a test runs on
	// another thread.
	if st.Pid != pid || !strings.ContainsRune("RS", rune(st.State)) || st.StartCode == 0 ||
		st.EnvEnd <= st.EnvStart || len(st.Comm) == 0 || len(st.Comm) > 15 ||
		!strings.HasPrefix(filepath.Base(exe), st.Comm) {
		t.Errorf("stat of self: %+v", st)
	}

	av, err := ReadAuxv(pid)
	if err != nil || len(av) < 4 {
		t.Fatalf("ReadAuxv: %v, %v", av, err)
	}

	tasks, err := ReadTasks(pid)
	// The Go runtime may start threads between the two reads.
	if err != nil || !slices.Contains(tasks, pid) || !slices.IsSorted(tasks) {
		t.Errorf("ReadTasks: %v, %v; stat says %d threads", tasks, err, st.NumThreads)
	}

	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	fds, err := ReadFDs(pid)
	if err != nil || !slices.Contains(fds, p[0]) || !slices.Contains(fds, p[1]) {
		t.Fatalf("ReadFDs: %v, %v; want %v in it", fds, err, p)
	}
	fi, err := ReadFdinfo(pid, p[0])
	if err != nil {
		t.Fatal(err)
	}
	if fi.Flags != unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC {
		t.Errorf("pipe flags %#o", fi.Flags)
	}

	if _, err := ReadFdinfo(pid, 1<<20); !os.IsNotExist(err) {
		t.Errorf("fdinfo of a closed fd: %v, want not exist", err)
	}
}
