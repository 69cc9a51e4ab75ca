// Package lazy is the userfaultfd page server of lazy restore: it answers
// the page faults of a restored process (and of the children it forks) from
// the snapshot, follows the process's own changes to its address space, and
// fetches every remaining page in the background until all are in.
//
// # Terms
//
//   - pending page: a page of the snapshot with data that the process does
//     not have yet. Only pending pages are ever filled from the snapshot.
//   - mm: one address space, reached through one userfaultfd. The restored
//     process is the first; each fork adds one.
//   - live address: where a page is in the process now; it differs from its
//     snapshot address once the process has moved the page with mremap.
//
// # Guarantees
//
// A fault on a pending page is answered with its snapshot data, never with
// zeros; any other fault in a registered range is answered with the zero
// page (the page was zero in the snapshot, or the process dropped it with
// madvise), and a page the process dropped is never filled again.
//
// If the server cannot go on (the snapshot is damaged, ctx ends while pages
// are pending) it kills the process through Options.Pid and Options.OnFatal
// before it closes any userfaultfd, and waits for the mms to go.
//
// If cryo itself dies, the kernel releases the userfaultfds (the restored
// process holds no copy of them): on Linux 6.18 this unregisters the ranges
// and wakes the faulting threads, which then fault again, this time without
// userfaultfd, and get zero-filled pages. They do not block and they do not
// get SIGBUS (TestServerDeathGivesZeroPages pins this down). So this package
// alone cannot keep a process from running on with zeros when cryo is
// killed; the restorer must tie the process's life to cryo's for as long as
// pages are pending, for example by keeping it seized with
// PTRACE_O_EXITKILL (which also covers fork children with
// PTRACE_O_TRACEFORK) or by putting it in a cgroup that cryo kills.
//
// # Limits
//
//   - The kernel sends a fork's UFFD_EVENT_FORK only after the fork has
//     copied the address space. If another thread of the parent drops or
//     moves memory (madvise, mremap) in that gap, its event can be read
//     before the FORK, and the child's pending set then wrongly lacks those
//     pages (they would read zero in the child). Closing this needs ordering
//     the kernel does not give.
//   - A fault on a zero page is answered one page at a time (no Around).
//   - Prefetch copies each page twice (Source into a buffer, buffer into the
//     process); with 128 KiB steps that reaches about 2.2 GB/s here against
//     3.5 GB/s for bare 1 MiB UFFDIO_COPYs.
package lazy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/internal/uffd"
)

// Source gives the content of the snapshot's pages. Addresses are
// page-aligned virtual addresses of the restored process as checkpointed.
type Source interface {
	// Pages lists the non-zero pages of the snapshot that fall in the
	// registered ranges, ascending. Any other address in a registered range
	// reads as zero.
	Pages() []uint64
	// ReadPage fills dst (4096 bytes) with the page at addr; it must be safe
	// for concurrent use. An error here means the snapshot is damaged.
	ReadPage(addr uint64, dst []byte) error
}

// Range is the address range [Start, End) of the restored process, page
// aligned.
type Range struct{ Start, End uint64 }

// Options tune a Server. The zero value serves faults only, silently.
type Options struct {
	Logger   *slog.Logger // nil: silent
	Prefetch bool         // fetch every page in the background (callers default to true)
	// Order lists snapshot page addresses to prefetch first, typically the
	// Touched list of an earlier restore of the same snapshot. May be nil.
	Order   []uint64
	Metrics *Metrics // nil: none
	// Around is how many pages to install with a faulting page when they
	// are pending: the aligned window of Around pages holding the fault,
	// clipped to the range. 0 or 1: the faulting page only.
	Around int

	// Pid is the restored process. On a fatal error the server sends it
	// SIGKILL (through a pidfd opened by NewServer, so a reused pid is never
	// hit) before it closes any userfaultfd. 0: none.
	Pid int
	// OnFatal, if set, is called on a fatal error before any userfaultfd is
	// closed. It must kill every process the server serves that Pid does not
	// cover: the kernel does not tell the server the pids of fork children.
	OnFatal func(error)
	// KillWait bounds how long the server waits, after a fatal error, for
	// the killed processes' memory to go before it closes the userfaultfds
	// anyway. 0: 5 seconds.
	KillWait time.Duration
}

