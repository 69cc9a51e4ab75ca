package track

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/internal/pagemap"
	"github.com/cryo-dev/cryo/internal/uffd"
)

// uffdWP is the "uffd-wp" tracker (Linux 6.7+). It holds a userfaultfd that was
// created inside the target, so that it belongs to the target's mm: UFFDIO_API,
// UFFDIO_REGISTER and UFFDIO_WRITEPROTECT issued by cryo on it act on the
// target. Registered ranges are write-protected in asynchronous mode
// (UFFD_FEATURE_WP_ASYNC): a write to a protected page only clears the page's
// protection, in the kernel, with no message and no wait. PAGEMAP_SCAN then
// reports the unprotected (written) pages and protects them again in one walk.
//
// Arming allocates the page tables of the whole range (UFFD_FEATURE_WP_UNPOPULATED
// marks the ptes of pages not yet populated): one 4 KiB table per 2 MiB, so a
// vast sparse reservation costs memory in the target.
type uffdWP struct {
	pid int
	fd  int // the userfaultfd, or -1 before the first Collect and after Close

	// armed are the ranges, with their exact bounds, that were registered and
	// write-protected (or re-protected by a scan) at the previous Collect.
	armed map[Range]bool

	vec []pagemap.Region // PAGEMAP_SCAN output buffer, reused
}

func newUffdWP(pid int) *uffdWP {
	return &uffdWP{pid: pid, fd: -1, vec: make([]pagemap.Region, 1024)}
}

// Name is "uffd-wp".
func (t *uffdWP) Name() string { return KindUffdWP }

// Reset forgets what was armed; the ranges stay registered and are re-armed
// whole at the next Collect.
func (t *uffdWP) Reset() { t.armed = nil }

// Close closes the userfaultfd. It is the only reference to the file, so the
// kernel unregisters every range of the target (taking the target's mmap lock
// for writing once) and the target runs on with plain ptes.
func (t *uffdWP) Close() error {
	if t.fd < 0 {
		return nil
	}
	fd := t.fd
	t.fd, t.armed = -1, nil
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("close uffd-wp tracker of pid %d: %w", t.pid, err)
	}
	return nil
}

// Collect reports the pages written in the ranges armed at the previous Collect
// with exactly the same bounds, re-protecting them in the same walk, and
// registers and arms every other range, which it reports untracked. A range the
// kernel refuses to register (EBUSY: another userfaultfd, such as a lazy
// restore's, owns it; EINVAL: a kind of mapping userfaultfd cannot take) is
// reported untracked, in Dirty.Refused, without an error.
//
// A range armed earlier that was unmapped and mapped again with the same bounds
// lost its registration: the scan fails with EPERM (PM_SCAN_CHECK_WPASYNC) and
// the range is reported untracked and armed again.
//
// Preconditions: p is stopped and seized, and Collect runs on the tracer thread.
func (t *uffdWP) Collect(p Process, ranges []Range) (Dirty, error) {
	if p.Pid() != t.pid {
		return Dirty{}, fmt.Errorf("collect uffd-wp pid %d: given process %d", t.pid, p.Pid())
	}
	if t.fd >= 0 && !t.alive() {
		// The target called execve: its new mm needs a new userfaultfd.
		unix.Close(t.fd)
		t.fd = -1
	}
	if t.fd < 0 {
		if err := t.open(p); err != nil {
			return Dirty{}, fmt.Errorf("collect uffd-wp pid %d: %w", t.pid, err)
		}
		t.armed = nil
	}
	pm, err := pagemap.Open(t.pid)
	if err != nil {
		return Dirty{}, fmt.Errorf("collect uffd-wp pid %d: %w", t.pid, err)
	}
	defer pm.Close()

	var d Dirty
	next := make(map[Range]bool, len(ranges))
	for _, r := range ranges {
		if t.armed[r] {
			pages, err := t.written(pm, r)
			if err == nil {
				d.Tracked = append(d.Tracked, r)
				d.Pages = append(d.Pages, pages...)
				next[r] = true
				continue
			}
			if !errors.Is(err, unix.EPERM) {
				return Dirty{}, fmt.Errorf("collect uffd-wp pid %d: %w", t.pid, err)
			}
			// Not registered any more: the range was mapped anew.
		}
		if err := t.arm(r); err != nil {
			if d.Refused == nil {
				d.Refused = make(map[Range]error)
			}
			d.Refused[r] = err
			continue
		}
		next[r] = true
	}
	t.armed = next
	return d, nil
}

