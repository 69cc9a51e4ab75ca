package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// line is one line of output and when bench read it.
type line struct {
	at   time.Time
	text string
}

// lineReader timestamps the lines of one stream as they arrive.
type lineReader struct {
	ch   chan line
	all  []line // every line handed out by next, in order
	done bool
}

func newLineReader(r io.Reader) *lineReader {
	lr := &lineReader{ch: make(chan line, 4096)}
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			lr.ch <- line{time.Now(), sc.Text()}
		}
		close(lr.ch)
	}()
	return lr
}

// waitFor returns the first line containing sub, or an error at timeout or
// end of stream.
func (lr *lineReader) waitFor(sub string, timeout time.Duration) (line, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case l, ok := <-lr.ch:
			if !ok {
				return line{}, fmt.Errorf("wait for %q: stream ended; last lines: %s",
					sub, lr.tail())
			}
			lr.all = append(lr.all, l)
			if strings.Contains(l.text, sub) {
				return l, nil
			}
		case <-t.C:
			return line{}, fmt.Errorf("wait for %q: no such line after %v; last lines: %s",
				sub, timeout, lr.tail())
		}
	}
}

// drain reads the stream to its end and returns every line seen.
func (lr *lineReader) drain() []line {
	for l := range lr.ch {
		lr.all = append(lr.all, l)
	}
	return lr.all
}

func (lr *lineReader) tail() string {
	n := max(0, len(lr.all)-5)
	var s []string
	for _, l := range lr.all[n:] {
		s = append(s, l.text)
	}
	return strings.Join(s, " | ")
}

// proc is a child process with its stdout and stderr read line by line.
type proc struct {
	cmd    *exec.Cmd
	stdout *lineReader
	stderr *lineReader
}

// start runs name with args, stdin /dev/null, stdout and stderr piped.
func start(name string, args ...string) (*proc, error) {
	return startEnv(nil, name, args...)
}

// startEnv is start with env added to bench's environment.
func startEnv(env []string, name string, args ...string) (*proc, error) {
	cmd := exec.Command(name, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	errp, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return &proc{cmd: cmd, stdout: newLineReader(out), stderr: newLineReader(errp)}, nil
}

// kill sends SIGKILL to the process and to every process below it (a cryo run
// reaper and its program, a process restored by cryo restore), then reads
// both streams to their end and reaps it, so that its pid is free again. A
// stream still held open by a process that escaped is given up on after a
// few seconds rather than waited for.
func (p *proc) kill() {
	pid := p.cmd.Process.Pid
	below := descendants(pid)
	p.cmd.Process.Kill()
	for _, d := range below {
		unix.Kill(d, unix.SIGKILL)
	}
	p.drainFor(5 * time.Second)
	p.cmd.Wait()
}

// wait reads both streams to their end and reaps the process. A process that
// has not ended after timeout is killed, with everything below it.
func (p *proc) wait(timeout time.Duration) error {
	done := make(chan struct{})
	go func() {
		p.stdout.drain()
		p.stderr.drain()
		close(done)
	}()
	select {
	case <-done:
		return p.cmd.Wait()
	case <-time.After(timeout):
		p.kill()
		<-done
		return fmt.Errorf("%s did not end within %v: killed", filepath.Base(p.cmd.Path),
			timeout)
	}
}

// drainFor reads both streams until they end or d passes.
func (p *proc) drainFor(d time.Duration) {
	done := make(chan struct{})
	go func() {
		p.stdout.drain()
		p.stderr.drain()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(d):
	}
}

// failed kills the process and returns err with what it last wrote to stderr
// and how it ended, for a workload that did not do what bench waited for.
func (p *proc) failed(err error) error {
	p.kill()
	return fmt.Errorf("%w (%s %v; stderr: %s)", err, filepath.Base(p.cmd.Path),
		p.cmd.ProcessState, p.stderr.tail())
}

var fieldRE = map[string]*regexp.Regexp{}

// field returns the value of key=value in a slog text line ("" if absent).
func field(text, key string) string {
	re, ok := fieldRE[key]
	if !ok {
		re = regexp.MustCompile(`(?:^| )` + regexp.QuoteMeta(key) + `=("[^"]*"|\S+)`)
		fieldRE[key] = re
	}
	m := re.FindStringSubmatch(text)
	if m == nil {
		return ""
	}
	return strings.Trim(m[1], `"`)
}

// durField parses a duration field of a slog line.
func durField(text, key string) (time.Duration, error) {
	v := field(text, key)
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("field %s of %q: %w", key, text, err)
	}
	return d, nil
}

// intField parses an integer field of a slog line.
func intField(text, key string) (int64, error) {
	v, err := strconv.ParseInt(field(text, key), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("field %s of %q: %w", key, text, err)
	}
	return v, nil
}

// trigger is a file whose existence tells a workload to verify and exit.
type trigger string

func (t trigger) fire() error { return os.WriteFile(string(t), nil, 0o644) }
func (t trigger) reset() error {
	err := os.Remove(string(t))
	if os.IsNotExist(err) {
		return nil
	}
	return err
}
