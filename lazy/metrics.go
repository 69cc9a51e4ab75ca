package lazy

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the page server's Prometheus metrics. One Metrics may be
// shared by several servers.
type Metrics struct {
	faultLatency prometheus.Histogram
	faults       prometheus.Counter
	prefetched   prometheus.Counter
	zero         prometheus.Counter
}

// NewMetrics builds the page server's metrics and registers them with reg
// (nil: not registered). It panics if reg already holds metrics of the same
// names, as prometheus.MustRegister does.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		faultLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "cryo_lazy_fault_latency_seconds",
			Help: "Time the page server took to answer a page fault, from reading " +
				"the fault to the page being in.",
			// 2µs to about 10ms, doubling.
			Buckets: prometheus.ExponentialBuckets(2e-6, 2, 13),
		}),
		faults: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cryo_lazy_faults_total",
			Help: "Page faults the page server answered.",
		}),
		prefetched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cryo_lazy_prefetched_pages_total",
			Help: "Pages the page server installed ahead of any fault.",
		}),
		zero: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cryo_lazy_zero_pages_total",
			Help: "Page faults the page server answered with a zero page.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.faultLatency, m.faults, m.prefetched, m.zero)
	}
	return m
}
