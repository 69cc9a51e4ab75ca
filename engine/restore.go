package engine

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/fds"
	"github.com/cryo-dev/cryo/engine/image"
	"github.com/cryo-dev/cryo/engine/remote"
	"github.com/cryo-dev/cryo/internal/procfs"
	"github.com/cryo-dev/cryo/internal/ptrace"
	"github.com/cryo-dev/cryo/lazy"
	"github.com/cryo-dev/cryo/pagestore"
)

// RestoreOptions controls Restore.
type RestoreOptions struct {
	// Logger receives progress at phase boundaries; nil is silent.
	Logger *slog.Logger

	// Eager installs every page before the process runs. Otherwise the process runs
	// at once and its pages are served over userfaultfd as it touches them.
	Eager bool

	// NoPrefetch keeps a lazy restore from fetching pages nobody asked for.
	NoPrefetch bool

	// Stdio are the files the restored process gets for descriptors of kind stdio
	// (a terminal or pipe outside the process when it was checkpointed). A nil entry
	// means the restorer's own os.Stdin, os.Stdout or os.Stderr.
	Stdio [3]*os.File

	// LazyMetrics, when set, collects page-server figures.
	LazyMetrics *lazy.Metrics

	// Metrics, when set, records the restore.
	Metrics *Metrics

	// order is the snapshot's recorded working set (see workingset.go), which
	// a lazy restore prefetches first.
	order []uint64
}

// Restored is a process that Restore rebuilt and set running.
type Restored struct {
	// Pid is the restored process's pid, the one it had when checkpointed.
	Pid int

	// Snapshot is the id of the snapshot it was restored from.
	Snapshot string

	// ToRun is the time from the start of Restore until the process ran again.
	ToRun time.Duration

	server *lazy.Server
	cancel context.CancelFunc
	snap   *pagestore.Snapshot
	store  *pagestore.Store
	start  time.Time
	log    *slog.Logger

	// pagesDone is closed when the page server returns, with serveErr set.
	pagesDone chan struct{}
	serveErr  error

	// guarded is set while the process is seized so that it dies with cryo;
	// guardDone is closed when the guard has let go of it, with exit set if the
	// process ended meanwhile (the guard reaped it).
	guarded   bool
	held      []int // the threads the guard holds
	guardDone chan struct{}
	exit      *unix.WaitStatus
	closeOnce sync.Once
}

// Restore rebuilds the process of snapshot ref (an id, a unique id prefix, or
// "latest") from store, and lets it run. The restored process is a child of the
// calling process, with the pid it had; Restore fails with ErrPidInUse when that pid
// belongs to another process.
//
// For a lazy restore the caller must then call Serve, which answers the process's
// page faults until every page is in.
func Restore(ctx context.Context, store *pagestore.Store, ref string, opts RestoreOptions) (
	_ *Restored, err error) {

	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()

	snap, err := store.OpenSnapshot(ref)
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w", ref, err)
	}
	defer func() {
		if err != nil {
			snap.Close()
		}
	}()
	id := snap.Info().ID
	im, err := image.Unmarshal(snap.Image())
	if err != nil {
		return nil, fmt.Errorf("restore snapshot %s: %w", id, err)
	}
	if err := checkImage(im); err != nil {
		return nil, fmt.Errorf("restore snapshot %s: %w", id, err)
	}
	pages, err := loadPages(snap, im)
	if err != nil {
		return nil, fmt.Errorf("restore snapshot %s: %w", id, err)
	}

	if !opts.Eager && !opts.NoPrefetch {
		opts.order = loadWorkingSet(store, id)
	}
	log.Debug("snapshot loaded", "snapshot", id, "pages", len(pages.anonAddrs)+len(pages.direct),
		"working_set", len(opts.order), "duration", time.Since(start))

	for i, f := range opts.Stdio {
		if f == nil {
			opts.Stdio[i] = []*os.File{os.Stdin, os.Stdout, os.Stderr}[i]
		}
	}

	// Every ptrace request must come from the tracer thread: build the process on
	// a goroutine locked to one OS thread, which exits with it. For a lazy
	// restore that goroutine stays on as the process's guard (see guard).
	type result struct {
		r   *Restored
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		r, err := rebuild(ctx, im, snap, pages, opts, log)
		done <- result{r, err}
		if err == nil {
			r.guard()
		}
	}()
	res := <-done
	if res.err != nil {
		return nil, fmt.Errorf("restore snapshot %s: %w", id, res.err)
	}

	r := res.r
	r.Snapshot = id
	r.snap = snap
	r.store = store
	r.start = start
	r.ToRun = time.Since(start)
	if opts.Metrics != nil {
		opts.Metrics.restoreToRun.Observe(r.ToRun.Seconds())
	}

	// Its next checkpoint is incremental on this snapshot.
	if st, err := procfs.ReadStat(r.Pid); err == nil {
		if err := recordLineage(store, r.Pid, st.StartTime, id); err != nil {
			log.Warn("restored process will be checkpointed in full", "pid", r.Pid, "err", err)
		}
	}
	log.Info("process running", "snapshot", id, "pid", r.Pid, "lazy", !opts.Eager,
		"to_run", r.ToRun)
	return r, nil
}

