package ptrace

import "fmt"

// PTRACE_PEEKSIGINFO (Linux 3.10+) and its flag that reads the process-wide queue.
const (
	PTRACE_PEEKSIGINFO        = 0x4209
	PTRACE_PEEKSIGINFO_SHARED = 1
	siginfoSize               = 128
)

// PeekSiginfo returns the signals queued to thread tid (shared false) or to its
// whole thread group (shared true), oldest first, each a raw 128-byte siginfo_t.
// The queue is left as it is.
func PeekSiginfo(tid int, shared bool) ([][]byte, error) {
	var flags uint32
	if shared {
		flags = PTRACE_PEEKSIGINFO_SHARED
	}
	const batch = 32
	buf := make([]byte, batch*siginfoSize)
	var out [][]byte
	for {
		n, err := peekSiginfo(tid, uint64(len(out)), flags, batch, buf)
		if err != nil {
			return nil, fmt.Errorf("PTRACE_PEEKSIGINFO of tid %d: %w", tid, err)
		}
		for i := range n {
			out = append(out, append([]byte(nil), buf[i*siginfoSize:(i+1)*siginfoSize]...))
		}
		if n < batch {
			return out, nil
		}
	}
}
