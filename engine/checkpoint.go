package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/fds"
	"github.com/cryo-dev/cryo/engine/image"
	"github.com/cryo-dev/cryo/engine/remote"
	"github.com/cryo-dev/cryo/engine/track"
	"github.com/cryo-dev/cryo/internal/procfs"
	"github.com/cryo-dev/cryo/internal/ptrace"
	"github.com/cryo-dev/cryo/pagestore"
)

// ErrUnsupported matches errors for process state that cryo cannot checkpoint yet.
var ErrUnsupported = errors.New("not supported")

// CheckpointOptions controls Checkpoint and NewSession.
type CheckpointOptions struct {
	// Logger receives progress at phase boundaries; nil is silent.
	Logger *slog.Logger

	// Kill ends the process once its snapshot is durable. It stays frozen from the
	// checkpoint until then, so that it cannot act after the moment the snapshot
	// holds. Checkpoint only; Session.Checkpoint takes it as an argument.
	Kill bool

	// Tracker names the dirty-page tracker: "auto" (or ""), "uffd-wp",
	// "soft-dirty" or "scan". See package track.
	Tracker string

	// Parent is the snapshot the first checkpoint is incremental on. Empty means
	// the latest snapshot of this very process (same pid and start time), or the
	// snapshot it was restored from; with neither, the first snapshot is full.
	Parent string

	// Metrics, when set, records every checkpoint.
	Metrics *Metrics

	// Established says what to do with the process's connections to outside
	// it: fds.EstablishedClose (the default) records them to be restored
	// reset, fds.EstablishedRefuse fails the checkpoint naming the fd.
	Established fds.Established
}

// Result describes a finished checkpoint.
type Result struct {
	Snapshot pagestore.SnapshotInfo

	// Frozen is how long the process was stopped; Total is the whole checkpoint.
	// A try given up because a signal arrived as the process was being stopped
	// (logged at debug) stopped it too, for as long as reading its state took.
	Frozen time.Duration
	Total  time.Duration

	// Tracker is the tracker that found the pages to copy; Fallback says why a
	// whole-memory scan was needed instead, when it was.
	Tracker  string
	Fallback string

	// DirtyPages are the pages copied while the process was stopped.
	DirtyPages int64
}

// Checkpoint takes one snapshot of process pid into store: a Session of one
// checkpoint. Incremental on opts.Parent or the process's previous snapshot when
// there is one, by scanning (a tracker needs to have been armed at that snapshot).
//
// A tracker's state does not outlive this call (the uffd-wp tracker's userfaultfd
// closes with it), so with Tracker "auto" a single checkpoint scans, and says so in
// the snapshot; Session keeps a tracker armed from one checkpoint to the next.
//
// Cancelling ctx gives the checkpoint up as Session.Checkpoint says.
func Checkpoint(ctx context.Context, store *pagestore.Store, pid int,
	opts CheckpointOptions) (*Result, error) {
	auto := opts.Tracker == "" || opts.Tracker == "auto"
	if auto {
		opts.Tracker = "scan"
	}
	s, err := NewSession(store, pid, opts)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	switch {
	case auto && s.parent == "":
		s.fallback = noParent
	case auto:
		s.fallback = "a single checkpoint keeps no tracker armed between runs of cryo " +
			"(cryo run and cryo watch do): scanned against the parent"
	}
	return s.Checkpoint(ctx, opts.Kill)
}

// noParent is the fallback reason of a snapshot that has no parent: there is
// nothing to be incremental on, so every page holding data is copied (and
// deduplicated against the store).
const noParent = "no parent snapshot to be incremental on: every page copied"

// Session checkpoints one process again and again, each snapshot incremental on
// the one before. It keeps the dirty-page tracker armed between checkpoints, so
// that each copies only what the process wrote since the last.
type Session struct {
	store *pagestore.Store
	pid   int
	opts  CheckpointOptions
	log   *slog.Logger

	// start is the process's start time (stat field 22): with the pid, what
	// identifies it across pid reuse.
	start uint64

	tracker  track.Tracker
	fallback string // why the tracker in use is not the one asked for, if it is not

	// flags remembers the smaps VmFlags of the ranges seen so far: smaps walks the
	// page tables of every range (tens of ms for a GiB) while maps does not, so
	// later checkpoints read maps and smaps only when a range is new.
	flags map[layoutKey]procfs.VmFlags

	// parent is the snapshot the next one is incremental on; armed says the
	// tracker was armed at exactly that snapshot.
	parent string
	armed  bool

	// prevImage is the image of snapshot prevID, the parent once parentThread has
	// read it or a checkpoint has taken it; nil when it could not be read.
	prevImage *image.Image
	prevID    string
}

