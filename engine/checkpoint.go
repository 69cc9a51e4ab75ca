package engine

import (
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
	"github.com/cryo-dev/cryo/internal/procfs"
	"github.com/cryo-dev/cryo/internal/ptrace"
	"github.com/cryo-dev/cryo/pagestore"
)

// ErrUnsupported matches errors for process state that cryo cannot checkpoint yet.
var ErrUnsupported = errors.New("not supported")

// CheckpointOptions controls Checkpoint.
type CheckpointOptions struct {
	// Logger receives progress at phase boundaries; nil is silent.
	Logger *slog.Logger

	// Kill ends the process once its snapshot is durable. It stays frozen from the
	// checkpoint until then, so that it cannot act after the moment the snapshot
	// holds.
	Kill bool
}

// Result describes a finished checkpoint.
type Result struct {
	Snapshot pagestore.SnapshotInfo

	// Frozen is how long the process was stopped; Total is the whole checkpoint.
	Frozen time.Duration
	Total  time.Duration
}

// Checkpoint takes a snapshot of process pid into store. The process is stopped
// while its state and the pages that hold data are copied into memory, then runs
// on (unless opts.Kill) while the pages are hashed, compressed and stored.
//
// Any failure leaves the process running as it was and the store without a new
// snapshot.
//
// Precondition: the caller may run ptrace requests: Checkpoint locks its goroutine to
// an OS thread for the time the process is traced.
func Checkpoint(store *pagestore.Store, pid int, opts CheckpointOptions) (*Result, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()

	type frozen struct {
		im      *image.Image
		runs    []pageRun
		buf     []byte
		err     error
		stop    time.Duration // how long the process was stopped
		stopped time.Time     // when it was
	}
	ch := make(chan frozen, 1)
	resume := make(chan bool) // true: commit succeeded
	go func() {
		runtime.LockOSThread()
		f := frozen{}
		f.im, f.runs, f.buf, f.stopped, f.err = freezeAndCopy(pid, log)
		f.stop = time.Since(f.stopped)
		if f.err != nil {
			ch <- f
			return
		}
		if !opts.Kill {
			// Resume as soon as the pages are in our memory.
			f.err = ptrace.Detach(pid, 0)
			f.stop = time.Since(f.stopped)
			ch <- f
			return
		}
		ch <- f
		// --kill: stay frozen until the snapshot is durable; then end it.
		if ok := <-resume; ok {
			killTraced(pid)
		} else {
			ptrace.Detach(pid, 0)
		}
		resume <- true
	}()
	f := <-ch
	if f.err != nil {
		return nil, fmt.Errorf("checkpoint pid %d: %w", pid, f.err)
	}
	defer freeBuffer(f.buf) // after Commit or Abort, which release the Writer's hold
	finishKill := func(ok bool) {
		if opts.Kill {
			resume <- ok
			<-resume
		}
	}
	log.Info("process state copied", "pid", pid, "frozen", f.stop,
		"pages", len(f.buf)/pageSize)

	// The process runs again: store the pages.
	w, err := store.NewWriter("")
	if err != nil {
		finishKill(false)
		return nil, fmt.Errorf("checkpoint pid %d: %w", pid, err)
	}
	off := 0
	for _, r := range f.runs {
		n := int(r.pages) * pageSize
		if err := w.AddPages(r.addr, f.buf[off:off+n]); err != nil {
			w.Abort()
			finishKill(false)
			return nil, fmt.Errorf("checkpoint pid %d: store pages at %#x: %w", pid, r.addr, err)
		}
		off += n
	}
	meta, err := f.im.Marshal()
	if err != nil {
		w.Abort()
		finishKill(false)
		return nil, fmt.Errorf("checkpoint pid %d: %w", pid, err)
	}
	info, err := w.Commit(pagestore.Meta{Image: meta, Labels: map[string]string{
		"pid": fmt.Sprint(pid), "comm": f.im.Comm, "tracker": "full",
	}})
	if err != nil {
		finishKill(false)
		return nil, fmt.Errorf("checkpoint pid %d: %w", pid, err)
	}
	finishKill(true)

	res := &Result{Snapshot: info, Frozen: f.stop, Total: time.Since(start)}
	log.Info("checkpoint done", "pid", pid, "snapshot", info.ID, "frozen", res.Frozen,
		"total", res.Total, "pages", info.Stats.Pages, "new", info.Stats.NewPages,
		"dedup", info.Stats.DedupPages, "zero", info.Stats.ZeroPages,
		"stored_bytes", info.Stats.StoredBytes)
	return res, nil
}