// written scans r for pages written since they were protected, protects them
// again, and returns their addresses.
func (t *uffdWP) written(pm *os.File, r Range) ([]uint64, error) {
	regions, _, err := pagemap.Scan(int(pm.Fd()), r.Start, r.End,
		pagemap.PM_SCAN_WP_MATCHING|pagemap.PM_SCAN_CHECK_WPASYNC,
		pagemap.PAGE_IS_WRITTEN, 0, 0, pagemap.PAGE_IS_WRITTEN, t.vec)
	if err != nil {
		return nil, fmt.Errorf("scan %#x-%#x: %w", r.Start, r.End, err)
	}
	var pages []uint64
	for _, g := range regions {
		for a := g.Start; a < g.End; a += pagemap.PageSize {
			pages = append(pages, a)
		}
	}
	return pages, nil
}

// alive reports whether the userfaultfd's mm still exists. After an execve of
// the target it does not, and UFFDIO_REGISTER fails with an ENOMEM that cannot
// be told from a range not mapped; UFFDIO_WRITEPROTECT says ESRCH. The probe
// removes protection (mode 0) from the last user page, which is almost never
// mapped; if it were, and tracked, the page would only be reported once more.
func (t *uffdWP) alive() bool {
	const lastPage = 1<<47 - 2*pagemap.PageSize
	err := uffd.WriteProtect(t.fd, lastPage, pagemap.PageSize, 0)
	return !errors.Is(err, unix.ESRCH)
}

// arm registers r for write-protection and protects all of it. A registration
// by this userfaultfd that is still in place (the range was armed before with
// other bounds) is accepted again by the kernel.
func (t *uffdWP) arm(r Range) error {
	if _, err := uffd.Register(t.fd, r.Start, r.End-r.Start,
		uffd.UFFDIO_REGISTER_MODE_WP); err != nil {
		return err
	}
	return uffd.WriteProtect(t.fd, r.Start, r.End-r.Start, uffd.UFFDIO_WRITEPROTECT_MODE_WP)
}

// open creates a userfaultfd inside the target with an injected userfaultfd(2),
// takes it with pidfd_getfd(2) (Linux 5.6), closes the target's copy and
// enables asynchronous write-protection on it.
//
// UFFD_USER_MODE_ONLY (5.11) lets a target without CAP_SYS_PTRACE create it when
// vm.unprivileged_userfaultfd is 0; asynchronous write faults are resolved by
// the kernel whether they come from user or kernel mode, so nothing is lost.
func (t *uffdWP) open(p Process) error {
	flags := uint64(unix.O_CLOEXEC | unix.O_NONBLOCK | uffd.UFFD_USER_MODE_ONLY)
	remote, err := p.Syscall(unix.SYS_USERFAULTFD, flags)
	if err != nil {
		return fmt.Errorf("create userfaultfd in pid %d: %w", t.pid, err)
	}
	fd, err := takeFD(t.pid, int(remote))
	if _, cerr := p.Syscall(unix.SYS_CLOSE, remote); cerr != nil && err == nil {
		unix.Close(fd)
		err = fmt.Errorf("close fd %d in pid %d: %w", remote, t.pid, cerr)
	}
	if err != nil {
		return err
	}

	have, _, err := uffd.API(fd, uffdWPFeatures)
	if err == nil {
		err = uffd.Missing(have, uffdWPFeatures)
	}
	if err != nil {
		unix.Close(fd)
		return fmt.Errorf("enable write-protect on userfaultfd of pid %d: %w", t.pid, err)
	}
	t.fd = fd
	return nil
}

// takeFD copies descriptor fd of process pid into this process with pidfd_getfd
// (Linux 5.6). The copy is close-on-exec.
func takeFD(pid, fd int) (int, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_open pid %d: %w", pid, err)
	}
	defer unix.Close(pidfd)
	got, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_getfd fd %d of pid %d: %w", fd, pid, err)
	}
	return got, nil
}