// Stats count what a Server did. Pages count 4 KiB pages.
type Stats struct {
	Faults        uint64 // page faults answered
	FaultPages    uint64 // pages installed to answer faults, neighbours included
	PrefetchPages uint64 // pages installed ahead of any fault (Fill included)
	ZeroPages     uint64 // faults answered with the zero page
	DroppedPages  uint64 // pending pages the process dropped or unmapped
	Forks         uint64 // UFFD_EVENT_FORK seen
	Remaps        uint64 // UFFD_EVENT_REMAP seen
	Removes       uint64 // UFFD_EVENT_REMOVE seen
	Unmaps        uint64 // UFFD_EVENT_UNMAP seen
	Processes     uint64 // mms served: the restored process and its fork children
}

// Errors a Server returns, to be matched with errors.Is.
var (
	// ErrSource wraps an error of Source.ReadPage: the snapshot is damaged.
	ErrSource = errors.New("read snapshot page")
	// ErrKilled reports that the server killed the processes it served.
	ErrKilled = errors.New("restored processes killed")
)

// features are the userfaultfd features the server needs; THREAD_ID is only
// used for logs.
const (
	needFeatures = uffd.UFFD_FEATURE_EVENT_FORK | uffd.UFFD_FEATURE_EVENT_REMAP |
		uffd.UFFD_FEATURE_EVENT_REMOVE | uffd.UFFD_FEATURE_EVENT_UNMAP
	wantFeatures = needFeatures | uffd.UFFD_FEATURE_THREAD_ID
)

const (
	prefetchBatch = 32  // pages per prefetch step: 128 KiB, about 40 µs of copying
	fillBatch     = 256 // pages per UFFDIO_COPY in Fill: 1 MiB
	idlePoll      = 100 // ms between liveness probes when there is nothing to prefetch
	maxMsgs       = 64  // messages per read
)

// Server serves the pages of one restored process and of its fork children.
// Its methods other than Stats and Touched must be called from one goroutine.
type Server struct {
	ranges []Range
	src    Source
	opts   Options
	log    *slog.Logger
	debug  bool

	root       *mm
	mms        []*mm
	pidfd      int
	registered bool
	nextID     int

	buf      []byte // pages read from the Source for one UFFDIO_COPY
	msgBuf   []byte
	msgs     []uffd.Msg
	deferred []fault
	pfds     []unix.PollFd

	st      statCounters
	mu      sync.Mutex
	touched []uint64
}

// mm is one address space the server fills, through its userfaultfd.
type mm struct {
	id       int
	fd       int
	sp       *space
	cursor   uint64 // live address where prefetch goes on
	orderPos int    // next index of Options.Order to prefetch
	gone     bool   // the mm is gone or done; fd is closed
}

// fault is a page fault read while something else was being done.
type fault struct {
	m    *mm
	addr uint64
	tid  uint32
}

type statCounters struct {
	faults, faultPages, prefetchPages, zeroPages, dropped atomic.Uint64
	forks, remaps, removes, unmaps, processes             atomic.Uint64
}

