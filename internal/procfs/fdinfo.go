package procfs

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Fdinfo is the content of /proc/PID/fdinfo/FD. The common lines are always
// present; the kind-specific parts are set only for files of that kind.
type Fdinfo struct {
	Pos   int64  // pos: the file offset
	Flags int    // flags: open file status flags, O_CLOEXEC included when set
	MntID int    // mnt_id: the mount the file is on
	Ino   uint64 // ino: the inode number

	Eventfd  *EventfdInfo  // eventfd-count, eventfd-id, eventfd-semaphore
	Epoll    []EpollTfd    // one tfd line per watch of an epoll instance
	Timerfd  *TimerfdInfo  // clockid, ticks, settime flags, it_value, it_interval
	Signalfd *SignalfdInfo // sigmask
}

// EventfdInfo is the state of an eventfd.
type EventfdInfo struct {
	Count uint64
	ID    int
	// Semaphore is EFD_SEMAPHORE. Older kernels do not print the
	// eventfd-semaphore line; it then reads false, and HasSemaphore says so.
	Semaphore    bool
	HasSemaphore bool
}

// EpollTfd is one watch of an epoll instance:
//
//	tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x
type EpollTfd struct {
	TFD    int    // the fd number the watch was added under
	Events uint32 // requested events, EPOLLET and EPOLLONESHOT included
	Data   uint64 // the user data
	Pos    int64  // file position of the watched file
	Ino    uint64 // inode of the watched file
	Sdev   uint64 // device of the watched file's superblock (kernel encoding)
}

// TimerfdInfo is the state of a timerfd.
type TimerfdInfo struct {
	ClockID      int
	Ticks        uint64 // expirations not yet read
	SettimeFlags int    // TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET
	Value        Timespec
	Interval     Timespec
}

// Timespec is a (seconds, nanoseconds) pair as fdinfo prints it.
type Timespec struct {
	Sec, Nsec int64
}

// SignalfdInfo is the state of a signalfd.
type SignalfdInfo struct {
	// Sigmask has bit n-1 set for signal n.
	Sigmask uint64
}

// ReadFdinfo reads /proc/PID/fdinfo/FD.
func ReadFdinfo(pid, fd int) (*Fdinfo, error) {
	p := Path(pid, "fdinfo", strconv.Itoa(fd))
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	fi, err := ParseFdinfo(b)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", p, err)
	}
	return fi, nil
}

// ParseFdinfo parses the text of an fdinfo file. Lines it does not know (those of
// inotify, fanotify, sockets, io_uring, ...) are skipped.
func ParseFdinfo(b []byte) (*Fdinfo, error) {
	var fi Fdinfo
	seen := 0
	for n, line := range lines(b) {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		var err error
		switch key {
		case "pos":
			fi.Pos, err = strconv.ParseInt(val, 10, 64)
			seen++
		case "flags":
			var v uint64
			v, err = strconv.ParseUint(val, 8, 32)
			fi.Flags = int(v)
			seen++
		case "mnt_id":
			fi.MntID, err = strconv.Atoi(val)
		case "ino":
			fi.Ino, err = strconv.ParseUint(val, 10, 64)

		case "eventfd-count":
			fi.eventfd().Count, err = strconv.ParseUint(val, 16, 64)
		case "eventfd-id":
			fi.eventfd().ID, err = strconv.Atoi(val)
		case "eventfd-semaphore":
			fi.eventfd().Semaphore = val != "0"
			fi.eventfd().HasSemaphore = true

		case "tfd":
			var t EpollTfd
			t, err = parseTfd(line)
			fi.Epoll = append(fi.Epoll, t)

		case "clockid":
			fi.timerfd().ClockID, err = strconv.Atoi(val)
		case "ticks":
			fi.timerfd().Ticks, err = strconv.ParseUint(val, 10, 64)
		case "settime flags":
			var v uint64
			v, err = strconv.ParseUint(val, 8, 32)
			fi.timerfd().SettimeFlags = int(v)
		case "it_value":
			fi.timerfd().Value, err = parseTimespec(val)
		case "it_interval":
			fi.timerfd().Interval, err = parseTimespec(val)

		case "sigmask":
			fi.Signalfd = &SignalfdInfo{}
			fi.Signalfd.Sigmask, err = strconv.ParseUint(val, 16, 64)
		}
		if err != nil {
			return nil, fmt.Errorf("line %d %q: %w", n+1, line, err)
		}
	}
	if seen < 2 {
		return nil, fmt.Errorf("no pos and flags lines")
	}
	return &fi, nil
}

func (fi *Fdinfo) eventfd() *EventfdInfo {
	if fi.Eventfd == nil {
		fi.Eventfd = &EventfdInfo{}
	}
	return fi.Eventfd
}

func (fi *Fdinfo) timerfd() *TimerfdInfo {
	if fi.Timerfd == nil {
		fi.Timerfd = &TimerfdInfo{}
	}
	return fi.Timerfd
}

// parseTfd parses one watch line of an epoll fdinfo. It is a list of "key: value"
// and "key:value" words.
func parseTfd(line string) (EpollTfd, error) {
	var t EpollTfd
	w := strings.Fields(line)
	var have int
	for i := 0; i < len(w); i++ {
		key, val, _ := strings.Cut(w[i], ":")
		if val == "" && i+1 < len(w) && !strings.Contains(w[i+1], ":") {
			i++
			val = w[i]
		}
		var err error
		var v uint64
		switch key {
		case "tfd":
			t.TFD, err = strconv.Atoi(val)
			have++
		case "events":
			v, err = strconv.ParseUint(val, 16, 32)
			t.Events = uint32(v)
			have++
		case "data":
			t.Data, err = strconv.ParseUint(val, 16, 64)
			have++
		case "pos":
			t.Pos, err = strconv.ParseInt(val, 10, 64)
		case "ino":
			t.Ino, err = strconv.ParseUint(val, 16, 64)
		case "sdev":
			t.Sdev, err = strconv.ParseUint(val, 16, 64)
		}
		if err != nil {
			return t, fmt.Errorf("%s: %w", key, err)
		}
	}
	if have != 3 {
		return t, fmt.Errorf("want tfd, events and data")
	}
	return t, nil
}

// parseTimespec parses "(sec, nsec)".
func parseTimespec(s string) (Timespec, error) {
	var ts Timespec
	in, ok := strings.CutPrefix(s, "(")
	in, ok2 := strings.CutSuffix(in, ")")
	sec, nsec, ok3 := strings.Cut(in, ",")
	if !ok || !ok2 || !ok3 {
		return ts, fmt.Errorf("bad time %q", s)
	}
	var err1, err2 error
	ts.Sec, err1 = strconv.ParseInt(strings.TrimSpace(sec), 10, 64)
	ts.Nsec, err2 = strconv.ParseInt(strings.TrimSpace(nsec), 10, 64)
	if err1 != nil || err2 != nil {
		return ts, fmt.Errorf("bad time %q", s)
	}
	return ts, nil
}
