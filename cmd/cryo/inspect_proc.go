package main

import (
	"fmt"
	"time"

	"github.com/cryo-dev/cryo/engine/image"
)

// printProc prints the process-wide state of an image of version 2 or later.
func printProc(p *image.Proc) {
	if p == nil {
		fmt.Printf("state     not recorded (image version 1)\n")
		return
	}
	c := p.Creds
	fmt.Printf("creds     uid %d/%d/%d gid %d/%d/%d groups %v caps eff %#x prm %#x amb %#x\n",
		c.Uid[0], c.Uid[1], c.Uid[2], c.Gid[0], c.Gid[1], c.Gid[2], c.Groups, c.CapEff,
		c.CapPrm, c.CapAmb)
	fmt.Printf("session   sid %d pgid %d, umask %#o, cwd %s, root %s\n", p.Sid, p.Pgid, p.Umask,
		p.Cwd.Path, p.Root.Path)
	pending := len(p.Pending)
	for _, tp := range p.Threads {
		pending += len(tp.Pending)
	}
	fmt.Printf("timers    %d interval, %d POSIX; %d signals pending\n", len(p.Itimers),
		len(p.Timers), pending)
}

// timerfdDetail describes a timerfd for fdDetail.
func timerfdDetail(t *image.Timerfd) string {
	s := fmt.Sprintf("clock %d, %v left, every %v", t.Clock, time.Duration(t.Remaining),
		time.Duration(t.Interval))
	if t.Expiry != 0 {
		s += fmt.Sprintf(", absolute expiry %d", t.Expiry)
	}
	if t.Ticks != 0 {
		s += fmt.Sprintf(", %d ticks unread", t.Ticks)
	}
	return s
}
