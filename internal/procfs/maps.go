package procfs

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// DeletedSuffix is what the kernel appends to the path of a file that has been
// unlinked while still mapped or open.
const DeletedSuffix = " (deleted)"

// VMA is one memory range of a process as /proc/PID/maps and smaps describe it.
type VMA struct {
	Start, End uint64

	// Perms are the four permission characters of maps: r, w, x, and p
	// (private) or s (shared), with '-' for a missing one.
	Perms string

	// Pgoff is the offset in the mapped file, in bytes.
	Pgoff uint64

	// Dev is the device of the mapped file (unix.Mkdev of major:minor), Ino its
	// inode; both are zero for anonymous memory.
	Dev uint64
	Ino uint64

	// Path is the pathname column: a file path (which may contain spaces),
	// [heap], [stack], [vdso], [anon:name] and the like, or "" for anonymous
	// memory. A path cannot be told apart from its padding when it starts with
	// spaces; such paths lose their leading spaces. Deleted reports, and Path
	// omits, the " (deleted)" suffix.
	Path    string
	Deleted bool

	// VmFlags are the two-letter flags of smaps' VmFlags line; nil when the
	// VMA came from maps.
	VmFlags VmFlags
}

// Read, Write, Exec and Shared report the permission bits of v.
func (v *VMA) Read() bool { return v.Perms[0] == 'r' }

// Write reports whether the range is writable.
func (v *VMA) Write() bool { return v.Perms[1] == 'w' }

// Exec reports whether the range is executable.
func (v *VMA) Exec() bool { return v.Perms[2] == 'x' }

// Shared reports whether the range is a shared mapping (MAP_SHARED).
func (v *VMA) Shared() bool { return v.Perms[3] == 's' }

// Prot returns the permissions as mmap's PROT_READ|PROT_WRITE|PROT_EXEC.
func (v *VMA) Prot() int {
	p := unix.PROT_NONE
	if v.Read() {
		p |= unix.PROT_READ
	}
	if v.Write() {
		p |= unix.PROT_WRITE
	}
	if v.Exec() {
		p |= unix.PROT_EXEC
	}
	return p
}

// VmFlags is the set of two-letter flags the kernel shows on smaps' VmFlags line,
// in the kernel's order. Flags this package does not name are kept as they are.
type VmFlags []string

// Some of the flags of VmFlags (see show_smap_vma_flags in fs/proc/task_mmu.c).
const (
	VmRead        = "rd" // readable
	VmWrite       = "wr" // writable
	VmExec        = "ex" // executable
	VmShared      = "sh" // shared
	VmGrowsDown   = "gd" // stack segment grows down
	VmPfnMap      = "pf" // pure PFN range
	VmLocked      = "lo" // pages are locked in memory
	VmIO          = "io" // memory-mapped I/O area
	VmDontCopy    = "dc" // not copied on fork
	VmDontExpand  = "de" // cannot be expanded by mremap
	VmAccount     = "ac" // accounted
	VmHugetlb     = "ht" // hugetlb area
	VmDontDump    = "dd" // excluded from core dumps (MADV_DONTDUMP)
	VmMergeable   = "mg" // KSM may merge it
	VmUffdMissing = "um" // userfaultfd missing-page tracking
	VmUffdWP      = "uw" // userfaultfd write-protect tracking
	VmSoftDirty   = "sd" // soft-dirty
	VmWipeOnFork  = "wf" // wiped on fork (MADV_WIPEONFORK)
)

// Has reports whether flag f is set.
func (fl VmFlags) Has(f string) bool {
	for _, x := range fl {
		if x == f {
			return true
		}
	}
	return false
}

// ReadMaps reads /proc/PID/maps.
func ReadMaps(pid int) ([]VMA, error) {
	p := Path(pid, "maps")
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	vmas, err := ParseMaps(b)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", p, err)
	}
	return vmas, nil
}