// pfKthread is the kernel's PF_KTHREAD task flag (include/linux/sched.h).
const pfKthread = 0x00200000

// NewSession prepares to checkpoint pid. It checks nothing of the process yet
// beyond its existence.
func NewSession(store *pagestore.Store, pid int, opts CheckpointOptions) (*Session, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	st, err := procfs.ReadStat(pid)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("checkpoint pid %d: %w", pid, unix.ESRCH)
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint pid %d: %w", pid, err)
	}
	if st.Flags&pfKthread != 0 {
		return nil, fmt.Errorf("checkpoint pid %d: %s is a kernel thread, not a process "+
			"with memory of its own: %w", pid, st.Comm, ErrUnsupported)
	}
	if (st.State == 'Z' || st.State == 'X') && st.NumThreads > 1 {
		return nil, fmt.Errorf("checkpoint pid %d: thread group leader has exited "+
			"(pthread_exit) while other threads run on (%d in all): %w", pid,
			st.NumThreads, ErrUnsupported)
	}
	if st.State == 'Z' || st.State == 'X' {
		return nil, fmt.Errorf("checkpoint pid %d: the process has exited (a zombie): %w",
			pid, unix.ESRCH)
	}
	s := &Session{store: store, pid: pid, opts: opts, log: log, start: st.StartTime}

	kind := opts.Tracker
	if kind == "" {
		kind = "auto"
	}
	s.tracker, err = track.New(kind, pid)
	if err != nil {
		if kind != "auto" {
			return nil, fmt.Errorf("checkpoint pid %d: %w", pid, err)
		}
		s.fallback = err.Error()
		s.tracker, _ = track.New("scan", pid)
	}

	s.parent = opts.Parent
	if s.parent == "" {
		s.parent = findParent(store, pid, s.start)
	} else if s.parent, err = store.Resolve(s.parent); err != nil {
		return nil, fmt.Errorf("checkpoint pid %d: parent: %w", pid, err)
	}
	return s, nil
}

// parentThread returns the thread tid of the parent snapshot's image, or nil
// when there is no parent, its image cannot be read, or it has no such thread.
// It tells what a thread stopped in restart_syscall restarts (restartedCall);
// the image is read (its manifest alone) the first time a checkpoint needs it.
func (s *Session) parentThread(tid int) *image.Thread {
	if s.parent == "" {
		return nil
	}
	if s.prevID != s.parent {
		s.prevImage, s.prevID = nil, s.parent
		b, err := s.store.SnapshotImage(s.parent)
		if err == nil {
			s.prevImage, err = image.Unmarshal(b)
		}
		if err != nil {
			s.log.Warn("parent image unreadable: a call resumed by restart_syscall "+
				"returns EINTR on restore", "pid", s.pid, "parent", s.parent, "err", err)
		}
	}
	if s.prevImage == nil {
		return nil
	}
	for i := range s.prevImage.Threads {
		if s.prevImage.Threads[i].Tid == tid {
			return &s.prevImage.Threads[i]
		}
	}
	return nil
}

// Close releases the tracker.
func (s *Session) Close() error {
	if s.tracker == nil {
		return nil
	}
	return s.tracker.Close()
}

// frozen is what the tracer thread hands back after the copy.
type frozen struct {
	tids    []int // the threads, seized and stopped, leader first
	im      *image.Image
	plan    *copyPlan
	buf     []byte
	dirty   int64
	err     error
	stop    time.Duration // how long the process was stopped
	stopped time.Time     // when it was
}

