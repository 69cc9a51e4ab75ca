// Command goroutines is the Go workload of the threads end-to-end test: dozens of
// goroutines spread over several OS threads, some of them blocked in system calls,
// keeping a counter and a large map, checked by the program itself.
//
// Usage: goroutines TRIGGER
//
// It fills a map of 1,000,000 entries (key k holds mix(k)); 32 workers then add
// entries under a mutex, each addition counted, while 4 goroutines sit in a raw
// blocking read(2) of a pipe and 4 in a raw nanosleep(2) of 5 s, each holding an
// OS thread. Every 50 ms it prints "counter N" with the additions so far. It
// prints "ready" once everything runs, then polls for the file TRIGGER. Once
// the file exists it stops the workers and checks that the map holds exactly
// the initial entries plus one per addition counted, each with its value, writes
// one byte to each pipe and checks each reader got its byte, waits for the
// sleepers, and prints "OK" (or "FAIL detail" and exits 1).
//
// With GOROUTINES_SPIN=N in its environment it also runs N goroutines that
// spin in a loop without a function call until the trigger: the runtime can
// preempt them only with a signal, SIGURG, which it sends every 10 ms to each.
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	initial  = 1_000_000
	workers  = 32
	readers  = 4
	sleepers = 4
)

func mix(k uint64) uint64 {
	k ^= k >> 33
	k *= 0xff51afd7ed558ccd
	k ^= k >> 33
	return k
}

func fail(format string, args ...any) {
	fmt.Printf("FAIL "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: goroutines TRIGGER")
		os.Exit(2)
	}
	runtime.GOMAXPROCS(4)
	trigger := os.Args[1]

	m := make(map[uint64]uint64, initial)
	for k := uint64(0); k < initial; k++ {
		m[k] = mix(k)
	}
	var (
		mu    sync.Mutex
		added uint64 // under mu
		count atomic.Uint64
		spun  atomic.Uint64 // where the spinners leave their result
		stop  atomic.Bool
		wg    sync.WaitGroup
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			x := uint64(w)
			for !stop.Load() {
				mu.Lock()
				k := initial + added
				m[k] = mix(k)
				added++
				count.Add(1)
				mu.Unlock()
				for i := 0; i < 2000; i++ { // some work outside the lock
					x = mix(x + uint64(i))
				}
				if x%7 == 0 {
					time.Sleep(time.Duration(x%500) * time.Microsecond)
				}
			}
		}(w)
	}

	spin, _ := strconv.Atoi(os.Getenv("GOROUTINES_SPIN"))
	for w := range spin {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			x := uint64(w)
			for !stop.Load() {
				x = x*6364136223846793005 + 1442695040888963407
			}
			spun.Add(x & 1)
		}(w)
	}

	// Goroutines blocked in system calls, each holding an OS thread.
	type reader struct {
		r, w int
		got  chan byte
	}
	rs := make([]reader, readers)
	for i := range rs {
		var p [2]int
		if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil {
			fail("pipe: %v", err)
		}
		rs[i] = reader{p[0], p[1], make(chan byte, 1)}
		go func(rd reader) {
			b := make([]byte, 1)
			for {
				n, err := syscall.Read(rd.r, b)
				if err == syscall.EINTR {
					continue
				}
				if n != 1 || err != nil {
					fail("read pipe %d: %d bytes, %v", rd.r, n, err)
				}
				rd.got <- b[0]
				return
			}
		}(rs[i])
	}
	var slept sync.WaitGroup
	for i := 0; i < sleepers; i++ {
		slept.Add(1)
		go func() {
			defer slept.Done()
			deadline := time.Now().Add(5 * time.Second)
			req := syscall.NsecToTimespec(int64(5 * time.Second))
			for {
				var rem syscall.Timespec
				err := syscall.Nanosleep(&req, &rem)
				if err == nil {
					break
				}
				if err != syscall.EINTR {
					fail("nanosleep: %v", err)
				}
				req = rem
			}
			if time.Now().Before(deadline) {
				fail("nanosleep ended %v early", time.Until(deadline))
			}
		}()
	}

	time.Sleep(100 * time.Millisecond)
	fmt.Printf("threads %d\n", threads())
	fmt.Println("ready")
	for {
		fmt.Printf("counter %d\n", count.Load())
		if _, err := os.Stat(trigger); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}

	stop.Store(true)
	wg.Wait()
	if len(m) != initial+int(added) || added != count.Load() {
		fail("map has %d entries, want %d + %d added (counter %d)", len(m), initial, added,
			count.Load())
	}
	for k, v := range m {
		if v != mix(k) {
			fail("map[%d] = %#x, want %#x", k, v, mix(k))
		}
	}
	for i, rd := range rs {
		if _, err := syscall.Write(rd.w, []byte{byte('a' + i)}); err != nil {
			fail("write pipe %d: %v", rd.w, err)
		}
		select {
		case b := <-rd.got:
			if b != byte('a'+i) {
				fail("reader %d got %q", i, b)
			}
		case <-time.After(10 * time.Second):
			fail("reader %d got nothing", i)
		}
	}
	slept.Wait()
	runtime.GC()
	fmt.Printf("final counter %d map %d entries\n", count.Load(), len(m))
	fmt.Println("OK")
}

// threads is the number of OS threads of this process.
func threads() int {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return -1
	}
	return len(ents)
}
