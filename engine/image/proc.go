package image

// Proc is the process-wide kernel state that lives outside memory, registers and
// descriptors: identity, limits, timers, pending signals. Images of version 1 have
// none (Image.Proc is nil) and restore without it, as cryo did then: the process
// gets the restorer's credentials, limits, cwd and so on.
//
// Per-thread parts (scheduling, signals queued to one thread) are kept by thread
// id in Threads, so that the same record serves a process of several threads.
type Proc struct {
	// Sid and Pgid are the session and process group ids.
	Sid  int `json:"sid"`
	Pgid int `json:"pgid"`

	// Umask is the file mode creation mask (Umask in /proc/PID/status).
	Umask uint32 `json:"umask"`

	// Cwd and Root are the working and root directories, as /proc/PID/cwd and
	// root name them from cryo's root, with their identity.
	Cwd  Dir `json:"cwd"`
	Root Dir `json:"root"`

	// Personality is the execution domain and its flags (personality(2)).
	Personality uint64 `json:"personality"`

	// Rlimits are the resource limits, one per RLIMIT_* resource the kernel has.
	Rlimits []Rlimit `json:"rlimits"`

	Creds Creds `json:"creds"`

	// NoNewPrivs is prctl(PR_SET_NO_NEW_PRIVS).
	NoNewPrivs bool `json:"no_new_privs,omitempty"`

	// Dumpable is prctl(PR_GET_DUMPABLE): 0, 1 or 2 (suid_dumpable).
	Dumpable int `json:"dumpable"`

	// ChildSubreaper is prctl(PR_SET_CHILD_SUBREAPER).
	ChildSubreaper bool `json:"child_subreaper,omitempty"`

	// Itimers are the interval timers ITIMER_REAL, ITIMER_VIRTUAL and ITIMER_PROF
	// that are armed.
	Itimers []Itimer `json:"itimers,omitempty"`

	// Timers are the POSIX timers (timer_create), by id.
	Timers []PosixTimer `json:"timers,omitempty"`

	// Pending holds the signals queued to the whole process (the shared
	// queue), oldest first, each a raw 128-byte siginfo_t.
	Pending [][]byte `json:"pending,omitempty"`

	// Threads holds the per-thread state, one entry per thread.
	Threads []ThreadProc `json:"threads"`
}

// Dir is a directory a process uses (its cwd or root).
type Dir struct {
	Path string `json:"path"`
	Dev  uint64 `json:"dev"`
	Ino  uint64 `json:"ino"`
}

// Rlimit is one resource limit; unix.RLIM_INFINITY is unlimited.
type Rlimit struct {
	Resource int    `json:"resource"`
	Cur      uint64 `json:"cur"`
	Max      uint64 `json:"max"`
}

// Creds are the credentials of a process, from /proc/PID/status and
// prctl(PR_GET_SECUREBITS).
type Creds struct {
	// Uid and Gid are real, effective, saved set and filesystem ids.
	Uid    [4]uint32 `json:"uid"`
	Gid    [4]uint32 `json:"gid"`
	Groups []uint32  `json:"groups,omitempty"`

	// Capability sets, bit n for capability n.
	CapInh uint64 `json:"cap_inh"`
	CapPrm uint64 `json:"cap_prm"`
	CapEff uint64 `json:"cap_eff"`
	CapBnd uint64 `json:"cap_bnd"`
	CapAmb uint64 `json:"cap_amb"`

	// Securebits are the SECBIT_* flags.
	Securebits uint32 `json:"securebits"`
}

// Itimer is one armed interval timer (getitimer(2)); times in nanoseconds,
// microsecond-precise as the kernel keeps them.
type Itimer struct {
	Which    int   `json:"which"` // ITIMER_REAL, ITIMER_VIRTUAL or ITIMER_PROF
	Value    int64 `json:"value"`
	Interval int64 `json:"interval"`
}

// PosixTimer is one timer of timer_create(2), with what it notifies and the time
// left on it when checkpointed.
type PosixTimer struct {
	ID    int32 `json:"id"`
	Clock int32 `json:"clock"`

	// Notify is SIGEV_SIGNAL (0), SIGEV_NONE (1) or SIGEV_THREAD_ID (4); Tid is
	// the thread a SIGEV_THREAD_ID timer signals.
	Notify int    `json:"notify"`
	Signo  int    `json:"signo"`
	Value  uint64 `json:"value"` // sigev_value
	Tid    int    `json:"tid,omitempty"`

	// Remaining is the time to the next expiry (0: disarmed) and Interval the
	// period, in nanoseconds (timer_gettime).
	Remaining int64 `json:"remaining"`
	Interval  int64 `json:"interval"`
}

// ThreadProc is the kernel state of one thread that is not CPU state.
type ThreadProc struct {
	Tid   int   `json:"tid"`
	Sched Sched `json:"sched"`

	// Pending holds the signals queued to this thread alone, oldest first,
	// each a raw 128-byte siginfo_t.
	Pending [][]byte `json:"pending,omitempty"`

	// Affinity is the CPU mask (sched_getaffinity), 64 CPUs a word.
	Affinity []uint64 `json:"affinity,omitempty"`

	// Ioprio is the I/O priority (ioprio_get, class and data as the kernel
	// packs them).
	Ioprio int `json:"ioprio"`

	// TimerSlack is the timer slack in nanoseconds (PR_GET_TIMERSLACK); 0 when
	// not recorded.
	TimerSlack uint64 `json:"timer_slack,omitempty"`
}

// Sched is struct sched_attr (sched_getattr(2)): policy, flags, nice, priority
// and the deadline and utilization-clamp parameters.
type Sched struct {
	Policy   uint32 `json:"policy"`
	Flags    uint64 `json:"flags,omitempty"`
	Nice     int32  `json:"nice"`
	Priority uint32 `json:"priority,omitempty"`
	Runtime  uint64 `json:"runtime,omitempty"`
	Deadline uint64 `json:"deadline,omitempty"`
	Period   uint64 `json:"period,omitempty"`
	UtilMin  uint32 `json:"util_min,omitempty"`
	UtilMax  uint32 `json:"util_max,omitempty"`
}