// freezeAndCopy seizes and stops pid, reads its state and copies its pages, and
// returns when it stopped the process. On success the process is left stopped and
// traced by the calling thread; on failure it runs on untouched.
func freezeAndCopy(pid int, log *slog.Logger) (im *image.Image, runs []pageRun, buf []byte,
	stopped time.Time, err error) {

	// Refuse threads before touching the process at all.
	tids, err := procfs.ReadTasks(pid)
	if err != nil {
		return nil, nil, nil, time.Time{}, fmt.Errorf("list threads: %w", err)
	}
	if len(tids) != 1 {
		return nil, nil, nil, time.Time{}, fmt.Errorf("process has %d threads: only single-threaded "+
			"processes can be checkpointed yet: %w", len(tids), ErrUnsupported)
	}

	pre := preallocate(pid)
	held := pre // the page buffer, released here on failure
	defer func() {
		if err != nil {
			freeBuffer(held)
		}
	}()

	t0 := time.Now()
	if err := ptrace.Seize(pid, 0); err != nil {
		return nil, nil, nil, time.Time{}, fmt.Errorf("seize: %w", err)
	}
	if err := ptrace.Interrupt(pid); err != nil {
		ptrace.Detach(pid, 0)
		return nil, nil, nil, time.Time{}, fmt.Errorf("interrupt: %w", err)
	}
	defer func() {
		if err != nil {
			ptrace.Detach(pid, 0)
		}
	}()
	if err := waitInterrupted(pid); err != nil {
		return nil, nil, nil, time.Time{}, err
	}

	// A thread may have been born between the first look and the seize.
	if tids, err = procfs.ReadTasks(pid); err != nil {
		return nil, nil, nil, time.Time{}, fmt.Errorf("list threads: %w", err)
	}
	if len(tids) != 1 {
		return nil, nil, nil, time.Time{}, fmt.Errorf("process has %d threads: only single-threaded "+
			"processes can be checkpointed yet: %w", len(tids), ErrUnsupported)
	}

	im, err = readImage(pid)
	if err != nil {
		return nil, nil, nil, time.Time{}, err
	}
	tImage := time.Now()
	runs, err = planCopy(pid, im.VMAs)
	if err != nil {
		return nil, nil, nil, time.Time{}, err
	}
	tPlan := time.Now()
	held, err = copyPages(pid, im.VMAs, runs, pre)
	if err != nil {
		return nil, nil, nil, time.Time{}, err
	}
	buf = held
	log.Debug("frozen phases", "pid", pid, "stop_and_image", tImage.Sub(t0),
		"pagemap", tPlan.Sub(tImage), "copy", time.Since(tPlan), "bytes", len(buf))
	return im, runs, buf, t0, nil
}

// waitInterrupted waits for the stop PTRACE_INTERRUPT asked for. A signal that
// arrives first gives a signal-delivery stop instead; the process is stopped either
// way, and the signal stays pending for delivery on detach.
func waitInterrupted(pid int) error {
	ws, err := ptrace.Wait(pid)
	if err != nil {
		return err
	}
	if ws.Exited() || ws.Signaled() {
		return fmt.Errorf("process ended while being stopped: %w", unix.ESRCH)
	}
	if !ws.Stopped() {
		return fmt.Errorf("unexpected wait status %#x while stopping", uint32(ws))
	}
	return nil
}

// readImage records everything but the page contents of the stopped process.
func readImage(pid int) (*image.Image, error) {
	im := &image.Image{Version: image.Version, Pid: pid, Kernel: kernelRelease()}

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

	vmas, err := procfs.ReadSmaps(pid)
	if err != nil {
		return nil, fmt.Errorf("read memory layout: %w", err)
	}
	if im.VMAs, err = imageVMAs(vmas); err != nil {
		return nil, err
	}
	if im.MM, err = readMM(pid, im.VMAs); err != nil {
		return nil, err
	}

	th, err := readThread(pid)
	if err != nil {
		return nil, err
	}
	im.Threads = []image.Thread{th}

	if im.FDs, err = fds.Dump(pid, fds.DumpOptions{}); err != nil {
		return nil, fmt.Errorf("%w", err)
	}
	return im, nil
}

// imageVMAs converts the smaps ranges into the image's, refusing those cryo cannot
// rebuild.
func imageVMAs(vmas []procfs.VMA) ([]image.VMA, error) {
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
	if th.Xstate, err = ptrace.GetXstate(tid); err != nil {
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

// killTraced kills a process this thread traces and waits, briefly, until its
// parent has reaped it, so that its pid is free for a restore that follows at once.
// A parent that never reaps keeps the pid taken; that is the parent's to fix.
func killTraced(pid int) {
	unix.Kill(pid, unix.SIGKILL)
	for {
		// The tracer sees the death first; the parent is told once we have.
		ws, err := ptrace.Wait(pid)
		if err != nil || ws.Exited() || ws.Signaled() {
			break
		}
		ptrace.Cont(pid, 0)
	}
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		if _, err := os.Stat(procfs.Path(pid)); errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
}
