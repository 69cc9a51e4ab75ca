package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// program is a workload other than memfill that bench checkpoints once and
// restores lazily: the fd workload and a real program (python3).
type program struct {
	name string
	argv []string
	// ready waits until the running workload is worth checkpointing.
	ready func(p *proc) error
	// finish runs once the restored process runs again (p is the foreground
	// cryo restore, whose stdio the process inherited): it lets the workload
	// check itself and returns an error unless the check passed.
	finish func(p *proc) error
	// timeout bounds each wait.
	timeout time.Duration
}

// programs returns the fd workload and the python3 workload.
func programs(e *env, root string) []program {
	trig := trigger(filepath.Join(e.dir, "trigger-prog"))
	fdDir := filepath.Join(e.dir, "fdholder-files")
	out := filepath.Join(e.dir, "progress.out")
	const steps = 32
	return []program{
		{
			name: "fdholder",
			argv: []string{e.fdholder, string(trig), fdDir},
			ready: func(p *proc) error {
				trig.reset()
				_, err := p.stdout.waitFor("ready", 30*time.Second)
				return err
			},
			finish: func(p *proc) error {
				defer trig.reset()
				if err := trig.fire(); err != nil {
					return err
				}
				_, err := p.stdout.waitFor("OK", 30*time.Second)
				return err
			},
			timeout: 30 * time.Second,
		},
		{
			// progress.py builds ~7.5 MiB of Python objects per step, 0.3 s
			// apart; it is checkpointed after step 16 (~120 MiB) and, once
			// restored, runs on to 32 steps and re-reads everything it built.
			name: "python3",
			argv: []string{"python3", filepath.Join(root, "bench", "workloads", "progress.py"),
				out, strconv.Itoa(steps), "0.3"},
			ready: func(p *proc) error {
				os.Remove(out)
				return waitLines(out, steps/2, 60*time.Second)
			},
			finish: func(p *proc) error {
				if _, err := p.stdout.waitFor("done", 120*time.Second); err != nil {
					return err
				}
				last, err := lastLine(out)
				if err != nil {
					return err
				}
				if !strings.HasPrefix(last, fmt.Sprintf("final steps %d ", steps)) ||
					!strings.HasSuffix(last, "verify ok") {
					return fmt.Errorf("progress.py after restore: last line %q", last)
				}
				return nil
			},
			timeout: 120 * time.Second,
		},
	}
}

// benchProgram checkpoints prog once, copies it naively, kills it and
// restores the snapshot lazily, then lets the workload check itself.
func benchProgram(res *Results, e *env, prog program) error {
	store := filepath.Join(e.dir, "store-"+prog.name)
	os.RemoveAll(store)
	defer os.RemoveAll(store)

	w, err := start(prog.argv[0], prog.argv[1:]...)
	if err != nil {
		return err
	}
	if err := prog.ready(w); err != nil {
		return w.failed(fmt.Errorf("%s before checkpoint: %w", prog.name, err))
	}
	pid := w.cmd.Process.Pid

	ck, err := checkpoint(e, store, pid)
	if err != nil {
		w.kill()
		return fmt.Errorf("%s: %w", prog.name, err)
	}

	img := filepath.Join(e.dir, "naive-"+prog.name+".img")
	defer os.Remove(img)
	nv, err := naiveCopy(pid, img)
	w.kill()
	if err != nil {
		return fmt.Errorf("naive copy of %s: %w", prog.name, err)
	}
	readBack, err := naiveReadBack(img)
	if err != nil {
		return err
	}

	t0 := time.Now()
	p, err := start(e.cryo, e.cryoArgs(store, "restore", ck.id)...)
	if err != nil {
		return err
	}
	l, err := p.stderr.waitFor("msg=restored", prog.timeout)
	if err != nil {
		p.kill()
		return fmt.Errorf("restore %s: %w", prog.name, err)
	}
	toRun, err := durField(l.text, "to_run")
	if err != nil {
		p.kill()
		return err
	}
	if err := prog.finish(p); err != nil {
		p.kill()
		return fmt.Errorf("%s after restore: %w; cryo said: %s", prog.name, err,
			p.stderr.tail())
	}
	if err := p.wait(prog.timeout); err != nil {
		return fmt.Errorf("cryo restore %s: %w: %s", prog.name, err, p.stderr.tail())
	}
	var allIn time.Duration
	for _, l := range p.stderr.all {
		if strings.Contains(l.text, "lazy restore done") {
			allIn = l.at.Sub(t0)
		}
	}

	add(res, "program", "checkpoint wall "+prog.name, "ms", ms(ck.wall), ms(nv.wall))
	add(res, "program", "checkpoint stopped "+prog.name, "ms", ms(ck.frozen), ms(nv.stopped))
	add(res, "program", "stored "+prog.name, "MiB", mib(ck.stored), mib(nv.bytes))
	add(res, "program", "lazy to run "+prog.name, "ms", ms(toRun), ms(readBack))
	if allIn == 0 {
		return fmt.Errorf("cryo restore of %s logged no \"lazy restore done\": %s", prog.name,
			p.stderr.tail())
	}
	add(res, "program", "lazy all in "+prog.name, "ms", ms(allIn), ms(readBack))
	return nil
}

// waitLines waits until path holds at least n lines.
func waitLines(path string, n int, timeout time.Duration) error {
	end := time.Now().Add(timeout)
	for {
		data, err := os.ReadFile(path)
		if err == nil && strings.Count(string(data), "\n") >= n {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("%s: fewer than %d lines after %v", path, n, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lastLine returns the last line of the file at path.
func lastLine(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var last string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		last = sc.Text()
	}
	return last, sc.Err()
}
