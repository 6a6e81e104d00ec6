package nbd_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/glance-sidecar/glance-sidecar/internal/nbd"
)

// seqOp is one call on a SequentialWriter: a write of data at off, zeros (n at off), a
// flush, or finish.
type seqOp struct {
	kind string // "write", "zero", "flush", "finish"
	off  int64
	data []byte
	n    int64
	want error // errors.Is; nil: success
}

func TestSequentialWriter(t *testing.T) {
	ab := []byte("ab")
	tests := []struct {
		name string
		size int64
		ops  []seqOp
		out  string // what the writer receives
		err  error  // Err() at the end
	}{
		{"in order", 6, []seqOp{{kind: "write", off: 0, data: ab}, {kind: "zero", off: 2, n: 2}, {kind: "write", off: 4, data: ab}, {kind: "finish"}}, "ab\x00\x00ab", nil},
		{"gap filled with zeros", 6, []seqOp{{kind: "write", off: 3, data: ab}, {kind: "finish"}}, "\x00\x00\x00ab\x00", nil},
		{"tail zeros on finish", 5, []seqOp{{kind: "write", off: 0, data: ab}, {kind: "finish"}}, "ab\x00\x00\x00", nil},
		{"nothing written", 3, []seqOp{{kind: "finish"}}, "\x00\x00\x00", nil},
		{"finish twice", 2, []seqOp{{kind: "finish"}, {kind: "finish"}}, "\x00\x00", nil},
		{"empty writes change nothing", 4, []seqOp{{kind: "write", off: 3, data: nil}, {kind: "zero", off: 4, n: 0}, {kind: "write", off: 0, data: ab}, {kind: "write", off: 0, data: nil}, {kind: "finish"}}, "ab\x00\x00", nil},
		{"zeros past the size", 4, []seqOp{{kind: "zero", off: 2, n: 3, want: nbd.ErrPastSize}, {kind: "finish", want: nbd.ErrPastSize}}, "", nbd.ErrPastSize},
		{"write past the size", 4, []seqOp{{kind: "write", off: 3, data: ab, want: nbd.ErrPastSize}}, "", nbd.ErrPastSize},
		{"negative offset", 4, []seqOp{{kind: "write", off: -1, data: ab, want: nbd.ErrPastSize}}, "", nbd.ErrPastSize},
		{"overflowing length", 4, []seqOp{{kind: "zero", off: 2, n: 1<<63 - 1, want: nbd.ErrPastSize}}, "", nbd.ErrPastSize},
		{"out of order, sticky", 8, []seqOp{
			{kind: "write", off: 0, data: ab},
			{kind: "write", off: 4, data: ab},
			{kind: "write", off: 2, data: ab, want: nbd.ErrOutOfOrder},
			{kind: "write", off: 6, data: ab, want: nbd.ErrOutOfOrder},
			{kind: "flush", want: nbd.ErrOutOfOrder},
			{kind: "finish", want: nbd.ErrOutOfOrder},
		}, "ab\x00\x00ab", nbd.ErrOutOfOrder},
		{"overlap", 8, []seqOp{{kind: "write", off: 0, data: []byte("abcd")}, {kind: "zero", off: 3, n: 2, want: nbd.ErrOutOfOrder}}, "abcd", nbd.ErrOutOfOrder},
		{"write after finish", 2, []seqOp{{kind: "finish"}, {kind: "write", off: 2, data: nil, want: nbd.ErrFinished}, {kind: "write", off: 0, data: ab, want: nbd.ErrFinished}}, "\x00\x00", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			sw := nbd.NewSequentialWriter(&out, tt.size)
			apply(t, sw, tt.ops)
			if out.String() != tt.out {
				t.Fatalf("writer received %q, want %q", out.String(), tt.out)
			}
			if !errors.Is(sw.Err(), tt.err) || (tt.err == nil) != (sw.Err() == nil) {
				t.Fatalf("Err() = %v, want %v", sw.Err(), tt.err)
			}
			if sw.Written() != int64(out.Len()) {
				t.Fatalf("Written() = %d, the writer has %d", sw.Written(), out.Len())
			}
		})
	}
}

func apply(t *testing.T, sw *nbd.SequentialWriter, ops []seqOp) {
	t.Helper()
	ctx := context.Background()
	for i, op := range ops {
		var err error
		switch op.kind {
		case "write":
			err = sw.WriteAt(ctx, op.data, op.off)
		case "zero":
			err = sw.WriteZeroes(ctx, op.off, op.n)
		case "flush":
			err = sw.Flush(ctx)
		case "finish":
			err = sw.Finish(ctx)
		}
		if !errors.Is(err, op.want) || (op.want == nil) != (err == nil) {
			t.Fatalf("op %d (%s at %d): %v, want %v", i, op.kind, op.off, err, op.want)
		}
	}
}

// The writer's failure is sticky and stops everything after it, the tail included.
func TestSequentialWriterWriterFails(t *testing.T) {
	w := &limitWriter{left: 3}
	sw := nbd.NewSequentialWriter(w, 10)
	ctx := context.Background()
	if err := sw.WriteAt(ctx, []byte("ab"), 0); err != nil {
		t.Fatal(err)
	}
	if err := sw.WriteAt(ctx, []byte("cd"), 2); !errors.Is(err, errFull) {
		t.Fatalf("WriteAt: %v, want the writer's error", err)
	}
	if err := sw.Finish(ctx); !errors.Is(err, errFull) {
		t.Fatalf("Finish: %v, want the writer's error", err)
	}
	if w.got != 2 {
		t.Fatalf("writer got %d bytes after failing", w.got)
	}
}

var errFull = errors.New("full")

type limitWriter struct{ left, got int }

func (w *limitWriter) Write(p []byte) (int, error) {
	if len(p) > w.left {
		return 0, errFull
	}
	w.left -= len(p)
	w.got += len(p)
	return len(p), nil
}

// Flush and Finish flush a buffered writer; reads fail.
func TestSequentialWriterFlushAndRead(t *testing.T) {
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	sw := nbd.NewSequentialWriter(bw, 4)
	ctx := context.Background()
	if err := sw.WriteAt(ctx, []byte("ab"), 0); err != nil {
		t.Fatal(err)
	}
	if out.Len() != 0 {
		t.Fatal("bufio wrote through before a flush")
	}
	if err := sw.Flush(ctx); err != nil || out.String() != "ab" {
		t.Fatalf("Flush: %v, writer has %q", err, out.String())
	}
	if err := sw.Finish(ctx); err != nil || out.String() != "ab\x00\x00" {
		t.Fatalf("Finish: %v, writer has %q", err, out.String())
	}
	if err := sw.ReadAt(ctx, make([]byte, 2), 0); !errors.Is(err, nbd.ErrNotReadable) {
		t.Fatalf("ReadAt: %v, want ErrNotReadable", err)
	}
}

// Zeros come from the shared buffer: writing them allocates nothing, however many.
func TestSequentialWriterZeroesDoNotAllocate(t *testing.T) {
	sw := nbd.NewSequentialWriter(discard{}, 1<<40)
	ctx := context.Background()
	var off int64
	allocs := testing.AllocsPerRun(100, func() {
		if err := sw.WriteZeroes(ctx, off, 1<<20); err != nil {
			t.Fatal(err)
		}
		off += 1 << 20
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per 1 MiB of zeros", allocs)
	}
}

// discard is io.Discard without its ReadFrom, as an upload stream would be.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
