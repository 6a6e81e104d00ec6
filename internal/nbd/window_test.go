package nbd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/glance-sidecar/glance-sidecar/internal/nbd"
)

// source is what a test Window is fed from: the data, a spill file in memory, and a fetch that
// serves the data by range (or altered bytes, or an error) and counts its calls.
type source struct {
	data    []byte
	spill   memSpill
	fetches atomic.Int64
	alter   func(p []byte, off int64) // changes what fetch returns
	fail    error
}

func (s *source) fetch(_ context.Context, p []byte, off int64) error {
	s.fetches.Add(1)
	if s.fail != nil {
		return s.fail
	}
	copy(p, s.data[off:])
	if s.alter != nil {
		s.alter(p, off)
	}
	return nil
}

// window returns a Window over size bytes of patterned data, in chunks of chunk bytes, chunks
// of them in memory.
func window(t *testing.T, size, chunk int64, chunks int) (*nbd.Window, *source) {
	t.Helper()
	s := &source{data: patterned(int(size)), spill: memSpill{b: make([]byte, size)}}
	w, err := nbd.NewWindow(nbd.WindowOptions{Size: size, ChunkSize: chunk, Chunks: chunks, Spill: &s.spill, Fetch: s.fetch})
	if err != nil {
		t.Fatal(err)
	}
	return w, s
}

// memSpill is a spill file in memory that counts what was written to it.
type memSpill struct {
	mu      sync.Mutex
	b       []byte
	written int64
	fail    error
}

func (m *memSpill) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return 0, m.fail
	}
	m.written += int64(len(p))
	return copy(m.b[off:], p), nil
}

func (m *memSpill) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(p, m.b[off:]), nil
}

// readAsync runs w.ReadAt in a goroutine and returns a channel with its outcome.
func readAsync(ctx context.Context, w *nbd.Window, p []byte, off int64) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- w.ReadAt(ctx, p, off) }()
	return ch
}

// writeAsync runs w.Write in a goroutine and returns a channel with its outcome.
func writeAsync(w *nbd.Window, p []byte) <-chan error {
	ch := make(chan error, 1)
	go func() { _, err := w.Write(p); ch <- err }()
	return ch
}

// pending fails the test if the call finished.
func pending(t *testing.T, ch <-chan error) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("returned (%v) while it should wait", err)
	case <-time.After(20 * time.Millisecond):
	}
}

func finished(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("did not return")
		return nil
	}
}

// mustRead reads n bytes at off and checks them against the data.
func mustRead(t *testing.T, w *nbd.Window, s *source, off, n int64) {
	t.Helper()
	p := make([]byte, n)
	if err := w.ReadAt(context.Background(), p, off); err != nil {
		t.Fatalf("read of %d bytes at %d: %v", n, off, err)
	}
	if !bytes.Equal(p, s.data[off:off+n]) {
		t.Fatalf("read of %d bytes at %d returned the wrong bytes", n, off)
	}
}

