// Package fds checkpoints and restores the file descriptors of a process.
//
// Dump reads every descriptor of a stopped process from /proc/PID/fd and fdinfo
// and records it as an image.FD; Restore rebuilds them inside a stopped, traced
// target through injected system calls (see Remote).
//
// Supported kinds: regular files, directories and a few stateless character
// devices (reopened by path), pipes whose both ends the process holds (with the
// bytes buffered in them), eventfds, epoll instances with their interest lists,
// timerfds, signalfds, memfds (see special.go), sockets (TCP and UDP over IPv4
// and IPv6, unix stream, datagram and seqpacket; see socket.go and image.Socket),
// and stdio: fds 0, 1 and 2 on a terminal or on a pipe that leads out of the
// process, reconnected on restore to the restorer's own stdio or to a file.
// Descriptors that share an open file description (dup) are recorded as such and
// restored with dup3. Anything else makes Dump fail with an *UnsupportedError.
package fds

import (
	"errors"
	"fmt"
	"log/slog"
)

// ErrUnsupported is matched (errors.Is) by every *UnsupportedError.
var ErrUnsupported = errors.New("not supported")

// ErrFileChanged is matched by the error Restore returns when a path no longer
// names the file that was checkpointed (another device and inode).
var ErrFileChanged = errors.New("file changed since checkpoint")

// UnsupportedError reports a descriptor that cryo cannot checkpoint.
type UnsupportedError struct {
	FD int
	// Kind describes the object: the /proc/PID/fd link and what it is, for
	// example "socket:[12345] (TCP socket)" or "/tmp/x (deleted file)".
	Kind string
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("fd %d: %s: not supported", e.FD, e.Kind)
}

// Is makes errors.Is(err, ErrUnsupported) true.
func (e *UnsupportedError) Is(target error) bool { return target == ErrUnsupported }

// DumpOptions tunes Dump.
type DumpOptions struct {
	// Logger receives a Debug record per descriptor. Nil is silent.
	Logger *slog.Logger

	// Established says what to do with connections to outside the process
	// (EstablishedClose when empty).
	Established Established
}

// Remote runs system calls inside the stopped, traced target of a restore. The
// restorer implements it (engine/remote.Task does). Its methods are called from the
// goroutine that called Restore, which must be on the OS thread that traces the
// target.
type Remote interface {
	// Pid is the target's process id, as cryo sees it.
	Pid() int
	// Syscall runs one system call in the target; an errno result comes back
	// as unix.Errno.
	Syscall(nr uintptr, args ...uint64) (uint64, error)
	// Scratch is a writable buffer in the target (at least 64 KiB) for paths
	// and structs.
	Scratch() (addr uint64, size int)
	// WriteMem writes b into the target at addr (process_vm_writev).
	WriteMem(addr uint64, b []byte) error
	// ReadMem reads len(b) bytes of the target at addr.
	ReadMem(addr uint64, b []byte) error
}

// Stdio says where restored stdio-kind descriptors 0, 1 and 2 go. For each, ""
// keeps what the target already has at that number (the restorer's own stdio,
// which it leaves open in the target before calling Restore); a path is opened
// instead, with the recorded access mode, created if missing and appended to.
type Stdio struct {
	Paths [3]string
}