// Serve waits until the page server has installed every page, the process is
// gone, or ctx ends, and returns the server's error. If ctx ends first, the server
// kills the process rather than leave it with pages missing. After an eager restore
// the server has nothing to do and Serve returns at once.
func (r *Restored) Serve(ctx context.Context) error {
	select {
	case <-r.pagesDone:
	case <-ctx.Done():
		r.cancel()
		<-r.pagesDone
	}
	<-r.guardDone // the process must not depend on us when we return
	r.closeOnce.Do(func() {
		st := r.server.Stats()
		r.log.Info("page server done", "pid", r.Pid, "since_start", time.Since(r.start),
			"faults", st.Faults, "fault_pages", st.FaultPages,
			"prefetched", st.PrefetchPages, "err", r.serveErr)
		if r.serveErr == nil && st.Faults > 0 {
			if err := saveWorkingSet(r.store, r.Snapshot, r.server.Touched()); err != nil {
				r.log.Warn("working set not recorded", "snapshot", r.Snapshot, "err", err)
			}
		}
		r.snap.Close()
	})
	return r.serveErr
}

// Stats returns the page server's figures.
func (r *Restored) Stats() lazy.Stats {
	return r.server.Stats()
}

// Wait waits for the restored process to exit and returns its wait status. The
// process is a child of the caller: the caller must not reap it otherwise.
func (r *Restored) Wait() (unix.WaitStatus, error) {
	<-r.guardDone
	if r.exit != nil {
		return *r.exit, nil
	}
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(r.Pid, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("wait for pid %d: %w", r.Pid, err)
		}
		return ws, nil
	}
}

// guard keeps a lazily restored process seized with PTRACE_O_EXITKILL until every
// page is in, so that if cryo dies the kernel kills the process: otherwise its
// missing pages would read as zeros once the userfaultfd closed. Every thread the
// process had when it was restored is seized (a SIGKILL to any kills them all;
// holding each keeps the guard when the leader has exited first). Meanwhile the
// guard passes every signal on and lets group stops happen (PTRACE_LISTEN); when
// the page server is done it interrupts each thread and detaches it.
//
// It runs on the tracer thread, right after rebuild. Fork children of the process
// are not seized: if cryo dies before their pages are in, they run on with zeros.
// Seizing them too (PTRACE_O_TRACEFORK) would lift that.
func (r *Restored) guard() {
	defer close(r.guardDone)
	if !r.guarded {
		return
	}
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, unix.SIGCHLD)
	defer signal.Stop(sigchld)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()

	pagesDone := r.pagesDone
	releasing := false
	for {
		for _, tid := range slices.Clone(r.held) {
			if done := r.guardStops(tid, releasing); done {
				return
			}
		}
		if releasing && len(r.held) == 0 {
			return
		}
		select {
		case <-sigchld:
		case <-tick.C:
		case <-pagesDone:
			pagesDone, releasing = nil, true
			for _, tid := range r.held {
				if err := ptrace.Interrupt(tid); err != nil && !errors.Is(err, unix.ESRCH) {
					r.log.Warn("interrupt restored thread", "pid", r.Pid, "tid", tid,
						"err", err)
				}
			}
		}
	}
}

// guardStops handles the stops thread tid has reported, and says whether the
// guard is done: the process ended (r.exit is set) or was lost. A thread that
// exits or, once releasing, reports the interrupt stop, leaves r.held.
func (r *Restored) guardStops(tid int, releasing bool) (done bool) {
	for {
		var ws unix.WaitStatus
		wpid, err := unix.Wait4(tid, &ws, unix.WALL|unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			if tid != r.Pid {
				r.held = removeTid(r.held, tid) // gone and reaped with its process
				return false
			}
			r.log.Warn("guard lost the restored process", "pid", r.Pid, "err", err)
			return true
		}
		if wpid == 0 {
			return false
		}
		switch {
		case ws.Exited() || ws.Signaled():
			if tid == r.Pid {
				// The leader is reported last, once every thread is gone.
				r.exit = &ws
				return true
			}
			r.held = removeTid(r.held, tid)
			return false
		case !ws.Stopped():
		case ptrace.Event(ws) == ptrace.PTRACE_EVENT_STOP && releasing:
			// Our interrupt, every page being in; in a process that is stopped
			// (SIGSTOP) it reports the group stop, which the thread goes back
			// to once detached.
			if err := ptrace.Detach(tid, 0); err != nil {
				r.log.Warn("detach restored thread", "pid", r.Pid, "tid", tid, "err", err)
			}
			r.held = removeTid(r.held, tid)
			return false
		case ptrace.Event(ws) == ptrace.PTRACE_EVENT_STOP:
			// A group stop (SIGSTOP and the like): stay stopped, keep watching.
			ptrace.Listen(tid)
		default:
			// A signal on its way to the thread: deliver it.
			ptrace.Cont(tid, int(ws.StopSignal()))
		}
	}
}