func mustWrite(t *testing.T, w *nbd.Window, p []byte) {
	t.Helper()
	if _, err := w.Write(p); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func TestWindow(t *testing.T) {
	ctx := context.Background()

	t.Run("reads wait for near bytes", func(t *testing.T) {
		w, s := window(t, 1000, 100, 4)
		p := make([]byte, 100)
		ch := readAsync(ctx, w, p, 250) // chunks 2 and 3: within a window of what arrived
		pending(t, ch)
		mustWrite(t, w, s.data[:300])
		pending(t, ch) // 250+100 > 300
		mustWrite(t, w, s.data[300:350])
		if err := finished(t, ch); err != nil || !bytes.Equal(p, s.data[250:350]) {
			t.Fatalf("read: %v", err)
		}
		mustRead(t, w, s, 0, 10)
		if s.fetches.Load() != 0 || s.spill.written != 0 {
			t.Fatalf("%d fetches, %d bytes spilled for reads in order", s.fetches.Load(), s.spill.written)
		}
	})

	t.Run("chunks read through are dropped, and checked when fetched again", func(t *testing.T) {
		w, s := window(t, 1000, 100, 2)
		mustWrite(t, w, s.data[:200])
		mustRead(t, w, s, 0, 200)
		mustWrite(t, w, s.data[200:400]) // drops chunks 0 and 1: both read through
		if s.spill.written != 0 {
			t.Fatalf("spilled %d bytes of chunks read through", s.spill.written)
		}
		mustRead(t, w, s, 150, 100) // chunk 1 again, by range, and chunk 2 from memory
		if n := s.fetches.Load(); n != 1 {
			t.Fatalf("%d fetches, want 1", n)
		}
		s.fail = errors.New("HTTP 503")
		if err := w.ReadAt(ctx, make([]byte, 10), 20); !errors.Is(err, s.fail) {
			t.Fatalf("read whose fetch failed: %v, want the fetch's error", err)
		}
		s.fail, s.alter = nil, func(p []byte, off int64) { p[7] ^= 1 }
		if err := w.ReadAt(ctx, make([]byte, 10), 20); !errors.Is(err, nbd.ErrFetchMismatch) {
			t.Fatalf("read of a chunk fetched with a byte changed: %v, want ErrFetchMismatch", err)
		}
		if _, err := w.Write(s.data[400:500]); !errors.Is(err, nbd.ErrFetchMismatch) {
			t.Fatalf("the download goes on after Glance served other bytes (%v)", err)
		}
		if st := w.Stats(); st.Fetches != 2 || st.Fetched != 200 || st.Spilled != 0 || st.Dropped != 200 {
			t.Fatalf("stats %+v", st)
		}
	})

	t.Run("the same bytes read again do not make a chunk read through", func(t *testing.T) {
		w, s := window(t, 1000, 100, 1)
		mustWrite(t, w, s.data[:100])
		for range 20 {
			mustRead(t, w, s, 0, 10)
		}
		ch := writeAsync(w, s.data[100:200])
		pending(t, ch)
		mustRead(t, w, s, 10, 90)
		if err := finished(t, ch); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a chunk fetched ahead and read through is dropped when it leaves", func(t *testing.T) {
		w, s := window(t, 1000, 100, 2)
		mustRead(t, w, s, 500, 60) // fetched ahead
		for off := int64(0); off < 500; off += 100 {
			mustWrite(t, w, s.data[off:off+100])
			mustRead(t, w, s, off, 100)
		}
		mustWrite(t, w, s.data[500:600])
		mustRead(t, w, s, 560, 40) // the rest of chunk 5, from memory
		mustWrite(t, w, s.data[600:800])
		if st := w.Stats(); st.Spilled != 0 || st.Dropped != 600 || st.Fetches != 1 {
			t.Fatalf("stats %+v, want chunks 0 to 5 dropped, nothing spilled", st)
		}
	})

	t.Run("a full window waits for its oldest chunk to be read", func(t *testing.T) {
		w, s := window(t, 1000, 100, 2)
		mustWrite(t, w, s.data[:200])
		ch := writeAsync(w, s.data[200:300])
		pending(t, ch)
		mustRead(t, w, s, 0, 60)
		pending(t, ch) // chunk 0 not read through
		mustRead(t, w, s, 60, 40)
		if err := finished(t, ch); err != nil {
			t.Fatalf("write: %v", err)
		}
		if w.Available() != 300 || s.spill.written != 0 {
			t.Fatalf("available %d, spilled %d", w.Available(), s.spill.written)
		}
	})

	t.Run("a chunk not read through is spilled when a read waits past it", func(t *testing.T) {
		w, s := window(t, 1000, 100, 2)
		mustWrite(t, w, s.data[:200])
		mustRead(t, w, s, 0, 50) // chunk 0 half read: a table qemu-img never reads
		mustRead(t, w, s, 100, 100)
		wr := writeAsync(w, s.data[200:400])
		pending(t, wr)
		p := make([]byte, 100)
		rd := readAsync(ctx, w, p, 300) // waits: chunk 0 must go to disk
		if err := finished(t, wr); err != nil {
			t.Fatalf("write: %v", err)
		}
		if err := finished(t, rd); err != nil || !bytes.Equal(p, s.data[300:400]) {
			t.Fatalf("read: %v", err)
		}
		if s.spill.written != 100 || w.Stats().Spilled != 100 {
			t.Fatalf("spilled %d bytes (stats %+v), want chunk 0", s.spill.written, w.Stats())
		}
		mustRead(t, w, s, 50, 50) // from the spill file
		if s.fetches.Load() != 0 {
			t.Fatalf("%d fetches", s.fetches.Load())
		}
	})

	t.Run("far reads are fetched ahead and checked when the download arrives", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			alter bool
		}{{"same bytes", false}, {"bytes changed", true}} {
			t.Run(tc.name, func(t *testing.T) {
				w, s := window(t, 1000, 100, 2)
				if tc.alter {
					s.alter = func(p []byte, off int64) { p[99] ^= 1 }
				}
				p := make([]byte, 8)
				if err := w.ReadAt(ctx, p, 800); err != nil { // chunk 8, nothing arrived
					t.Fatalf("far read: %v", err)
				}
				if !tc.alter && !bytes.Equal(p, s.data[800:808]) {
					t.Fatal("far read returned the wrong bytes")
				}
				for off := int64(0); off < 800; off += 100 { // read in order as it arrives
					mustWrite(t, w, s.data[off:off+100])
					mustRead(t, w, s, off, 100)
				}
				_, err := w.Write(s.data[800:900])
				if tc.alter != errors.Is(err, nbd.ErrFetchMismatch) {
					t.Fatalf("download reaching a chunk fetched ahead: %v, want a mismatch: %v", err, tc.alter)
				}
				if tc.alter && !errors.Is(w.ReadAt(ctx, make([]byte, 1), 799), nbd.ErrFetchMismatch) {
					t.Fatal("reads go on after a mismatch")
				}
				if s.fetches.Load() != 1 || s.spill.written != 0 {
					t.Fatalf("%d fetches, %d bytes spilled", s.fetches.Load(), s.spill.written)
				}
			})
		}
	})

	t.Run("a chunk fetched ahead twice must not change", func(t *testing.T) {
		w, s := window(t, 1000, 100, 2)
		mustRead(t, w, s, 900, 10)
		s.alter = func(p []byte, off int64) { p[0] ^= 1 }
		if err := w.ReadAt(ctx, make([]byte, 10), 950); !errors.Is(err, nbd.ErrFetchMismatch) {
			t.Fatalf("second fetch with other bytes: %v, want ErrFetchMismatch", err)
		}
		if _, err := w.Write(s.data[:10]); !errors.Is(err, nbd.ErrFetchMismatch) {
			t.Fatalf("write after the mismatch: %v", err)
		}
	})

	t.Run("drain lets the download finish and still checks it", func(t *testing.T) {
		w, s := window(t, 1000, 100, 2)
		s.alter = func(p []byte, off int64) { p[0] ^= 1 }
		if err := w.ReadAt(ctx, make([]byte, 10), 900); err != nil {
			t.Fatal(err)
		}
		mustWrite(t, w, s.data[:200])
		ch := writeAsync(w, s.data[200:1000]) // nothing read: waits
		pending(t, ch)
		w.Drain()
		if err := finished(t, ch); !errors.Is(err, nbd.ErrFetchMismatch) {
			t.Fatalf("drained download over a chunk fetched with other bytes: %v, want ErrFetchMismatch", err)
		}
		if err := w.ReadAt(ctx, make([]byte, 1), 0); err == nil {
			t.Fatal("read after Drain succeeded")
		}
		if s.spill.written != 0 {
			t.Fatalf("drained chunks spilled: %d bytes", s.spill.written)
		}
	})

	t.Run("drain", func(t *testing.T) {
		w, s := window(t, 1000, 100, 2)
		mustWrite(t, w, s.data[:200])
		w.Drain()
		mustWrite(t, w, s.data[200:])
		if err := w.ReadAt(ctx, make([]byte, 1), 999); !errors.Is(err, nbd.ErrDrained) {
			t.Fatalf("read after Drain: %v, want ErrDrained", err)
		}
	})

	t.Run("fail wakes pending reads and writes and fails later ones", func(t *testing.T) {
		w, s := window(t, 1000, 100, 2)
		mustWrite(t, w, s.data[:200])
		rd := readAsync(ctx, w, make([]byte, 10), 250)
		wr := writeAsync(w, s.data[200:300]) // chunk 0 unread, but a read waits past it: spilled
		if err := finished(t, wr); err != nil {
			t.Fatal(err)
		}
		if err := finished(t, rd); err != nil {
			t.Fatal(err)
		}
		rd = readAsync(ctx, w, make([]byte, 10), 450)
		pending(t, rd)
		broken := errors.New("reset")
		w.Fail(broken)
		w.Fail(errors.New("second")) // only the first counts
		if err := finished(t, rd); !errors.Is(err, broken) {
			t.Fatalf("pending read: %v, want the failure", err)
		}
		if err := w.ReadAt(ctx, make([]byte, 10), 250); !errors.Is(err, broken) {
			t.Fatalf("later read of bytes that had arrived: %v, want the failure", err)
		}
		if _, err := w.Write(s.data[300:]); !errors.Is(err, broken) {
			t.Fatalf("write after Fail: %v", err)
		}
		if w.Available() != 300 {
			t.Fatalf("Available %d after Fail", w.Available())
		}
	})

	t.Run("a spill that fails fails the window", func(t *testing.T) {
		w, s := window(t, 1000, 100, 1)
		s.spill.fail = errors.New("ENOSPC")
		mustWrite(t, w, s.data[:100])
		rd := readAsync(ctx, w, make([]byte, 10), 150)
		if _, err := w.Write(s.data[100:200]); !errors.Is(err, s.spill.fail) {
			t.Fatalf("write: %v, want the spill's error", err)
		}
		if err := finished(t, rd); !errors.Is(err, s.spill.fail) {
			t.Fatalf("read: %v, want the spill's error", err)
		}
	})

	t.Run("fail with nil", func(t *testing.T) {
		w, _ := window(t, 1000, 100, 2)
		w.Fail(nil)
		if err := w.ReadAt(ctx, make([]byte, 1), 0); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("read: %v, want io.ErrUnexpectedEOF", err)
		}
	})

	t.Run("context ends a wait", func(t *testing.T) {
		w, _ := window(t, 1000, 100, 2)
		ctx, cancel := context.WithCancelCause(ctx)
		ch := readAsync(ctx, w, make([]byte, 10), 0)
		pending(t, ch)
		stop := errors.New("stop")
		cancel(stop)
		if err := finished(t, ch); !errors.Is(err, stop) {
			t.Fatalf("read: %v, want the context's cause", err)
		}
	})

	for name, tc := range map[string]struct {
		writes []int
		want   int64
	}{
		"past the size":  {[]int{600, 401}, 600},
		"exactly a size": {[]int{999, 0, 1}, 1000},
	} {
		t.Run("write "+name, func(t *testing.T) {
			w, s := window(t, 1000, 100, 20)
			var err error
			for _, n := range tc.writes {
				if _, err = w.Write(make([]byte, n)); err != nil {
					break
				}
			}
			if w.Available() != tc.want {
				t.Fatalf("Available %d, want %d", w.Available(), tc.want)
			}
			if tc.want == 1000 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, nbd.ErrPastSize) || !errors.Is(w.ReadAt(ctx, make([]byte, 1), 0), nbd.ErrPastSize) {
				t.Fatalf("write past the size: %v, want ErrPastSize, and reads to fail", err)
			}
			_ = s
		})
	}

	t.Run("reads outside the export", func(t *testing.T) {
		w, s := window(t, 1000, 100, 20)
		mustWrite(t, w, s.data)
		for _, off := range []int64{-1, 991, 1 << 62} {
			if err := w.ReadAt(ctx, make([]byte, 10), off); !errors.Is(err, nbd.ErrPastSize) {
				t.Fatalf("read at %d: %v, want ErrPastSize", off, err)
			}
		}
	})

	t.Run("writes refused", func(t *testing.T) {
		w, _ := window(t, 1000, 100, 2)
		if !w.ReadOnly() {
			t.Fatal("not read-only")
		}
		if err := w.WriteAt(ctx, []byte("x"), 0); !errors.Is(err, nbd.ErrReadOnly) {
			t.Fatalf("WriteAt: %v, want ErrReadOnly", err)
		}
	})

	t.Run("options", func(t *testing.T) {
		for _, o := range []nbd.WindowOptions{{Size: -1, Spill: &memSpill{}, Fetch: (&source{}).fetch}, {Size: 1}, {Size: 1, Spill: &memSpill{}}} {
			if _, err := nbd.NewWindow(o); err == nil {
				t.Errorf("NewWindow(%+v) accepted", o)
			}
		}
	})
}

