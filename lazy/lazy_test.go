package lazy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/internal/uffd"
)

func TestMain(m *testing.M) {
	if h := os.Getenv(helperEnv); h != "" {
		os.Exit(runHelper(h))
	}
	os.Exit(m.Run())
}

// sink takes loads the compiler must not drop: a load is a fault.
var sink byte

// hasData says which pages of the fake snapshot have data: four in five.
func hasData(addr uint64) bool { return (addr/pageSize)%5 != 3 }

// fill writes the fake snapshot's content of the page at addr into dst.
func fill(addr uint64, dst []byte) {
	for i := 0; i < pageSize; i += 8 {
		binary.LittleEndian.PutUint64(dst[i:], addr*0x9e3779b97f4a7c15+uint64(i)|1)
	}
}

// fakeSource is a snapshot of the ranges whose data pages follow hasData.
type fakeSource struct {
	pages []uint64
	bad   uint64 // a page whose read fails, 0: none
	reads atomic.Int64
}

func newFakeSource(ranges ...Range) *fakeSource {
	f := &fakeSource{}
	for _, r := range ranges {
		for a := r.Start; a < r.End; a += pageSize {
			if hasData(a) {
				f.pages = append(f.pages, a)
			}
		}
	}
	return f
}

func (f *fakeSource) Pages() []uint64 { return f.pages }

func (f *fakeSource) ReadPage(addr uint64, dst []byte) error {
	f.reads.Add(1)
	if addr == f.bad {
		return fmt.Errorf("chunk of page %#x: checksum mismatch", addr)
	}
	if !hasData(addr) {
		return fmt.Errorf("page %#x is not in the snapshot", addr)
	}
	fill(addr, dst)
	return nil
}

// checkPage compares the page at mem with what the snapshot page src holds
// (zero when it has none, or when zero is set).
func checkPage(mem []byte, src uint64, zero bool) error {
	var want [pageSize]byte
	if !zero && hasData(src) {
		fill(src, want[:])
	}
	for i := range want {
		if mem[i] != want[i] {
			return fmt.Errorf("page of %#x: byte %d = %#x, want %#x", src, i, mem[i], want[i])
		}
	}
	return nil
}

// region is anonymous memory of the test process registered with a new
// userfaultfd, served by a Server on its own goroutine.
type region struct {
	mem  []byte
	base uint64
	srv  *Server
	done chan error
}

func requireUffd(t testing.TB) {
	t.Helper()
	if _, err := uffd.Supported(); err != nil {
		if os.Geteuid() == 0 {
			t.Fatalf("userfaultfd unavailable as root on a kernel cryo supports: %v", err)
		}
		t.Skipf("userfaultfd unavailable (needs root or vm.unprivileged_userfaultfd): %v", err)
	}
}

// serveRegion maps and serves pages pages; cpu >= 0 pins the server to it.
func serveRegion(t testing.TB, pages int, opts Options, cpu int) *region {
	return serveRegionFrom(t, pages, opts, cpu, nil)
}

// serveRegionFrom is serveRegion with a Source made by wrap from the fake
// one (nil: the fake one).
func serveRegionFrom(t testing.TB, pages int, opts Options, cpu int,
	wrap func(*fakeSource) Source) *region {
	t.Helper()
	requireUffd(t)
	mem, err := unix.Mmap(-1, 0, pages*pageSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	fd, err := uffd.Create(unix.O_CLOEXEC | unix.O_NONBLOCK | uffd.UFFD_USER_MODE_ONLY)
	if err != nil {
		t.Fatal(err)
	}
	base := uint64(uffd.Addr(mem))
	src := newFakeSource(Range{base, base + uint64(len(mem))})
	var source Source = src
	if wrap != nil {
		source = wrap(src)
	}
	srv, err := NewServer(fd, []Range{{base, base + uint64(len(mem))}}, source, opts)
	if err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	if err := srv.Register(); err != nil {
		srv.Close()
		t.Fatal(err)
	}
	r := &region{mem: mem, base: base, srv: srv, done: make(chan error, 1)}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	go func() {
		runtime.LockOSThread() // Serve locks too; this keeps the pinned thread
		defer runtime.UnlockOSThread()
		if cpu >= 0 {
			pin(cpu)
		}
		r.done <- srv.Serve(ctx)
	}()
	return r
}

// pin binds the calling (locked) thread to cpu.
func pin(cpu int) {
	var set unix.CPUSet
	set.Set(cpu)
	unix.SchedSetaffinity(0, &set)
}

func (r *region) wait(t testing.TB) {
	t.Helper()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("Serve did not return; stats %+v", r.srv.Stats())
	}
}