// NewServer prepares to serve the ranges of the process whose mm the
// userfaultfd fd belongs to (possibly another process: the mm is the one
// the userfaultfd was created in). On success the server owns fd and closes
// it; on error the caller still does. fd is made non-blocking.
func NewServer(fd int, ranges []Range, src Source, opts Options) (*Server, error) {
	for _, r := range ranges {
		if r.Start%pageSize != 0 || r.End%pageSize != 0 || r.End <= r.Start {
			return nil, fmt.Errorf("new page server: range %#x-%#x not page aligned",
				r.Start, r.End)
		}
	}
	if err := setNonblock(fd); err != nil {
		return nil, fmt.Errorf("new page server: uffd %d: %w", fd, err)
	}
	s := &Server{
		ranges: slices.Clone(ranges),
		src:    src,
		opts:   opts,
		log:    opts.Logger,
		pidfd:  -1,
		buf:    make([]byte, max(fillBatch, opts.Around, prefetchBatch)*pageSize),
		msgBuf: make([]byte, maxMsgs*uffd.SizeofMsg),
		msgs:   make([]uffd.Msg, 0, maxMsgs),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.debug = s.log.Enabled(context.Background(), slog.LevelDebug)
	if opts.Pid > 0 {
		pidfd, err := unix.PidfdOpen(opts.Pid, 0)
		if err != nil {
			return nil, fmt.Errorf("new page server: pidfd_open pid %d: %w", opts.Pid, err)
		}
		s.pidfd = pidfd
	}
	s.root = s.addMM(fd, newSpace(s.ranges, src.Pages()))
	s.touched = make([]uint64, 0, 1024)
	return s, nil
}

func setNonblock(fd int) error {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return fmt.Errorf("fcntl F_GETFL: %w", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl|unix.O_NONBLOCK); err != nil {
		return fmt.Errorf("fcntl F_SETFL: %w", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		return fmt.Errorf("fcntl F_SETFD: %w", err)
	}
	return nil
}

func (s *Server) addMM(fd int, sp *space) *mm {
	m := &mm{id: s.nextID, fd: fd, sp: sp}
	s.nextID++
	s.mms = append(s.mms, m)
	s.st.processes.Add(1)
	return m
}

// Register does UFFDIO_API, asking for UFFD_FEATURE_EVENT_FORK, _REMAP,
// _REMOVE and _UNMAP (Linux 4.11) and _THREAD_ID (4.14), and registers
// every range in UFFDIO_REGISTER_MODE_MISSING. Call it while the target is
// still stopped, on a userfaultfd that has not had UFFDIO_API yet.
func (s *Server) Register() error {
	fd := s.root.fd
	want := uint64(wantFeatures)
	if have, err := uffd.Supported(); err == nil {
		if err := uffd.Missing(have, needFeatures); err != nil {
			return fmt.Errorf("register uffd %d: %w", fd, err)
		}
		want &= have
	}
	if _, _, err := uffd.API(fd, want); err != nil {
		return fmt.Errorf("register uffd %d: %w", fd, err)
	}
	const need = uffd.IoctlCopy | uffd.IoctlZeroPage | uffd.IoctlWake
	for _, r := range s.ranges {
		ioctls, err := uffd.Register(fd, r.Start, r.End-r.Start,
			uffd.UFFDIO_REGISTER_MODE_MISSING)
		if err != nil {
			return fmt.Errorf("register uffd %d: %w", fd, err)
		}
		if ioctls&need != need {
			return fmt.Errorf("register uffd %d: range %#x-%#x: ioctls %#x lack %#x: %w",
				fd, r.Start, r.End, ioctls, need&^ioctls, uffd.ErrNotSupported)
		}
	}
	s.registered = true
	s.log.Debug("registered", "uffd", fd, "ranges", len(s.ranges),
		"pending_pages", s.root.sp.pending)
	return nil
}

// Fill installs every pending page now, in 1 MiB copies, without waking
// anyone (eager restore): call it after Register and before the process
// runs. Then it closes the userfaultfd, which unregisters the ranges, so
// Serve returns at once.
func (s *Server) Fill() error {
	start := time.Now()
	m := s.root
	if m.gone {
		return nil
	}
	installed, err := s.fillPipelined(m)
	if err != nil {
		return s.abort(fmt.Errorf("fill: %w", err))
	}
	// Whatever the pipeline left (a copy that met a changed layout) is
	// installed batch by batch, settling events between.
	for {
		ei, pi, ok := m.sp.next(0)
		if !ok {
			break
		}
		n := s.runFrom(m, ei, pi, fillBatch)
		got, err := s.install(m, ei, pi, n, uffd.UFFDIO_COPY_MODE_DONTWAKE)
		installed += got
		s.st.prefetchPages.Add(uint64(got))
		if err == nil {
			continue
		}
		if errors.Is(err, errAgain) {
			if err := s.settle(m, 0); err != nil {
				return fmt.Errorf("fill: %w", err)
			}
			continue
		}
		if errors.Is(err, errGone) {
			break
		}
		return s.abort(fmt.Errorf("fill: %w", err))
	}
	s.closeMM(m)
	d := time.Since(start)
	s.log.Info("filled", "pages", installed, "bytes", installed*pageSize,
		"duration", d, "MBps", float64(installed*pageSize)/1e6/d.Seconds())
	return nil
}

// fillRun is one batch of Fill: pages [pi, pi+n) of extent ei, read into buf.
type fillRun struct {
	ei, pi, n int
	buf       []byte
	err       error
	read      chan struct{} // closed once buf holds the pages or err is set
}

// fillReaders is how many goroutines read (decompress and hash) pages for
// Fill while this one copies: reading costs about twice what copying does.
const fillReaders = 2

// fillPipelined installs every pending page of m, reading batches on
// fillReaders goroutines while this one copies the batches read before, in
// address order. The process does not run yet, so the layout cannot change
// under the plan made at the start; a copy that still meets one (errAgain,
// errGone) ends the pipeline early and leaves the rest to Fill's loop. It
// returns how many pages it installed and the first error that is not one of
// those two.
func (s *Server) fillPipelined(m *mm) (int, error) {
	var plan []*fillRun
	for ei := range m.sp.exts {
		e := &m.sp.exts[ei]
		for pi := e.nextPending(0); pi >= 0; {
			n := s.runFrom(m, ei, pi, fillBatch)
			plan = append(plan, &fillRun{ei: ei, pi: pi, n: n, read: make(chan struct{})})
			pi = e.nextPending(pi + n)
		}
	}
	if len(plan) == 0 {
		return 0, nil
	}

	// Buffers circulate: the feeder takes one for each batch, the copier
	// gives it back once the batch is in.
	const depth = 2 * fillReaders
	free := make(chan []byte, depth)
	for range depth {
		free <- make([]byte, fillBatch*pageSize)
	}
	stop := make(chan struct{})
	work := make(chan *fillRun)
	var wg sync.WaitGroup
	for range fillReaders {
		wg.Go(func() {
			for r := range work {
				r.err = s.readRun(m, r.ei, r.pi, r.n, r.buf)
				close(r.read)
			}
		})
	}
	wg.Go(func() {
		defer close(work)
		for _, r := range plan {
			select {
			case r.buf = <-free:
			case <-stop:
				return
			}
			select {
			case work <- r:
			case <-stop:
				return
			}
		}
	})

	installed := 0
	var err error
	for _, r := range plan {
		<-r.read
		if r.err != nil {
			err = r.err
			break
		}
		var got int
		got, err = s.copyRun(m, r.ei, r.pi, r.n, r.buf[:r.n*pageSize],
			uffd.UFFDIO_COPY_MODE_DONTWAKE)
		installed += got
		s.st.prefetchPages.Add(uint64(got))
		if err != nil {
			break
		}
		free <- r.buf
	}
	close(stop)
	wg.Wait()
	if errors.Is(err, errAgain) || errors.Is(err, errGone) {
		err = nil
	}
	return installed, err
}

// Serve answers faults and events and, with Options.Prefetch, installs the
// pending pages in the background, until every page of every mm (the
// restored process and its fork children) is in or the mm is gone. It runs
// on one locked OS thread; faults are always answered before the next
// prefetch step. It closes each userfaultfd when its mm is done, which
// unregisters its ranges.
//
// If ctx ends while pages are pending, the server kills the processes (see
// Options.Pid and Options.OnFatal) before it returns, since closing the
// userfaultfds would let them read zeros where their data was. So does a
// Source error. Both return an error matching ErrKilled.
func (s *Server) Serve(ctx context.Context) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer s.closePidfd()

	start := time.Now()
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return s.abort(fmt.Errorf("serve: eventfd: %w", err))
	}
	defer unix.Close(evfd)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ctx.Done():
			unix.Write(evfd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		case <-stop:
		}
	}()

	for {
		s.reap()
		if len(s.mms) == 0 {
			break
		}
		work := s.opts.Prefetch
		timeout := 0
		if !work {
			timeout = idlePoll
		}
		s.pfds = append(s.pfds[:0], unix.PollFd{Fd: int32(evfd), Events: unix.POLLIN})
		for _, m := range s.mms {
			s.pfds = append(s.pfds, unix.PollFd{Fd: int32(m.fd), Events: unix.POLLIN})
		}
		n, err := unix.Poll(s.pfds, timeout)
		if err != nil && err != unix.EINTR {
			return s.abort(fmt.Errorf("serve: poll: %w", err))
		}
		if s.pfds[0].Revents != 0 {
			if s.pendingPages() == 0 {
				break
			}
			return s.abort(fmt.Errorf("serve: %w", ctx.Err()))
		}
		// mms may grow while draining (forks): walk the ones polled.
		polled := len(s.pfds) - 1
		for i := 0; i < polled; i++ {
			if s.pfds[i+1].Revents == 0 || s.mms[i].gone {
				continue
			}
			if err := s.drain(s.mms[i]); err != nil {
				return s.abort(fmt.Errorf("serve: %w", err))
			}
		}
		if err := s.serveDeferred(); err != nil {
			return s.abort(fmt.Errorf("serve: %w", err))
		}
		if work {
			if err := s.prefetchStep(); err != nil {
				return s.abort(fmt.Errorf("serve: %w", err))
			}
		} else if n == 0 {
			s.probe()
		}
	}
	st := s.Stats()
	d := time.Since(start)
	s.log.Info("lazy restore done", "duration", d, "faults", st.Faults,
		"fault_pages", st.FaultPages, "prefetched_pages", st.PrefetchPages,
		"zero_pages", st.ZeroPages, "processes", st.Processes)
	return nil
}