// Readers imitating qemu-img (two at a time, in order, with gaps and jumps ahead and back)
// against a download arriving in random pieces: every read returns the right bytes and nothing
// hangs, whatever the window's size; across the seeds, chunks are dropped, spilled, and fetched.
func TestWindowRandomReads(t *testing.T) {
	var total nbd.WindowStats
	for seed := range uint64(60) {
		rng := rand.New(rand.NewPCG(seed, 7))
		size := int64(1 + rng.IntN(64<<10))
		chunk := int64(1 + rng.IntN(4<<10))
		var reads []readOp
		for off := int64(0); off < size; {
			n := 1 + rng.Int64N(2*chunk)
			switch rng.IntN(20) {
			case 0: // a table far ahead
				reads = append(reads, readOp{rng.Int64N(size), n})
			case 1: // something already read
				reads = append(reads, readOp{rng.Int64N(off + 1), n})
			case 2: // a gap: bytes never read
				off += n
			default:
				reads = append(reads, readOp{off, n})
				off += n
			}
		}
		var writes []int64
		for range 64 {
			writes = append(writes, 1+rng.Int64N(3*chunk))
		}
		st, err := checkWindowReads(size, chunk, 1+rng.IntN(6), reads, writes)
		if err != nil {
			t.Fatalf("seed %d (size %d, chunk %d): %v", seed, size, chunk, err)
		}
		total.Dropped += st.Dropped
		total.Spilled += st.Spilled
		total.Fetches += st.Fetches
	}
	if total.Dropped == 0 || total.Spilled == 0 || total.Fetches == 0 {
		t.Fatalf("the seeds did not take every path: %+v", total)
	}
	t.Logf("all seeds: %+v", total)
}

