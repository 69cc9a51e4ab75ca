// Package engine checkpoints live processes into a page store and rebuilds them from
// it.
//
// Checkpoint freezes a process with ptrace, records its memory layout, registers and
// file descriptors in an image.Image, copies the pages that hold data into memory,
// lets the process run again, and only then hashes, compresses and stores the pages.
//
// Restore starts a host process stopped at its execve, clones from it a process with
// the checkpointed pid, and turns that process into the checkpointed one by running
// system calls inside it: it maps every range, reopens every file descriptor,
// restores the mm fields, the thread's registers and FPU state, and lets it run.
// Anonymous memory arrives lazily through a userfaultfd served by package lazy, or
// all at once before the process runs.
//
// Scope: single-threaded x86-64 processes, checkpointed and restored on the same
// kernel, with their process-wide kernel state (procstate.go). A process cryo
// cannot rebuild faithfully (threads, sockets, io_uring, deleted files, a seccomp
// filter, namespaces of its own) is refused at checkpoint with an error that names
// what is in the way, and is left running untouched.
package engine

import (
	"bytes"

	"golang.org/x/sys/unix"
)

// kernelRelease is uname -r of the running kernel.
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return string(bytes.TrimRight(u.Release[:], "\x00"))
}