// Stats returns the counts so far. It is safe to call while Serve runs.
func (s *Server) Stats() Stats {
	c := &s.st
	return Stats{
		Faults: c.faults.Load(), FaultPages: c.faultPages.Load(),
		PrefetchPages: c.prefetchPages.Load(), ZeroPages: c.zeroPages.Load(),
		DroppedPages: c.dropped.Load(), Forks: c.forks.Load(), Remaps: c.remaps.Load(),
		Removes: c.removes.Load(), Unmaps: c.unmaps.Load(), Processes: c.processes.Load(),
	}
}

// Touched returns the snapshot addresses of the pages that faults asked for,
// in the order they asked, each once: the working set to pass as
// Options.Order to the next restore of the snapshot. Safe while Serve runs.
func (s *Server) Touched() []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := make(map[uint64]struct{}, len(s.touched))
	out := make([]uint64, 0, len(s.touched))
	for _, a := range s.touched {
		if _, ok := seen[a]; !ok {
			seen[a] = struct{}{}
			out = append(out, a)
		}
	}
	return out
}

// Close closes every userfaultfd still open without killing anything. Use it
// only when no page is pending or the processes are known to be dead: a
// process faulting on a pending page afterwards reads zeros.
func (s *Server) Close() error {
	for _, m := range s.mms {
		s.closeMM(m)
	}
	s.reap()
	s.closePidfd()
	return nil
}

