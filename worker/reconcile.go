package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/glance-sidecar/glance-sidecar/glanceclient"
)

// ReconcileOptions configure a Reconciler.
type ReconcileOptions struct {
	// Interval is the time from the start of one pass to the start of the next (required).
	Interval time.Duration
	// Overlap is how much earlier than the start of the last good pass a pass looks (default 1
	// minute). See Reconciler.
	Overlap time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger gets one line per pass (default slog.Default()).
	Logger *slog.Logger
	// Registerer, when set, gets the glance_sidecar_reconcile_* metrics.
	Registerer prometheus.Registerer
}

// Reconciler finds the images whose events never arrived, and runs their jobs through a Pool.
// Glance declares its exchange transient, so a broker restart drops the sidecar's binding until
// it binds again; an image activated before the sidecar's queue first existed was never queued
// at all. Each pass lists the active images updated since the last pass (Glance's updated_at),
// keeps those a job would not skip — the pool's own decision, so an image whose outcome is
// current costs nothing but its place in the listing — and runs their jobs through the pool, as
// many at once as it has workers, sharing them with the events.
//
// The window a pass lists starts Overlap before the start of the last pass whose listing
// succeeded: updated_at has a resolution of one second, Glance stamps it on its own host's
// clock, and an update is stamped before its transaction commits, so an image may appear in a
// listing only after a later-starting listing has passed its updated_at. These gaps last
// seconds; a fixed minute covers them with room to spare, and does not grow with the interval
// as a multiple of it would (twice a 10-minute interval would list three times what is needed
// on every pass). A failed listing does not move the window, so the next pass covers the gap.
//
// The first pass, at start, looks back one Interval (plus Overlap): the events lost while a
// sidecar restarts or upgrades. A queue, once declared, is durable and keeps events for a
// sidecar that is down; what a longer gap lost, and the catalog that existed before the
// sidecar was installed, is what `glance-sidecar reprocess --all` is for. A job that fails in a
// pass is logged and counted, not recorded: its image is looked at again when it next changes,
// or by reprocess.
//
// A Reconciler makes one pass at a time: Run and Pass are not to be called concurrently.
type Reconciler struct {
	pool    *Pool
	opts    ReconcileOptions
	metrics *reconcileMetrics
	window  window
}

// PassResult is what one reconcile pass did.
type PassResult struct {
	// Since is the lower bound of the listing: images updated strictly after it.
	Since time.Time
	// Listed is the number of images listed; Queued how many of them lacked a current outcome
	// and were given to the pool.
	Listed, Queued int
	// Outcomes counts the queued jobs by outcome; a job that failed counts as "error".
	Outcomes map[Outcome]int
}