// seizeGuard seizes every thread of the running process pid with
// PTRACE_O_EXITKILL, for guard, and returns their tids. Threads that exit
// meanwhile are skipped; the leader must be seized.
func seizeGuard(pid int) ([]int, error) {
	tids, err := procfs.ReadTasks(pid)
	if err != nil {
		return nil, fmt.Errorf("list threads: %w", err)
	}
	var held []int
	for _, tid := range tids {
		if err := ptrace.Seize(tid, ptrace.PTRACE_O_EXITKILL); err != nil {
			if tid != pid && threadGone(pid, tid) {
				continue
			}
			detachThreads(held)
			return nil, fmt.Errorf("seize tid %d: %w", tid, err)
		}
		held = append(held, tid)
	}
	return held, nil
}

// pageSet is the page map of a snapshot split the way restore uses it.
type pageSet struct {
	// anonAddrs and anonIDs are the non-zero pages of private anonymous ranges,
	// sorted by address: the page server installs them with UFFDIO_COPY. Two
	// sorted slices rather than a map: a map of a million pages took tens of
	// milliseconds to build before the process could run.
	anonAddrs []uint64
	anonIDs   []pagestore.PageID
	// direct holds the pages written before the process runs through /proc/PID/mem:
	// the copied-on-write pages of private file mappings and shared anonymous pages,
	// which userfaultfd cannot serve in MISSING mode.
	direct []pagestore.PageEntry
}

// loadPages reads the snapshot's page map and checks every page against the layout:
// a page outside the ranges that hold pages means a damaged or forged snapshot.
func loadPages(snap *pagestore.Snapshot, im *image.Image) (*pageSet, error) {
	// Most pages of a large snapshot are private anonymous ones: size for them all
	// at once, since growing two slices of a million entries step by step costs
	// more than the memory the zero and direct pages leave unused.
	n := snap.Info().Stats.Pages
	ps := &pageSet{anonAddrs: make([]uint64, 0, n), anonIDs: make([]pagestore.PageID, 0, n)}
	vmas := im.VMAs
	i := 0
	first := true
	var prev uint64
	for e := range snap.Pages() {
		if !first && e.Addr <= prev {
			return nil, fmt.Errorf("page map: page %#x follows page %#x: not in address order",
				e.Addr, prev)
		}
		first, prev = false, e.Addr
		for i < len(vmas) && vmas[i].End <= e.Addr {
			i++
		}
		if i == len(vmas) || e.Addr < vmas[i].Start || !vmas[i].Pages {
			return nil, fmt.Errorf("page map: page %#x lies outside every range that holds pages",
				e.Addr)
		}
		if e.Zero {
			continue
		}
		v := vmas[i]
		if v.Kind == image.VMAAnon && !v.Shared {
			ps.anonAddrs = append(ps.anonAddrs, e.Addr)
			ps.anonIDs = append(ps.anonIDs, e.ID)
		} else {
			ps.direct = append(ps.direct, e)
		}
	}
	return ps, nil
}

// pageSource serves a snapshot's anonymous pages to the lazy page server.
type pageSource struct {
	snap *pagestore.Snapshot
	ps   *pageSet
}

func (s *pageSource) Pages() []uint64 { return s.ps.anonAddrs }

func (s *pageSource) ReadPage(addr uint64, dst []byte) error {
	i, ok := slices.BinarySearch(s.ps.anonAddrs, addr)
	if !ok {
		return fmt.Errorf("page %#x: not in snapshot %s", addr, s.snap.Info().ID)
	}
	if err := s.snap.ReadPage(s.ps.anonIDs[i], dst); err != nil {
		return fmt.Errorf("page %#x: %w", addr, err)
	}
	return nil
}

// checkImage rejects images this restorer cannot rebuild, before any process exists.
func checkImage(im *image.Image) error {
	if im.Pid <= 1 {
		return fmt.Errorf("image has invalid pid %d", im.Pid)
	}
	if err := checkThreads(im); err != nil {
		return err
	}
	var prev uint64
	for _, v := range im.VMAs {
		if v.Kind == image.VMAVsyscall {
			continue // fixed by the kernel, above user space
		}
		if v.Start%pageSize != 0 || v.End%pageSize != 0 || v.Start >= v.End || v.Start < prev {
			return fmt.Errorf("image has invalid range %#x-%#x", v.Start, v.End)
		}
		if v.End > userSpaceEnd {
			return fmt.Errorf("image has range %#x-%#x beyond user space", v.Start, v.End)
		}
		prev = v.End
	}
	if k := kernelRelease(); im.Kernel != "" && k != im.Kernel {
		return fmt.Errorf("snapshot was taken on kernel %s, this is %s: the vdso and "+
			"register layout may differ", im.Kernel, k)
	}
	return nil
}

