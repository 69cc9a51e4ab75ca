package fds

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
	"github.com/cryo-dev/cryo/internal/procfs"
)

// classifyPipes sets the kind of every pipe descriptor. A pipe whose read end and
// write end the process both holds, each through one open file description, is a
// pipe; its read end records the buffered bytes. An end at 0, 1 or 2 of a pipe
// whose other end is elsewhere is stdio. Any other pipe is unsupported.
func classifyPipes(pid int, ds []*desc) error {
	type ends struct{ read, write []*desc } // first descriptors only, not dups
	pipes := make(map[uint64]*ends)
	var order []uint64
	for _, d := range ds {
		if !strings.HasPrefix(d.link, "pipe:") || d.dup != nil {
			continue
		}
		e := pipes[d.st.Ino]
		if e == nil {
			e = &ends{}
			pipes[d.st.Ino] = e
			order = append(order, d.st.Ino)
		}
		switch d.fd.Flags & unix.O_ACCMODE {
		case unix.O_RDONLY:
			e.read = append(e.read, d)
		case unix.O_WRONLY:
			e.write = append(e.write, d)
		default:
			return &UnsupportedError{FD: d.fd.Num, Kind: d.link + " (opened for reading and writing)"}
		}
	}

	for _, ino := range order {
		e := pipes[ino]
		if len(e.read) > 0 && len(e.write) > 0 {
			if len(e.read) > 1 || len(e.write) > 1 {
				d := e.write[len(e.write)-1]
				if len(e.read) > 1 {
					d = e.read[1]
				}
				return &UnsupportedError{FD: d.fd.Num,
					Kind: d.link + " (an end opened more than once, not by dup)"}
			}
			r, w := e.read[0], e.write[0]
			size, data, err := peekPipe(pid, r.fd.Num)
			if err != nil {
				return fmt.Errorf("fd %d: copy pipe data: %w", r.fd.Num, err)
			}
			for _, d := range []*desc{r, w} {
				d.fd.Kind = image.FDPipe
				d.fd.Pos, d.fd.Mode = 0, 0
				d.fd.Pipe = &image.Pipe{ID: ino, ReadEnd: d == r, Size: size}
			}
			r.fd.Pipe.Buffered = data
			continue
		}
		for _, d := range append(e.read, e.write...) {
			if d.fd.Num > 2 {
				return &UnsupportedError{FD: d.fd.Num,
					Kind: d.link + " (its other end is outside the process)"}
			}
			d.fd.Kind = image.FDStdio
			d.fd.Path = d.link
			d.fd.Pos, d.fd.Mode = 0, 0
		}
	}
	return nil
}

// peekPipe returns the capacity of the pipe at fd num of process pid and a copy
// of the bytes buffered in it, leaving them in the pipe. It opens the pipe through
// /proc/PID/fd/N (which opens the same pipe, as another reader) and tee(2)s its
// buffers into a private pipe of the same capacity, then reads that.
func peekPipe(pid, num int) (size int, data []byte, err error) {
	p := procfs.Path(pid, "fd", strconv.Itoa(num))
	f, err := unix.Open(p, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, nil, &os.PathError{Op: "open", Path: p, Err: err}
	}
	defer unix.Close(f)

	size, err = unix.FcntlInt(uintptr(f), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		return 0, nil, fmt.Errorf("F_GETPIPE_SZ: %w", err)
	}
	n, err := unix.IoctlGetInt(f, unix.TIOCINQ) // FIONREAD
	if err != nil {
		return 0, nil, fmt.Errorf("FIONREAD: %w", err)
	}
	if n == 0 {
		return size, nil, nil
	}

	var priv [2]int
	if err := unix.Pipe2(priv[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return 0, nil, fmt.Errorf("pipe2: %w", err)
	}
	defer unix.Close(priv[0])
	defer unix.Close(priv[1])
	// tee duplicates buffers, one slot each: the copy needs as many slots as
	// the original has.
	if _, err := unix.FcntlInt(uintptr(priv[1]), unix.F_SETPIPE_SZ, size); err != nil {
		return 0, nil, fmt.Errorf("F_SETPIPE_SZ %d: %w", size, err)
	}
	var got int64
	for {
		got, err = unix.Tee(f, priv[1], n, unix.SPLICE_F_NONBLOCK)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return 0, nil, fmt.Errorf("tee: %w", err)
	}
	if got != int64(n) {
		return 0, nil, fmt.Errorf("tee copied %d of %d buffered bytes", got, n)
	}

	data = make([]byte, n)
	for off := 0; off < n; {
		m, err := unix.Read(priv[0], data[off:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, nil, fmt.Errorf("read copy: %w", err)
		}
		if m == 0 {
			return 0, nil, fmt.Errorf("read copy: %d of %d bytes", off, n)
		}
		off += m
	}
	return size, data, nil
}