// onThread runs f on a locked OS thread of its own, as a faulting thread of
// the served process would be.
// cpu >= 0 pins it.
func onThread(f func(), cpu ...int) {
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if len(cpu) > 0 && cpu[0] >= 0 {
			pin(cpu[0])
		}
		defer close(done)
		f()
	}()
	<-done
}

func TestFaultsInProcess(t *testing.T) {
	// Same CPU: the figure of a server pinned beside the process's threads;
	// other CPU: the cross-CPU wake-up this VM makes expensive.
	for _, tc := range []struct {
		name         string
		server, user int
	}{{"any-cpu", -1, -1}, {"same-cpu", 0, 0}, {"other-cpu", 0, 1}} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.user >= runtime.NumCPU() {
				t.Skipf("SKIPPING: placement not supported on a machine with %d CPU(s); this case "+
					"needs %d", runtime.NumCPU(), tc.user+1)
			}
			testFaults(t, tc.server, tc.user)
		})
	}
}

func testFaults(t *testing.T, serverCPU, userCPU int) {
	const pages = 2048
	reg := prometheus.NewRegistry()
	met := NewMetrics(reg)
	r := serveRegion(t, pages, Options{Metrics: met}, serverCPU)

	order := rand.Perm(pages)
	lat := make([]time.Duration, 0, pages)
	var errs []error
	onThread(func() {
		for _, i := range order {
			p := r.mem[i*pageSize : (i+1)*pageSize]
			t0 := time.Now()
			sink = p[100] // the fault
			lat = append(lat, time.Since(t0))
			if err := checkPage(p, r.base+uint64(i)*pageSize, false); err != nil {
				errs = append(errs, err)
			}
		}
	}, userCPU)
	if len(errs) > 0 {
		t.Fatalf("%d pages wrong, first: %v", len(errs), errs[0])
	}
	r.wait(t)

	st := r.srv.Stats()
	data := 0
	var wantTouched []uint64
	for _, i := range order {
		if a := r.base + uint64(i)*pageSize; hasData(a) {
			data++
			wantTouched = append(wantTouched, a)
		}
	}
	if st.FaultPages != uint64(data) || st.PrefetchPages != 0 {
		t.Errorf("stats %+v: want %d pages by fault, none prefetched", st, data)
	}
	if st.Faults != st.FaultPages+st.ZeroPages {
		t.Errorf("stats %+v: faults != fault pages + zero pages with Around 0", st)
	}
	if got := r.srv.Touched(); !slices.Equal(got, wantTouched) {
		t.Errorf("Touched has %d pages, want %d in fault order", len(got), len(wantTouched))
	}
	if n := testutilCount(t, reg, "cryo_lazy_faults_total"); n != float64(st.Faults) {
		t.Errorf("cryo_lazy_faults_total = %v, want %d", n, st.Faults)
	}
	slices.Sort(lat)
	t.Logf("fault latency over %d touches, data and zero pages: "+
		"p50 %v p90 %v p99 %v max %v", len(lat), lat[len(lat)/2], lat[len(lat)*9/10],
		lat[len(lat)*99/100], lat[len(lat)-1])
}

