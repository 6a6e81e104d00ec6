package nbd_test

import (
	"bufio"
	"context"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/glance-sidecar/glance-sidecar/internal/nbd"
)

// The benchmark: qcow2 (1 GiB of data) to raw, through a SequentialWriter into io.Discard, as
// the sidecar will stream it into an upload, against what it does without NBD: qemu-img
// convert to a raw file on disk, then read the file (what an upload from disk reads). Run with
//
//	go test -run '^$' -bench . -count 5 ./internal/nbd
//
// and compare medians: the machine is shared, and the disk path varies most. Building the
// image takes about 20 s before the first result.

const benchData = 1 << 30

// bench is the benchmark's fixture, built once per test binary and removed by TestMain.
var bench struct {
	once sync.Once
	dir  string
	img  string
	err  error
}

// benchImage returns a qcow2 image with 1 GiB of allocated, patterned data.
func benchImage(b *testing.B) string {
	b.Helper()
	tool(b, "qemu-img")
	bench.once.Do(func() {
		bench.dir, bench.err = os.MkdirTemp("", "nbd-bench-")
		if bench.err != nil {
			return
		}
		raw := filepath.Join(bench.dir, "data.raw")
		bench.err = writePatterned(raw, benchData)
		if bench.err != nil {
			return
		}
		bench.img = filepath.Join(bench.dir, "src.qcow2")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if _, bench.err = qemu(ctx, b, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, bench.img); bench.err != nil {
			return
		}
		bench.err = os.Remove(raw)
	})
	if bench.err != nil {
		b.Fatalf("building the benchmark's image: %v", bench.err)
	}
	return bench.img
}

// writePatterned writes n bytes of data that is nowhere zero to path, a MiB at a time.
func writePatterned(path string, n int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, mib)
	chunk := patterned(mib)
	for i := int64(0); i < n/mib; i++ {
		chunk[0], chunk[1] = byte(i), byte(i>>8) // no two MiBs alike
		if _, err := w.Write(chunk); err != nil {
			f.Close()
			return err
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func BenchmarkConvert(b *testing.B) {
	img := benchImage(b)
	ctx := context.Background()

	// qemu-img writes the raw target into a SequentialWriter over NBD; the bytes go to
	// io.Discard as they arrive (the upload, in the sidecar).
	b.Run("nbd-stream", func(b *testing.B) {
		b.SetBytes(benchData)
		for b.Loop() {
			sw := nbd.NewSequentialWriter(io.Discard, benchData)
			s := serveBench(b, sw)
			if _, err := qemu(ctx, b, "qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", img, s.uri); err != nil {
				b.Fatal(err)
			}
			if err := s.wait(b); err != nil {
				b.Fatal(err)
			}
			if sw.Written() != benchData {
				b.Fatalf("%d bytes written", sw.Written())
			}
		}
	})

	// Both ends over NBD: the source read from a Window while the file is copied into it, the
	// target streamed into a SequentialWriter.
	b.Run("nbd-both", func(b *testing.B) {
		b.SetBytes(benchData)
		f, err := os.Open(img)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			b.Fatal(err)
		}
		spill, err := os.CreateTemp(b.TempDir(), "spill")
		if err != nil {
			b.Fatal(err)
		}
		defer spill.Close()
		for b.Loop() {
			w, err := nbd.NewWindow(nbd.WindowOptions{Size: st.Size(), Spill: spill, Fetch: func(_ context.Context, p []byte, off int64) error {
				_, err := f.ReadAt(p, off)
				return err
			}})
			if err != nil {
				b.Fatal(err)
			}
			copied := make(chan error, 1)
			go func() { _, err := io.Copy(w, io.NewSectionReader(f, 0, st.Size())); copied <- err }()
			src := serveBench(b, w)
			sw := nbd.NewSequentialWriter(io.Discard, benchData)
			dst := serveBench(b, sw)
			if _, err := qemu(ctx, b, "qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", src.uri, dst.uri); err != nil {
				b.Fatal(err)
			}
			if err := src.wait(b); err != nil {
				b.Fatal(err)
			}
			w.Drain()
			if err := <-copied; err != nil {
				b.Fatal(err)
			}
			if err := dst.wait(b); err != nil {
				b.Fatal(err)
			}
		}
	})

	// Without NBD: convert to a raw file on disk, then read it back.
	b.Run("file-then-read", func(b *testing.B) {
		b.SetBytes(benchData)
		out := filepath.Join(bench.dir, "out.raw")
		for b.Loop() {
			if _, err := qemu(ctx, b, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", img, out); err != nil {
				b.Fatal(err)
			}
			f, err := os.Open(out)
			if err != nil {
				b.Fatal(err)
			}
			n, err := io.Copy(io.Discard, f)
			f.Close()
			if err != nil || n != benchData {
				b.Fatalf("read %d bytes of the raw file: %v", n, err)
			}
			if err := os.Remove(out); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// serveBench is serve without the trace: nothing logged.
func serveBench(b *testing.B, exp nbd.Export) *served {
	b.Helper()
	ln, err := nbd.Listen(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &served{export: exp, uri: ln.URI(), path: ln.Path(), done: make(chan error, 1), cancel: cancel}
	go func() { s.done <- (&nbd.Server{Export: exp, Logger: discardLogger}).Serve(ctx, ln) }()
	b.Cleanup(func() {
		cancel()
		<-s.done
	})
	return s
}
