package kabi

import (
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestSchedAttr checks the struct size and that the running kernel answers
// sched_getattr with it for this process.
func TestSchedAttr(t *testing.T) {
	if s := unsafe.Sizeof(SchedAttr{}); s != SizeofSchedAttr {
		t.Fatalf("SchedAttr is %d bytes, want %d", s, SizeofSchedAttr)
	}
	a, err := SchedGetattr(os.Getpid())
	if err != nil {
		t.Fatalf("sched_getattr: %v", err)
	}
	// SCHED_OTHER (0) or SCHED_BATCH (3).
	if a.Size != SizeofSchedAttr || a.Policy != 0 && a.Policy != 3 {
		t.Errorf("sched_getattr of this process: %+v", a)
	}
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := int32(20 - prio); a.Nice != want { // the raw syscall returns 20-nice
		t.Errorf("nice %d, getpriority says %d", a.Nice, want)
	}
	if err := SchedSetattr(os.Getpid(), a); err != nil {
		t.Errorf("sched_setattr with what sched_getattr said: %v", err)
	}
}
