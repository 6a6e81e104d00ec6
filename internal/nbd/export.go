package nbd

import (
	"context"
	"errors"
)

// An Export is the block device a Server serves: a fixed number of bytes that can be read and,
// unless ReadOnly, written. The server checks every request against Size, ReadOnly and
// MaxRequest before it calls ReadAt or WriteAt, and calls them one at a time, never
// concurrently.
//
// An Export may also implement Zeroer, Flusher and Finisher.
type Export interface {
	// Size is the export's size in bytes. It must not change while it is served.
	Size() int64
	// ReadOnly reports whether writes are refused (the client is told so in the handshake).
	ReadOnly() bool
	// ReadAt fills all of p with the bytes at off, or fails. Unlike io.ReaderAt there is no
	// short read: the client is sent either len(p) bytes or an error.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt writes all of p at off, or fails.
	WriteAt(ctx context.Context, p []byte, off int64) error
}

// A Zeroer is an Export that writes zeros itself (NBD_CMD_WRITE_ZEROES). Without it the server
// writes zeros with WriteAt from a shared zero buffer.
type Zeroer interface {
	WriteZeroes(ctx context.Context, off, length int64) error
}

// A Flusher is an Export with something to flush (NBD_CMD_FLUSH). Without it FLUSH succeeds
// and does nothing.
type Flusher interface {
	Flush(ctx context.Context) error
}

// A Finisher is an Export that wants to know when a client ended its session cleanly with
// NBD_CMD_DISC, after every request it sent had been answered. Finish is not called when the
// client hangs up without it. The error Finish returns is returned by ServeConn and Serve.
type Finisher interface {
	Finish(ctx context.Context) error
}

// Errors the exports in this package return. The client is sent EPERM for ErrReadOnly, ENOSPC
// for ErrPastSize and EIO for the others, as for any error an Export returns.
var (
	// ErrReadOnly is a write to a read-only export.
	ErrReadOnly = errors.New("nbd: export is read-only")
	// ErrOutOfOrder is a write to a SequentialWriter before what it has already written.
	ErrOutOfOrder = errors.New("nbd: write before the current offset of a sequential export")
	// ErrNotReadable is a read from a SequentialWriter, whose bytes are gone downstream.
	ErrNotReadable = errors.New("nbd: sequential export cannot be read")
	// ErrFinished is a write to a SequentialWriter after its client disconnected.
	ErrFinished = errors.New("nbd: sequential export already finished")
	// ErrPastSize is a write, or a download, past the export's size.
	ErrPastSize = errors.New("nbd: past the end of the export")
)

// zeroes is the shared source of zero bytes: WRITE_ZEROES, gaps and tails are written from it,
// so writing zeros allocates nothing. Nothing may write to it (io.Writer implementations must
// not modify the slices they are given).
var zeroes [256 << 10]byte