// atFDCWD is AT_FDCWD (-100) as a syscall argument.
const atFDCWD = ^uint64(99)

// negErrno is how a system call returns errno e in rax.
func negErrno(e unix.Errno) uint64 { return uint64(-int64(e)) }

const (
	pageSize     = 4096
	userSpaceEnd = 0x7ffffffff000 // TASK_SIZE_MAX of x86-64 with 4-level paging
)

// rebuild does the ptrace part of a restore. It runs on the locked tracer thread.
func rebuild(ctx context.Context, im *image.Image, snap *pagestore.Snapshot, ps *pageSet,
	opts RestoreOptions, log *slog.Logger) (_ *Restored, err error) {

	// 1. The host: this executable, stopped at its execve.
	host, err := startHost(opts.Stdio)
	if err != nil {
		return nil, err
	}
	defer killHost(host)
	// Tens of calls are injected below, each two wake-ups between this thread
	// and the process: keep them on one CPU.
	defer remote.PinNear(host.Pid)()

	hostMaps, err := procfs.ReadMaps(host.Pid)
	if err != nil {
		return nil, fmt.Errorf("read host layout: %w", err)
	}
	tramp, err := freeArea(im.VMAs, hostMaps, remote.TrampolineSize)
	if err != nil {
		return nil, err
	}
	hostTask, err := remote.Bootstrap(host.Pid, tramp)
	if err != nil {
		return nil, err
	}

	// 2. The process itself, cloned from the host with the checkpointed pid. From
	// here on a failure must kill it: it is half built.
	pid, err := cloneWithPid(hostTask, im.Pid)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			unix.Kill(pid, unix.SIGKILL)
			var ws unix.WaitStatus
			unix.Wait4(pid, &ws, unix.WALL, nil)
		}
	}()
	// It traces its clones: the threads it is made to create start traced.
	opt := ptrace.PTRACE_O_TRACESYSGOOD | ptrace.PTRACE_O_EXITKILL | unix.PTRACE_O_TRACECLONE
	if err := unix.PtraceSetOptions(pid, opt); err != nil {
		return nil, fmt.Errorf("set ptrace options of pid %d: %w", pid, err)
	}
	killHost(host)
	task := remote.Attach(pid, tramp, hostTask.Base())
	log.Debug("host cloned", "pid", pid, "trampoline", fmt.Sprintf("%#x", tramp))

	// 3. Memory layout: clear the host's, then map the checkpointed ranges.
	if err := clearLayout(task); err != nil {
		return nil, err
	}
	if err := moveSpecials(task, im.VMAs); err != nil {
		return nil, err
	}
	if err := mapRanges(task, im.VMAs); err != nil {
		return nil, err
	}
	if err := writeDirect(pid, snap, ps.direct); err != nil {
		return nil, err
	}
	if err := setMM(task, im); err != nil {
		return nil, err
	}

	// 4. File descriptors.
	if err := fds.Restore(task, im.FDs, fds.Stdio{}); err != nil {
		return nil, err
	}

	// 5. Anonymous memory goes through a userfaultfd made inside the process.
	server, err := startPageServer(task, im, snap, ps, opts, log)
	if err != nil {
		return nil, err
	}
	serveCtx, cancel := context.WithCancel(ctx)
	r := &Restored{Pid: pid, server: server, cancel: cancel, log: log,
		pagesDone: make(chan struct{}), guardDone: make(chan struct{})}
	if opts.Eager {
		if err := server.Fill(); err != nil {
			cancel()
			server.Close()
			return nil, fmt.Errorf("install pages: %w", err)
		}
	}
	defer func() {
		if err != nil {
			cancel()
			<-r.pagesDone
			// A page the server could not read (a damaged store) kills the process,
			// which the step that was running then reports only as its death:
			// the server's error is the one that names the page.
			if r.serveErr != nil && !errors.Is(r.serveErr, context.Canceled) {
				err = fmt.Errorf("%w (the process died under it: %v)", r.serveErr, err)
			}
		}
	}()
	// From here the process may touch its memory through injected syscalls (rseq
	// writes its area), so faults must be answered already.
	go func() {
		r.serveErr = server.Serve(serveCtx)
		close(r.pagesDone)
	}()

	// 6. Signal handlers, then the threads: the leader is the process itself, the
	// others are cloned from it with their tids. Each gets its rseq area, robust
	// list, clear_child_tid, signal stack, signal mask, FPU state and registers;
	// then they all run, the leader last removing the trampoline.
	if err := restoreSigactions(task, im.Sigactions); err != nil {
		return nil, err
	}
	if err := restoreProcState(task, im, log, false); err != nil {
		return nil, err
	}
	others := make([]*remote.Task, 0, len(im.Threads)-1)
	defer func() {
		if err != nil {
			// The threads die with the process, but each stays a zombie until its
			// tracer reaps it, and the leader's exit waits for them all.
			unix.Kill(pid, unix.SIGKILL)
			for _, t := range others {
				reapThread(t.Pid())
			}
		}
	}()
	for _, th := range im.Threads[1:] {
		t, err := cloneThread(task, th)
		if err != nil {
			return nil, err
		}
		others = append(others, t)
		if err := restoreThread(t, th, false); err != nil {
			return nil, err
		}
		if err := restoreOtherThreadProc(t, im, log); err != nil {
			return nil, err
		}
		regs, err := finalRegs(t, pid, th)
		if err != nil {
			return nil, err
		}
		if err := ptrace.SetRegs(t.Pid(), &regs); err != nil {
			return nil, fmt.Errorf("set registers of tid %d: %w", t.Pid(), err)
		}
	}
	if err := restoreProcState(task, im, log, true); err != nil {
		return nil, err
	}
	leader := im.Threads[0]
	if err := restoreThread(task, leader, true); err != nil {
		return nil, err
	}
	final, err := finalRegs(task, pid, leader)
	if err != nil {
		return nil, err
	}
	if err := task.Finish(&final); err != nil {
		return nil, err
	}
	for _, t := range others {
		if err := ptrace.Detach(t.Pid(), 0); err != nil {
			return nil, fmt.Errorf("let tid %d run: %w", t.Pid(), err)
		}
	}
	log.Debug("threads running", "pid", pid, "threads", len(im.Threads))

	// A process checkpointed in a job-control stop comes back stopped.
	if im.Stopped {
		if err := unix.Kill(pid, unix.SIGSTOP); err != nil {
			return nil, fmt.Errorf("stop restored pid %d as it was: %w", pid, err)
		}
	}

	// 7. A lazily restored process must die with cryo until its pages are in: seize
	// its threads again, this time to guard it. In the instant between detach and
	// seize it runs unguarded.
	if !opts.Eager {
		held, err := seizeGuard(pid)
		switch {
		case err == nil:
			r.guarded, r.held = true, held
		case exiting(pid):
			// It has already finished: nothing left to guard.
		default:
			return nil, fmt.Errorf("seize restored pid %d to guard it: %w", pid, err)
		}
	}
	return r, nil
}

