package prom

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cryo-dev/cryo/pagestore"
)

// The environment TestMain prepares.
var (
	cryoBin, prometheusBin, promtoolBin string

	// skipReason is why this machine cannot run the test (not root).
	skipReason string

	// setupErr is a missing binary or a failed build: the test fails with it.
	setupErr error
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	// Inherited descriptors without close-on-exec would reach the program cryo
	// runs, whose checkpoints would then refuse them.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		fmt.Fprintf(os.Stderr, "prom: mark inherited fds close-on-exec: %v\n", err)
		return 2
	}
	if os.Geteuid() != 0 {
		skipReason = fmt.Sprintf("this test needs root (running as uid %d): cryo "+
			"ptraces the program it checkpoints", os.Geteuid())
		fmt.Fprintf(os.Stderr, "\n*** prom: cannot run here: %s ***\n\n", skipReason)
	}
	tmp, err := os.MkdirTemp("", "cryo-prom-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "prom: %v\n", err)
		return 2
	}
	defer os.RemoveAll(tmp)
	if setupErr = setup(tmp); setupErr != nil {
		fmt.Fprintf(os.Stderr, "\n*** prom: setup: %v ***\n\n", setupErr)
	}
	return m.Run()
}

// setup finds prometheus and promtool and builds cryo (unless CRYO_BIN names it).
func setup(dir string) error {
	var errs []error
	for _, b := range []struct {
		name string
		path *string
	}{{"prometheus", &prometheusBin}, {"promtool", &promtoolBin}} {
		p, err := exec.LookPath(b.name)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s is not installed (Debian package "+
				"prometheus; `make deps` installs it): %w", b.name, err))
		}
		*b.path = p
	}
	cryoBin = os.Getenv("CRYO_BIN")
	if cryoBin == "" {
		cryoBin = filepath.Join(dir, "cryo")
		cmd := exec.Command("go", "build", "-o", cryoBin, "./cmd/cryo")
		cmd.Dir = filepath.Join("..", "..")
		if out, err := cmd.CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("go build ./cmd/cryo: %w\n%s", err, out))
		}
	}
	if _, err := exec.LookPath("python3"); err != nil {
		errs = append(errs, fmt.Errorf("find python3 (`make deps` installs it): %w", err))
	}
	return errors.Join(errs...)
}

// require stops t when the machine cannot run the test, skipping with the reason
// or failing when CRYO_E2E_REQUIRE=1, and fails it when setup failed.
func require(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		if os.Getenv("CRYO_E2E_REQUIRE") == "1" {
			t.Fatalf("end-to-end tests required (CRYO_E2E_REQUIRE=1) but cannot run: %s",
				skipReason)
		}
		t.Skipf("SKIPPING end-to-end test (needs root): %s", skipReason)
	}
	if setupErr != nil {
		t.Fatalf("setup: %v", setupErr)
	}
}

// program dirties a few pages of an 8 MiB buffer every 10 ms, forever.
const program = `
import time
buf = bytearray(8 << 20)
i = 0
while True:
    buf[(i * 4096 * 13) % len(buf)] = i & 0xff
    i += 1
    time.sleep(0.01)
`

// keep is the --keep the test runs cryo with.
const keep = 3