// ReadSmaps reads /proc/PID/smaps: the VMAs of maps with their VmFlags.
func ReadSmaps(pid int) ([]VMA, error) {
	p := Path(pid, "smaps")
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	vmas, err := ParseSmaps(b)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", p, err)
	}
	return vmas, nil
}

// ParseMaps parses the text of /proc/PID/maps.
func ParseMaps(b []byte) ([]VMA, error) {
	var vmas []VMA
	for n, line := range lines(b) {
		v, err := parseMapsLine(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n+1, err)
		}
		vmas = append(vmas, v)
	}
	return vmas, nil
}

// ParseSmaps parses the text of /proc/PID/smaps. Of the per-VMA fields it keeps
// VmFlags; the page counters are not needed by cryo.
func ParseSmaps(b []byte) ([]VMA, error) {
	var vmas []VMA
	for n, line := range lines(b) {
		// A field line starts with a name and a colon ("Rss:", "VmFlags:");
		// a VMA line starts with a hex range, which has no colon in its first
		// word.
		first, rest, _ := strings.Cut(line, " ")
		if !strings.HasSuffix(first, ":") {
			v, err := parseMapsLine(line)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", n+1, err)
			}
			vmas = append(vmas, v)
			continue
		}
		if len(vmas) == 0 {
			return nil, fmt.Errorf("line %d: field %q before the first range", n+1, first)
		}
		if first == "VmFlags:" {
			fl := VmFlags(strings.Fields(rest))
			if fl == nil {
				fl = VmFlags{}
			}
			vmas[len(vmas)-1].VmFlags = fl
		}
	}
	return vmas, nil
}

// parseMapsLine parses one line of maps:
//
//	start-end perms pgoff major:minor inode   [path]
func parseMapsLine(line string) (VMA, error) {
	var v VMA
	rest := line
	var f [5]string
	for i := range f {
		rest = strings.TrimLeft(rest, " ")
		var ok bool
		f[i], rest, ok = strings.Cut(rest, " ")
		if !ok && i < 4 {
			return v, fmt.Errorf("short maps line %q", line)
		}
	}

	lo, hi, ok := strings.Cut(f[0], "-")
	var err1, err2 error
	v.Start, err1 = strconv.ParseUint(lo, 16, 64)
	v.End, err2 = strconv.ParseUint(hi, 16, 64)
	if !ok || err1 != nil || err2 != nil || v.End < v.Start {
		return v, fmt.Errorf("bad range %q", f[0])
	}

	if len(f[1]) != 4 || !validPerms(f[1]) {
		return v, fmt.Errorf("bad permissions %q", f[1])
	}
	v.Perms = f[1]

	var err error
	if v.Pgoff, err = strconv.ParseUint(f[2], 16, 64); err != nil {
		return v, fmt.Errorf("bad offset %q", f[2])
	}

	maj, min, ok := strings.Cut(f[3], ":")
	ma, err1 := strconv.ParseUint(maj, 16, 32)
	mi, err2 := strconv.ParseUint(min, 16, 32)
	if !ok || err1 != nil || err2 != nil {
		return v, fmt.Errorf("bad device %q", f[3])
	}
	v.Dev = unix.Mkdev(uint32(ma), uint32(mi))

	if v.Ino, err = strconv.ParseUint(f[4], 10, 64); err != nil {
		return v, fmt.Errorf("bad inode %q", f[4])
	}

	v.Path = strings.TrimLeft(rest, " ")
	if p, ok := strings.CutSuffix(v.Path, DeletedSuffix); ok {
		v.Path, v.Deleted = p, true
	}
	return v, nil
}

func validPerms(p string) bool {
	return (p[0] == 'r' || p[0] == '-') && (p[1] == 'w' || p[1] == '-') &&
		(p[2] == 'x' || p[2] == '-') && (p[3] == 'p' || p[3] == 's')
}

// lines splits text into its lines without the newlines, skipping a final empty
// line.
func lines(b []byte) []string {
	s := string(bytes.TrimSuffix(b, []byte("\n")))
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}
