package worker

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the job's Prometheus metrics. A nil *Metrics records nothing.
type Metrics struct {
	jobs     *prometheus.CounterVec
	duration *prometheus.HistogramVec
	bytes    *prometheus.CounterVec
}

// NewMetrics creates the job metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "glance_sidecar_jobs_total", Help: "Jobs by outcome (inspected, unsafe, converted, skipped, failed, error).",
		}, []string{"outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "glance_sidecar_job_stage_seconds", Help: "Time spent per job stage (wait, inspect, write; download, convert, upload for conversions, convert alone when the stages overlap).",
			Buckets: prometheus.ExponentialBuckets(0.005, 4, 9),
		}, []string{"stage"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "glance_sidecar_image_bytes_read_total", Help: "Image data read from Glance, by mode (range, stream).",
		}, []string{"mode"}),
	}
	for _, outcome := range []Outcome{OutcomeInspected, OutcomeUnsafe, OutcomeConverted, OutcomeSkipped, OutcomeFailed, "error"} {
		m.jobs.WithLabelValues(string(outcome)).Add(0)
	}
	for _, mode := range []string{"range", "stream"} {
		m.bytes.WithLabelValues(mode).Add(0)
	}
	for _, c := range []prometheus.Collector{m.jobs, m.duration, m.bytes} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Metrics) stage(name string, start time.Time) {
	if m != nil {
		m.duration.WithLabelValues(name).Observe(time.Since(start).Seconds())
	}
}

func (m *Metrics) done(res Result, err error) {
	if m == nil {
		return
	}
	outcome := string(res.Outcome)
	if err != nil {
		outcome = "error"
	}
	m.jobs.WithLabelValues(outcome).Inc()
	if res.Mode != "" {
		m.bytes.WithLabelValues(res.Mode).Add(float64(res.BytesRead))
	}
}