func (s *Server) closePidfd() {
	if s.pidfd >= 0 {
		unix.Close(s.pidfd)
		s.pidfd = -1
	}
}

func (s *Server) pendingPages() int {
	n := 0
	for _, m := range s.mms {
		if !m.gone {
			n += m.sp.pending
		}
	}
	return n
}

// reap closes the mms that are done and forgets the gone ones.
func (s *Server) reap() {
	s.mms = slices.DeleteFunc(s.mms, func(m *mm) bool {
		if !m.gone && m.sp.pending == 0 {
			s.closeMM(m)
		}
		return m.gone
	})
}

func (s *Server) closeMM(m *mm) {
	if m.gone {
		return
	}
	m.gone = true
	unix.Close(m.fd)
	s.log.Debug("mm done", "mm", m.id, "uffd", m.fd, "pending_pages", m.sp.pending)
}

// Internal outcomes of a fill ioctl.
var (
	errAgain = errors.New("address space changing") // EAGAIN: read events, decide again
	errGone  = errors.New("mm gone")                // ESRCH: the process exited
	errNoEnt = errors.New("range not registered")   // ENOENT: unmapped under us
)

// drain reads the pending messages of m, applies the events at once and
// queues the faults for serveDeferred.
func (s *Server) drain(m *mm) error {
	for !m.gone {
		msgs, err := uffd.ReadMsgs(m.fd, s.msgBuf, s.msgs[:0])
		if errors.Is(err, unix.EAGAIN) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("mm %d: %w", m.id, err)
		}
		for _, msg := range msgs {
			if msg.Event == uffd.UFFD_EVENT_PAGEFAULT {
				s.deferred = append(s.deferred, fault{m, msg.Address, msg.Ptid})
				continue
			}
			if err := s.event(m, msg); err != nil {
				return err
			}
		}
		if len(msgs) < maxMsgs {
			return nil
		}
	}
	return nil
}

// event applies a non-cooperative event of m to what the server knows.
func (s *Server) event(m *mm, msg uffd.Msg) error {
	if s.debug {
		s.log.Debug("event", "mm", m.id, "msg", msg.String())
	}
	switch msg.Event {
	case uffd.UFFD_EVENT_FORK:
		s.st.forks.Add(1)
		fd := int(msg.Ufd)
		if err := setNonblock(fd); err != nil {
			unix.Close(fd)
			return fmt.Errorf("mm %d: fork: uffd %d: %w", m.id, fd, err)
		}
		c := s.addMM(fd, m.sp.clone())
		c.cursor, c.orderPos = m.cursor, m.orderPos
		s.log.Debug("fork", "parent", m.id, "child", c.id, "uffd", fd,
			"pending_pages", c.sp.pending)
	case uffd.UFFD_EVENT_REMAP:
		s.st.remaps.Add(1)
		s.st.dropped.Add(uint64(m.sp.move(msg.From, msg.To, msg.Len)))
	case uffd.UFFD_EVENT_REMOVE:
		s.st.removes.Add(1)
		s.st.dropped.Add(uint64(m.sp.drop(msg.Start, msg.End)))
	case uffd.UFFD_EVENT_UNMAP:
		s.st.unmaps.Add(1)
		s.st.dropped.Add(uint64(m.sp.cut(msg.Start, msg.End)))
	}
	return nil
}

// serveDeferred answers the faults queued by drain, oldest first.
func (s *Server) serveDeferred() error {
	// fault may queue more (it drains events on EAGAIN): index, do not range.
	for i := 0; i < len(s.deferred); i++ {
		f := s.deferred[i]
		if f.m.gone {
			continue
		}
		if err := s.fault(f.m, f.addr, f.tid); err != nil {
			return err
		}
	}
	s.deferred = s.deferred[:0]
	return nil
}

