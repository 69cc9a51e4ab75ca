package engine

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the engine's Prometheus metrics: checkpoints and restores.
type Metrics struct {
	checkpointSeconds prometheus.Histogram
	frozenSeconds     prometheus.Histogram
	checkpoints       prometheus.Counter
	pagesDirty        prometheus.Counter
	pagesStored       prometheus.Counter
	pagesDedup        prometheus.Counter
	pagesZero         prometheus.Counter
	bytesStored       prometheus.Counter
	snapshotBytes     prometheus.Gauge
	restoreToRun      prometheus.Histogram
}

// NewMetrics creates the engine's metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	// From 100 µs to about 6.5 s, doubling.
	buckets := prometheus.ExponentialBuckets(0.0001, 2, 17)
	m := &Metrics{
		checkpointSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cryo_checkpoint_duration_seconds",
			Help:    "Time a checkpoint took from start to durable snapshot.",
			Buckets: buckets,
		}),
		frozenSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cryo_checkpoint_frozen_seconds",
			Help:    "Time the process was stopped during a checkpoint.",
			Buckets: buckets,
		}),
		checkpoints: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cryo_checkpoints_total",
			Help: "Checkpoints completed.",
		}),
		pagesDirty: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cryo_pages_dirty_total",
			Help: "Pages copied because they were written since the parent snapshot " +
				"(or because the memory was scanned whole).",
		}),
		pagesStored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cryo_pages_stored_total",
			Help: "Pages written to the store as new content.",
		}),
		pagesDedup: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cryo_pages_deduplicated_total",
			Help: "Pages whose content the store already held.",
		}),
		pagesZero: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cryo_pages_zero_total",
			Help: "Zero pages, recorded without storing anything.",
		}),
		bytesStored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cryo_store_physical_bytes_added_total",
			Help: "Compressed bytes checkpoints added to the store.",
		}),
		snapshotBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cryo_snapshot_logical_bytes",
			Help: "Memory described by the latest snapshot, in bytes.",
		}),
		restoreToRun: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cryo_restore_to_first_instruction_seconds",
			Help:    "Time from the start of a restore until the process ran again.",
			Buckets: buckets,
		}),
	}
	reg.MustRegister(m.checkpointSeconds, m.frozenSeconds, m.checkpoints, m.pagesDirty,
		m.pagesStored, m.pagesDedup, m.pagesZero, m.bytesStored, m.snapshotBytes,
		m.restoreToRun)
	return m
}

func (m *Metrics) observeCheckpoint(r *Result) {
	st := r.Snapshot.Stats
	m.checkpointSeconds.Observe(r.Total.Seconds())
	m.frozenSeconds.Observe(r.Frozen.Seconds())
	m.checkpoints.Inc()
	m.pagesDirty.Add(float64(r.DirtyPages))
	m.pagesStored.Add(float64(st.NewPages))
	m.pagesDedup.Add(float64(st.DedupPages))
	m.pagesZero.Add(float64(st.ZeroPages))
	m.bytesStored.Add(float64(st.StoredBytes))
	m.snapshotBytes.Set(float64(st.LogicalBytes))
}
