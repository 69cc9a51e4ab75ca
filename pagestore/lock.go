package pagestore

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// storeLock is the store-wide flock(2) lock. One open file description is shared
// by every user in this process: flock locks taken through two descriptors of one
// process would conflict with each other, so in-process sharing is counted here
// and the kernel lock is taken by the first user and dropped by the last.
//
// The holder of the exclusive lock writes its pid into the file, so that a
// refused caller can name it even where /proc/locks is not readable.
type storeLock struct {
	dir       string
	f         *os.File
	wait      time.Duration // how long lock waits for another process's lock
	log       *slog.Logger
	interrupt <-chan struct{} // closed: a wait ends with ErrInterrupted

	mu     sync.Mutex
	shared int  // in-process shared holders
	excl   bool // held exclusively by this process
}

func openLock(dir, path string) (*storeLock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, fileMode)
	if errors.Is(err, unix.EROFS) || errors.Is(err, unix.EACCES) {
		// A store on a read-only mount (or one this user may only read) can still
		// be listed, verified and restored from: flock needs no write access.
		// Whatever would write fails later, naming the file it could not write.
		f, err = os.Open(path)
	}
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	return &storeLock{dir: dir, f: f}, nil
}

// lock takes the lock shared or exclusive, waiting up to Options.LockWait for
// another process to let go of it. It reports whether this
// call took the kernel lock (and so the caller should refresh its view of the
// store).
func (l *storeLock) lock(exclusive bool) (first bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return false, fmt.Errorf("lock store: %w", ErrClosed)
	}
	switch {
	case l.excl:
		return false, &LockedError{Dir: l.dir, Exclusive: true, Local: "a writer is active"}
	case exclusive && l.shared > 0:
		return false, &LockedError{Dir: l.dir,
			Local: fmt.Sprintf("%d readers are active", l.shared)}
	case !exclusive && l.shared > 0:
		l.shared++
		return false, nil
	}

	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	deadline := time.Now().Add(l.wait)
	pause := 5 * time.Millisecond
	for {
		err := flock(l.f, how|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return false, fmt.Errorf("lock store: %w", err)
		}
		if !time.Now().Before(deadline) {
			return false, l.holders()
		}
		// Another cryo holds the store: its checkpoint or reads end soon. Say so
		// once, at Warn: the caller may sit here for up to l.wait with nothing to
		// show for it otherwise.
		if pause == 5*time.Millisecond && l.log != nil {
			h := l.holders()
			l.log.Warn("waiting for the store lock", "store", l.dir, "holder", h.holder(),
				"mode", h.mode(), "up_to", l.wait)
		}
		select {
		case <-l.interrupt:
			return false, fmt.Errorf("lock store %s: %w", l.dir, ErrInterrupted)
		case <-time.After(pause):
		}
		pause = min(2*pause, 200*time.Millisecond)
	}
	if exclusive {
		l.excl = true
		if err := l.f.Truncate(0); err == nil {
			l.f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		}
	} else {
		l.shared = 1
	}
	return true, nil
}

func (l *storeLock) unlock(exclusive bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return
	}
	if exclusive {
		if !l.excl {
			panic("pagestore: unlock of an exclusive lock not held")
		}
		l.excl = false
	} else {
		if l.shared == 0 {
			panic("pagestore: unlock of a shared lock not held")
		}
		l.shared--
		if l.shared > 0 {
			return
		}
	}
	flock(l.f, unix.LOCK_UN)
}

func (l *storeLock) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close() // drops any kernel lock
	l.f = nil
	return err
}

// holders builds the error for a refused lock: it finds the processes holding a
// flock on the lock file in /proc/locks, and falls back to the pid written in the
// file by the last exclusive holder.
func (l *storeLock) holders() *LockedError {
	e := &LockedError{Dir: l.dir}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(l.f.Fd()), &st); err == nil {
		e.PIDs, e.Exclusive = procLocks(st.Ino)
		e.PIDs = slices.DeleteFunc(e.PIDs, func(p int) bool { return p == os.Getpid() })
	}
	if len(e.PIDs) == 0 {
		buf := make([]byte, 32)
		n, _ := l.f.ReadAt(buf, 0)
		if pid, err := strconv.Atoi(strings.TrimSpace(string(buf[:n]))); err == nil {
			e.PIDs = []int{pid}
		}
	}
	return e
}

// procLocks parses /proc/locks for FLOCK entries on inode ino. Lines look like
// "3: FLOCK  ADVISORY  WRITE 4242 00:2b:1234 0 EOF"; blocked waiters ("->") are
// skipped.
func procLocks(ino uint64) (pids []int, exclusive bool) {
	f, err := os.Open("/proc/locks")
	if err != nil {
		return nil, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 || fs[1] != "FLOCK" {
			continue
		}
		dev := strings.Split(fs[5], ":")
		if len(dev) != 3 || dev[2] != strconv.FormatUint(ino, 10) {
			continue
		}
		pid, err := strconv.Atoi(fs[4])
		if err != nil || pid == os.Getpid() {
			continue
		}
		pids = append(pids, pid)
		exclusive = exclusive || fs[3] == "WRITE"
	}
	return pids, exclusive
}

func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			return err
		}
	}
}