// Checkpoint takes the next snapshot. The process is stopped while its state and
// the pages written since the previous snapshot (all pages holding data for the
// first) are copied into memory, then runs on (unless kill) while the pages are
// hashed, compressed and stored.
//
// Any failure leaves the process running as it was and the store without a new
// snapshot; the next checkpoint is then a full scan again.
//
// Cancelling ctx gives the checkpoint up at the next point where that is safe:
// between two steps of reading the stopped process (never while a system call
// runs inside it) or between two runs of pages being stored. The process then
// runs on as it was (with kill, it is not killed), the store gets no snapshot,
// and the error wraps context.Cause(ctx). Once the snapshot is committed the
// checkpoint is done, whatever ctx says.
func (s *Session) Checkpoint(ctx context.Context, kill bool) (_ *Result, err error) {
	start := time.Now()
	pid := s.pid
	defer func() {
		if err != nil {
			s.armed = false // the tracker may have re-armed for a snapshot that is not
		}
	}()
	if err := precheckProcState(pid); err != nil { // before the process is touched
		return nil, fmt.Errorf("checkpoint pid %d: %w", pid, err)
	}
	if err := givenUp(ctx, "stopping the process"); err != nil {
		return nil, fmt.Errorf("checkpoint pid %d: %w", pid, err)
	}

	// The ptrace part runs on a goroutine locked to its OS thread, which ends with
	// it (and so lets go of the process).
	ch := make(chan frozen, 1)
	resume := make(chan bool) // true: commit succeeded
	go func() {
		runtime.LockOSThread()
		f := s.freezeAndCopyRetrying(ctx)
		f.stop = time.Since(f.stopped)
		if f.err != nil {
			ch <- f
			return
		}
		if !kill {
			// Resume as soon as the pages are in our memory.
			f.err = detachThreads(f.tids)
			f.stop = time.Since(f.stopped)
			ch <- f
			return
		}
		ch <- f
		// kill: stay frozen until the snapshot is durable; then end it.
		if ok := <-resume; ok {
			killTraced(pid, f.tids)
		} else {
			detachThreads(f.tids)
		}
		resume <- true
	}()
	f := <-ch
	if f.err != nil {
		return nil, fmt.Errorf("checkpoint pid %d: %w", pid, f.err)
	}
	defer freeBuffer(f.buf) // after Commit or Abort, which release the Writer's hold
	finishKill := func(ok bool) {
		if kill {
			if ok {
				// The process is about to die: its peers get a reset.
				if err := fds.AbortConnections(pid, f.im.FDs); err != nil {
					s.log.Warn("connections end without a reset", "pid", pid, "err", err)
				}
			}
			resume <- ok
			<-resume
		}
	}
	s.log.Info("process state copied", "pid", pid, "frozen", f.stop,
		"pages", len(f.buf)/pageSize, "tracker", s.tracker.Name())

	// The process runs again: store the pages.
	info, err := s.write(ctx, f)
	if err != nil {
		finishKill(false)
		return nil, fmt.Errorf("checkpoint pid %d: %w", pid, err)
	}
	total := time.Since(start) // durable; with kill, the reaping that follows is not counted
	finishKill(true)
	s.parent = info.ID
	s.armed = true
	s.prevImage, s.prevID = f.im, info.ID

	res := &Result{Snapshot: info, Frozen: f.stop, Total: total,
		Tracker: s.tracker.Name(), Fallback: s.fallback, DirtyPages: f.dirty}
	if s.opts.Metrics != nil {
		s.opts.Metrics.observeCheckpoint(res)
	}
	s.log.Info("checkpoint done", "pid", pid, "snapshot", info.ID, "parent", info.Parent,
		"frozen", res.Frozen, "total", res.Total, "tracker", res.Tracker,
		"pages", info.Stats.Pages, "copied", f.dirty, "new", info.Stats.NewPages,
		"dedup", info.Stats.DedupPages, "zero", info.Stats.ZeroPages,
		"stored_bytes", info.Stats.StoredBytes)
	return res, nil
}

// givenUp returns, once ctx is done, the error of a checkpoint given up before
// step; nil before.
func givenUp(ctx context.Context, step string) error {
	if ctx.Err() == nil {
		return nil
	}
	return fmt.Errorf("given up before %s (the process runs on as it was; no snapshot "+
		"taken): %w", step, context.Cause(ctx))
}

