// Package image defines the process image: everything cryo records about a process
// besides the contents of its memory pages, which live in the page store.
//
// An Image is encoded as JSON and stored with the snapshot's manifest. Its fields are
// what the restorer needs to rebuild the process: the memory layout, the thread
// state and the file descriptors. Nothing in it is trusted on restore without
// checks: the restorer validates addresses, sizes and paths before it acts on them.
package image

import (
	"encoding/json"
	"fmt"
)

// Version is the newest version of the Image encoding, the one this cryo reads and
// writes. A snapshot whose image has a newer version is refused.
//
// Version 2 holds every thread of the process, each with its robust futex list,
// clear_child_tid and alternate signal stack. A version 1 image has exactly one
// thread and none of these; it still restores, the thread without them, as
// version 1 restored it.
//
// Version 2 also added Proc and the timerfd, signalfd, memfd and socket kinds of
// FD; a version 1 image decodes with Proc nil.
//
// Version 3 adds Thread.Fxsave, the FPU state of a thread on a CPU without
// XSAVE. Checkpoint writes MinVersion, so only an image that holds one is
// version 3: a cryo that reads version 2 and knows only Xstate refuses it
// rather than restore its threads without their FPU state, and still restores
// every other image.
const Version = 3

// MinVersion is the lowest version that holds everything im holds: 3 when a
// thread's FPU state is in Fxsave, else 2 (version 1 cannot be written: it has
// no process-wide state).
func (im *Image) MinVersion() int {
	for _, th := range im.Threads {
		if len(th.Fxsave) > 0 {
			return 3
		}
	}
	return 2
}

// Image describes one checkpointed process.
type Image struct {
	Version int    `json:"version"`
	Pid     int    `json:"pid"`
	Comm    string `json:"comm"`
	Exe     string `json:"exe"`

	// Kernel is the release of the kernel the process ran on (uname -r). The vdso
	// and the xsave layout must match on restore.
	Kernel string `json:"kernel"`

	// Stopped records a process stopped by job control (SIGSTOP, SIGTSTP, ...)
	// when checkpointed: it is restored stopped.
	Stopped bool `json:"stopped,omitempty"`

	MM MM `json:"mm"`

	// Sigactions are the handlers of the signals whose disposition is not the
	// default.
	Sigactions []Sigaction `json:"sigactions,omitempty"`

	VMAs []VMA `json:"vmas"`

	// Threads are the threads of the process, the thread group leader (Tid ==
	// Pid) first, the others in ascending tid order.
	Threads []Thread `json:"threads"`

	FDs []FD `json:"fds"`

	// Proc is the process-wide kernel state (version 2 on; nil before).
	Proc *Proc `json:"proc,omitempty"`
}

// MM holds the fields that prctl(PR_SET_MM_MAP) restores, read from /proc/PID/stat
// and /proc/PID/auxv.
type MM struct {
	StartCode  uint64   `json:"start_code"`
	EndCode    uint64   `json:"end_code"`
	StartData  uint64   `json:"start_data"`
	EndData    uint64   `json:"end_data"`
	StartBrk   uint64   `json:"start_brk"`
	Brk        uint64   `json:"brk"`
	StartStack uint64   `json:"start_stack"`
	ArgStart   uint64   `json:"arg_start"`
	ArgEnd     uint64   `json:"arg_end"`
	EnvStart   uint64   `json:"env_start"`
	EnvEnd     uint64   `json:"env_end"`
	Auxv       []uint64 `json:"auxv"`
}

// VMAKind says how a memory range is rebuilt.
type VMAKind string

// The kinds of VMA.
const (
	VMAAnon       VMAKind = "anon"        // private or shared anonymous memory (heap, stack, mmap)
	VMAFile       VMAKind = "file"        // a mapping of a file, reopened by path
	VMAVdso       VMAKind = "vdso"        // [vdso], moved to its address
	VMAVvar       VMAKind = "vvar"        // [vvar], moved to its address
	VMAVvarVclock VMAKind = "vvar_vclock" // [vvar_vclock], moved to its address
	VMAVsyscall   VMAKind = "vsyscall"    // [vsyscall], fixed by the kernel; left alone
)

