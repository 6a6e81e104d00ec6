package nbd

import (
	"context"
	"fmt"
	"io"
	"sync"
)

// A SequentialWriter is a write-only export of a fixed size whose bytes go, in order, to an
// io.Writer: the target of `qemu-img convert -n -O raw SRC nbd+unix:///?socket=PATH`, which
// (without -W) writes strictly from the start to the end, so the raw image can be streamed
// into an upload without being stored.
//
// Each write must start at the offset where the previous one ended, or beyond it: the gap is
// written as zeros. A write that starts before the current offset (qemu-img convert -W, or a
// second pass) cannot be honoured: it fails with ErrOutOfOrder, the client is told EIO, and
// every later write and Finish fail with the same error, so the caller never takes a stream
// with a hole in it for a whole image. WRITE_ZEROES writes zeros the same way, from a shared
// buffer. When the client disconnects with NBD_CMD_DISC, Finish writes zeros up to Size, so
// the writer receives exactly Size bytes. Reads fail with ErrNotReadable: qemu-img convert
// does not read its target.
//
// Writes to w happen on the server's goroutine and are not interrupted by its context: to stop
// a conversion, make w fail (for an io.PipeWriter, close the reader with an error).
type SequentialWriter struct {
	w    io.Writer
	size int64

	mu       sync.Mutex
	next     int64 // bytes written to w
	err      error // sticky: the first failure
	finished bool
}

// NewSequentialWriter returns an export of size bytes written to w in order.
func NewSequentialWriter(w io.Writer, size int64) *SequentialWriter {
	return &SequentialWriter{w: w, size: size}
}

// Size is the export's size.
func (s *SequentialWriter) Size() int64 { return s.size }

// ReadOnly is false.
func (s *SequentialWriter) ReadOnly() bool { return false }

// Written is how many bytes have gone to the writer.
func (s *SequentialWriter) Written() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next
}

// Err is the first failure: a write out of order, past the size, or after Finish, or an error
// from the writer. Once set, every write fails with it.
func (s *SequentialWriter) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// ReadAt fails: the bytes are gone downstream.
func (s *SequentialWriter) ReadAt(_ context.Context, p []byte, off int64) error {
	return fmt.Errorf("%w (%d bytes at %d)", ErrNotReadable, len(p), off)
}

// WriteAt writes p at off, which must not be before what has been written; a gap is written
// as zeros.
func (s *SequentialWriter) WriteAt(_ context.Context, p []byte, off int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.seek(off, int64(len(p))); err != nil || len(p) == 0 {
		return err
	}
	if _, err := s.w.Write(p); err != nil {
		return s.fail(fmt.Errorf("nbd: writing %d bytes at %d to the stream: %w", len(p), off, err))
	}
	s.next += int64(len(p))
	return nil
}

// WriteZeroes writes n zeros at off, with the same rules as WriteAt.
func (s *SequentialWriter) WriteZeroes(_ context.Context, off, n int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.seek(off, n); err != nil {
		return err
	}
	return s.zeroes(n)
}

// Flush flushes the writer if it has a Flush method (as bufio.Writer has).
func (s *SequentialWriter) Flush(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	return s.flush()
}

// Finish writes zeros from the current offset up to Size, so that the writer has received
// exactly Size bytes, unless a write failed before: then it returns that failure and writes
// nothing. The server calls it when the client sends NBD_CMD_DISC. After Finish, writes fail.
func (s *SequentialWriter) Finish(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	if s.finished {
		return nil
	}
	if err := s.zeroes(s.size - s.next); err != nil {
		return err
	}
	s.finished = true
	return s.flush()
}

// flush flushes w if it can be. s.mu is held.
func (s *SequentialWriter) flush() error {
	if f, ok := s.w.(interface{ Flush() error }); ok {
		if err := f.Flush(); err != nil {
			return s.fail(fmt.Errorf("nbd: flushing the stream: %w", err))
		}
	}
	return nil
}

// seek checks a write of n bytes at off and writes the zeros of a gap before it. s.mu is held.
func (s *SequentialWriter) seek(off, n int64) error {
	switch {
	case s.err != nil:
		return s.err
	case s.finished:
		return fmt.Errorf("%w (write of %d bytes at %d)", ErrFinished, n, off)
	case off < 0 || n < 0 || off > s.size || n > s.size-off:
		return s.fail(fmt.Errorf("%w: write of %d bytes at %d, size %d", ErrPastSize, n, off, s.size))
	case n == 0:
		return nil
	case off < s.next:
		return s.fail(fmt.Errorf("%w: write of %d bytes at %d after %d bytes were written", ErrOutOfOrder, n, off, s.next))
	}
	return s.zeroes(off - s.next)
}

// zeroes writes n zeros to w. s.mu is held.
func (s *SequentialWriter) zeroes(n int64) error {
	for n > 0 {
		k := min(n, int64(len(zeroes)))
		if _, err := s.w.Write(zeroes[:k]); err != nil {
			return s.fail(fmt.Errorf("nbd: writing zeros at %d to the stream: %w", s.next, err))
		}
		s.next += k
		n -= k
	}
	return nil
}

// fail records err as the sticky failure and returns it. s.mu is held.
func (s *SequentialWriter) fail(err error) error {
	s.err = err
	return err
}