// freeArea finds size bytes free in both the checkpointed layout and the host's, for
// the trampoline.
func freeArea(vmas []image.VMA, host []procfs.VMA, size uint64) (uint64, error) {
	type span struct{ start, end uint64 }
	var used []span
	for _, v := range vmas {
		used = append(used, span{v.Start, v.End})
	}
	for _, m := range host {
		used = append(used, span{m.Start, m.End})
	}
	sort.Slice(used, func(i, j int) bool { return used[i].start < used[j].start })

	// Start above the first 4 GiB, where executables and brk heaps of both usually sit.
	addr := uint64(1 << 32)
	for _, u := range used {
		if u.end <= addr {
			continue
		}
		if u.start >= addr+size {
			break
		}
		addr = (u.end + pageSize - 1) &^ (pageSize - 1)
	}
	if addr+size > userSpaceEnd {
		return 0, errors.New("find room for the trampoline: address space full")
	}
	return addr, nil
}

// clearLayout unmaps everything of the host's image in the new process except the
// trampoline and the kernel's special mappings.
func clearLayout(t *remote.Task) error {
	maps, err := procfs.ReadMaps(t.Pid())
	if err != nil {
		return fmt.Errorf("read layout of pid %d: %w", t.Pid(), err)
	}
	for _, m := range maps {
		if m.Start == t.Trampoline() || specialKind(m.Path) != "" {
			continue
		}
		if _, err := t.Syscall(unix.SYS_MUNMAP, m.Start, m.End-m.Start); err != nil {
			return fmt.Errorf("unmap host range %#x-%#x %s: %w", m.Start, m.End, m.Path, err)
		}
	}
	return nil
}

// specialKind names the kernel's special mappings by their maps name.
func specialKind(name string) image.VMAKind {
	switch name {
	case "[vdso]":
		return image.VMAVdso
	case "[vvar]":
		return image.VMAVvar
	case "[vvar_vclock]":
		return image.VMAVvarVclock
	case "[vsyscall]":
		return image.VMAVsyscall
	}
	return ""
}

