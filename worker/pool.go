package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/glance-sidecar/glance-sidecar/glanceclient"
)

// Pool runs jobs with at most MaxWorkers at once and one at a time per image: a second event
// for an image whose job is running waits for it, then usually finds the outcome current and
// skips. An image.delete event cancels the image's running job.
type Pool struct {
	c       *glanceclient.Client
	opts    JobOptions
	workers int
	sem     *semaphore.Weighted

	mu     sync.Mutex
	images map[string]*imageSlot
}

type imageSlot struct {
	lock    chan struct{} // holds one token while a job for the image runs
	users   int           // events holding or waiting for the slot
	cancels map[*context.CancelFunc]struct{}
}

// NewPool returns a pool of maxWorkers (at least 1) running Job with opts.
func NewPool(c *glanceclient.Client, maxWorkers int, opts JobOptions) *Pool {
	n := max(maxWorkers, 1)
	return &Pool{c: c, opts: opts, workers: n, sem: semaphore.NewWeighted(int64(n)), images: map[string]*imageSlot{}}
}

// ErrCancelled is returned for a job cancelled by an image.delete event.
var ErrCancelled = errors.New("job cancelled: the image was deleted")

// Process handles one event for an image. It blocks until the image's job is done (or
// cancelled, or ctx ends), so that a caller acknowledging the event afterwards acknowledges a
// recorded outcome.
func (p *Pool) Process(ctx context.Context, imageID, eventType string) (Result, error) {
	if eventType == "image.delete" {
		p.cancel(imageID)
		return Result{ImageID: imageID, Outcome: OutcomeSkipped, Reason: "image deleted"}, nil
	}
	slot := p.acquireSlot(imageID)
	defer p.releaseSlot(imageID, slot)
	select {
	case slot.lock <- struct{}{}:
	case <-ctx.Done():
		return Result{ImageID: imageID}, ctx.Err()
	}
	defer func() { <-slot.lock }()
	if err := p.sem.Acquire(ctx, 1); err != nil {
		return Result{ImageID: imageID}, err
	}
	defer p.sem.Release(1)

	jctx, cancel := context.WithCancelCause(ctx)
	stop := context.CancelFunc(func() { cancel(ErrCancelled) })
	p.mu.Lock()
	slot.cancels[&stop] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(slot.cancels, &stop)
		p.mu.Unlock()
		cancel(nil)
	}()
	res, err := Job(jctx, p.c, imageID, p.opts)
	if err != nil && errors.Is(context.Cause(jctx), ErrCancelled) {
		return res, fmt.Errorf("image %s: %w", imageID, ErrCancelled)
	}
	return res, err
}

// Batch says how ProcessAll runs its jobs.
type Batch struct {
	// EventType is given to Process: "reprocess", "reconcile".
	EventType string
	// Grace is how long the jobs in flight may go on once the context of ProcessAll ends
	// (0: they end with it).
	Grace time.Duration
	// Attempts is how many times a job that fails is tried (default 1); RetryDelay is the
	// pause after the first failure, doubled after each next one.
	Attempts   int
	RetryDelay time.Duration
}

// ProcessAll runs Process for every image in ids, at most as many at once as the pool has
// workers, and calls done with each image's last result as it comes (from several goroutines
// at once), with how long the image took. When ctx ends it starts no more jobs and tries none
// again; the jobs in flight have the batch's grace before their context ends too. It returns
// how many images it started.
func (p *Pool) ProcessAll(ctx context.Context, ids []string, b Batch, done func(Result, error, time.Duration)) int {
	jobsCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(b.Grace, cancel)
		context.AfterFunc(jobsCtx, func() { t.Stop() })
	})
	defer stop()
	next := make(chan string)
	var wg sync.WaitGroup
	for range min(p.workers, len(ids)) {
		wg.Go(func() {
			for id := range next {
				start := time.Now()
				res, err := p.processTrying(ctx, jobsCtx, id, b)
				res.ImageID = id
				done(res, err, time.Since(start))
			}
		})
	}
	started := 0
	for _, id := range ids {
		if ctx.Err() != nil {
			break
		}
		select {
		case next <- id:
			started++
		case <-ctx.Done():
		}
	}
	close(next)
	wg.Wait()
	return started
}

// processTrying runs the image's job in jobsCtx, up to b.Attempts times while it fails, unless
// ctx ends first.
func (p *Pool) processTrying(ctx, jobsCtx context.Context, id string, b Batch) (Result, error) {
	res, err := p.Process(jobsCtx, id, b.EventType)
	delay := b.RetryDelay
	for attempt := 2; attempt <= b.Attempts && err != nil && !errors.Is(err, ErrCancelled); attempt++ {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return res, err
		case <-t.C:
		}
		delay *= 2
		res, err = p.Process(jobsCtx, id, b.EventType)
	}
	return res, err
}

// RecordFailure writes the failed outcome for an image whose job was given up on.
func (p *Pool) RecordFailure(ctx context.Context, imageID string, cause error) error {
	return RecordFailure(ctx, p.c, imageID, cause, p.opts)
}

func (p *Pool) acquireSlot(id string) *imageSlot {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.images[id]
	if !ok {
		s = &imageSlot{lock: make(chan struct{}, 1), cancels: map[*context.CancelFunc]struct{}{}}
		p.images[id] = s
	}
	s.users++
	return s
}

func (p *Pool) releaseSlot(id string, s *imageSlot) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s.users--; s.users == 0 {
		delete(p.images, id)
	}
}

func (p *Pool) cancel(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s, ok := p.images[id]; ok {
		for c := range s.cancels {
			(*c)()
		}
	}
}
