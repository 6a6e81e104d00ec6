package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sync/semaphore"

	"github.com/glance-sidecar/glance-sidecar/glanceclient"
)

// Pool runs jobs with at most MaxWorkers at once and one at a time per image: a second event
// for an image whose job is running waits for it, then usually finds the outcome current and
// skips. An image.delete event cancels the image's running job.
type Pool struct {
	c    *glanceclient.Client
	opts JobOptions
	sem  *semaphore.Weighted

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
	return &Pool{c: c, opts: opts, sem: semaphore.NewWeighted(int64(max(maxWorkers, 1))), images: map[string]*imageSlot{}}
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