// FuzzWindow: any read pattern (a hostile image drives qemu-img's reads) against a download in
// pieces of any size returns the download's bytes, and never hangs.
func FuzzWindow(f *testing.F) {
	f.Add(uint16(1000), uint16(100), uint8(2), []byte{0, 0, 50, 0, 100, 0, 100, 0, 0x20, 3, 10, 0, 0, 0, 8, 0})
	f.Add(uint16(65535), uint16(1), uint8(1), []byte{0xff, 0xff, 1, 0, 0, 0, 1, 0})
	f.Add(uint16(4096), uint16(512), uint8(3), []byte{0, 0x0f, 0, 1, 0, 0, 0, 2, 0, 8, 0, 8})
	f.Fuzz(func(t *testing.T, size, chunk uint16, chunks uint8, pattern []byte) {
		if size == 0 || chunk == 0 {
			return
		}
		var reads []readOp
		var writes []int64
		for len(pattern) >= 4 {
			a, b := int64(pattern[0])<<8|int64(pattern[1]), int64(pattern[2])<<8|int64(pattern[3])
			pattern = pattern[4:]
			off, n := a%int64(size), 1+b%int64(size)
			reads = append(reads, readOp{off, min(n, int64(size)-off)})
			writes = append(writes, 1+(a^b)%(3*int64(chunk)))
		}
		if _, err := checkWindowReads(int64(size), int64(chunk), 1+int(chunks%8), reads, writes); err != nil {
			t.Fatal(err)
		}
	})
}