// write stores the copied pages as a snapshot on the session's parent, unless ctx
// is done first.
func (s *Session) write(ctx context.Context, f frozen) (pagestore.SnapshotInfo, error) {
	w, err := s.store.NewWriter(f.plan.parent)
	if err != nil {
		return pagestore.SnapshotInfo{}, err
	}
	off := 0
	for _, r := range f.plan.copy {
		if err := givenUp(ctx, "storing the pages"); err != nil {
			w.Abort()
			return pagestore.SnapshotInfo{}, err
		}
		n := int(r.pages) * pageSize
		if err := w.AddPages(r.addr, f.buf[off:off+n]); err != nil {
			w.Abort()
			return pagestore.SnapshotInfo{}, fmt.Errorf("store pages at %#x: %w", r.addr, err)
		}
		off += n
	}
	if len(f.plan.carry) > 0 {
		if err := w.Carry(f.plan.carry); err != nil {
			w.Abort()
			return pagestore.SnapshotInfo{}, err
		}
	}
	meta, err := f.im.Marshal()
	if err != nil {
		w.Abort()
		return pagestore.SnapshotInfo{}, err
	}
	labels := map[string]string{
		"pid": fmt.Sprint(s.pid), "comm": f.im.Comm, "starttime": fmt.Sprint(s.start),
		"tracker": s.tracker.Name(),
	}
	switch {
	case s.fallback != "":
		labels["fallback"] = s.fallback
	case f.plan.fallback != "":
		labels["fallback"] = f.plan.fallback
	}
	if err := givenUp(ctx, "committing the snapshot"); err != nil {
		w.Abort()
		return pagestore.SnapshotInfo{}, err
	}
	return w.Commit(pagestore.Meta{Image: meta, Labels: labels})
}

// Tries after a signal race: a signal that arrives for the process while its
// threads are being stopped fails the checkpoint (signalRaceError). A busy Go
// program, whose runtime preempts its threads with SIGURG, loses that race about
// one time in two on a loaded machine; each try is independent, so ten tries
// fail about once in a thousand checkpoints.
const (
	signalTries      = 10
	signalBackoff    = 10 * time.Millisecond // before the second try; doubled each time
	signalBackoffMax = 80 * time.Millisecond // at most
)

// freezeAndCopyRetrying is freezeAndCopy, tried again up to signalTries times in
// all while it fails because a signal arrived while the process was being
// stopped (unless it is in a job-control stop, where the signal stays until it
// is continued). Each failed try has let the process go untouched; it runs a moment,
// taking the signal, before the next. Precondition: as freezeAndCopy.
func (s *Session) freezeAndCopyRetrying(ctx context.Context) frozen {
	backoff := signalBackoff
	for try := 1; ; try++ {
		f := s.freezeAndCopy(ctx)
		var race *signalRaceError
		if !errors.As(f.err, &race) || race.stopped {
			return f
		}
		if try == signalTries {
			f.err = fmt.Errorf("%d tries: %w", try, f.err)
			return f
		}
		s.log.Debug("signal arrived while stopping the process; trying again",
			"pid", s.pid, "try", try, "signal", race.sig, "tid", race.tid,
			"frozen", time.Since(f.stopped), "backoff", backoff)
		select {
		case <-ctx.Done():
			return frozen{err: givenUp(ctx, "stopping the process again"), stopped: f.stopped}
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, signalBackoffMax)
	}
}