// moveSpecials moves [vdso], [vvar] and [vvar_vclock] to their checkpointed
// addresses. They go through a parking area first, since one's destination may be
// where another is now. mremap must run in the process itself: the kernel moves the
// vdso's bookkeeping only for the mm of the caller.
func moveSpecials(t *remote.Task, vmas []image.VMA) error {
	maps, err := procfs.ReadMaps(t.Pid())
	if err != nil {
		return fmt.Errorf("read layout of pid %d: %w", t.Pid(), err)
	}
	want := map[image.VMAKind]image.VMA{}
	for _, v := range vmas {
		switch v.Kind {
		case image.VMAVdso, image.VMAVvar, image.VMAVvarVclock:
			want[v.Kind] = v
		}
	}

	type move struct {
		kind         image.VMAKind
		from, parked uint64
		size         uint64
		to           uint64
	}
	var moves []move
	park := t.Trampoline() + remote.TrampolineSize + 16*pageSize
	for _, m := range maps {
		kind := specialKind(m.Path)
		if kind == "" || kind == image.VMAVsyscall {
			continue
		}
		v, ok := want[kind]
		if !ok {
			// The checkpointed process had none: drop ours.
			if _, err := t.Syscall(unix.SYS_MUNMAP, m.Start, m.End-m.Start); err != nil {
				return fmt.Errorf("unmap %s: %w", m.Path, err)
			}
			continue
		}
		if v.Len() != m.End-m.Start {
			return fmt.Errorf("%s is %d bytes here but %d in the snapshot: another kernel",
				m.Path, m.End-m.Start, v.Len())
		}
		moves = append(moves, move{kind, m.Start, park, v.Len(), v.Start})
		park += v.Len() + pageSize
		delete(want, kind)
	}
	for kind := range want {
		return fmt.Errorf("the snapshot has a %s mapping but this kernel gives none", kind)
	}

	for _, mv := range moves {
		if err := remap(t, mv.from, mv.size, mv.parked); err != nil {
			return fmt.Errorf("park %s: %w", mv.kind, err)
		}
	}
	for _, mv := range moves {
		if err := remap(t, mv.parked, mv.size, mv.to); err != nil {
			return fmt.Errorf("move %s to %#x: %w", mv.kind, mv.to, err)
		}
	}
	return nil
}

func remap(t *remote.Task, from, size, to uint64) error {
	got, err := t.Syscall(unix.SYS_MREMAP, from, size, size,
		unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, to)
	if err != nil {
		return err
	}
	if got != to {
		return fmt.Errorf("mremap landed at %#x", got)
	}
	return nil
}

// mapRanges maps every checkpointed range at its address with its protection. Files
// are opened inside the process by path; a file whose device and inode changed since
// the checkpoint is refused rather than mapped.
func mapRanges(t *remote.Task, vmas []image.VMA) error {
	scratch, _ := t.Scratch()
	openFD := -1
	openPath := ""
	defer func() {
		if openFD >= 0 {
			t.Syscall(unix.SYS_CLOSE, uint64(openFD))
		}
	}()

	for _, v := range vmas {
		switch v.Kind {
		case image.VMAVdso, image.VMAVvar, image.VMAVvarVclock, image.VMAVsyscall:
			continue
		}
		flags := uint64(unix.MAP_FIXED)
		if v.Shared {
			flags |= unix.MAP_SHARED
		} else {
			flags |= unix.MAP_PRIVATE
		}
		if v.GrowsDown {
			flags |= unix.MAP_GROWSDOWN
		}
		fd := ^uint64(0)
		if v.Kind == image.VMAFile {
			if v.Name != openPath {
				if openFD >= 0 {
					t.Syscall(unix.SYS_CLOSE, uint64(openFD))
					openFD = -1
				}
				n, err := openForMap(t, scratch, v)
				if err != nil {
					return err
				}
				openFD, openPath = n, v.Name
			}
			fd = uint64(openFD)
		} else {
			flags |= unix.MAP_ANONYMOUS
		}

		got, err := t.Syscall(unix.SYS_MMAP, v.Start, v.Len(), uint64(v.Prot), flags, fd, v.Pgoff)
		if err != nil {
			return fmt.Errorf("map %#x-%#x %s: %w", v.Start, v.End, v.Name, err)
		}
		if got != v.Start {
			return fmt.Errorf("map %#x-%#x %s: landed at %#x", v.Start, v.End, v.Name, got)
		}
	}
	return nil
}

