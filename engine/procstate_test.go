package engine

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
)

// TestParseTimers reads /proc/PID/timers as this kernel writes it, and refuses
// what cryo cannot make again.
func TestParseTimers(t *testing.T) {
	const good = "ID: 0\nsignal: 10/0000000000001234\nnotify: signal/pid.77\nClockID: 1\n" +
		"ID: 2\nsignal: 37/000000000000005c\nnotify: signal/tid.78\nClockID: 0\n" +
		"ID: 5\nsignal: 0/0000000000000000\nnotify: none/pid.77\nClockID: 7\n"
	got, err := parseTimers([]byte(good), []int{77, 78})
	if err != nil {
		t.Fatal(err)
	}
	want := []image.PosixTimer{
		{ID: 0, Clock: 1, Notify: 0, Signo: 10, Value: 0x1234},
		{ID: 2, Clock: 0, Notify: 4, Signo: 37, Value: 0x5c, Tid: 78},
		{ID: 5, Clock: 7, Notify: 1},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parsed %+v\nwant %+v", got, want)
	}

	for _, tc := range []struct {
		in, want    string
		unsupported bool
	}{
		{"ID: 1\nsignal: 10/0\nnotify: signal/tid.99\nClockID: 1\n",
			"POSIX timer 1 signals thread 99, which is not a thread", true},
		{"ID: 1\nsignal: 10/0\nnotify: thread/pid.77\nClockID: 1\n",
			`POSIX timer 1 notifies by "thread/pid.77"`, true},
		{"ID: 1\nsignal: 10/0\nnotify: signal/pid.77\nClockID: -6\n",
			"POSIX timer 1 on clock -6", true},
		{"signal: 10/0\n", "a field before the first ID", false},
		{"ID: x\n", `"ID: x"`, false},
		{"ID: 1\nsignal: ten/0\n", `"signal: ten/0"`, false},
	} {
		_, err := parseTimers([]byte(tc.in), []int{77})
		if err == nil || !strings.Contains(err.Error(), tc.want) ||
			errors.Is(err, ErrUnsupported) != tc.unsupported {
			t.Errorf("parse %q: %v, want an error saying %q (unsupported %v)", tc.in, err,
				tc.want, tc.unsupported)
		}
	}
}

// TestParseLimits reads this process's own limits file and compares it with
// getrlimit, and refuses a damaged one.
func TestParseLimits(t *testing.T) {
	b, err := os.ReadFile("/proc/self/limits")
	if err != nil {
		t.Fatal(err)
	}
	lims, err := parseLimits(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(lims) != rlimNlimits {
		t.Fatalf("%d limits, want %d", len(lims), rlimNlimits)
	}
	for _, l := range lims {
		var r unix.Rlimit
		if err := unix.Getrlimit(l.Resource, &r); err != nil {
			t.Fatal(err)
		}
		if r.Cur != l.Cur || r.Max != l.Max {
			t.Errorf("resource %d: parsed %d/%d, getrlimit says %d/%d", l.Resource, l.Cur,
				l.Max, r.Cur, r.Max)
		}
	}
	lines := strings.Split(string(b), "\n")
	for _, bad := range []string{
		strings.Join(lines[:5], "\n"),
		strings.Replace(string(b), "unlimited", "lots", 1),
	} {
		if _, err := parseLimits([]byte(bad)); err == nil {
			t.Errorf("parsed a damaged limits file without error:\n%s", bad)
		}
	}
}

// TestParseCreds reads credentials and umask from status fields.
func TestParseCreds(t *testing.T) {
	st := parseStatus([]byte("Umask:\t0027\nUid:\t1000\t1000\t0\t1000\n" +
		"Gid:\t1000\t1000\t0\t1000\nGroups:\t4 24 1000 \nCapInh:\t0000000000000401\n" +
		"CapPrm:\t00000000000004c1\nCapEff:\t0000000000000400\n" +
		"CapBnd:\t000001fffeffffff\nCapAmb:\t0000000000000400\nNoNewPrivs:\t1\n"))
	c, umask, nnp, err := parseCreds(st)
	if err != nil {
		t.Fatal(err)
	}
	want := image.Creds{Uid: [4]uint32{1000, 1000, 0, 1000}, Gid: [4]uint32{1000, 1000, 0, 1000},
		Groups: []uint32{4, 24, 1000}, CapInh: 0x401, CapPrm: 0x4c1, CapEff: 0x400,
		CapBnd: 0x1fffeffffff, CapAmb: 0x400}
	if !reflect.DeepEqual(c, want) || umask != 0o27 || !nnp {
		t.Errorf("parsed %+v umask %o nnp %v", c, umask, nnp)
	}
	st["Uid"] = "1000 1000"
	if _, _, _, err := parseCreds(st); err == nil {
		t.Errorf("a Uid line of two ids parsed without error")
	}
}