func testutilCount(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

func TestAround(t *testing.T) {
	const pages, around = 256, 16
	r := serveRegion(t, pages, Options{Around: around}, -1)
	// Fault on a page with data in the window [32, 48): which pages have data
	// depends on where the region was mapped, and a zero page is answered alone.
	at := 37
	for !hasData(r.base + uint64(at)*pageSize) {
		at++
	}
	onThread(func() { sink = r.mem[at*pageSize] })
	want := 0
	for i := 32; i < 48; i++ {
		if hasData(r.base + uint64(i)*pageSize) {
			want++
		}
	}
	// The reader goes on as soon as its page is in; the neighbours follow.
	st := r.srv.Stats()
	for deadline := time.Now().Add(5 * time.Second); st.FaultPages < uint64(want) &&
		time.Now().Before(deadline); st = r.srv.Stats() {
		time.Sleep(time.Millisecond)
	}
	if st.Faults < 1 || st.FaultPages != uint64(want) {
		t.Fatalf("after one fault: %+v, want %d pages installed", st, want)
	}
	var errs []error
	onThread(func() {
		for i := 0; i < pages; i++ {
			if err := checkPage(r.mem[i*pageSize:], r.base+uint64(i)*pageSize, false); err != nil {
				errs = append(errs, err)
			}
		}
	})
	if len(errs) > 0 {
		t.Fatal(errs[0])
	}
	r.wait(t)
	st = r.srv.Stats()
	if st.FaultPages != uint64(len(newFakeSource(Range{r.base, r.base + pages*pageSize}).pages)) {
		t.Errorf("stats %+v", st)
	}
	// Sequential reading with Around 16 faults once per window for data.
	if dataFaults := st.Faults - st.ZeroPages; dataFaults != pages/around {
		t.Errorf("%d faults for data, want %d", dataFaults, pages/around)
	}
}

func TestPrefetch(t *testing.T) {
	const pages = 16384 // 64 MiB
	r := serveRegion(t, pages, Options{Prefetch: true, Around: 16}, -1)
	// Touch a few pages while prefetch runs: faults come first.
	var errs []error
	onThread(func() {
		for _, i := range rand.Perm(pages)[:200] {
			if err := checkPage(r.mem[i*pageSize:], r.base+uint64(i)*pageSize, false); err != nil {
				errs = append(errs, err)
			}
		}
	})
	start := time.Now()
	r.wait(t)
	d := time.Since(start)
	if len(errs) > 0 {
		t.Fatal(errs[0])
	}
	st := r.srv.Stats()
	data := uint64(len(newFakeSource(Range{r.base, r.base + pages*pageSize}).pages))
	if st.FaultPages+st.PrefetchPages != data {
		t.Fatalf("stats %+v: want %d pages in all", st, data)
	}
	// The uffd is closed now: every page reads from the process itself.
	onThread(func() {
		for i := 0; i < pages; i++ {
			if err := checkPage(r.mem[i*pageSize:], r.base+uint64(i)*pageSize, false); err != nil {
				errs = append(errs, err)
			}
		}
	})
	if len(errs) > 0 {
		t.Fatal(errs[0])
	}
	t.Logf("prefetch: %d pages, %.0f MB/s (including the fake source's page generation)",
		st.PrefetchPages, float64(st.PrefetchPages*pageSize)/1e6/d.Seconds())
}

func TestOrderFirst(t *testing.T) {
	const pages = 1024
	mem, err := unix.Mmap(-1, 0, pages*pageSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	base := uint64(uffd.Addr(mem))
	rec := &recordingSource{fakeSource: newFakeSource(Range{base, base + pages*pageSize})}
	order := []uint64{base + 900*pageSize, base + 10*pageSize, base + 500*pageSize}
	requireUffd(t)
	fd, err := uffd.Create(unix.O_CLOEXEC | unix.O_NONBLOCK | uffd.UFFD_USER_MODE_ONLY)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(fd, []Range{{base, base + pages*pageSize}}, rec,
		Options{Prefetch: true, Order: order})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Register(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Each Order page starts a batch (its pending successors follow it).
	for _, a := range order {
		i := slices.Index(rec.order, a)
		if !hasData(a) {
			continue
		}
		if i < 0 || i >= len(order)*prefetchBatch {
			t.Errorf("Order page %#x read at position %d, want among the first %d",
				a, i, len(order)*prefetchBatch)
		}
	}
}

type recordingSource struct {
	*fakeSource
	order []uint64
}

func (r *recordingSource) ReadPage(addr uint64, dst []byte) error {
	r.order = append(r.order, addr)
	return r.fakeSource.ReadPage(addr, dst)
}

func TestRemoveInProcess(t *testing.T) {
	const pages = 512
	r := serveRegion(t, pages, Options{Around: 4}, -1)
	var errs []error
	onThread(func() {
		// Fault some pages in and dirty one, then drop [100, 200): the
		// dropped pages read zero, whether they had been faulted or not.
		for i := 150; i < 160; i++ {
			sink = r.mem[i*pageSize]
		}
		r.mem[151*pageSize] = 0x55
		if err := unix.Madvise(r.mem[100*pageSize:200*pageSize], unix.MADV_DONTNEED); err != nil {
			errs = append(errs, err)
			return
		}
		for i := 0; i < pages; i++ {
			zero := i >= 100 && i < 200
			if err := checkPage(r.mem[i*pageSize:], r.base+uint64(i)*pageSize, zero); err != nil {
				errs = append(errs, fmt.Errorf("page %d: %w", i, err))
			}
		}
	})
	if len(errs) > 0 {
		t.Fatalf("%d errors, first: %v", len(errs), errs[0])
	}
	r.wait(t)
	if st := r.srv.Stats(); st.Removes != 1 || st.DroppedPages == 0 {
		t.Errorf("stats %+v: want one REMOVE that dropped pending pages", st)
	}
}

func TestFillInProcess(t *testing.T) {
	const pages = 4096
	requireUffd(t)
	mem, err := unix.Mmap(-1, 0, pages*pageSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	base := uint64(uffd.Addr(mem))
	fd, err := uffd.Create(unix.O_CLOEXEC | unix.O_NONBLOCK | uffd.UFFD_USER_MODE_ONLY)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(fd, []Range{{base, base + pages*pageSize}},
		newFakeSource(Range{base, base + pages*pageSize}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Register(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Fill(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < pages; i++ {
		if err := checkPage(mem[i*pageSize:], base+uint64(i)*pageSize, false); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
		t.Errorf("uffd %d still open after Fill", fd)
	}
}