// openForMap opens the file of a file mapping inside the process, checking that the
// path still names the file that was mapped.
func openForMap(t *remote.Task, scratch uint64, v image.VMA) (int, error) {
	var st unix.Stat_t
	if err := unix.Stat(v.Name, &st); err != nil {
		return -1, fmt.Errorf("map %#x-%#x: file %s: %w", v.Start, v.End, v.Name, err)
	}
	if v.Ino != 0 && (st.Ino != v.Ino || uint64(st.Dev) != v.Dev) {
		return -1, fmt.Errorf("map %#x-%#x: file %s was replaced since the checkpoint "+
			"(inode %d, was %d)", v.Start, v.End, v.Name, st.Ino, v.Ino)
	}
	if v.Ctime != 0 && (st.Size != v.Size || st.Ctim.Nano() != v.Ctime) {
		return -1, fmt.Errorf("map %#x-%#x: file %s was modified since the checkpoint "+
			"(size %d, was %d; changed %s)", v.Start, v.End, v.Name, st.Size, v.Size,
			time.Unix(0, st.Ctim.Nano()).Format(time.RFC3339))
	}
	mode := uint64(unix.O_RDONLY)
	if v.Shared && v.Prot&unix.PROT_WRITE != 0 {
		mode = unix.O_RDWR
	}
	if err := t.WriteMem(scratch, append([]byte(v.Name), 0)); err != nil {
		return -1, err
	}
	fd, err := t.Syscall(unix.SYS_OPENAT, atFDCWD,
		scratch, mode|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("map %#x-%#x: open %s in pid %d: %w", v.Start, v.End, v.Name,
			t.Pid(), err)
	}
	return int(fd), nil
}

// writeDirect writes the pages that userfaultfd cannot serve through /proc/PID/mem,
// which can write read-only private mappings (the kernel forces the write as a
// debugger's would).
func writeDirect(pid int, snap *pagestore.Snapshot, pages []pagestore.PageEntry) error {
	if len(pages) == 0 {
		return nil
	}
	mem, err := os.OpenFile(fmt.Sprintf("/proc/%d/mem", pid), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open memory of pid %d: %w", pid, err)
	}
	defer mem.Close()
	buf := make([]byte, pageSize)
	for _, e := range pages {
		if err := snap.ReadPage(e.ID, buf); err != nil {
			return fmt.Errorf("page %#x: %w", e.Addr, err)
		}
		if _, err := mem.WriteAt(buf, int64(e.Addr)); err != nil {
			return fmt.Errorf("write page %#x of pid %d: %w", e.Addr, pid, err)
		}
	}
	return nil
}

// setMM restores the fields of prctl(PR_SET_MM_MAP): code, data, brk, stack,
// arguments and environment bounds, auxv, and the executable link.
func setMM(t *remote.Task, im *image.Image) error {
	scratch, size := t.Scratch()
	mm := im.MM
	if len(mm.Auxv)*8 > 512 || len(mm.Auxv)%2 != 0 {
		return fmt.Errorf("restore mm: auxv of %d words is malformed", len(mm.Auxv))
	}

	// The executable, opened in the process for exe_fd.
	exePath := scratch + uint64(size) - 4096
	if err := t.WriteMem(exePath, append([]byte(im.Exe), 0)); err != nil {
		return err
	}
	exeFD, err := t.Syscall(unix.SYS_OPENAT, atFDCWD,
		exePath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("restore mm: open executable %s: %w", im.Exe, err)
	}
	defer t.Syscall(unix.SYS_CLOSE, exeFD)

	// struct prctl_mm_map: eleven u64, the auxv pointer, auxv_size, exe_fd.
	le := binary.LittleEndian
	b := make([]byte, 104)
	for i, v := range []uint64{mm.StartCode, mm.EndCode, mm.StartData, mm.EndData,
		mm.StartBrk, mm.Brk, mm.StartStack, mm.ArgStart, mm.ArgEnd, mm.EnvStart, mm.EnvEnd} {
		le.PutUint64(b[i*8:], v)
	}
	auxvAddr := scratch + 512
	le.PutUint64(b[88:], auxvAddr)
	le.PutUint32(b[96:], uint32(len(mm.Auxv)*8))
	le.PutUint32(b[100:], uint32(exeFD))
	aux := make([]byte, len(mm.Auxv)*8)
	for i, v := range mm.Auxv {
		le.PutUint64(aux[i*8:], v)
	}
	if err := t.WriteMem(scratch, b); err != nil {
		return err
	}
	if err := t.WriteMem(auxvAddr, aux); err != nil {
		return err
	}
	if _, err := t.Syscall(unix.SYS_PRCTL, unix.PR_SET_MM, unix.PR_SET_MM_MAP, scratch,
		uint64(len(b))); err != nil {
		return fmt.Errorf("restore mm: prctl PR_SET_MM_MAP: %w", err)
	}

	// The name the process shows in /proc/PID/comm (at most 15 bytes).
	comm := []byte(im.Comm)
	if len(comm) > 15 {
		comm = comm[:15]
	}
	if err := t.WriteMem(scratch, append(comm, 0)); err != nil {
		return err
	}
	if _, err := t.Syscall(unix.SYS_PRCTL, unix.PR_SET_NAME, scratch); err != nil {
		return fmt.Errorf("restore mm: set name %q: %w", im.Comm, err)
	}
	return nil
}

// Results of an interrupted system call that ask for a restart (linux/errno.h,
// kernel-internal).
const (
	errRestartSys          = 512
	errRestartNoIntr       = 513
	errRestartNoHand       = 514
	errRestartRestartBlock = 516
)

