package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cryo-dev/cryo/pagestore"
)

// defaultMetricsHost is where --metrics listens when its address names no host.
const defaultMetricsHost = "127.0.0.1"

// periodicMetrics are the metrics of cryo run and cryo watch beyond the engine's:
// failed checkpoints, what --keep retired, and the size of the store.
type periodicMetrics struct {
	failures      prometheus.Counter
	removed       prometheus.Counter
	reclaimed     prometheus.Counter
	snapshots     prometheus.Gauge
	logicalBytes  prometheus.Gauge
	physicalBytes prometheus.Gauge
}

// newPeriodicMetrics creates the periodic-mode metrics and registers them with reg.
func newPeriodicMetrics(reg prometheus.Registerer) *periodicMetrics {
	m := &periodicMetrics{
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cryo_checkpoint_failures_total",
			Help: "Checkpoints that failed while the process was still running.",
		}),
		removed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cryo_snapshots_removed_total",
			Help: "Snapshots of this run removed because --keep retired them.",
		}),
		reclaimed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cryo_store_reclaimed_bytes_total",
			Help: "Bytes of store files that garbage collection removed after --keep " +
				"retired snapshots.",
		}),
		snapshots: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cryo_store_snapshots",
			Help: "Snapshots in the store.",
		}),
		logicalBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cryo_store_logical_bytes",
			Help: "Memory the store's snapshots describe, summed over the snapshots, " +
				"in bytes.",
		}),
		physicalBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cryo_store_physical_bytes",
			Help: "Bytes of the files in the store folder: packs, their indexes and " +
				"the manifests.",
		}),
	}
	reg.MustRegister(m.failures, m.removed, m.reclaimed, m.snapshots, m.logicalBytes,
		m.physicalBytes)
	return m
}

// measureStore sets the store gauges. It reads every manifest and walks the store
// folder, so it runs once per checkpoint rather than on each scrape.
func (m *periodicMetrics) measureStore(st *pagestore.Store) error {
	snaps, err := st.List()
	if err != nil {
		return fmt.Errorf("measure store: %w", err)
	}
	var logical int64
	for _, s := range snaps {
		logical += s.Stats.LogicalBytes
	}
	physical, err := dirBytes(st.Dir())
	if err != nil {
		return fmt.Errorf("measure store: %w", err)
	}
	m.snapshots.Set(float64(len(snaps)))
	m.logicalBytes.Set(float64(logical))
	m.physicalBytes.Set(float64(physical))
	return nil
}

// dirBytes is the total size of the regular files under dir. Files that vanish
// while it walks (a GC in another process) are skipped.
func dirBytes(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && path != dir {
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		n += info.Size()
		return nil
	})
	return n, err
}

// metricsAddr turns the --metrics value into a listen address. A bare port
// ("9464") or an address without a host (":9464") listens on loopback only; any
// other host, 0.0.0.0 included, is taken as given.
func metricsAddr(flag string) (string, error) {
	if _, err := strconv.ParseUint(flag, 10, 16); err == nil {
		return net.JoinHostPort(defaultMetricsHost, flag), nil
	}
	host, port, err := net.SplitHostPort(flag)
	if err != nil {
		return "", fmt.Errorf("--metrics %q: want HOST:PORT, :PORT or PORT: %w", flag, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", fmt.Errorf("--metrics %q: port %q is not a number from 0 to 65535",
			flag, port)
	}
	if host == "" {
		host = defaultMetricsHost
	}
	return net.JoinHostPort(host, port), nil
}

// metricsServer serves a registry's metrics over HTTP at /metrics.
type metricsServer struct {
	srv *http.Server
	ln  net.Listener
}

// serveMetrics listens on the --metrics address and serves reg, with the Go
// runtime and process collectors added, until Close. It listens before it
// returns, so that a port in use is an error here rather than later.
func serveMetrics(flag string, reg *prometheus.Registry, log *slog.Logger) (*metricsServer,
	error) {
	addr, err := metricsAddr(flag)
	if err != nil {
		return nil, err
	}
	reg.MustRegister(collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("serve metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	s := &metricsServer{ln: ln, srv: &http.Server{Handler: mux,
		ReadHeaderTimeout: 10 * time.Second}}
	go s.srv.Serve(ln)
	log.Info("serving metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return s, nil
}

// Close stops the server at once.
func (s *metricsServer) Close() error { return s.srv.Close() }