// TestPrometheusScrapesCryoRun runs `cryo run --interval 500ms --keep 3 --metrics`
// on a python3 program and a Prometheus server scraping it every second; it
// reads cryo_checkpoints_total (at least 3) and the frozen-time histogram back
// through the Prometheus HTTP API, lints the raw exposition with promtool, then
// stops cryo with SIGTERM and checks the program's exit status and that the
// snapshots --keep kept read back whole although their parents were removed.
func TestPrometheusScrapesCryoRun(t *testing.T) {
	require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	metricsAddr := freeAddr(t)

	// cryo run, its stdout and stderr in files.
	stdout, stderr := filepath.Join(dir, "stdout"), filepath.Join(dir, "stderr")
	cryo := exec.Command(cryoBin, "--store", store, "--log-level", "info", "run",
		"--interval", "500ms", "--keep", strconv.Itoa(keep), "--metrics", metricsAddr,
		"--", "python3", "-c", program)
	cryo.Stdout, cryo.Stderr = createFile(t, stdout), createFile(t, stderr)
	if err := cryo.Start(); err != nil {
		t.Fatal(err)
	}
	// cryoDone is closed once cryo has exited, with cryoErr what Wait returned.
	cryoDone := make(chan struct{})
	var cryoErr error
	go func() { cryoErr = cryo.Wait(); close(cryoDone) }()
	t.Cleanup(func() {
		cryo.Process.Signal(syscall.SIGTERM) // passed on to the program
		select {
		case <-cryoDone:
		case <-time.After(10 * time.Second):
			cryo.Process.Kill()
			<-cryoDone
		}
		logFile(t, "cryo stderr", stderr)
	})

	// Prometheus, scraping cryo every second.
	promAddr := freeAddr(t)
	config := filepath.Join(dir, "prometheus.yml")
	writeFile(t, config, fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: cryo
    static_configs:
      - targets: ['%s']
`, metricsAddr))
	promLog := filepath.Join(dir, "prometheus.log")
	prom := exec.Command(prometheusBin, "--config.file="+config,
		"--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address="+promAddr, "--log.level=warn")
	prom.Stdout = createFile(t, promLog)
	prom.Stderr = prom.Stdout
	if err := prom.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		prom.Process.Kill()
		prom.Wait()
		logFile(t, "prometheus log", promLog)
	})
	api := "http://" + promAddr

	// Read the counter and the histogram back through Prometheus.
	deadline := time.Now().Add(2 * time.Minute)
	n := waitQuery(t, api, "cryo_checkpoints_total", 3, deadline, cryoDone)
	t.Logf("prometheus: cryo_checkpoints_total = %v", n)
	frozen := waitQuery(t, api, "cryo_checkpoint_frozen_seconds_count", 3, deadline, cryoDone)
	t.Logf("prometheus: cryo_checkpoint_frozen_seconds_count = %v", frozen)
	inf := waitQuery(t, api, `cryo_checkpoint_frozen_seconds_bucket{le="+Inf"}`, 3, deadline,
		cryoDone)
	if inf != frozen && inf < frozen {
		t.Errorf("frozen histogram: +Inf bucket %v below count %v", inf, frozen)
	}
	q50 := query(t, api, "histogram_quantile(0.5, cryo_checkpoint_frozen_seconds_bucket)")
	if !(q50 > 0 && q50 < 60) {
		t.Errorf("median frozen time from the histogram: %v s, want a time above 0", q50)
	}
	t.Logf("prometheus: median frozen time %.4f s", q50)
	if up := query(t, api, `up{job="cryo"}`); up != 1 {
		t.Errorf(`up{job="cryo"} = %v, want 1`, up)
	}
	for _, q := range []string{"cryo_store_physical_bytes", "cryo_store_logical_bytes",
		"cryo_pages_dirty_total"} {
		v := waitQuery(t, api, q, 1, deadline, cryoDone)
		t.Logf("prometheus: %s = %v", q, v)
	}

	// Lint the exposition itself.
	text := get(t, "http://"+metricsAddr+"/metrics")
	lint := exec.Command(promtoolBin, "check", "metrics")
	lint.Stdin = bytes.NewReader(text)
	out, err := lint.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}

	// SIGTERM to cryo alone reaches the program; cryo exits with its status.
	cryo.Process.Signal(syscall.SIGTERM)
	select {
	case <-cryoDone:
		var ee *exec.ExitError
		if !errors.As(cryoErr, &ee) || ee.ExitCode() != 128+int(syscall.SIGTERM) {
			t.Errorf("cryo run after SIGTERM: %v, want exit status %d", cryoErr,
				128+int(syscall.SIGTERM))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("cryo run did not exit within 30 s of SIGTERM")
	}
	if b, _ := os.ReadFile(stdout); len(b) != 0 {
		t.Errorf("cryo run wrote to stdout, which is the program's: %q", b)
	}
	checkKept(t, store, stderr)
}

// checkKept checks that the store holds exactly the last `keep` snapshots cryo
// run printed, and that each reads back whole.
func checkKept(t *testing.T, store, stderr string) {
	t.Helper()
	b, err := os.ReadFile(stderr)
	if err != nil {
		t.Fatal(err)
	}
	var printed []string
	for _, line := range strings.Split(string(b), "\n") {
		if id, ok := strings.CutPrefix(line, "cryo: snapshot "); ok {
			printed = append(printed, id)
		}
	}
	if len(printed) <= keep {
		t.Fatalf("cryo run printed %d snapshots; the test needs more than --keep %d",
			len(printed), keep)
	}
	st, err := pagestore.Open(store, pagestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	list, err := st.List()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range list {
		ids = append(ids, s.ID)
	}
	want := printed[len(printed)-keep:]
	if strings.Join(ids, " ") != strings.Join(want, " ") {
		t.Fatalf("store holds %v; want the last %d printed, %v", ids, keep, want)
	}
	buf := make([]byte, pagestore.PageSize)
	for _, id := range ids {
		sn, err := st.OpenSnapshot(id)
		if err != nil {
			t.Fatal(err)
		}
		pm, err := sn.PageMap()
		if err != nil {
			t.Fatal(err)
		}
		read := 0
		for _, e := range pm {
			if e.Zero {
				continue
			}
			if err := sn.ReadPage(e.ID, buf); err != nil {
				t.Fatalf("snapshot %s (parent %s): page %#x: %v", id, sn.Info().Parent,
					e.Addr, err)
			}
			read++
		}
		sn.Close()
		t.Logf("snapshot %s: %d pages, %d read back", id, len(pm), read)
	}
}

// waitQuery polls an instant query until its single value is at least min, and
// returns it. It fails when the deadline passes or cryo ends first.
func waitQuery(t *testing.T, api, q string, min float64, deadline time.Time,
	cryoDone <-chan struct{}) float64 {
	t.Helper()
	var last float64
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-cryoDone:
			t.Fatalf("cryo run ended while waiting for %s >= %v", q, min)
		default:
		}
		last, lastErr = tryQuery(api, q)
		if lastErr == nil && last >= min {
			return last
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("prometheus: %s did not reach %v (last %v, %v)", q, min, last, lastErr)
	return 0
}

// query runs an instant query that must give one sample.
func query(t *testing.T, api, q string) float64 {
	t.Helper()
	v, err := tryQuery(api, q)
	if err != nil {
		t.Fatalf("prometheus: %s: %v", q, err)
	}
	return v
}

// tryQuery runs an instant query through /api/v1/query and returns the value of
// its one sample.
func tryQuery(api, q string) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET",
		api+"/api/v1/query?query="+url.QueryEscape(q), nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, fmt.Errorf("decode answer: %w", err)
	}
	if r.Status != "success" {
		return 0, fmt.Errorf("status %q: %s", r.Status, r.Error)
	}
	if r.Data.ResultType != "vector" || len(r.Data.Result) != 1 {
		return 0, fmt.Errorf("want one sample, got %s of %d", r.Data.ResultType,
			len(r.Data.Result))
	}
	s, ok := r.Data.Result[0].Value[1].(string)
	if !ok {
		return 0, fmt.Errorf("sample value %v is not a string", r.Data.Result[0].Value[1])
	}
	return strconv.ParseFloat(s, 64)
}

// get fetches url and returns the body of a 200 answer.
func get(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("get %s: %s, %v", url, resp.Status, err)
	}
	return b
}

// freeAddr returns a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func createFile(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// logFile logs a file's lines, for the failure's context.
func logFile(t *testing.T, what, path string) {
	b, _ := os.ReadFile(path)
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line != "" {
			t.Logf("%s: %s", what, line)
		}
	}
}
