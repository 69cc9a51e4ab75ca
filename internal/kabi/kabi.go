// Package kabi holds the kernel ABI of process-wide state that golang.org/x/sys/unix
// lacks: prctl options, capability and securebits constants, POSIX timer notify
// kinds, and a sched_getattr/sched_setattr pair that works on another thread.
package kabi

// prctl options (linux/prctl.h).
const (
	PR_SET_PDEATHSIG            = 1
	PR_GET_DUMPABLE             = 3
	PR_SET_DUMPABLE             = 4
	PR_SET_KEEPCAPS             = 8
	PR_GET_SECUREBITS           = 27
	PR_SET_SECUREBITS           = 28
	PR_CAPBSET_DROP             = 24
	PR_SET_CHILD_SUBREAPER      = 36
	PR_GET_CHILD_SUBREAPER      = 37
	PR_SET_NO_NEW_PRIVS         = 38
	PR_SET_TIMERSLACK           = 29
	PR_GET_TIMERSLACK           = 30
	PR_CAP_AMBIENT              = 47
	PR_CAP_AMBIENT_RAISE        = 2
	PR_TIMER_CREATE_RESTORE_IDS = 77 // Linux 6.14+
	PR_TIMER_CREATE_RESTORE_ON  = 1
	PR_TIMER_CREATE_RESTORE_OFF = 0
)

// Securebits (linux/securebits.h).
const (
	SECBIT_KEEP_CAPS        = 1 << 4
	SECBIT_KEEP_CAPS_LOCKED = 1 << 5
)

// _LINUX_CAPABILITY_VERSION_3 (linux/capability.h): capget/capset with 64-bit sets.
const LINUX_CAPABILITY_VERSION_3 = 0x20080522

// sigevent notify kinds (asm-generic/siginfo.h).
const (
	SIGEV_SIGNAL    = 0
	SIGEV_NONE      = 1
	SIGEV_THREAD    = 2
	SIGEV_THREAD_ID = 4
)

// SizeofSigevent is struct sigevent on x86-64; SizeofSiginfo is siginfo_t.
const (
	SizeofSigevent = 64
	SizeofSiginfo  = 128
)

// TFD_IOC_SET_TICKS is _IOW('T', 0, u64) (linux/timerfd.h, CONFIG_CHECKPOINT_RESTORE):
// sets the expirations a timerfd has not yet reported.
const TFD_IOC_SET_TICKS = 0x40085400

// ioprio_get/ioprio_set "which" (linux/ioprio.h).
const IOPRIO_WHO_PROCESS = 1

// Personality: the execution domain is the low byte; PER_LINUX is 0.
const PER_MASK = 0xff

// SchedAttr is struct sched_attr (linux/sched/types.h), SCHED_ATTR_SIZE_VER1.
type SchedAttr struct {
	Size     uint32
	Policy   uint32
	Flags    uint64
	Nice     int32
	Priority uint32
	Runtime  uint64
	Deadline uint64
	Period   uint64
	UtilMin  uint32
	UtilMax  uint32
}

// SizeofSchedAttr is sizeof(struct sched_attr) in its version 1 (Linux 5.3+).
const SizeofSchedAttr = 56