// VMA is one line of /proc/PID/maps with what restore needs to map it again.
type VMA struct {
	Start uint64  `json:"start"`
	End   uint64  `json:"end"`
	Kind  VMAKind `json:"kind"`

	// Prot is PROT_READ|PROT_WRITE|PROT_EXEC as mmap takes it.
	Prot int `json:"prot"`

	// Shared is true for MAP_SHARED mappings.
	Shared bool `json:"shared,omitempty"`

	// GrowsDown marks the main stack (VM_GROWSDOWN).
	GrowsDown bool `json:"grows_down,omitempty"`

	// Name is the pathname column of maps: a file path, or [heap], [stack] and
	// the like for anonymous ranges.
	Name string `json:"name,omitempty"`

	// For file mappings: offset in the file, and the device and inode the file had,
	// so that restore can tell when the path now names another file.
	Pgoff uint64 `json:"pgoff,omitempty"`
	Dev   uint64 `json:"dev,omitempty"`
	Ino   uint64 `json:"ino,omitempty"`

	// Size and Ctime (status change time, ns) of the file when checkpointed:
	// a file rewritten in place keeps its inode but not these.
	Size  int64 `json:"size,omitempty"`
	Ctime int64 `json:"ctime,omitempty"`

	// Pages records whether the range has pages in the page store: anonymous
	// memory, and the copied-on-write pages of private file mappings.
	Pages bool `json:"pages,omitempty"`
}

// Len is the size of the range in bytes.
func (v VMA) Len() uint64 { return v.End - v.Start }

// Thread is the CPU and signal state of one thread.
type Thread struct {
	Tid int `json:"tid"`

	// Regs is the x86-64 user_regs_struct, 27 words in kernel order, but for
	// Orig_rax of a thread stopped in restart_syscall whose restarted call cryo
	// knew (from the previous snapshot): that call's number, as if it were
	// stopped in the call itself, which is how it is to be resumed.
	Regs Regs `json:"regs"`

	// Xstate is the NT_X86_XSTATE register set (the XSAVE area) as
	// PTRACE_GETREGSET returned it. It is empty on a CPU without XSAVE, where
	// Fxsave holds the FPU state; restoring it there fails.
	Xstate []byte `json:"xstate"`

	// Fxsave is the NT_PRFPREG register set, the x87 and SSE state in the
	// 512-byte FXSAVE layout, taken instead of Xstate where the CPU has no XSAVE
	// (such as qemu's "qemu64" model); empty otherwise. It restores on any
	// x86-64 CPU; on one with XSAVE, the extended state (AVX and later) stays
	// as restore found it, unused by a program that chose its code on a CPU
	// without it. Version 3.
	Fxsave []byte `json:"fxsave,omitempty"`

	// SigMask is the blocked signal mask.
	SigMask uint64 `json:"sigmask"`

	// Rseq is the thread's restartable-sequences registration, if any.
	Rseq *Rseq `json:"rseq,omitempty"`

	// RobustList and RobustListLen are the head of the thread's robust futex
	// list and the size of that head, as get_robust_list(2) reports them; zero
	// when the thread registered none. Version 2.
	RobustList    uint64 `json:"robust_list,omitempty"`
	RobustListLen uint64 `json:"robust_list_len,omitempty"`

	// ClearChildTid is the address the kernel clears and futex-wakes when the
	// thread exits (set_tid_address(2), CLONE_CHILD_CLEARTID), zero for none, as
	// prctl(PR_GET_TID_ADDRESS) reports it. Version 2.
	ClearChildTid uint64 `json:"clear_child_tid,omitempty"`

	// AltStack is the thread's alternate signal stack (sigaltstack(2)), nil when
	// it has none. Version 2.
	AltStack *AltStack `json:"altstack,omitempty"`

	// Sleep is set when the thread was stopped in a relative nanosleep or
	// clock_nanosleep that the kernel would have resumed from its restart block.
	// Version 2.
	Sleep *Sleep `json:"sleep,omitempty"`
}

// Sleep is what restore needs to resume an interrupted relative sleep: the time
// it had left when it was stopped (which the kernel wrote where the caller asked
// for it) and when that was.
type Sleep struct {
	Clock int32  `json:"clock"` // the clockid the sleep ran on
	Rmtp  uint64 `json:"rmtp"`  // where the caller wants the time left, in its memory

	// Remaining is the time the sleep had left, in ns, at Taken (Unix time in
	// ns, the realtime clock).
	Remaining int64 `json:"remaining"`
	Taken     int64 `json:"taken"`
}

// AltStack is a stack_t of x86-64 as sigaltstack(2) reports it.
type AltStack struct {
	Sp    uint64 `json:"sp"`
	Flags int32  `json:"flags"` // SS_AUTODISARM and the like; SS_ONSTACK is not kept
	Size  uint64 `json:"size"`
}

// Regs is struct user_regs_struct of x86-64 (asm/user.h), field for field, with the
// field names of unix.PtraceRegs so that the two convert into each other.
type Regs struct {
	R15, R14, R13, R12, Rbp, Rbx, R11, R10     uint64
	R9, R8, Rax, Rcx, Rdx, Rsi, Rdi, Orig_rax  uint64
	Rip, Cs, Eflags, Rsp, Ss, Fs_base, Gs_base uint64
	Ds, Es, Fs, Gs                             uint64
}

