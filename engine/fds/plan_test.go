package fds

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/engine/image"
)

// sim is a descriptor table that runs a plan the way the kernel would, and fails
// the test when a step breaks the plan's rules: a creation not returning the
// lowest free number, a dup3 onto a number in use, a step on a closed number.
type sim struct {
	t       *testing.T
	table   map[int]string // fd number -> identity of the open file description
	cloexec map[int]bool
	limit   int
	pipeSeq int
}

func newSim(t *testing.T, open []int, limit int) *sim {
	s := &sim{t: t, table: map[int]string{}, cloexec: map[int]bool{}, limit: limit}
	for _, n := range open {
		s.table[n] = fmt.Sprintf("inherited %d", n)
	}
	return s
}

func (s *sim) lowest() int {
	n := 0
	for s.table[n] != "" {
		n++
	}
	return n
}

func (s *sim) create(n int, id string, cloexec bool) {
	s.t.Helper()
	if want := s.lowest(); n != want {
		s.t.Fatalf("creation of %s expects fd %d, the kernel gives %d", id, n, want)
	}
	if n >= s.limit {
		s.t.Fatalf("creation of %s at fd %d, above the limit %d", id, n, s.limit)
	}
	s.table[n], s.cloexec[n] = id, cloexec
}

func (s *sim) need(n int, o op) {
	s.t.Helper()
	if s.table[n] == "" {
		s.t.Fatalf("%v on fd %d, which is not open (%+v)", o.code, n, o)
	}
}

// primaryID is the identity a plan must give fd's own object.
func primaryID(fd *image.FD, stdio Stdio) string {
	switch {
	case fd.Kind == image.FDStdio && fd.Num <= 2 && stdio.Paths[fd.Num] == "":
		return fmt.Sprintf("inherited %d", fd.Num)
	case fd.Kind == image.FDPipe:
		return fmt.Sprintf("pipe %d read=%v", fd.Pipe.ID, fd.Pipe.ReadEnd)
	case fd.Kind == image.FDSocket && fd.Socket.State == image.SocketPair:
		// The tests name a pair after its lower end's number.
		return fmt.Sprintf("socketpair %d lower=%v", fd.Socket.PairID,
			fd.Num == int(fd.Socket.PairID))
	}
	return fmt.Sprintf("object of fd %d", fd.Num)
}

func (s *sim) run(ops []op, stdio Stdio) {
	s.t.Helper()
	for _, o := range ops {
		switch o.code {
		case opClose:
			s.need(o.fd, o)
			delete(s.table, o.fd)
			delete(s.cloexec, o.fd)
		case opDup3:
			s.need(o.fd, o)
			if s.table[o.to] != "" {
				s.t.Fatalf("dup3 %d -> %d replaces %s", o.fd, o.to, s.table[o.to])
			}
			if o.to >= s.limit {
				s.t.Fatalf("dup3 to %d, above the limit %d", o.to, s.limit)
			}
			s.table[o.to] = s.table[o.fd]
			s.cloexec[o.to] = o.flags&unix.O_CLOEXEC != 0
		case opOpen, opEventfd, opEpoll:
			cloexec := o.flags&unix.O_CLOEXEC != 0
			if o.code == opEventfd {
				cloexec = o.flags&unix.EFD_CLOEXEC != 0
			}
			s.create(o.fd, primaryID(o.rec, stdio), cloexec)
		case opPipe:
			s.create(o.fd, fmt.Sprintf("pipe %d read=true", o.rec.Pipe.ID), false)
			s.create(o.to, fmt.Sprintf("pipe %d read=false", o.rec.Pipe.ID), false)
		case opSocket:
			s.create(o.fd, primaryID(o.rec, stdio), o.flags&unix.SOCK_CLOEXEC != 0)
		case opSocketPair:
			if o.rec.Socket.State == image.SocketPair {
				id := o.rec.Socket.PairID
				s.create(o.fd, fmt.Sprintf("socketpair %d lower=true", id), false)
				s.create(o.to, fmt.Sprintf("socketpair %d lower=false", id), false)
			} else {
				// A reset unix socket: one end is kept, the other closed.
				s.create(o.fd, primaryID(o.rec, stdio), false)
				s.create(o.to, primaryID(o.rec, stdio), false)
			}
		case opSetFD:
			s.need(o.fd, o)
			s.cloexec[o.fd] = o.val&unix.FD_CLOEXEC != 0
		case opEpollAdd:
			s.need(o.fd, o)
			s.need(o.to, o)
			if s.table[o.fd] != primaryID(o.rec, stdio) {
				s.t.Fatalf("epoll_ctl on fd %d, which is %s", o.fd, s.table[o.fd])
			}
		default:
			s.need(o.fd, o)
			if o.rec.Num != o.fd && o.code != opFillPipe && o.code != opSockFill {
				s.t.Fatalf("%v on fd %d for fd %d", o.code, o.fd, o.rec.Num)
			}
		}
	}
}

