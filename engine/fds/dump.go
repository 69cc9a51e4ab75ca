package fds

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
	"github.com/cryo-dev/cryo/internal/procfs"
)

// Dump reads every descriptor of process pid and returns them in ascending order.
//
// Preconditions: the process is stopped (ptrace-seized and interrupted), so that
// its descriptor table and the data in its pipes do not change while Dump reads
// them, and the caller may ptrace it (kcmp and pidfd_getfd need that). Dump does
// not disturb the process: data buffered in its pipes is copied with tee(2) and
// stays where it is.
//
// Kernel features: kcmp (CONFIG_KCMP; KCMP_EPOLL_TFD from 4.13) to find dups and
// check epoll watches, the eventfd-semaphore line of fdinfo (recent kernels;
// 6.18 has it), pidfd_getfd (5.6) to read sockets through a copy, and sock_diag
// (CONFIG_INET_DIAG, CONFIG_UNIX_DIAG) for listen backlogs and unix peers.
// Reading a unix socket's queue sets and puts back its SO_PEEK_OFF.
//
// A descriptor of a kind cryo cannot restore fails the whole dump with an
// *UnsupportedError (errors.Is(err, ErrUnsupported)) naming the lowest such fd;
// a connection to outside the process, under EstablishedRefuse, with an
// *EstablishedError (errors.Is(err, ErrEstablished)).
func Dump(pid int, opts DumpOptions) ([]image.FD, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	switch opts.Established {
	case "", EstablishedClose, EstablishedRefuse:
	default:
		return nil, fmt.Errorf("dump fds of pid %d: unknown policy %q for established "+
			"connections (want %q or %q)", pid, opts.Established, EstablishedClose,
			EstablishedRefuse)
	}
	nums, err := procfs.ReadFDs(pid)
	if err != nil {
		return nil, fmt.Errorf("dump fds of pid %d: %w", pid, err)
	}

	// Read what /proc says of each descriptor.
	ds := make([]*desc, 0, len(nums))
	for _, n := range nums {
		d, err := describe(pid, n)
		if err != nil {
			return nil, fmt.Errorf("dump fds of pid %d: fd %d: %w", pid, n, err)
		}
		ds = append(ds, d)
	}

	// Find descriptors that share an open file description.
	if err := findDups(pid, ds); err != nil {
		return nil, fmt.Errorf("dump fds of pid %d: %w", pid, err)
	}

	// Classify, pair pipe ends, copy buffered pipe data, read sockets and epoll
	// watches.
	if err := classify(pid, ds, opts.Established); err != nil {
		return nil, fmt.Errorf("dump fds of pid %d: %w", pid, err)
	}

	out := make([]image.FD, len(ds))
	for i, d := range ds {
		out[i] = d.fd
		log.Debug("dumped fd", "pid", pid, "fd", d.fd.Num, "kind", d.fd.Kind, "link", d.link)
	}
	return out, nil
}

// desc is what Dump knows of one descriptor while it works.
type desc struct {
	fd   image.FD
	link string // readlink of /proc/PID/fd/N
	info *procfs.Fdinfo
	st   unix.Stat_t // of the open file, through /proc/PID/fd/N
	dup  *desc       // the lower descriptor sharing the open file description
}

func describe(pid, n int) (*desc, error) {
	d := &desc{fd: image.FD{Num: n}}
	p := procfs.Path(pid, "fd", strconv.Itoa(n))
	var err error
	if d.link, err = os.Readlink(p); err != nil {
		return nil, err
	}
	if d.info, err = procfs.ReadFdinfo(pid, n); err != nil {
		return nil, err
	}
	// Stat follows the magic link to the open file itself, whatever its path
	// says now.
	if err := unix.Stat(p, &d.st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", p, err)
	}
	d.fd.Flags = d.info.Flags &^ unix.O_CLOEXEC
	d.fd.Cloexec = d.info.Flags&unix.O_CLOEXEC != 0
	d.fd.Pos = d.info.Pos
	d.fd.Mode = d.st.Mode
	return d, nil
}