// Sigaction is one signal's disposition as rt_sigaction(2) reports it on x86-64.
type Sigaction struct {
	Sig      int    `json:"sig"`
	Handler  uint64 `json:"handler"` // an address, or SIG_IGN (1)
	Flags    uint64 `json:"flags"`
	Restorer uint64 `json:"restorer"`
	Mask     uint64 `json:"mask"`
}

// Rseq is what PTRACE_GET_RSEQ_CONFIGURATION reports (kernel 5.13+).
type Rseq struct {
	Ptr   uint64 `json:"ptr"`
	Size  uint32 `json:"size"`
	Sig   uint32 `json:"sig"`
	Flags uint32 `json:"flags"`
}

// FDKind says what kind of object a file descriptor refers to.
type FDKind string

// The kinds of file descriptor cryo rebuilds.
const (
	FDFile    FDKind = "file"    // a regular file, directory or character device, reopened by path
	FDPipe    FDKind = "pipe"    // one end of a pipe whose both ends the process holds
	FDEventfd FDKind = "eventfd" // an eventfd with its counter
	FDEpoll   FDKind = "epoll"   // an epoll instance with its interest list
	FDStdio   FDKind = "stdio"   // a terminal or outside pipe, reconnected to the restorer's stdio
)

// FD is one open file descriptor.
type FD struct {
	Num  int    `json:"num"`
	Kind FDKind `json:"kind"`

	// Flags are the open file status flags as fdinfo shows them (O_ACCMODE,
	// O_APPEND, O_NONBLOCK, ...), without O_CLOEXEC.
	Flags int `json:"flags"`

	// Cloexec is the descriptor flag FD_CLOEXEC.
	Cloexec bool `json:"cloexec,omitempty"`

	// File: path, position, and identity of the file when checkpointed.
	Path string `json:"path,omitempty"`
	Pos  int64  `json:"pos,omitempty"`
	Dev  uint64 `json:"dev,omitempty"`
	Ino  uint64 `json:"ino,omitempty"`
	Mode uint32 `json:"mode,omitempty"`

	// Rdev is the device number a character device names (major:minor as
	// unix.Mkdev builds it). For devices it is checked on restore instead of
	// Dev and Ino, which change when /dev is recreated at boot.
	Rdev uint64 `json:"rdev,omitempty"`

	// DupOf is set when this descriptor shares its open file description (and
	// so its offset and status flags) with the lower-numbered descriptor
	// *DupOf, as dup, dup2 and fork leave them. Restore makes it with dup3 from
	// that number. Such an FD carries Num, Kind, Flags, Cloexec and Path; its
	// kind-specific state lives in the FD it duplicates.
	DupOf *int `json:"dup_of,omitempty"`

	Pipe    *Pipe    `json:"pipe,omitempty"`
	Eventfd *Eventfd `json:"eventfd,omitempty"`
	Epoll   *Epoll   `json:"epoll,omitempty"`

	Timerfd  *Timerfd  `json:"timerfd,omitempty"`
	Signalfd *Signalfd `json:"signalfd,omitempty"`
	Memfd    *Memfd    `json:"memfd,omitempty"`
	Socket   *Socket   `json:"socket,omitempty"`
}

// Pipe describes one end of a pipe. The two ends share an ID (the pipe inode);
// the end that reads carries the bytes that were buffered and unread.
type Pipe struct {
	ID       uint64 `json:"id"`
	ReadEnd  bool   `json:"read_end"`
	Size     int    `json:"size,omitempty"` // F_GETPIPE_SZ
	Buffered []byte `json:"buffered,omitempty"`
}

// Eventfd is the state of an eventfd.
type Eventfd struct {
	Count     uint64 `json:"count"`
	Semaphore bool   `json:"semaphore,omitempty"`
}

// Epoll is an epoll instance and its interest list.
type Epoll struct {
	Watches []EpollWatch `json:"watches"`
}

// EpollWatch is one entry of an epoll interest list.
type EpollWatch struct {
	// FD is the descriptor number the watch was added under; on restore it names
	// the same file (checked with kcmp at checkpoint).
	FD     int    `json:"fd"`
	Events uint32 `json:"events"` // including EPOLLET, EPOLLONESHOT, ...
	Data   uint64 `json:"data"`
}

// Marshal encodes the image.
func (im *Image) Marshal() ([]byte, error) {
	return json.Marshal(im)
}

// Unmarshal decodes an image and checks its version.
func Unmarshal(b []byte) (*Image, error) {
	var im Image
	if err := json.Unmarshal(b, &im); err != nil {
		return nil, fmt.Errorf("decode process image: %w", err)
	}
	if im.Version > Version {
		return nil, fmt.Errorf("decode process image: version %d is newer than this cryo (%d)",
			im.Version, Version)
	}
	return &im, nil
}