// check compares the final table with fds; foreign are the numbers above 2 that
// the target held before.
func (s *sim) check(fds []image.FD, stdio Stdio, open, foreign []int) {
	s.t.Helper()
	byNum := map[int]*image.FD{}
	for i := range fds {
		byNum[fds[i].Num] = &fds[i]
	}
	for _, fd := range fds {
		var want string
		if isDup(&fd, stdio, open) {
			want = primaryID(byNum[*fd.DupOf], stdio)
		} else {
			want = primaryID(&fd, stdio)
		}
		if got := s.table[fd.Num]; got != want {
			s.t.Errorf("fd %d is %q, want %q", fd.Num, got, want)
		}
		if s.cloexec[fd.Num] != fd.Cloexec {
			s.t.Errorf("fd %d cloexec %v, want %v", fd.Num, s.cloexec[fd.Num], fd.Cloexec)
		}
	}
	for n, id := range s.table {
		if byNum[n] == nil && !slices.Contains(foreign, n) {
			s.t.Errorf("fd %d (%s) left open", n, id)
		}
	}
}

// Builders for test layouts.
func file(n int) image.FD {
	return image.FD{Num: n, Kind: image.FDFile, Path: fmt.Sprintf("/f%d", n), Flags: unix.O_RDWR}
}
func stdioFD(n int) image.FD { return image.FD{Num: n, Kind: image.FDStdio} }
func dupOf(n, of int, kind image.FDKind) image.FD {
	return image.FD{Num: n, Kind: kind, DupOf: &of, Path: fmt.Sprintf("/f%d", of)}
}
func pipeFDs(id uint64, r, w int) []image.FD {
	return []image.FD{
		{Num: r, Kind: image.FDPipe, Pipe: &image.Pipe{ID: id, ReadEnd: true, Size: 65536,
			Buffered: []byte("x")}},
		{Num: w, Kind: image.FDPipe, Flags: unix.O_WRONLY, Pipe: &image.Pipe{ID: id}},
	}
}
func eventfd(n int) image.FD {
	return image.FD{Num: n, Kind: image.FDEventfd, Eventfd: &image.Eventfd{Count: 1 << 40}}
}
func epoll(n int, watch ...int) image.FD {
	fd := image.FD{Num: n, Kind: image.FDEpoll, Epoll: &image.Epoll{}}
	for _, w := range watch {
		fd.Epoll.Watches = append(fd.Epoll.Watches, image.EpollWatch{FD: w, Events: 1})
	}
	return fd
}
func cloexec(fd image.FD) image.FD { fd.Cloexec = true; return fd }

// sockPair makes the two ends of a unix socket pair, named after the lower one.
func sockPair(a, b int) []image.FD {
	id := uint64(min(a, b))
	end := func(n int) image.FD {
		return image.FD{Num: n, Kind: image.FDSocket, Socket: &image.Socket{
			Family: unix.AF_UNIX, Type: unix.SOCK_STREAM, State: image.SocketPair,
			PairID: id, Queued: [][]byte{[]byte("x")}}}
	}
	return []image.FD{end(a), end(b)}
}

// resetSocket is a unix stream socket whose peer was outside.
func resetSocket(n int) image.FD {
	return image.FD{Num: n, Kind: image.FDSocket, Socket: &image.Socket{
		Family: unix.AF_UNIX, Type: unix.SOCK_STREAM, State: image.SocketReset}}
}

// listenSocket is a listening TCP socket.
func listenSocket(n int) image.FD {
	return image.FD{Num: n, Kind: image.FDSocket, Flags: unix.O_RDWR | unix.O_NONBLOCK,
		Socket: &image.Socket{Family: unix.AF_INET, Type: unix.SOCK_STREAM,
			Protocol: unix.IPPROTO_TCP, State: image.SocketListen, Backlog: 5,
			Local: &image.SockAddr{IP: "127.0.0.1", Port: 8080}}}
}
func cat(parts ...any) []image.FD {
	var out []image.FD
	for _, p := range parts {
		switch p := p.(type) {
		case image.FD:
			out = append(out, p)
		case []image.FD:
			out = append(out, p...)
		}
	}
	return out
}