// freezeAndCopy seizes and stops the process, reads its state, asks the tracker
// what was written and copies it, and says when it stopped the process. On
// success the process is left stopped and traced by the calling thread; on failure
// it runs on untouched. Once ctx is done it gives up at the next step.
func (s *Session) freezeAndCopy(ctx context.Context) (f frozen) {
	pid := s.pid
	fail := func(err error) frozen { return frozen{err: err, stopped: f.stopped} }

	pre := preallocate(pid)
	held := pre // the page buffer, released here on failure
	var tids []int
	defer func() {
		if f.err != nil {
			freeBuffer(held)
			detachThreads(tids)
		}
	}()

	// A process in a job-control stop (state T) is restored stopped. Once traced,
	// every stop shows as t, so look now.
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return fail(fmt.Errorf("read stat: %w", err))
	}
	jobStopped := st.State == 'T'

	f.stopped = time.Now()
	if tids, err = freezeThreads(pid); err != nil {
		return fail(err)
	}
	tFrozen := time.Now()

	// Each step below that runs system calls in the process puts its registers
	// back before it returns: between the steps, giving up is safe.
	if err := givenUp(ctx, "reading the process"); err != nil {
		return fail(err)
	}
	im, err := s.readImage(tids)
	if err != nil {
		return fail(err)
	}
	im.Stopped = jobStopped
	tRead := time.Now()
	if err := givenUp(ctx, "reading the signal handlers"); err != nil {
		return fail(err)
	}
	if im.Sigactions, err = readSigactions(pid); err != nil {
		return fail(err)
	}
	if err := givenUp(ctx, "reading the process-wide state"); err != nil {
		return fail(err)
	}
	if im.Proc, err = readProcState(pid); err != nil {
		var race *signalRaceError
		if errors.As(err, &race) {
			race.stopped = jobStopped // no try will do better
		}
		return fail(err)
	}
	tImage := time.Now()

	if err := givenUp(ctx, "asking the tracker for written pages"); err != nil {
		return fail(err)
	}
	dirty, fallback := s.collect(im)
	tTrack := time.Now()
	plan, err := s.planCopy(im, dirty, fallback)
	if err != nil {
		return fail(err)
	}
	tPlan := time.Now()
	if err := givenUp(ctx, "copying the pages"); err != nil {
		return fail(err)
	}

	held, err = copyPages(pid, im.VMAs, plan.copy, pre)
	if err != nil {
		return fail(err)
	}
	s.log.Debug("frozen phases", "pid", pid, "stop", tFrozen.Sub(f.stopped),
		"image", tRead.Sub(tFrozen), "state", tImage.Sub(tRead),
		"track", tTrack.Sub(tImage), "plan", tPlan.Sub(tTrack), "copy", time.Since(tPlan),
		"bytes", len(held))

	var pages int64
	for _, r := range plan.copy {
		pages += int64(r.pages)
	}
	return frozen{tids: tids, im: im, plan: plan, buf: held, dirty: pages,
		stopped: f.stopped}
}

// collect asks the tracker which pages were written since the parent snapshot. It
// returns nil and the reason when the whole memory must be copied instead.
func (s *Session) collect(im *image.Image) (*track.Dirty, string) {
	if s.tracker.Name() == "scan" {
		return nil, "" // nothing to ask: every page is copied and deduplicated
	}
	ranges := trackedRanges(im.VMAs)
	b, err := remote.Borrow(s.pid)
	if err == nil {
		var d track.Dirty
		d, err = s.tracker.Collect(b, ranges)
		if rerr := b.Release(); err == nil {
			err = rerr
		}
		if err == nil {
			switch {
			case s.parent == "":
				return &d, noParent
			case !s.armed:
				return &d, "first checkpoint of this tracker: it was not armed at the parent"
			}
			return &d, ""
		}
	}
	// The tracker failed: copy everything now, and from scratch the next time too.
	s.log.Warn("dirty-page tracker failed; scanning the whole memory", "pid", s.pid,
		"tracker", s.tracker.Name(), "err", err)
	s.tracker.Close()
	s.tracker, _ = track.New("scan", s.pid)
	s.fallback = fmt.Sprintf("tracker failed: %v", err)
	return nil, s.fallback
}

// trackedRanges are the ranges a tracker watches: private anonymous memory that
// the process can write.
func trackedRanges(vmas []image.VMA) []track.Range {
	var out []track.Range
	for _, v := range vmas {
		// PROT_NONE reservations (managed runtimes reserve tens of GiB) cannot be
		// written; arming them would cost page tables across all of it.
		if v.Kind == image.VMAAnon && !v.Shared && v.Pages && v.Prot != unix.PROT_NONE {
			out = append(out, track.Range{Start: v.Start, End: v.End})
		}
	}
	return out
}