// fault answers one page fault of m at addr: with the snapshot page and its
// pending neighbours if the page is pending, else with the zero page.
func (s *Server) fault(m *mm, addr uint64, tid uint32) error {
	start := time.Now()
	page := addr &^ (pageSize - 1)
	first := true
	for tries := 0; ; tries++ {
		var err error
		ei, pi, ok := m.sp.lookup(page)
		if ok && m.sp.exts[ei].isPending(pi) {
			if first {
				s.recordTouch(m.sp.exts[ei].src + uint64(pi)*pageSize)
				first = false
			}
			err = s.faultCopy(m, ei, pi)
		} else {
			err = s.faultZero(m, page)
		}
		switch {
		case err == nil:
		case errors.Is(err, errGone):
			s.closeMM(m)
		case errors.Is(err, errAgain), errors.Is(err, errNoEnt) && tries == 0:
			if err := s.settle(m, tries); err != nil {
				return err
			}
			continue
		case errors.Is(err, errNoEnt):
			// Still no mapping after the events were applied: the fault
			// is stale. Wake the address in case someone still waits.
			uffd.Wake(m.fd, page, pageSize)
		default:
			return fmt.Errorf("mm %d: fault at %#x tid %d: %w", m.id, addr, tid, err)
		}
		s.st.faults.Add(1)
		if mt := s.opts.Metrics; mt != nil {
			mt.faults.Inc()
			mt.faultLatency.Observe(time.Since(start).Seconds())
		}
		if s.debug {
			s.log.Debug("fault", "mm", m.id, "addr", addr, "tid", tid,
				"duration", time.Since(start))
		}
		return nil
	}
}

// settle reads and applies the events of m after an EAGAIN; if there are
// none yet (the thread that caused the event has not finished it), it yields
// the CPU so that thread can.
func (s *Server) settle(m *mm, tries int) error {
	before := len(s.deferred)
	if err := s.drain(m); err != nil {
		return err
	}
	if len(s.deferred) == before {
		if tries < 1000 {
			unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
		} else {
			time.Sleep(50 * time.Microsecond)
		}
	}
	return nil
}

func (s *Server) faultCopy(m *mm, ei, pi int) error {
	e := &m.sp.exts[ei]
	lo, hi := pi, pi+1
	if w := s.opts.Around; w > 1 {
		lo = pi / w * w
		hi = min(lo+w, e.pages)
	}
	a, b := pi, pi+1
	for a > lo && e.isPending(a-1) {
		a--
	}
	for b < hi && e.isPending(b) {
		b++
	}
	got, err := s.install(m, ei, a, b-a, 0)
	s.st.faultPages.Add(uint64(got))
	if err != nil {
		return err
	}
	// The faulting thread is awake; its other pending neighbours follow.
	for i := e.nextPending(lo); i >= 0 && i < hi; i = e.nextPending(i) {
		n := s.runFrom(m, ei, i, hi-i)
		got, err := s.install(m, ei, i, n, uffd.UFFDIO_COPY_MODE_DONTWAKE)
		s.st.faultPages.Add(uint64(got))
		if err != nil {
			// The faulting page is in; the rest is prefetch's to retry,
			// but an error that is not about the mapping is still fatal.
			if errors.Is(err, errAgain) || errors.Is(err, errNoEnt) ||
				errors.Is(err, errGone) {
				return nil
			}
			return err
		}
		if i+n >= hi {
			break
		}
	}
	return nil
}

func (s *Server) faultZero(m *mm, page uint64) error {
	_, err := uffd.ZeroPage(m.fd, uintptr(page), pageSize, 0)
	switch {
	case err == nil:
		s.st.zeroPages.Add(1)
		if mt := s.opts.Metrics; mt != nil {
			mt.zero.Inc()
		}
		return nil
	case errors.Is(err, unix.EEXIST):
		// Installed meanwhile (prefetch or a neighbour): the copy woke
		// the thread, or this wakes it.
		uffd.Wake(m.fd, page, pageSize)
		return nil
	}
	return classify(err)
}

// runFrom returns how many pages from pi on, at most limit, are pending
// without a gap in extent ei.
func (s *Server) runFrom(m *mm, ei, pi, limit int) int {
	e := &m.sp.exts[ei]
	n := 0
	for pi+n < e.pages && n < limit && e.isPending(pi+n) {
		n++
	}
	return n
}