func TestPlan(t *testing.T) {
	tests := []struct {
		name  string
		fds   []image.FD
		stdio Stdio
		open  []int
		limit int
	}{
		{name: "holder", fds: cat(stdioFD(0), stdioFD(1), file(2), eventfd(3), pipeFDs(9, 4, 5),
			file(6), file(7), file(8), file(9), epoll(10, 3, 4, 5), cloexec(dupOf(100, 6, "file")),
			dupOf(1000, 8, "file"))},
		{name: "pipe ends swapped", fds: cat(stdioFD(0), stdioFD(1), stdioFD(2), pipeFDs(1, 4, 3))},
		{name: "pipe ends swapped cloexec", fds: cat(stdioFD(0), stdioFD(1), stdioFD(2),
			func() []image.FD { p := pipeFDs(1, 4, 3); p[0].Cloexec = true; return p }())},
		{name: "pipe write end below", fds: cat(stdioFD(0), stdioFD(1), stdioFD(2),
			pipeFDs(1, 7, 3))},
		{name: "pipe write end on read end's temp", fds: cat(stdioFD(0), stdioFD(1),
			stdioFD(2), pipeFDs(1, 9, 3), pipeFDs(2, 5, 4))},
		{name: "pipe at 0 and 1", fds: cat(pipeFDs(1, 0, 1), file(2))},
		{name: "pipe at 1 and 0", fds: cat(pipeFDs(1, 1, 0), file(2))},
		{name: "no stdio", fds: cat(eventfd(5), file(3))},
		{name: "only stdout", fds: cat(stdioFD(1), file(0))},
		{name: "stderr dup of stdout", fds: cat(stdioFD(0), stdioFD(1), dupOf(2, 1, "stdio"),
			dupOf(3, 1, "stdio"))},
		{name: "stderr dup of stdout, no inherited stderr", fds: cat(stdioFD(0), stdioFD(1),
			dupOf(2, 1, "stdio"), dupOf(3, 1, "stdio")), open: []int{0, 1}},
		{name: "stderr dup of stdout to a file", fds: cat(stdioFD(1), dupOf(2, 1, "stdio")),
			stdio: Stdio{Paths: [3]string{2: "/err"}}},
		{name: "stdout to a file", fds: cat(stdioFD(0), stdioFD(1), stdioFD(2)),
			stdio: Stdio{Paths: [3]string{1: "/out"}}},
		{name: "all stdio to files, inherited missing", fds: cat(stdioFD(0), stdioFD(1),
			stdioFD(2), file(3)), stdio: Stdio{Paths: [3]string{"/in", "/out", "/err"}},
			open: []int{}},
		{name: "sparse", fds: cat(file(1000), file(100), cloexec(eventfd(5)), epoll(7, 1000, 5)),
			limit: 1001},
		{name: "foreign fd", fds: cat(stdioFD(0), stdioFD(1), stdioFD(2), file(3),
			pipeFDs(1, 8, 5)), open: []int{0, 1, 2, 4, 6}},
		{name: "dup of pipe end and epoll", fds: cat(pipeFDs(3, 6, 3), dupOf(20, 3, "pipe"),
			epoll(4, 20, 6), dupOf(30, 4, "epoll"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			open := tt.open
			if open == nil {
				open = []int{0, 1, 2}
			}
			limit := tt.limit
			if limit == 0 {
				limit = 1024
			}
			ops, err := plan(tt.fds, tt.stdio, open, uint64(limit))
			if err != nil {
				t.Fatal(err)
			}
			s := newSim(t, open, limit)
			s.run(ops, tt.stdio)
			var foreign []int
			for _, n := range open {
				if n > 2 {
					foreign = append(foreign, n)
				}
			}
			s.check(tt.fds, tt.stdio, open, foreign)
			if t.Failed() {
				for _, o := range ops {
					t.Logf("%v fd=%d to=%d flags=%#x val=%d", o.code, o.fd, o.to, o.flags, o.val)
				}
			}
		})
	}
}

func TestPlanErrors(t *testing.T) {
	tests := []struct {
		name  string
		fds   []image.FD
		stdio Stdio
		open  []int
		want  string
	}{
		{"above the limit", cat(file(3), file(1024)), Stdio{}, []int{0, 1, 2},
			"fd 1024: number not below"},
		{"foreign collision", cat(file(3), file(7)), Stdio{}, []int{0, 1, 2, 7},
			"fd 7: the target already"},
		{"stdio without inherited", cat(stdioFD(1)), Stdio{}, []int{0, 2}, "fd 1: stdio to keep"},
		{"one pipe end", pipeFDs(1, 3, 4)[:1], Stdio{}, nil, "pipe 1: only one end"},
		{"dup of nothing", cat(dupOf(5, 4, "file")), Stdio{}, nil, "fd 5: dup of fd 4"},
		{"dup of dup", cat(file(3), dupOf(4, 3, "file"), dupOf(5, 4, "file")), Stdio{}, nil,
			"fd 5: dup of fd 4"},
		{"epoll of nothing", cat(epoll(3, 9)), Stdio{}, nil, "fd 3: epoll watch of fd 9"},
		{"stdio at 3", cat(stdioFD(3)), Stdio{}, nil, "fd 3: stdio kind above 2"},
		{"twice", cat(file(3), file(3)), Stdio{}, nil, "fd 3: recorded twice"},
		{"unknown kind", cat(image.FD{Num: 3, Kind: "io_uring"}), Stdio{}, nil, `fd 3: unknown kind`},
		{"socket without state", cat(image.FD{Num: 3, Kind: "socket"}), Stdio{}, nil,
			`fd 3: socket without socket state`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := plan(tt.fds, tt.stdio, tt.open, 1024)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("plan error %v, want %q", err, tt.want)
			}
		})
	}
}