type readOp struct{ off, n int64 }

// checkWindowReads downloads size random bytes into a Window in pieces of the sizes in writes
// (over and over), while two readers make the reads (clipped to the export), and checks every
// read's bytes. A read or the download that does not end within 20 s is an error.
func checkWindowReads(size, chunk int64, chunks int, reads []readOp, writes []int64) (nbd.WindowStats, error) {
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{byte(size), byte(chunk)}).Read(data)
	s := &source{data: data, spill: memSpill{b: make([]byte, size)}}
	w, err := nbd.NewWindow(nbd.WindowOptions{Size: size, ChunkSize: chunk, Chunks: chunks, Spill: &s.spill, Fetch: s.fetch})
	if err != nil {
		return nbd.WindowStats{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errs := make(chan error, 3)
	var download sync.WaitGroup
	download.Go(func() {
		for off, k := int64(0), 0; off < size; k++ {
			n := size - off
			if len(writes) > 0 {
				n = min(n, writes[k%len(writes)])
			}
			if _, err := w.Write(s.data[off : off+n]); err != nil {
				errs <- fmt.Errorf("download at %d: %w", off, err)
				return
			}
			off += n
		}
	})
	var next atomic.Int64
	var readers sync.WaitGroup
	for range 2 {
		readers.Go(func() {
			for {
				k := next.Add(1) - 1
				if k >= int64(len(reads)) {
					return
				}
				r := reads[k]
				r.n = min(r.n, size-r.off)
				p := make([]byte, r.n)
				if err := w.ReadAt(ctx, p, r.off); err != nil {
					errs <- fmt.Errorf("read of %d bytes at %d: %w", r.n, r.off, err)
					return
				}
				if !bytes.Equal(p, s.data[r.off:r.off+r.n]) {
					errs <- fmt.Errorf("read of %d bytes at %d: wrong bytes", r.n, r.off)
					return
				}
			}
		})
	}
	readers.Wait()
	w.Drain()
	done := make(chan struct{})
	go func() { download.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		w.Fail(ctx.Err())
		<-done
		return w.Stats(), fmt.Errorf("the download hung at %d of %d bytes", w.Available(), size)
	}
	close(errs)
	for err := range errs {
		return w.Stats(), err
	}
	if w.Available() != size {
		return w.Stats(), fmt.Errorf("download stopped at %d of %d", w.Available(), size)
	}
	return w.Stats(), nil
}
