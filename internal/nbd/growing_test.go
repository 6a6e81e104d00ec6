package nbd_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/glance-sidecar/glance-sidecar/internal/nbd"
)

// readResult runs g.ReadAt in a goroutine and returns a channel with its outcome.
func readAsync(ctx context.Context, g *nbd.GrowingFile, p []byte, off int64) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- g.ReadAt(ctx, p, off) }()
	return ch
}

// pending fails the test if the read finished.
func pending(t *testing.T, ch <-chan error) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("read returned (%v) before its bytes arrived", err)
	case <-time.After(20 * time.Millisecond):
	}
}

func finished(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("read did not return")
		return nil
	}
}

func TestGrowingFile(t *testing.T) {
	data := patterned(1000)
	ctx := context.Background()

	t.Run("reads wait for their bytes", func(t *testing.T) {
		g := nbd.NewGrowingFile(bytes.NewReader(data), 1000)
		p := make([]byte, 100)
		ch := readAsync(ctx, g, p, 400)
		pending(t, ch)
		g.Advance(450)
		pending(t, ch) // 400+100 > 450
		g.Advance(50)
		if err := finished(t, ch); err != nil || !bytes.Equal(p, data[400:500]) {
			t.Fatalf("read: %v", err)
		}
		if err := g.ReadAt(ctx, p[:10], 0); err != nil || !bytes.Equal(p[:10], data[:10]) {
			t.Fatalf("read of bytes already there: %v", err)
		}
	})
	t.Run("fail wakes pending reads and fails later ones", func(t *testing.T) {
		g := nbd.NewGrowingFile(bytes.NewReader(data), 1000)
		g.Advance(100)
		ch := readAsync(ctx, g, make([]byte, 10), 500)
		pending(t, ch)
		broken := errors.New("reset")
		g.Fail(broken)
		g.Fail(errors.New("second")) // only the first counts
		if err := finished(t, ch); !errors.Is(err, broken) {
			t.Fatalf("pending read: %v, want the failure", err)
		}
		if err := g.ReadAt(ctx, make([]byte, 10), 0); !errors.Is(err, broken) {
			t.Fatalf("later read of bytes that had arrived: %v, want the failure", err)
		}
		g.Advance(900) // ignored once failed
		if g.Available() != 100 {
			t.Fatalf("Available %d after Fail", g.Available())
		}
	})
	t.Run("fail with nil", func(t *testing.T) {
		g := nbd.NewGrowingFile(bytes.NewReader(data), 1000)
		g.Fail(nil)
		if err := g.ReadAt(ctx, make([]byte, 1), 0); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("read: %v, want io.ErrUnexpectedEOF", err)
		}
	})
	t.Run("context ends a wait", func(t *testing.T) {
		g := nbd.NewGrowingFile(bytes.NewReader(data), 1000)
		ctx, cancel := context.WithCancelCause(ctx)
		ch := readAsync(ctx, g, make([]byte, 10), 0)
		pending(t, ch)
		stop := errors.New("stop")
		cancel(stop)
		if err := finished(t, ch); !errors.Is(err, stop) {
			t.Fatalf("read: %v, want the context's cause", err)
		}
	})
	for name, tc := range map[string]struct {
		advance []int64
		want    int64
	}{
		"past the size":  {[]int64{600, 401}, 600},
		"negative":       {[]int64{10, -5}, 10},
		"overflow":       {[]int64{10, 1<<63 - 1}, 10},
		"exactly a size": {[]int64{999, 0, 1}, 1000},
	} {
		t.Run("advance "+name, func(t *testing.T) {
			g := nbd.NewGrowingFile(bytes.NewReader(data), 1000)
			for _, n := range tc.advance {
				g.Advance(n)
			}
			if g.Available() != tc.want {
				t.Fatalf("Available %d, want %d", g.Available(), tc.want)
			}
			err := g.ReadAt(ctx, make([]byte, 1), 0)
			if tc.want == 1000 && err != nil {
				t.Fatalf("read: %v", err)
			}
			if tc.want != 1000 && !errors.Is(err, nbd.ErrPastSize) {
				t.Fatalf("read after a bad Advance: %v, want ErrPastSize", err)
			}
		})
	}
	t.Run("reads outside the export", func(t *testing.T) {
		g := nbd.NewGrowingFile(bytes.NewReader(data), 1000)
		g.Advance(1000)
		for _, off := range []int64{-1, 991, 1 << 62} {
			if err := g.ReadAt(ctx, make([]byte, 10), off); !errors.Is(err, nbd.ErrPastSize) {
				t.Fatalf("read at %d: %v, want ErrPastSize", off, err)
			}
		}
	})
	t.Run("file shorter than announced", func(t *testing.T) {
		g := nbd.NewGrowingFile(bytes.NewReader(data[:500]), 1000)
		g.Advance(1000)
		if err := g.ReadAt(ctx, make([]byte, 10), 495); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("read past the file's end: %v, want io.ErrUnexpectedEOF", err)
		}
	})
	t.Run("writer advances", func(t *testing.T) {
		var file bytes.Buffer
		g := nbd.NewGrowingFile(readerAtBuffer{&file}, 1000)
		w := g.Writer(&file)
		if _, err := w.Write(data[:300]); err != nil {
			t.Fatal(err)
		}
		if g.Available() != 300 {
			t.Fatalf("Available %d after writing 300", g.Available())
		}
		p := make([]byte, 300)
		if err := g.ReadAt(ctx, p, 0); err != nil || !bytes.Equal(p, data[:300]) {
			t.Fatalf("read: %v", err)
		}
	})
	t.Run("writes refused", func(t *testing.T) {
		g := nbd.NewGrowingFile(bytes.NewReader(data), 1000)
		if !g.ReadOnly() {
			t.Fatal("not read-only")
		}
		if err := g.WriteAt(ctx, []byte("x"), 0); !errors.Is(err, nbd.ErrReadOnly) {
			t.Fatalf("WriteAt: %v, want ErrReadOnly", err)
		}
	})
}

// readerAtBuffer reads a bytes.Buffer's current contents at an offset.
type readerAtBuffer struct{ b *bytes.Buffer }

func (r readerAtBuffer) ReadAt(p []byte, off int64) (int, error) {
	return bytes.NewReader(r.b.Bytes()).ReadAt(p, off)
}
