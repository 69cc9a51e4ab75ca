package image

// The kinds of file descriptor added in image version 2.
const (
	FDTimerfd  FDKind = "timerfd"  // a timerfd with its clock, time left, interval and ticks
	FDSignalfd FDKind = "signalfd" // a signalfd with its signal mask
	FDMemfd    FDKind = "memfd"    // a memfd with its name, content and seals
)

// Timerfd is the state of a timerfd (timerfd_create(2)); times in nanoseconds.
type Timerfd struct {
	Clock int `json:"clock"`

	// Flags are the timerfd_settime flags it was armed with: TFD_TIMER_ABSTIME,
	// TFD_TIMER_CANCEL_ON_SET.
	Flags int `json:"flags,omitempty"`

	// Remaining is the time to the next expiry, 0 when disarmed, and Interval
	// its period, as fdinfo shows them (to the nanosecond).
	Remaining int64 `json:"remaining"`
	Interval  int64 `json:"interval"`

	// Expiry is, for a timer armed with TFD_TIMER_ABSTIME, the absolute time of
	// the next expiry on Clock: the clock read beside fdinfo, plus Remaining.
	Expiry int64 `json:"expiry,omitempty"`

	// Ticks counts the expirations not yet read.
	Ticks uint64 `json:"ticks,omitempty"`
}

// Signalfd is the state of a signalfd.
type Signalfd struct {
	// Mask has bit n-1 set for signal n.
	Mask uint64 `json:"mask"`
}

// Memfd is the state of a memfd (memfd_create(2)). Its content is kept in the
// image, so only small memfds are checkpointed (see engine/fds).
type Memfd struct {
	// Name is the name given to memfd_create, without the "memfd:" prefix.
	Name string `json:"name"`

	// Seals are the F_GET_SEALS bits. A memfd made without MFD_ALLOW_SEALING
	// has F_SEAL_SEAL from birth.
	Seals int `json:"seals,omitempty"`

	// Mode is the file mode (the permission bits; MFD_NOEXEC_SEAL clears the
	// execute bits).
	Mode uint32 `json:"mode"`

	// Size is the file size; Content its bytes, without the zero tail.
	Size    int64  `json:"size"`
	Content []byte `json:"content,omitempty"`
}
