package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"time"

	"github.com/cryo-dev/cryo/internal/uffd"
	"github.com/cryo-dev/cryo/lazy"
	"golang.org/x/sys/unix"
)

// pageSource serves every page of a region from one prepared page.
type pageSource struct {
	pages []uint64
	page  [pageSize]byte
}

func (s *pageSource) Pages() []uint64 { return s.pages }

func (s *pageSource) ReadPage(addr uint64, dst []byte) error {
	copy(dst, s.page[:])
	return nil
}

// faultLatencies serves a region of bench's own memory with the lazy page
// server (no prefetch, one page per fault) and touches every page once in a
// random order from a locked thread, timing each touch. cpu >= 0 pins the
// server and the toucher to that CPU; -1 lets the scheduler choose.
func faultLatencies(pages, cpu int) ([]time.Duration, error) {
	mem, err := unix.Mmap(-1, 0, pages*pageSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, err
	}
	defer unix.Munmap(mem)
	fd, err := uffd.Create(unix.O_CLOEXEC | unix.O_NONBLOCK | uffd.UFFD_USER_MODE_ONLY)
	if err != nil {
		return nil, fmt.Errorf("userfaultfd: %w", err)
	}
	base := uint64(uffd.Addr(mem))
	src := &pageSource{}
	for i := range pages {
		src.pages = append(src.pages, base+uint64(i)*pageSize)
	}
	src.page[0] = 1
	srv, err := lazy.NewServer(fd, []lazy.Range{{Start: base, End: base + uint64(len(mem))}},
		src, lazy.Options{})
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	defer srv.Close()
	if err := srv.Register(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	served := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		pin(cpu)
		served <- srv.Serve(ctx)
	}()

	lat := touchAll(mem, cpu)
	if err := <-served; err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	for i := range pages {
		if mem[i*pageSize] != 1 {
			return nil, fmt.Errorf("page %d was not served from the source", i)
		}
	}
	return lat, nil
}

// firstTouchLatencies is the baseline: the same touches on ordinary
// anonymous memory, where each is a plain kernel page fault.
func firstTouchLatencies(pages, cpu int) ([]time.Duration, error) {
	mem, err := unix.Mmap(-1, 0, pages*pageSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, err
	}
	defer unix.Munmap(mem)
	return touchAll(mem, cpu), nil
}

var sink byte

// touchAll writes one byte of every page of mem in a random order on a
// locked thread (pinned to cpu when cpu >= 0) and returns each write's time.
func touchAll(mem []byte, cpu int) []time.Duration {
	pages := len(mem) / pageSize
	order := rand.Perm(pages)
	lat := make([]time.Duration, 0, pages)
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		pin(cpu)
		for _, i := range order {
			t0 := time.Now()
			sink += mem[i*pageSize+100]
			lat = append(lat, time.Since(t0))
		}
	}()
	<-done
	return lat
}

// firstAllowedCPU returns the lowest CPU this process may run on (0 when the
// affinity mask cannot be read).
func firstAllowedCPU() int {
	var set unix.CPUSet
	if unix.SchedGetaffinity(0, &set) == nil {
		for c := range 1024 {
			if set.IsSet(c) {
				return c
			}
		}
	}
	return 0
}

// pin binds the calling locked thread to cpu; cpu < 0 leaves it free.
func pin(cpu int) {
	if cpu < 0 {
		return
	}
	var set unix.CPUSet
	set.Set(cpu)
	unix.SchedSetaffinity(0, &set)
}

// benchFaults reports fault latency percentiles of the lazy server, against
// first touches of plain memory, and the CDF of the unpinned case.
func benchFaults(res *Results, pages int) error {
	for _, c := range []struct {
		name string
		cpu  int
	}{{"any cpu", -1}, {"same cpu", firstAllowedCPU()}} {
		lat, err := faultLatencies(pages, c.cpu)
		if err != nil {
			return fmt.Errorf("fault latency (%s): %w", c.name, err)
		}
		base, err := firstTouchLatencies(pages, c.cpu)
		if err != nil {
			return err
		}
		slices.Sort(lat)
		slices.Sort(base)
		for _, q := range []float64{0.5, 0.99, 0.999} {
			addVs(res, "restore", fmt.Sprintf("fault p%g %s", q*100, c.name), "µs",
				us(quantile(lat, q)), us(quantile(base, q)), "first touch of fresh memory")
		}
		if c.cpu < 0 {
			for i := 0; i < len(lat); i += max(1, len(lat)/200) {
				res.Series["fault_latency_cdf"] = append(res.Series["fault_latency_cdf"],
					Point{X: us(lat[i]), Y: float64(i+1) / float64(len(lat))})
			}
			res.Series["fault_latency_cdf"] = append(res.Series["fault_latency_cdf"],
				Point{X: us(lat[len(lat)-1]), Y: 1})
		}
	}
	return nil
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