// parallelRead is the batch size from which install reads with two goroutines.
const parallelRead = 64

// install reads pages [pi, pi+n) of extent ei (all pending) from the Source
// and copies them into m with one UFFDIO_COPY, retrying partial copies.
// It returns how many it installed. A page already present counts as done.
func (s *Server) install(m *mm, ei, pi, n int, mode uint64) (int, error) {
	buf := s.buf[:n*pageSize]
	// Reading a page means decompressing and hashing it: a large batch
	// (prefetch) is read by two goroutines, one per half. Faults read a few
	// pages, on this thread only.
	if n >= parallelRead {
		half := n / 2
		errc := make(chan error, 1)
		go func() { errc <- s.readRun(m, ei, pi, half, buf) }()
		err := s.readRun(m, ei, pi+half, n-half, buf[half*pageSize:])
		if ferr := <-errc; ferr != nil {
			err = ferr
		}
		if err != nil {
			return 0, err
		}
	} else if err := s.readRun(m, ei, pi, n, buf); err != nil {
		return 0, err
	}
	return s.copyRun(m, ei, pi, n, buf, mode)
}

// readRun reads pages [pi, pi+n) of extent ei from the Source into buf. It
// only reads the extent's addresses, so it may run beside copyRun of other
// pages of the same extent.
func (s *Server) readRun(m *mm, ei, pi, n int, buf []byte) error {
	e := &m.sp.exts[ei]
	start, src := e.start, e.src
	for k := range n {
		addr := src + uint64(pi+k)*pageSize
		if err := s.src.ReadPage(addr, buf[k*pageSize:(k+1)*pageSize]); err != nil {
			return fmt.Errorf("page %#x (at %#x in mm %d): %w: %w",
				addr, start+uint64(pi+k)*pageSize, m.id, ErrSource, err)
		}
	}
	return nil
}

// copyRun copies buf, read by readRun for pages [pi, pi+n) of extent ei, into
// m, retrying partial copies, and marks the pages done. It returns how many
// it installed; a page already present counts as done.
func (s *Server) copyRun(m *mm, ei, pi, n int, buf []byte, mode uint64) (int, error) {
	e := &m.sp.exts[ei]
	installed, done := 0, 0
	single := false // copy page by page: the run crosses a mapping boundary
	for done < n {
		dst := e.start + uint64(pi+done)*pageSize
		chunk := buf[done*pageSize:]
		if single {
			chunk = chunk[:pageSize]
		}
		c, err := uffd.Copy(m.fd, uintptr(dst), chunk, mode)
		cp := c / pageSize
		e.clear(pi+done, cp)
		m.sp.pending -= cp
		installed += cp
		done += cp
		if err == nil {
			if !single {
				break
			}
			continue
		}
		switch {
		case errors.Is(err, unix.EAGAIN) && cp > 0:
			continue
		case errors.Is(err, unix.ENOENT) && !single && n-done > 1:
			// One UFFDIO_COPY must stay inside one mapping, and the process
			// may have split the registered range since (mprotect of a part):
			// try the pages one by one, so that only a page that truly lost
			// its mapping is given up.
			single = true
			continue
		case errors.Is(err, unix.EEXIST):
			// Present already: nothing to do but wake a waiter, which the
			// kernel does not do when the copy fails.
			m.sp.pending -= e.clear(pi+done, 1)
			if mode&uffd.UFFDIO_COPY_MODE_DONTWAKE == 0 {
				uffd.Wake(m.fd, dst, pageSize)
			}
			done++
			continue
		}
		return installed, &pageError{addr: dst, err: classify(err)}
	}
	return installed, nil
}

// pageError names the page a fill ioctl failed on.
type pageError struct {
	addr uint64
	err  error
}

func (e *pageError) Error() string { return fmt.Sprintf("page %#x: %v", e.addr, e.err) }
func (e *pageError) Unwrap() error { return e.err }

// classify maps the errnos of a fill ioctl to the server's outcomes.
func classify(err error) error {
	switch {
	case errors.Is(err, unix.EAGAIN):
		return fmt.Errorf("%w: %w", errAgain, err)
	case errors.Is(err, unix.ESRCH):
		return fmt.Errorf("%w: %w", errGone, err)
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%w: %w", errNoEnt, err)
	}
	return err
}

func (s *Server) recordTouch(src uint64) {
	s.mu.Lock()
	s.touched = append(s.touched, src)
	s.mu.Unlock()
}

