package worker

import (
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
	deadline := time.Now().Add(5 * time.Second)
	for {
		g.mu.Lock()
		started := g.full == 1
		g.mu.Unlock()
		if started {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the job never started downloading")
		}
		time.Sleep(5 * time.Millisecond)
	}
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