// findDups sets dup for every descriptor whose open file description a lower
// one shares. Candidates have the same link and inode; kcmp(KCMP_FILE) decides.
func findDups(pid int, ds []*desc) error {
	type key struct {
		link string
		dev  uint64
		ino  uint64
	}
	firsts := make(map[key][]*desc)
	for _, d := range ds {
		k := key{d.link, d.st.Dev, d.st.Ino}
		for _, f := range firsts[k] {
			same, err := kcmpFile(pid, f.fd.Num, d.fd.Num)
			if err != nil {
				return fmt.Errorf("compare fd %d with fd %d: %w", d.fd.Num, f.fd.Num, err)
			}
			if same {
				d.dup = f
				break
			}
		}
		if d.dup == nil {
			firsts[k] = append(firsts[k], d)
		}
	}
	return nil
}

func classify(pid int, ds []*desc, policy Established) error {
	byNum := make(map[int]*desc, len(ds))
	for _, d := range ds {
		byNum[d.fd.Num] = d
	}

	// Pipes first: whether an end is a pipe, stdio or unsupported depends on
	// the other descriptors.
	if err := classifyPipes(pid, ds); err != nil {
		return err
	}
	if err := classifySockets(pid, ds, policy); err != nil {
		return err
	}

	for _, d := range ds {
		if d.fd.Kind != "" {
			continue
		}
		if d.dup != nil {
			// The first descriptor of the description decides; a dup of
			// something unsupported fails there, at a lower number.
			n := d.dup.fd.Num
			d.fd.DupOf = &n
			d.fd.Kind = d.dup.fd.Kind
			d.fd.Path = d.dup.fd.Path
			d.fd.Pos, d.fd.Mode = 0, 0
			if d.fd.Kind == "" {
				return fmt.Errorf("fd %d: internal error: dup of unclassified fd %d", d.fd.Num, n)
			}
			continue
		}
		if err := classifyOne(pid, d, byNum); err != nil {
			return err
		}
	}
	return nil
}

func classifyOne(pid int, d *desc, byNum map[int]*desc) error {
	fd := &d.fd
	link := d.link
	if ok, err := classifySpecial(pid, d); ok {
		return err
	}
	switch {
	case strings.HasPrefix(link, "/memfd:"):
		return classifyMemfd(pid, d, byNum)

	case strings.HasPrefix(link, "/"):
		return classifyPath(d)

	case link == "anon_inode:[eventfd]":
		if d.info.Eventfd == nil {
			return fmt.Errorf("fd %d: eventfd without eventfd-count in fdinfo", fd.Num)
		}
		if !d.info.Eventfd.HasSemaphore {
			// The kernel does not say whether it is a semaphore.
			return &UnsupportedError{FD: fd.Num,
				Kind: link + " (fdinfo without eventfd-semaphore: kernel too old)"}
		}
		fd.Kind = image.FDEventfd
		fd.Pos, fd.Mode = 0, 0
		fd.Eventfd = &image.Eventfd{
			Count:     d.info.Eventfd.Count,
			Semaphore: d.info.Eventfd.Semaphore,
		}
		return nil

	case link == "anon_inode:[eventpoll]":
		fd.Kind = image.FDEpoll
		fd.Pos, fd.Mode = 0, 0
		fd.Epoll = &image.Epoll{Watches: []image.EpollWatch{}}
		seen := make(map[int]int) // watches per tfd so far: kcmp's toff
		for _, w := range d.info.Epoll {
			toff := seen[w.TFD]
			seen[w.TFD]++
			ok, err := kcmpEpollTfd(pid, w.TFD, fd.Num, w.TFD, toff)
			if err != nil && err != unix.EBADF {
				return fmt.Errorf("fd %d: check watch of fd %d: %w", fd.Num, w.TFD, err)
			}
			if !ok || byNum[w.TFD] == nil {
				return &UnsupportedError{FD: fd.Num, Kind: fmt.Sprintf(
					"%s watching fd %d, which now names another file or is closed",
					link, w.TFD)}
			}
			fd.Epoll.Watches = append(fd.Epoll.Watches, image.EpollWatch{
				FD: w.TFD, Events: w.Events, Data: w.Data,
			})
		}
		return nil

	case strings.HasPrefix(link, "socket:"):
		return &UnsupportedError{FD: fd.Num, Kind: link + describeSocket(pid, fd.Num)}
	}
	return &UnsupportedError{FD: fd.Num, Kind: link}
}