// prefetchStep installs one batch of pending pages of one mm: first the
// pages of Options.Order, then in address order from where it stopped.
func (s *Server) prefetchStep() error {
	var m *mm
	for _, c := range s.mms {
		if !c.gone && c.sp.pending > 0 {
			m = c
			break
		}
	}
	if m == nil {
		return nil
	}
	ei, pi, ok := s.nextOrdered(m)
	if !ok {
		if ei, pi, ok = m.sp.next(m.cursor); !ok {
			return nil
		}
	}
	n := s.runFrom(m, ei, pi, prefetchBatch)
	e := &m.sp.exts[ei]
	m.cursor = e.start + uint64(pi+n)*pageSize
	got, err := s.install(m, ei, pi, n, uffd.UFFDIO_COPY_MODE_DONTWAKE)
	s.st.prefetchPages.Add(uint64(got))
	if mt := s.opts.Metrics; mt != nil {
		mt.prefetched.Add(float64(got))
	}
	switch {
	case err == nil:
	case errors.Is(err, errGone):
		s.closeMM(m)
	case errors.Is(err, errAgain):
		return s.settle(m, 0)
	case errors.Is(err, errNoEnt):
		// Let the UNMAP event arrive; if the page is still known
		// afterwards it is not registered, and nothing can fault there.
		failed := e.start + uint64(pi)*pageSize
		var pe *pageError
		if errors.As(err, &pe) {
			failed = pe.addr
		}
		if err := s.settle(m, 0); err != nil {
			return err
		}
		if ej, pj, ok := m.sp.lookup(failed); ok && m.sp.exts[ej].isPending(pj) {
			m.sp.pending -= m.sp.exts[ej].clear(pj, 1)
			s.st.dropped.Add(1)
		}
	default:
		return fmt.Errorf("mm %d: prefetch: %w", m.id, err)
	}
	if m.sp.pending > 0 && m.sp.pending%4096 == 0 {
		m.sp.compact()
	}
	return nil
}

// nextOrdered returns the next page of Options.Order still pending in m.
func (s *Server) nextOrdered(m *mm) (ei, pi int, ok bool) {
	for m.orderPos < len(s.opts.Order) {
		src := s.opts.Order[m.orderPos] &^ (pageSize - 1)
		if ei, pi, ok := m.sp.lookupSrc(src); ok && m.sp.exts[ei].isPending(pi) {
			return ei, pi, true
		}
		m.orderPos++
	}
	return 0, 0, false
}

// probe finds the mms whose process is gone: UFFDIO_WRITEPROTECT on a range
// not registered for write-protection changes nothing and fails with ENOENT
// while the mm lives, and with ESRCH once it is gone.
func (s *Server) probe() {
	for _, m := range s.mms {
		if m.gone || len(m.sp.exts) == 0 {
			continue
		}
		err := uffd.WriteProtect(m.fd, m.sp.exts[0].start, pageSize,
			uffd.UFFDIO_WRITEPROTECT_MODE_DONTWAKE)
		if errors.Is(err, unix.ESRCH) {
			s.log.Debug("mm gone", "mm", m.id, "pending_pages", m.sp.pending)
			s.closeMM(m)
		}
	}
}

// abort handles a fatal error: it kills the processes, waits for their mms
// to go, closes every userfaultfd and returns err marked with ErrKilled.
func (s *Server) abort(err error) error {
	if s.pidfd >= 0 {
		if kerr := unix.PidfdSendSignal(s.pidfd, unix.SIGKILL, nil, 0); kerr != nil &&
			kerr != unix.ESRCH {
			err = errors.Join(err, fmt.Errorf("kill pid %d: %w", s.opts.Pid, kerr))
		}
	}
	if s.opts.OnFatal != nil {
		s.opts.OnFatal(err)
	}
	wait := s.opts.KillWait
	if wait == 0 {
		wait = 5 * time.Second
	}
	deadline := time.Now().Add(wait)
	for {
		s.drainAll()
		s.probe()
		s.reap() // an mm with nothing pending cannot read zeros for data
		if len(s.mms) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	alive := len(s.mms)
	for _, m := range s.mms {
		s.closeMM(m)
	}
	s.mms = s.mms[:0]
	s.closePidfd()
	if alive > 0 {
		err = fmt.Errorf("%w (%d processes still alive after %v; their userfaultfds "+
			"are closed)", err, alive, wait)
	}
	return fmt.Errorf("%w: %w", ErrKilled, err)
}

// drainAll reads (and so releases) every pending event while aborting, so
// that threads blocked in fork, mremap or madvise can reach their SIGKILL.
func (s *Server) drainAll() {
	for i := 0; i < len(s.mms); i++ {
		if !s.mms[i].gone {
			s.drain(s.mms[i])
		}
	}
	s.deferred = s.deferred[:0]
}