// NewReconciler returns a Reconciler that runs its jobs through pool, with the pool's job
// options (the property prefix, the version, the owner filter).
func NewReconciler(pool *Pool, opts ReconcileOptions) (*Reconciler, error) {
	if opts.Interval <= 0 {
		return nil, fmt.Errorf("reconcile interval %v is not positive", opts.Interval)
	}
	if opts.Overlap <= 0 {
		opts.Overlap = time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	r := &Reconciler{pool: pool, opts: opts, window: window{interval: opts.Interval, overlap: opts.Overlap}}
	if opts.Registerer != nil {
		m, err := newReconcileMetrics(opts.Registerer)
		if err != nil {
			return nil, fmt.Errorf("reconcile metrics: %w", err)
		}
		r.metrics = m
	}
	return r, nil
}

// Run makes a pass at once, then one every Interval (at once when a pass took longer), until
// ctx ends. A failed pass is logged; the next one covers what it missed.
func (r *Reconciler) Run(ctx context.Context) {
	for {
		start := r.opts.Now()
		if _, err := r.Pass(ctx); err != nil && ctx.Err() == nil {
			r.opts.Logger.Warn("reconcile pass failed", "error", err)
		}
		t := time.NewTimer(r.opts.Interval - r.opts.Now().Sub(start))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// Pass lists the active images updated since the last good pass (less the overlap), and runs
// the job for those without a current outcome. It returns once their jobs are done. An error
// means the listing failed; jobs that fail are counted in the result.
func (r *Reconciler) Pass(ctx context.Context) (PassResult, error) {
	start := r.opts.Now()
	since := r.window.since(start)
	res := PassResult{Since: since, Outcomes: map[Outcome]int{}}

	var ids []string
	owners := r.pool.opts.Owners
	if len(owners) == 0 {
		owners = []string{""}
	}
	for _, owner := range owners {
		err := EachImage(ctx, r.pool.c, glanceclient.ListOptions{Status: "active", Owner: owner, UpdatedAfter: since}, func(img *glanceclient.Image) error {
			res.Listed++
			if skipReason(img, r.pool.opts) == "" {
				ids = append(ids, img.ID)
			}
			return nil
		})
		if err != nil {
			r.metrics.pass(res, start, r.opts.Now(), false)
			return res, fmt.Errorf("reconcile: listing the images updated since %s: %w", since.UTC().Format(time.RFC3339), err)
		}
	}
	res.Queued = len(ids)
	var mu sync.Mutex
	r.pool.ProcessAll(ctx, ids, Batch{EventType: "reconcile"}, func(job Result, err error, _ time.Duration) {
		outcome := job.Outcome
		if err != nil {
			outcome = "error"
		}
		mu.Lock()
		res.Outcomes[outcome]++
		mu.Unlock()
	})
	if err := ctx.Err(); err != nil {
		// Jobs cut short: the window stays, so the next pass (after a restart, the first)
		// lists these images again.
		return res, fmt.Errorf("reconcile pass interrupted: %w", err)
	}
	r.window.done(start)
	end := r.opts.Now()
	r.metrics.pass(res, start, end, true)
	r.opts.Logger.Info("reconcile pass done", "since", since.UTC().Format(time.RFC3339), "listed", res.Listed, "queued", res.Queued,
		"outcomes", res.Outcomes, "duration", end.Sub(start).Round(time.Millisecond))
	return res, nil
}

// window is the span of updated_at a pass lists.
type window struct {
	interval, overlap time.Duration
	// last is the start of the last pass whose listing succeeded; zero before the first.
	last time.Time
}

// since is the lower bound of a pass starting at now: Overlap before the last good pass, or
// Interval and Overlap before now for the first.
func (w window) since(now time.Time) time.Time {
	if w.last.IsZero() {
		return now.Add(-w.interval - w.overlap)
	}
	return w.last.Add(-w.overlap)
}

// done records a pass that started at start and succeeded.
func (w *window) done(start time.Time) {
	if start.After(w.last) {
		w.last = start
	}
}

// reconcileMetrics are the glance_sidecar_reconcile_* metrics. A nil one records nothing.
type reconcileMetrics struct {
	passes           *prometheus.CounterVec
	listed, queued   prometheus.Counter
	lastImages       *prometheus.GaugeVec
	lastEnd, lastDur prometheus.Gauge
}

func newReconcileMetrics(reg prometheus.Registerer) (*reconcileMetrics, error) {
	m := &reconcileMetrics{
		passes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "glance_sidecar_reconcile_passes_total", Help: "Reconcile passes, by result (ok, error).",
		}, []string{"result"}),
		listed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "glance_sidecar_reconcile_images_listed_total", Help: "Images listed by reconcile passes.",
		}),
		queued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "glance_sidecar_reconcile_images_queued_total", Help: "Images without a current outcome that reconcile passes ran jobs for.",
		}),
		lastImages: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "glance_sidecar_reconcile_last_pass_images", Help: "Images the last good reconcile pass listed and queued, by kind (listed, queued).",
		}, []string{"kind"}),
		lastEnd: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "glance_sidecar_reconcile_last_pass_timestamp_seconds", Help: "When the last good reconcile pass ended (Unix time).",
		}),
		lastDur: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "glance_sidecar_reconcile_last_pass_duration_seconds", Help: "How long the last good reconcile pass took.",
		}),
	}
	for _, r := range []string{"ok", "error"} {
		m.passes.WithLabelValues(r).Add(0)
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.passes, m.listed, m.queued, m.lastImages, m.lastEnd, m.lastDur} {
		errs = append(errs, reg.Register(c))
	}
	return m, errors.Join(errs...)
}

func (m *reconcileMetrics) pass(res PassResult, start, end time.Time, ok bool) {
	if m == nil {
		return
	}
	m.listed.Add(float64(res.Listed))
	m.queued.Add(float64(res.Queued))
	if !ok {
		m.passes.WithLabelValues("error").Inc()
		return
	}
	m.passes.WithLabelValues("ok").Inc()
	m.lastImages.WithLabelValues("listed").Set(float64(res.Listed))
	m.lastImages.WithLabelValues("queued").Set(float64(res.Queued))
	m.lastEnd.Set(float64(end.UnixNano()) / 1e9)
	m.lastDur.Set(end.Sub(start).Seconds())
}