// TestPlanRandom plans random layouts of pipes, dups, stdio and other objects
// over random sets of inherited descriptors, and runs each plan on the simulator.
func TestPlanRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := range 3000 {
		max := 4 + rng.IntN(12)
		if iter%10 == 0 {
			max = 1100
		}
		nums := rng.Perm(max)[:1+rng.IntN(min(max, 10))]
		var fds []image.FD
		var primaries []int
		for i := 0; i < len(nums); i++ {
			n := nums[i]
			var fd image.FD
			switch k := rng.IntN(8); {
			case k == 6 && i+1 < len(nums):
				p := sockPair(n, nums[i+1])
				p[0].Cloexec, p[1].Cloexec = rng.IntN(2) == 0, rng.IntN(2) == 0
				fds = append(fds, p...)
				primaries = append(primaries, n, nums[i+1])
				i++
				continue
			case k == 7 && i%2 == 0:
				fd = resetSocket(n)
			case k == 7:
				fd = listenSocket(n)
			case k == 0 && i+1 < len(nums):
				p := pipeFDs(uint64(i), n, nums[i+1])
				p[0].Cloexec, p[1].Cloexec = rng.IntN(2) == 0, rng.IntN(2) == 0
				fds = append(fds, p...)
				primaries = append(primaries, n, nums[i+1])
				i++
				continue
			case k == 1 && len(primaries) > 0:
				fd = dupOf(n, primaries[rng.IntN(len(primaries))], "file")
			case k == 2 && n <= 2:
				fd = stdioFD(n)
			case k == 3:
				fd = eventfd(n)
			default:
				fd = file(n)
			}
			fd.Cloexec = rng.IntN(2) == 0
			fds = append(fds, fd)
			if fd.DupOf == nil {
				primaries = append(primaries, n)
			}
		}
		for i := range fds {
			if fds[i].DupOf != nil {
				fds[i].Kind = kindOf(fds, *fds[i].DupOf)
			}
		}
		var stdio Stdio
		open := []int{}
		for i := range 3 {
			if rng.IntN(4) != 0 {
				open = append(open, i)
			}
			if rng.IntN(4) == 0 {
				stdio.Paths[i] = "/path"
			}
		}
		// Keep only stdio that can be kept.
		for i := range fds {
			if n := fds[i].Num; fds[i].Kind == image.FDStdio && n <= 2 && stdio.Paths[n] == "" &&
				!slices.Contains(open, n) {
				stdio.Paths[n] = "/path"
			}
		}
		t.Run(fmt.Sprint(iter), func(t *testing.T) {
			ops, err := plan(fds, stdio, open, 1200)
			if err != nil {
				t.Fatalf("%v\nfds %+v", err, fds)
			}
			s := newSim(t, open, 1200)
			s.run(ops, stdio)
			s.check(fds, stdio, open, nil)
			if t.Failed() {
				t.Logf("fds %+v open %v stdio %q", fds, open, stdio.Paths)
			}
		})
	}
}

func kindOf(fds []image.FD, n int) image.FDKind {
	for _, fd := range fds {
		if fd.Num == n {
			return fd.Kind
		}
	}
	return ""
}
