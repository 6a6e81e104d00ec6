package worker

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func qcow2Bytes(t *testing.T) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "i.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", path, "1G").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v %s", err, out)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPoolOneJobPerImage sends ten events for one image at once: one job inspects and writes,
// the others wait for it and find the outcome current.
func TestPoolOneJobPerImage(t *testing.T) {
	g := newRBDLikeGlance(t, qcow2Bytes(t), "qcow2")
	pool := NewPool(g.client(t), 4, JobOptions{Logger: slog.New(slog.DiscardHandler)})
	var wg sync.WaitGroup
	results := make([]Result, 10)
	errs := make([]error, 10)
	for i := range results {
		wg.Go(func() { results[i], errs[i] = pool.Process(t.Context(), "img", "image.upload") })
	}
	wg.Wait()
	inspected := 0
	for i, r := range results {
		if errs[i] != nil {
			t.Fatalf("event %d: %v", i, errs[i])
		}
		if r.Outcome == OutcomeInspected {
			inspected++
		} else if r.Outcome != OutcomeSkipped || r.Reason != "outcome is current" {
			t.Fatalf("event %d: %+v", i, r)
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if inspected != 1 || g.full != 1 {
		t.Fatalf("%d inspections, %d downloads; want 1 and 1", inspected, g.full)
	}
	if len(pool.images) != 0 {
		t.Fatalf("%d image slots left", len(pool.images))
	}
}

// TestPoolDeleteCancels cancels a running job with an image.delete event.
func TestPoolDeleteCancels(t *testing.T) {
	g := newRBDLikeGlance(t, qcow2Bytes(t), "qcow2")
	g.hold = make(chan struct{})
	defer close(g.hold)
	pool := NewPool(g.client(t), 1, JobOptions{Logger: slog.New(slog.DiscardHandler)})
	done := make(chan error, 1)
	go func() { _, err := pool.Process(t.Context(), "img", "image.upload"); done <- err }()
	g.waitDownloading(t)
	if res, err := pool.Process(t.Context(), "img", "image.delete"); err != nil || res.Reason != "image deleted" {
		t.Fatalf("delete event: %+v %v", res, err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrCancelled) {
			t.Fatalf("cancelled job: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the job was not cancelled")
	}
}

// TestPoolProcessAll stops starting jobs when its context ends, and gives the job in flight its
// grace: cut short with none, finished with enough.
func TestPoolProcessAll(t *testing.T) {
	data := qcow2Bytes(t)
	for _, tt := range []struct {
		name  string
		grace time.Duration
		want  Outcome
	}{
		{"no grace", 0, ""},
		{"grace", time.Minute, OutcomeInspected},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := newRBDLikeGlance(t, data, "qcow2")
			g.hold = make(chan struct{})
			pool := NewPool(g.client(t), 1, JobOptions{Logger: slog.New(slog.DiscardHandler)})
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			var mu sync.Mutex
			var results []Result
			var errs []error
			started := make(chan int, 1)
			go func() {
				started <- pool.ProcessAll(ctx, []string{"img", "gone-1", "gone-2"}, Batch{EventType: "reprocess", Grace: tt.grace}, func(r Result, err error, _ time.Duration) {
					mu.Lock()
					defer mu.Unlock()
					results, errs = append(results, r), append(errs, err)
				})
			}()
			g.waitDownloading(t)
			cancel()
			if tt.grace > 0 {
				close(g.hold)
			} else {
				defer close(g.hold)
			}
			if n := <-started; n != 1 {
				t.Fatalf("%d jobs started, want 1", n)
			}
			if len(results) != 1 || results[0].ImageID != "img" || results[0].Outcome != tt.want || (errs[0] == nil) != (tt.want != "") {
				t.Fatalf("results %+v, errors %v; want one, %q", results, errs, tt.want)
			}
		})
	}
}

// TestPoolProcessAllRetries tries a failing job again, as many times as the batch says.
func TestPoolProcessAllRetries(t *testing.T) {
	data := qcow2Bytes(t)
	for _, tt := range []struct {
		attempts, conflicts int
		want                Outcome
	}{
		{1, 1, ""},
		{2, 1, OutcomeInspected},
		{3, 2, OutcomeInspected},
		{3, 3, ""},
	} {
		g := newRBDLikeGlance(t, data, "qcow2")
		g.patchConflicts = tt.conflicts
		pool := NewPool(g.client(t), 1, JobOptions{Logger: slog.New(slog.DiscardHandler)})
		var got Result
		var err error
		pool.ProcessAll(t.Context(), []string{"img"}, Batch{Attempts: tt.attempts, RetryDelay: time.Millisecond}, func(r Result, e error, _ time.Duration) {
			got, err = r, e
		})
		if got.Outcome != tt.want || (err == nil) != (tt.want != "") {
			t.Errorf("%d attempts, %d conflicts: %+v, %v; want %q", tt.attempts, tt.conflicts, got, err, tt.want)
		}
	}
}

// waitDownloading waits until a job has started the image's one full download.
func (g *rbdLikeGlance) waitDownloading(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		g.mu.Lock()
		started := g.full == 1
		g.mu.Unlock()
		if started {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the job never started downloading")
		}
	}
}