// classifyPath handles descriptors whose link is a path.
func classifyPath(d *desc) error {
	fd := &d.fd
	link := d.link

	if strings.HasSuffix(link, procfs.DeletedSuffix) && d.st.Nlink == 0 {
		return &UnsupportedError{FD: fd.Num, Kind: link + " (deleted file)"}
	}

	// The path must still lead to the open file: restore reopens it.
	var now unix.Stat_t
	if err := unix.Stat(link, &now); err != nil || now.Dev != d.st.Dev || now.Ino != d.st.Ino {
		return &UnsupportedError{FD: fd.Num,
			Kind: link + " (the path no longer names the open file)"}
	}

	fd.Path = link
	switch d.st.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFDIR:
		fd.Kind = image.FDFile
		fd.Dev, fd.Ino = d.st.Dev, d.st.Ino
		return nil
	case unix.S_IFCHR:
		major, minor := unix.Major(d.st.Rdev), unix.Minor(d.st.Rdev)
		if fd.Num <= 2 && isTerminal(major, minor) {
			fd.Kind = image.FDStdio
			fd.Pos = 0
			return nil
		}
		if !reopenable(major, minor) {
			return &UnsupportedError{FD: fd.Num, Kind: fmt.Sprintf(
				"%s (character device %d:%d)", link, major, minor)}
		}
		fd.Kind = image.FDFile
		fd.Rdev = d.st.Rdev
		return nil
	case unix.S_IFIFO:
		return &UnsupportedError{FD: fd.Num, Kind: link + " (named pipe)"}
	case unix.S_IFBLK:
		return &UnsupportedError{FD: fd.Num, Kind: link + " (block device)"}
	}
	return &UnsupportedError{FD: fd.Num, Kind: fmt.Sprintf("%s (mode %#o)", link, d.st.Mode)}
}

// isTerminal reports whether a character device is a terminal: a virtual console
// or serial line (4), /dev/tty or /dev/console (5:0, 5:1), or a pseudo-terminal
// slave (136-143).
func isTerminal(major, minor uint32) bool {
	return major == 4 || (major == 5 && minor <= 1) || (major >= 136 && major <= 143)
}

// reopenable reports whether a character device can be opened again by path and
// behave as the original descriptor did: the terminals, and the memory devices
// null, zero, full, random and urandom. Devices whose open file holds state (the
// pty master /dev/ptmx, tun, fuse, ...) cannot.
func reopenable(major, minor uint32) bool {
	if major == 1 {
		switch minor {
		case 3, 5, 7, 8, 9:
			return true
		}
		return false
	}
	return isTerminal(major, minor)
}

// describeSocket names a socket's family and type, as " (TCP socket)", by taking
// a copy of it with pidfd_getfd (5.6+). It returns "" when it cannot.
func describeSocket(pid, num int) string {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return ""
	}
	defer unix.Close(pidfd)
	s, err := unix.PidfdGetfd(pidfd, num, 0)
	if err != nil {
		return ""
	}
	defer unix.Close(s)
	domain, err1 := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_DOMAIN)
	typ, err2 := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_TYPE)
	proto, err3 := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err1 != nil || err2 != nil || err3 != nil {
		return ""
	}
	return socketKind(domain, typ, proto)
}
