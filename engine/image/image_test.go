package image

import (
	"bytes"
	"fmt"
	"reflect"
	"testing"
)

// TestVersion1Loads: an image written by a cryo of image version 1, which knew
// no process-wide state and no timerfd, signalfd or memfd, still decodes, with
// Proc nil (restore then keeps the restorer's state, as version 1 did).
func TestVersion1Loads(t *testing.T) {
	const v1 = `{"version":1,"pid":4242,"comm":"memfill","exe":"/bin/memfill",
		"kernel":"6.18.0","mm":{"start_code":4194304,"auxv":[6,4096,0,0]},
		"sigactions":[{"sig":10,"handler":4198400,"flags":67108864,"restorer":4198500,
		"mask":0}],"vmas":[{"start":4194304,"end":4198400,"kind":"file","prot":5,
		"name":"/bin/memfill","dev":2049,"ino":77}],
		"threads":[{"tid":4242,"regs":{"Rip":4194400},"xstate":"AAAA","sigmask":0}],
		"fds":[{"num":3,"kind":"eventfd","flags":2,"eventfd":{"count":5}}]}`
	im, err := Unmarshal([]byte(v1))
	if err != nil {
		t.Fatalf("decode a version 1 image: %v", err)
	}
	if im.Proc != nil {
		t.Errorf("version 1 image decoded with Proc %+v, want nil", im.Proc)
	}
	if len(im.FDs) != 1 || im.FDs[0].Eventfd == nil || im.FDs[0].Eventfd.Count != 5 ||
		im.FDs[0].Timerfd != nil || im.FDs[0].Memfd != nil {
		t.Errorf("version 1 fds decoded as %+v", im.FDs)
	}
}

// TestProcRoundTrip: the process-wide state and the new descriptor kinds come
// back from their encoding unchanged, and a newer version is refused.
func TestProcRoundTrip(t *testing.T) {
	im := &Image{Version: Version, Pid: 7, Proc: &Proc{Sid: 7, Pgid: 7, Umask: 0o27,
		Cwd:     Dir{Path: "/tmp", Dev: 1, Ino: 2},
		Rlimits: []Rlimit{{Resource: 7, Cur: 700, Max: ^uint64(0)}},
		Creds: Creds{Uid: [4]uint32{1000, 1000, 0, 1000}, Groups: []uint32{4, 24},
			CapPrm: 1 << 10, CapAmb: 1 << 10, Securebits: 16},
		NoNewPrivs: true, Dumpable: 1,
		Itimers: []Itimer{{Which: 0, Value: 5e9, Interval: 7e9}},
		Timers: []PosixTimer{{ID: 2, Clock: 1, Notify: 4, Signo: 37, Value: 92, Tid: 7,
			Remaining: 123456789, Interval: 1}},
		Pending: [][]byte{make([]byte, 128)},
		Threads: []ThreadProc{{Tid: 7, Sched: Sched{Policy: 3, Nice: 7},
			Pending: [][]byte{append(make([]byte, 127), 9)}}}},
		FDs: []FD{
			{Num: 3, Kind: FDTimerfd, Timerfd: &Timerfd{Clock: 0, Flags: 1,
				Remaining: 300123456789, Expiry: 1796328395553523801, Ticks: 2}},
			{Num: 4, Kind: FDSignalfd, Signalfd: &Signalfd{Mask: 1 << 27}},
			{Num: 5, Kind: FDMemfd, Memfd: &Memfd{Name: "a b", Seals: 6, Mode: 0o777,
				Size: 9, Content: []byte{1, 2, 3}}},
		}}
	b, err := im.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, im) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, im)
	}

	newer := []byte(fmt.Sprintf(`{"version":%d}`, Version+1))
	if _, err := Unmarshal(newer); err == nil {
		t.Errorf("an image of version %d decoded without error", Version+1)
	}
}

// TestFPUState: a thread's FPU state is either an XSAVE area (xstate, every
// version) or an FXSAVE area (fxsave, version 3); each comes back from its
// encoding unchanged, an image without fxsave encodes and is written as a
// version 2 reader knows it, and a version 2 image decodes with Fxsave empty.
func TestFPUState(t *testing.T) {
	xsave := bytes.Repeat([]byte{0xa5}, 832)
	fxsave := bytes.Repeat([]byte{0x5a}, 512)
	for _, tc := range []struct {
		name        string
		th          Thread
		wantVersion int
	}{
		{"xsave", Thread{Tid: 7, Xstate: xsave}, 2},
		{"fxsave", Thread{Tid: 7, Fxsave: fxsave}, 3},
		{"none", Thread{Tid: 7}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			im := &Image{Pid: 7, Threads: []Thread{{Tid: 7, Xstate: xsave}, tc.th}}
			if v := im.MinVersion(); v != tc.wantVersion {
				t.Errorf("MinVersion %d, want %d", v, tc.wantVersion)
			}
			im.Version = im.MinVersion()
			b, err := im.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if got := bytes.Contains(b, []byte(`"fxsave"`)); got != (tc.th.Fxsave != nil) {
				t.Errorf("encoding holds an fxsave key: %v, want %v:\n%s", got,
					tc.th.Fxsave != nil, b)
			}
			got, err := Unmarshal(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, im) {
				t.Errorf("round trip:\n got %+v\nwant %+v", got, im)
			}
		})
	}

	const v2 = `{"version":2,"pid":4242,"threads":[{"tid":4242,"xstate":"AAAA"}]}`
	im, err := Unmarshal([]byte(v2))
	if err != nil {
		t.Fatalf("decode a version 2 image: %v", err)
	}
	if th := im.Threads[0]; !bytes.Equal(th.Xstate, []byte{0, 0, 0}) || th.Fxsave != nil {
		t.Errorf("version 2 thread decoded with xstate %x, fxsave %x", th.Xstate, th.Fxsave)
	}
}