// readImage records everything but the page contents of the stopped process, whose
// threads are tids.
func (s *Session) readImage(tids []int) (*image.Image, error) {
	pid := s.pid
	im := &image.Image{Pid: pid, Kernel: kernelRelease()}

	comm, err := os.ReadFile(procfs.Path(pid, "comm"))
	if err != nil {
		return nil, fmt.Errorf("read comm: %w", err)
	}
	im.Comm = strings.TrimSpace(string(comm))
	if im.Exe, err = os.Readlink(procfs.Path(pid, "exe")); err != nil {
		return nil, fmt.Errorf("read exe link: %w", err)
	}
	if strings.HasSuffix(im.Exe, procfs.DeletedSuffix) {
		return nil, fmt.Errorf("executable %s: a deleted executable: %w", im.Exe, ErrUnsupported)
	}

	vmas, err := s.readLayout()
	if err != nil {
		return nil, fmt.Errorf("read memory layout: %w", err)
	}
	if im.VMAs, err = imageVMAs(pid, vmas); err != nil {
		return nil, err
	}
	if im.MM, err = readMM(pid, im.VMAs); err != nil {
		return nil, err
	}

	if im.Threads, err = readThreads(pid, tids, s.parentThread); err != nil {
		return nil, err
	}
	// Version 3 only when a thread's FPU state is an FXSAVE area: older cryos
	// restore every other image.
	im.Version = im.MinVersion()

	if im.FDs, err = fds.Dump(pid, fds.DumpOptions{Established: s.opts.Established}); err != nil {
		return nil, fmt.Errorf("%w", err)
	}
	return im, nil
}

// imageVMAs converts the smaps ranges into the image's, refusing those cryo cannot
// rebuild.
func imageVMAs(pid int, vmas []procfs.VMA) ([]image.VMA, error) {
	out := make([]image.VMA, 0, len(vmas))
	for _, m := range vmas {
		v := image.VMA{Start: m.Start, End: m.End, Prot: m.Prot(), Shared: m.Shared(),
			GrowsDown: m.VmFlags.Has(procfs.VmGrowsDown), Name: m.Path}
		where := fmt.Sprintf("range %#x-%#x %s", m.Start, m.End, m.Path)

		if k := specialKind(m.Path); k != "" {
			v.Kind = k
			out = append(out, v)
			continue
		}
		if m.VmFlags.Has(procfs.VmIO) || m.VmFlags.Has(procfs.VmPfnMap) {
			return nil, fmt.Errorf("%s: device memory: %w", where, ErrUnsupported)
		}
		if m.VmFlags.Has(procfs.VmHugetlb) {
			return nil, fmt.Errorf("%s: hugetlbfs memory: %w", where, ErrUnsupported)
		}
		switch {
		case m.Ino == 0:
			// Heap, stack, anonymous mmap.
			v.Kind = image.VMAAnon
			v.Pages = true
		case m.Path == "/dev/zero" && m.Deleted && m.Shared():
			// MAP_SHARED|MAP_ANONYMOUS: shmem the kernel names after /dev/zero.
			v.Kind = image.VMAAnon
			v.Pages = true
		case m.Deleted:
			return nil, fmt.Errorf("%s: mapping of a deleted file: %w", where, ErrUnsupported)
		case strings.HasPrefix(m.Path, "/"):
			v.Kind = image.VMAFile
			v.Pgoff, v.Dev, v.Ino = m.Pgoff, m.Dev, m.Ino
			// Size and change time tell a file rewritten in place (same inode)
			// from the one that was mapped.
			var st unix.Stat_t
			if err := unix.Stat(procfs.Path(pid, "map_files",
				fmt.Sprintf("%x-%x", m.Start, m.End)), &st); err == nil && st.Ino == m.Ino {
				v.Size, v.Ctime = st.Size, st.Ctim.Nano()
			}
			// A private mapping may hold copied-on-write pages of its own.
			v.Pages = !m.Shared()
		default:
			return nil, fmt.Errorf("%s: unknown kind of mapping: %w", where, ErrUnsupported)
		}
		out = append(out, v)
	}
	return out, nil
}

// readMM reads the PR_SET_MM_MAP fields. brk is the end of the [heap] range (or
// start_brk when the process has no heap yet), which is where the kernel keeps it.
func readMM(pid int, vmas []image.VMA) (image.MM, error) {
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return image.MM{}, fmt.Errorf("read stat: %w", err)
	}
	auxv, err := procfs.ReadAuxv(pid)
	if err != nil {
		return image.MM{}, fmt.Errorf("read auxv: %w", err)
	}
	mm := image.MM{
		StartCode: st.StartCode, EndCode: st.EndCode,
		StartData: st.StartData, EndData: st.EndData,
		StartBrk: st.StartBrk, Brk: st.StartBrk, StartStack: st.StartStack,
		ArgStart: st.ArgStart, ArgEnd: st.ArgEnd, EnvStart: st.EnvStart, EnvEnd: st.EnvEnd,
		Auxv: auxv,
	}
	for _, v := range vmas {
		if v.Name == "[heap]" {
			mm.Brk = v.End
		}
	}
	return mm, nil
}

