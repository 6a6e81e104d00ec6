package nbd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
)

// A GrowingFile is a read-only export over a file that is still being downloaded, so that
// qemu-img can read its source over NBD while the download runs. Its size is known up front
// (the image's size from Glance); the downloader reports progress with Advance (or writes
// through Writer), and a read of bytes that have not arrived yet waits until they have, its
// context is done, or the download fails.
//
// The downloader must call Fail if the download fails or ends short: pending and later reads
// then fail (the client is told EIO), and Serve returns the failure. A read waiting for bytes
// does not notice its client hanging up: cancel Serve's context once the client process has
// exited. qemu-img reads a qcow2 source nearly front to back, so its conversion follows the
// download closely; an image whose metadata sits at its end makes it wait for most of the
// download first, still correctly.
type GrowingFile struct {
	r    io.ReaderAt
	size int64

	mu    sync.Mutex
	avail int64         // bytes [0, avail) are in r
	err   error         // set by Fail
	wake  chan struct{} // closed and replaced whenever avail or err changes
}

// NewGrowingFile returns a read-only export of size bytes read from r as they arrive: none
// has yet.
func NewGrowingFile(r io.ReaderAt, size int64) *GrowingFile {
	return &GrowingFile{r: r, size: size, wake: make(chan struct{})}
}

// Size is the export's size.
func (g *GrowingFile) Size() int64 { return g.size }

// ReadOnly is true.
func (g *GrowingFile) ReadOnly() bool { return true }

// Available is how many bytes from the start have arrived.
func (g *GrowingFile) Available() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.avail
}

// Advance says n more bytes have been written to the file, after those already announced.
// Growing past Size, or a negative n, fails the export.
func (g *GrowingFile) Advance(n int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil || n == 0 {
		return
	}
	if n < 0 || n > g.size-g.avail {
		g.failLocked(fmt.Errorf("%w: %d more bytes after %d, size %d", ErrPastSize, n, g.avail, g.size))
		return
	}
	g.avail += n
	g.wakeLocked()
}

// Fail makes pending and later reads fail with err (nil means io.ErrUnexpectedEOF). Only the
// first failure counts.
func (g *GrowingFile) Fail(err error) {
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err == nil {
		g.failLocked(fmt.Errorf("nbd: download failed after %d of %d bytes: %w", g.avail, g.size, err))
	}
}

func (g *GrowingFile) failLocked(err error) {
	g.err = err
	g.wakeLocked()
}

func (g *GrowingFile) wakeLocked() {
	close(g.wake)
	g.wake = make(chan struct{})
}

// Writer returns a writer that writes to w (the file behind the export) and then advances
// the export by what was written: the downloader copies into it.
func (g *GrowingFile) Writer(w io.Writer) io.Writer {
	return &advancingWriter{w: w, g: g}
}

type advancingWriter struct {
	w io.Writer
	g *GrowingFile
}

func (a *advancingWriter) Write(p []byte) (int, error) {
	n, err := a.w.Write(p)
	a.g.Advance(int64(n))
	return n, err
}

// ReadAt fills p from off, waiting until those bytes have arrived.
func (g *GrowingFile) ReadAt(ctx context.Context, p []byte, off int64) error {
	end := off + int64(len(p))
	if off < 0 || end < off || end > g.size {
		return fmt.Errorf("%w: read of %d bytes at %d, size %d", ErrPastSize, len(p), off, g.size)
	}
	for {
		g.mu.Lock()
		err, avail, wake := g.err, g.avail, g.wake
		g.mu.Unlock()
		if err != nil {
			return err
		}
		if end <= avail {
			break
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return fmt.Errorf("nbd: waiting for bytes %d to %d (%d arrived): %w", off, end, avail, context.Cause(ctx))
		}
	}
	n, err := g.r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("nbd: reading %d bytes at %d of the downloaded file: %w", len(p), off, err)
}

// WriteAt fails: the export is read-only.
func (g *GrowingFile) WriteAt(_ context.Context, p []byte, off int64) error {
	return fmt.Errorf("%w (write of %d bytes at %d)", ErrReadOnly, len(p), off)
}
