package image

import (
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

	newer := []byte(`{"version":3}`)
	if _, err := Unmarshal(newer); err == nil {
		t.Errorf("an image of version 3 decoded without error")
	}
}