// readThread reads the registers, FPU state, signal mask and rseq registration of
// the stopped thread tid.
func readThread(tid int) (image.Thread, error) {
	th := image.Thread{Tid: tid}
	regs, err := ptrace.GetRegs(tid)
	if err != nil {
		return th, fmt.Errorf("read registers of tid %d: %w", tid, err)
	}
	th.Regs = image.Regs(regs)
	if th.Xstate, th.Fxsave, err = readFPU(tid); err != nil {
		return th, fmt.Errorf("read FPU state of tid %d: %w", tid, err)
	}
	if th.SigMask, err = ptrace.GetSigmask(tid); err != nil {
		return th, fmt.Errorf("read signal mask of tid %d: %w", tid, err)
	}
	rs, err := ptrace.GetRseqConfig(tid)
	if err != nil {
		return th, fmt.Errorf("read rseq registration of tid %d: %w", tid, err)
	}
	if rs.Ptr != 0 {
		th.Rseq = &image.Rseq{Ptr: rs.Ptr, Size: rs.Size, Sig: rs.Sig, Flags: rs.Flags}
	}
	return th, nil
}

// readFPU reads the FPU state of the stopped thread tid: the XSAVE area, or
// where the CPU has no XSAVE (the kernel answers ENODEV for NT_X86_XSTATE;
// qemu's "qemu64" CPU model is one) the FXSAVE area, which holds the x87 and
// SSE registers, all such a CPU has.
func readFPU(tid int) (xstate, fxsave []byte, err error) {
	xstate, err = ptrace.GetXstate(tid)
	if !errors.Is(err, unix.ENODEV) {
		return xstate, nil, err
	}
	if fxsave, err = ptrace.GetFxsave(tid); err != nil {
		return nil, nil, fmt.Errorf("NT_PRFPREG (the CPU has no XSAVE): %w", err)
	}
	return nil, fxsave, nil
}

// seizeHint explains a failed PTRACE_SEIZE when /proc says why.
func seizeHint(pid int, err error) string {
	if !errors.Is(err, unix.EPERM) {
		return ""
	}
	if os.Geteuid() != 0 {
		return " (cryo needs root)"
	}
	tracer, terr := procfs.TracerPid(pid)
	if terr != nil || tracer == 0 {
		return ""
	}
	comm, _ := os.ReadFile(procfs.Path(tracer, "comm"))
	hint := fmt.Sprintf(" (already traced by pid %d, %s", tracer, strings.TrimSpace(string(comm)))
	if strings.HasPrefix(string(comm), "cryo") {
		hint += ": a lazy restore still serving its pages; retry once they are all in"
	}
	return hint + ")"
}

// layoutKey identifies a range across checkpoints, for Session.flags.
type layoutKey struct {
	start, end, ino uint64
	perms, path     string
}

// readLayout reads the process's ranges with their smaps VmFlags, from maps and
// the flags of the previous checkpoint when every range is known, else from smaps.
func (s *Session) readLayout() ([]procfs.VMA, error) {
	key := func(v procfs.VMA) layoutKey {
		return layoutKey{v.Start, v.End, v.Ino, v.Perms, v.Path}
	}
	if s.flags != nil {
		vmas, err := procfs.ReadMaps(s.pid)
		if err != nil {
			return nil, err
		}
		known := true
		for i := range vmas {
			f, ok := s.flags[key(vmas[i])]
			if !ok {
				known = false
				break
			}
			vmas[i].VmFlags = f
		}
		if known {
			return vmas, nil
		}
	}
	vmas, err := procfs.ReadSmaps(s.pid)
	if err != nil {
		return nil, err
	}
	s.flags = make(map[layoutKey]procfs.VmFlags, len(vmas))
	for _, v := range vmas {
		s.flags[key(v)] = v.VmFlags
	}
	return vmas, nil
}
