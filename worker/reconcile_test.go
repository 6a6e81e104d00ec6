package worker

import (
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestReconcileWindow(t *testing.T) {
	t0 := time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC)
	type step struct {
		now  time.Time
		ok   bool // the pass's listing succeeded
		want time.Time
	}
	tests := []struct {
		name              string
		interval, overlap time.Duration
		steps             []step
	}{
		{"first pass looks back an interval and the overlap", 10 * time.Minute, time.Minute, []step{
			{t0, true, t0.Add(-11 * time.Minute)},
		}},
		{"later passes start an overlap before the last good one", 10 * time.Minute, time.Minute, []step{
			{t0, true, t0.Add(-11 * time.Minute)},
			{t0.Add(10 * time.Minute), true, t0.Add(-time.Minute)},
			{t0.Add(20 * time.Minute), true, t0.Add(9 * time.Minute)},
		}},
		{"a failed pass keeps the window", 10 * time.Minute, time.Minute, []step{
			{t0, true, t0.Add(-11 * time.Minute)},
			{t0.Add(10 * time.Minute), false, t0.Add(-time.Minute)},
			{t0.Add(20 * time.Minute), false, t0.Add(-time.Minute)},
			{t0.Add(30 * time.Minute), true, t0.Add(-time.Minute)},
			{t0.Add(40 * time.Minute), true, t0.Add(29 * time.Minute)},
		}},
		{"a failed first pass keeps looking back from its own start", 2 * time.Second, time.Minute, []step{
			{t0, false, t0.Add(-62 * time.Second)},
			{t0.Add(2 * time.Second), true, t0.Add(-60 * time.Second)},
			{t0.Add(4 * time.Second), true, t0.Add(-58 * time.Second)},
		}},
		{"the overlap does not grow with the interval", time.Hour, time.Minute, []step{
			{t0, true, t0.Add(-61 * time.Minute)},
			{t0.Add(time.Hour), true, t0.Add(-time.Minute)},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := window{interval: tt.interval, overlap: tt.overlap}
			for i, s := range tt.steps {
				if got := w.since(s.now); !got.Equal(s.want) {
					t.Fatalf("pass %d at %s: since %s, want %s", i+1, s.now.Format(time.TimeOnly), got.Format(time.TimeOnly), s.want.Format(time.TimeOnly))
				}
				if s.ok {
					w.done(s.now)
				}
			}
		})
	}
}

// TestReconcilePass runs passes against a Glance with one image: the first inspects it, the
// next finds its outcome current from the listing alone, a failed listing keeps the window.
func TestReconcilePass(t *testing.T) {
	g := newRBDLikeGlance(t, qcow2Bytes(t), "qcow2")
	pool := NewPool(g.client(t), 2, JobOptions{Logger: slog.New(slog.DiscardHandler), Properties: PropertyOptions{Version: "v1"}})
	t0 := time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC)
	now := t0
	reg := prometheus.NewRegistry()
	r, err := NewReconciler(pool, ReconcileOptions{Interval: 10 * time.Minute, Now: func() time.Time { return now }, Logger: slog.New(slog.DiscardHandler), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	lists := func() int { g.mu.Lock(); defer g.mu.Unlock(); return len(g.lists) }

	res, err := r.Pass(t.Context())
	if err != nil || res.Listed != 1 || res.Queued != 1 || res.Outcomes[OutcomeInspected] != 1 || !res.Since.Equal(t0.Add(-11*time.Minute)) {
		t.Fatalf("first pass: %+v, %v", res, err)
	}
	g.mu.Lock()
	if len(g.lists) != 2 || g.lists[0].Get("os_hidden") != "" || g.lists[1].Get("os_hidden") != "true" {
		t.Fatalf("listings %v: want the visible images, then the hidden ones", g.lists)
	}
	for _, q := range g.lists {
		if q.Get("status") != "active" || q.Get("updated_at") != "gt:2026-11-22T08:49:00Z" {
			t.Fatalf("listing %v", q)
		}
	}
	patches := len(g.patch)
	g.mu.Unlock()

	now = t0.Add(10 * time.Minute)
	res, err = r.Pass(t.Context())
	if err != nil || res.Listed != 1 || res.Queued != 0 {
		t.Fatalf("second pass: %+v, %v", res, err)
	}
	g.mu.Lock()
	if len(g.patch) != patches || g.full != 1 {
		t.Fatalf("the second pass wrote or read the image again: %d patches, %d downloads", len(g.patch), g.full)
	}
	if q := g.lists[len(g.lists)-1]; q.Get("updated_at") != "gt:2026-11-22T08:59:00Z" {
		t.Fatalf("second listing %v", q)
	}
	g.listFails = true
	g.mu.Unlock()

	now = t0.Add(20 * time.Minute)
	if _, err := r.Pass(t.Context()); err == nil {
		t.Fatal("a failed listing made a good pass")
	}
	g.mu.Lock()
	g.listFails = false
	g.img["os_hidden"] = true
	g.img["sidecar_version"] = "v0" // an outcome of an older sidecar is not current
	g.mu.Unlock()
	now = t0.Add(30 * time.Minute)
	n := lists()
	res, err = r.Pass(t.Context())
	if err != nil || res.Listed != 1 || res.Queued != 1 || res.Outcomes[OutcomeInspected] != 1 {
		t.Fatalf("pass after the failure: %+v, %v", res, err)
	}
	g.mu.Lock()
	if q := g.lists[n]; q.Get("updated_at") != "gt:2026-11-22T09:09:00Z" {
		t.Fatalf("the failed pass moved the window: %v", q)
	}
	g.mu.Unlock()

	for _, c := range []struct {
		name string
		got  float64
		want float64
	}{
		{"passes ok", value(t, r.metrics.passes.WithLabelValues("ok")), 3},
		{"passes error", value(t, r.metrics.passes.WithLabelValues("error")), 1},
		{"listed", value(t, r.metrics.listed), 3},
		{"queued", value(t, r.metrics.queued), 2},
		{"last listed", value(t, r.metrics.lastImages.WithLabelValues("listed")), 1},
		{"last queued", value(t, r.metrics.lastImages.WithLabelValues("queued")), 1},
		{"last pass end", value(t, r.metrics.lastEnd), float64(now.Unix())},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.name, c.got, c.want)
		}
	}
}

// TestReconcileOwners lists once per configured owner, so a pass reads only their images.
func TestReconcileOwners(t *testing.T) {
	g := newRBDLikeGlance(t, qcow2Bytes(t), "qcow2")
	pool := NewPool(g.client(t), 1, JobOptions{Logger: slog.New(slog.DiscardHandler), Owners: []string{"p", "q"}})
	r, err := NewReconciler(pool, ReconcileOptions{Interval: time.Minute, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := r.Pass(t.Context()); err != nil || res.Listed != 2 {
		// The fake ignores the owner filter: it lists its one image (owner p) both times.
		t.Fatalf("pass: %+v, %v", res, err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var owners []string
	for _, q := range g.lists {
		owners = append(owners, q.Get("owner"))
	}
	if len(owners) != 4 || owners[0] != "p" || owners[1] != "p" || owners[2] != "q" || owners[3] != "q" {
		t.Fatalf("listed owners %v, want p, p (hidden), q, q (hidden)", owners)
	}
	if _, err := NewReconciler(pool, ReconcileOptions{}); err == nil {
		t.Fatal("a reconciler without an interval")
	}
}

// value reads a counter or gauge.
func value(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}
