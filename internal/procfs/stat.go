package procfs

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Stat holds the fields of /proc/PID/stat that cryo uses. Field numbers in the
// comments are those of proc(5).
type Stat struct {
	Pid        int    // (1)
	Comm       string // (2) without the parentheses; may contain spaces and ')'
	State      byte   // (3) R, S, D, T, t, Z, ...
	Ppid       int    // (4)
	Flags      uint64 // (9) the kernel's PF_* flags of the task
	NumThreads int    // (20)
	StartTime  uint64 // (22) in clock ticks after boot

	StartCode  uint64 // (26)
	EndCode    uint64 // (27)
	StartStack uint64 // (28)
	Processor  int    // (39) the CPU the task last ran on
	StartData  uint64 // (45)
	EndData    uint64 // (46)
	StartBrk   uint64 // (47)
	ArgStart   uint64 // (48)
	ArgEnd     uint64 // (49)
	EnvStart   uint64 // (50)
	EnvEnd     uint64 // (51)
	ExitCode   int    // (52)
}

// ReadStat reads /proc/PID/stat.
//
// The address fields (26-28, 45-51) read as zero unless the reader may ptrace the
// process (PTRACE_MODE_READ): run as root or as the tracer.
func ReadStat(pid int) (*Stat, error) {
	p := Path(pid, "stat")
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	st, err := ParseStat(b)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", p, err)
	}
	return st, nil
}

// ParseStat parses the text of /proc/PID/stat. The command name is everything
// between the first '(' and the last ')': a name may itself contain parentheses
// and spaces.
func ParseStat(b []byte) (*Stat, error) {
	open := bytes.IndexByte(b, '(')
	close := bytes.LastIndexByte(b, ')')
	if open < 0 || close < open {
		return nil, fmt.Errorf("no command name in %q", truncate(b))
	}
	var st Stat
	var err error
	if st.Pid, err = strconv.Atoi(string(bytes.TrimSpace(b[:open]))); err != nil {
		return nil, fmt.Errorf("bad pid in %q", truncate(b))
	}
	st.Comm = string(b[open+1 : close])

	// f[0] is field 3 (state); field n is f[n-3].
	f := strings.Fields(string(b[close+1:]))
	const last = 52
	if len(f) < last-2 {
		return nil, fmt.Errorf("stat has %d fields, want at least %d", len(f)+2, last)
	}
	if len(f[0]) != 1 {
		return nil, fmt.Errorf("bad state %q", f[0])
	}
	st.State = f[0][0]

	num := func(n int) uint64 {
		if err != nil {
			return 0
		}
		var v uint64
		v, err = strconv.ParseUint(f[n-3], 10, 64)
		if err != nil {
			// Fields such as exit_code are signed; no field cryo reads is
			// negative in practice, but accept it.
			var s int64
			if s, err = strconv.ParseInt(f[n-3], 10, 64); err == nil {
				v = uint64(s)
			} else {
				err = fmt.Errorf("field %d: bad number %q", n, f[n-3])
			}
		}
		return v
	}
	st.Ppid = int(num(4))
	st.Flags = num(9)
	st.NumThreads = int(num(20))
	st.StartTime = num(22)
	st.StartCode = num(26)
	st.EndCode = num(27)
	st.StartStack = num(28)
	st.Processor = int(num(39))
	st.StartData = num(45)
	st.EndData = num(46)
	st.StartBrk = num(47)
	st.ArgStart = num(48)
	st.ArgEnd = num(49)
	st.EnvStart = num(50)
	st.EnvEnd = num(51)
	st.ExitCode = int(int64(num(52)))
	if err != nil {
		return nil, err
	}
	return &st, nil
}

// Brk returns the program break of a process from its VMAs and stat: the end of
// the [heap] range, or StartBrk when there is no heap (brk never moved).
//
// The kernel does not show mm->brk in procfs. The [heap] range ends at brk rounded
// up to a page, so the value returned is page-aligned even when brk was not; a
// restored brk can only be that much higher than the original, which malloc
// tolerates (it asks the kernel for the break again). The exact value would need
// brk(0) injected into the stopped target.
func Brk(vmas []VMA, st *Stat) uint64 {
	for i := range vmas {
		if vmas[i].Path == "[heap]" && vmas[i].Ino == 0 {
			return vmas[i].End
		}
	}
	return st.StartBrk
}

// ReadAuxv reads /proc/PID/auxv: the auxiliary vector as (type, value) pairs,
// flattened, up to and including the AT_NULL pair.
func ReadAuxv(pid int) ([]uint64, error) {
	p := Path(pid, "auxv")
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	av, err := ParseAuxv(b)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", p, err)
	}
	return av, nil
}

// ParseAuxv decodes an auxiliary vector of native-endian 64-bit words. It stops
// after the first AT_NULL pair; a vector without one is an error.
func ParseAuxv(b []byte) ([]uint64, error) {
	if len(b)%16 != 0 {
		return nil, fmt.Errorf("auxv is %d bytes, not a whole number of pairs", len(b))
	}
	av := make([]uint64, 0, len(b)/8)
	for i := 0; i+16 <= len(b); i += 16 {
		typ := binary.NativeEndian.Uint64(b[i:])
		val := binary.NativeEndian.Uint64(b[i+8:])
		av = append(av, typ, val)
		if typ == 0 { // AT_NULL
			return av, nil
		}
	}
	return nil, fmt.Errorf("auxv has no AT_NULL entry")
}

func truncate(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}