// resumeRegs turns the registers of a thread stopped inside a system call into the
// registers that make it resume the way the kernel would have: a restartable call is
// issued again (rip back over the two-byte syscall instruction, rax the call number).
// A call whose restart state lived in the old kernel task (ERESTART_RESTARTBLOCK)
// is issued again when its arguments alone say when it ends (futex
// FUTEX_WAIT_BITSET, whose timeout is absolute), and otherwise returns EINTR: a
// relative futex wait returns as on a spurious wake-up, poll as on a signal. (A
// relative sleep whose caller asked for the time left is resumed exactly by
// finalRegs instead.) A stop in restart_syscall is recorded as a stop in the call
// it restarts where checkpoint could tell which (restartedCall); otherwise it
// returns EINTR here.
func resumeRegs(r image.Regs) unix.PtraceRegs {
	regs := unix.PtraceRegs(r)
	if int64(regs.Orig_rax) >= 0 {
		switch -int64(regs.Rax) {
		case errRestartSys, errRestartNoIntr, errRestartNoHand:
			regs.Rax = regs.Orig_rax
			regs.Rip -= 2
		case errRestartRestartBlock:
			if absoluteRestart(regs) {
				regs.Rax = regs.Orig_rax
				regs.Rip -= 2
			} else {
				regs.Rax = negErrno(unix.EINTR)
			}
		}
	}
	regs.Orig_rax = ^uint64(0)
	return regs
}

// From linux/futex.h: the command of a futex op is what remains without
// FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME.
const (
	futexWaitBitset = 9
	futexCmdMask    = ^uint64(128 | 256)
)

// absoluteRestart says whether a system call that returned ERESTART_RESTARTBLOCK
// can simply be issued again with its own arguments: its timeout is absolute.
func absoluteRestart(regs unix.PtraceRegs) bool {
	return regs.Orig_rax == unix.SYS_FUTEX && regs.Rsi&futexCmdMask == futexWaitBitset
}

// startPageServer creates a userfaultfd inside the process, takes it into this
// process with pidfd_getfd (Linux 5.6+), closes the process's copy, and registers the
// anonymous ranges that hold pages.
func startPageServer(t *remote.Task, im *image.Image, snap *pagestore.Snapshot, ps *pageSet,
	opts RestoreOptions, log *slog.Logger) (*lazy.Server, error) {

	remoteFD, err := t.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("create userfaultfd in pid %d: %w", t.Pid(), err)
	}
	pidfd, err := unix.PidfdOpen(t.Pid(), 0)
	if err != nil {
		return nil, fmt.Errorf("open pidfd of pid %d: %w", t.Pid(), err)
	}
	uffd, err := unix.PidfdGetfd(pidfd, int(remoteFD), 0)
	unix.Close(pidfd)
	if err != nil {
		return nil, fmt.Errorf("take userfaultfd %d of pid %d: %w", remoteFD, t.Pid(), err)
	}
	if _, err := t.Syscall(unix.SYS_CLOSE, remoteFD); err != nil {
		unix.Close(uffd)
		return nil, fmt.Errorf("close userfaultfd %d in pid %d: %w", remoteFD, t.Pid(), err)
	}

	ranges := lazyRanges(im.VMAs, ps)
	pid := t.Pid()
	srv, err := lazy.NewServer(uffd, ranges, &pageSource{snap: snap, ps: ps}, lazy.Options{
		Logger:   log,
		Prefetch: !opts.NoPrefetch,
		Metrics:  opts.LazyMetrics,
		Around:   16,
		Order:    opts.order,
		Pid:      pid,
		OnFatal: func(err error) {
			// Wrong or missing memory must never run: end the process.
			unix.Kill(pid, unix.SIGKILL)
		},
	})
	if err != nil {
		unix.Close(uffd)
		return nil, fmt.Errorf("start page server for pid %d: %w", pid, err)
	}
	if err := srv.Register(); err != nil {
		srv.Close()
		return nil, fmt.Errorf("register memory of pid %d: %w", pid, err)
	}
	return srv, nil
}

// lazyRanges lists the private anonymous ranges that hold at least one page with
// data: the ranges the page server registers. Other ranges fill with zeros as usual.
func lazyRanges(vmas []image.VMA, ps *pageSet) []lazy.Range {
	var out []lazy.Range
	for _, v := range vmas {
		if v.Kind != image.VMAAnon || v.Shared || !v.Pages {
			continue
		}
		i := sort.Search(len(ps.anonAddrs), func(i int) bool { return ps.anonAddrs[i] >= v.Start })
		if i < len(ps.anonAddrs) && ps.anonAddrs[i] < v.End {
			out = append(out, lazy.Range{Start: v.Start, End: v.End})
		}
	}
	return out
}

// exiting reports whether process pid is a zombie or already gone.
func exiting(pid int) bool {
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return true
	}
	return st.State == 'Z' || st.State == 'X'
}
