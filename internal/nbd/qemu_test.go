package nbd_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/glance-sidecar/glance-sidecar/internal/nbd"
)

// The tests in this file put the real qemu-img (and qemu-io) on the other end of the socket.

// fixtures are the source images every conversion test runs on, built once per test binary.
var fixtures = struct {
	once sync.Once
	dir  string
	m    map[string]fixture
}{}

type fixture struct {
	img, ref string // the qcow2 image and qemu-img's own conversion of it to raw
	vsize    int64
}

// getFixture returns the named fixture: "holes" (64 MiB of patterned data with holes, zero
// clusters, a discarded range and sub-cluster writes), "full" (32 MiB, every cluster
// allocated with data) or "sparse" (256 MiB with one 64 KiB cluster of data).
func getFixture(t testing.TB, name string) fixture {
	t.Helper()
	tool(t, "qemu-img")
	tool(t, "qemu-io")
	fixtures.once.Do(func() {
		dir, err := os.MkdirTemp("", "nbd-fixtures-")
		if err != nil {
			t.Fatal(err)
		}
		fixtures.dir = dir
		fixtures.m = map[string]fixture{}
		for name, build := range map[string]func(dir string) string{
			"holes": func(dir string) string {
				return qcow2Fixture(t, dir, withHoles(),
					"write -z 40M 3M", // zero clusters (qcow2's zero flag)
					"discard 50M 1M",  // unallocated again
					fmt.Sprintf("write -P 0xa5 %d 4k", 52*mib+512),  // inside a cluster, not aligned
					fmt.Sprintf("write -P 0x5a %d 1k", 64*mib-4096), // in the zero tail
					fmt.Sprintf("write -z %d 128k", 12*mib+64<<10),  // zero clusters inside data
					fmt.Sprintf("write -P 0x11 %d 512", 20*mib+512)) // in a one-sector hole
			},
			"full": func(dir string) string { return qcow2Fixture(t, dir, patterned(32*mib)) },
			// 4 KiB clusters, so an L2 table maps only 2 MiB, and the second half written
			// first: the tables and data of the image's start sit in the second half of the
			// file, and qemu-img reads far ahead of a download.
			"tables": func(dir string) string {
				img := filepath.Join(dir, "src.qcow2")
				run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", img, "32M")
				run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x21 16M 16M", "-c", "write -P 0x42 0 16M", img)
				return img
			},
			"sparse": func(dir string) string {
				img := filepath.Join(dir, "src.qcow2")
				run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "256M")
				run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 7 100M 64k", img)
				return img
			},
		} {
			d := filepath.Join(dir, name)
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
			img := build(d)
			ref := reference(t, img)
			fixtures.m[name] = fixture{img: img, ref: ref, vsize: fileSize(t, ref)}
		}
	})
	fx, ok := fixtures.m[name]
	if !ok {
		t.Fatalf("fixture %q was not built", name)
	}
	return fx
}

func TestMain(m *testing.M) {
	code := m.Run()
	if fixtures.dir != "" {
		os.RemoveAll(fixtures.dir)
	}
	if bench.dir != "" {
		os.RemoveAll(bench.dir)
	}
	os.Exit(code)
}

// convertTo serves a SequentialWriter of the fixture's virtual size, writing into a sha256
// hash and a file, runs qemu-img convert -n with args into it, and returns qemu-img's error,
// Serve's error, the writer, the output file and its hash.
type convertResult struct {
	qemuErr, serveErr error
	sw                *nbd.SequentialWriter
	out, hash         string
	served            *served
}

func convertTo(t *testing.T, fx fixture, args ...string) convertResult {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.raw")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	sw := nbd.NewSequentialWriter(hashWriter{h: h, f: f}, fx.vsize)
	s := serve(t, sw)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	qargs := append([]string{"convert", "-n", "-f", "qcow2", "-O", "raw"}, args...)
	_, qerr := qemu(ctx, t, "qemu-img", append(qargs, fx.img, s.uri)...)
	serr := s.wait(t)
	return convertResult{qemuErr: qerr, serveErr: serr, sw: sw, out: out, hash: hex.EncodeToString(h.Sum(nil)), served: s}
}

func TestConvertToSequentialWriter(t *testing.T) {
	tests := []struct {
		fixture string
		args    []string
		gaps    bool // qemu-img may skip ranges (--target-is-zero)
	}{
		{"holes", nil, false},
		{"holes", []string{"-m", "8"}, false},
		{"holes", []string{"-m", "1"}, false},
		{"holes", []string{"-m", "16", "-S", "0"}, false},
		{"holes", []string{"--target-is-zero"}, true},
		{"full", nil, false},
		{"full", []string{"-m", "8"}, false},
		{"sparse", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.fixture+"/"+strings.Join(append([]string{"default"}, tt.args...), "_"), func(t *testing.T) {
			fx := getFixture(t, tt.fixture)
			r := convertTo(t, fx, tt.args...)
			if r.qemuErr != nil {
				t.Fatal(r.qemuErr)
			}
			if r.serveErr != nil {
				t.Fatalf("Serve: %v", r.serveErr)
			}
			if got := r.sw.Written(); got != fx.vsize {
				t.Fatalf("writer got %d bytes, want %d", got, fx.vsize)
			}
			if want := fileHash(t, fx.ref); r.hash != want {
				equalFiles(t, fx.ref, r.out)
				t.Fatalf("sha256 %s, qemu-img's own raw file %s", r.hash, want)
			}
			equalFiles(t, fx.ref, r.out)
			checkInOrder(t, r.served.trace.requests(), tt.gaps)
			for i, e := range r.served.trace.requests() {
				if e.length > nbd.MaxRequest {
					t.Fatalf("request %d: %s of %d bytes, more than the advertised maximum", i, e.name, e.length)
				}
			}
			t.Logf("qemu-img convert -n %s: %s", strings.Join(tt.args, " "), r.served.trace.summary())
		})
	}
}

// With -W, qemu-img writes its target out of order. A SequentialWriter cannot take that: the
// first write behind what it has written fails with EIO, qemu-img exits non-zero, and Serve
// and the writer report ErrOutOfOrder. It must never end in success with the wrong bytes. qemu
// writes the zero runs first (they need no read), so on this fixture the data of the first
// clusters arrives behind a gap; of three runs at least one must fail, or the test did not
// test what it says.
func TestConvertOutOfOrderFailsCleanly(t *testing.T) {
	fx := getFixture(t, "holes")
	failed := 0
	for i := range 3 {
		r := convertTo(t, fx, "-W", "-m", "16")
		if r.qemuErr == nil {
			if r.serveErr != nil {
				t.Fatalf("run %d: qemu-img succeeded but Serve failed: %v", i, r.serveErr)
			}
			equalFiles(t, fx.ref, r.out)
			t.Logf("run %d: qemu-img -W happened to write in order", i)
			continue
		}
		failed++
		if !errors.Is(r.serveErr, nbd.ErrOutOfOrder) {
			t.Fatalf("run %d: qemu-img failed (%v) but Serve returned %v, want ErrOutOfOrder", i, r.qemuErr, r.serveErr)
		}
		if !errors.Is(r.sw.Err(), nbd.ErrOutOfOrder) {
			t.Fatalf("run %d: writer error %v, want ErrOutOfOrder", i, r.sw.Err())
		}
		if !strings.Contains(r.qemuErr.Error(), "Input/output error") {
			t.Errorf("run %d: qemu-img did not report EIO: %v", i, r.qemuErr)
		}
		if w := r.sw.Written(); w >= fx.vsize {
			t.Fatalf("run %d: the writer received all %d bytes despite the failure", i, w)
		}
		t.Logf("run %d: %v; the writer stopped at %d of %d bytes; %s", i, r.serveErr, r.sw.Written(), fx.vsize, r.served.trace.summary())
	}
	if failed == 0 {
		t.Fatal("qemu-img -W wrote in order three times: the out-of-order path was not exercised")
	}
}

// download writes the file at src into w in chunks, sleeping between them, and fails w with
// failErr after failAfter bytes when failErr is set. It returns the error that ended it.
func download(w *nbd.Window, src string, chunk int, pause time.Duration, failAfter int64, failErr error) error {
	in, err := os.Open(src)
	if err != nil {
		w.Fail(err)
		return err
	}
	defer in.Close()
	buf := make([]byte, chunk)
	var done int64
	for {
		if failErr != nil && done >= failAfter {
			w.Fail(failErr)
			return failErr
		}
		n, err := in.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			done += int64(n)
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			w.Fail(err)
			return err
		}
		time.Sleep(pause)
	}
}

// windowSource serves a Window the fixture's image is "downloaded" into, fetched by range from
// the image itself (through alter, if set, told whether the chunk is fetched ahead of the
// download) and spilled into a file, and starts the download, whose outcome it sends on the
// channel.
func windowSource(t *testing.T, img string, opts nbd.WindowOptions, alter func(p []byte, ahead bool), failAfter int64, failErr error) (*nbd.Window, *served, <-chan error) {
	t.Helper()
	spill, err := os.Create(filepath.Join(t.TempDir(), "spill"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { spill.Close() })
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	opts.Size, opts.Spill = fileSize(t, img), spill
	var w *nbd.Window
	opts.Fetch = func(_ context.Context, p []byte, off int64) error {
		if _, err := f.ReadAt(p, off); err != nil {
			return err
		}
		if alter != nil {
			alter(p, off >= w.Available())
		}
		return nil
	}
	w, err = nbd.NewWindow(opts)
	if err != nil {
		t.Fatal(err)
	}
	s := serve(t, &waitRecorder{Window: w})
	done := make(chan error, 1)
	go func() { done <- download(w, img, 256<<10, 2*time.Millisecond, failAfter, failErr) }()
	return w, s, done
}

// endSource waits for the source's server after its client is done, drains the window, and
// waits for the download: all three must end without an error.
func endSource(t *testing.T, s *served, w *nbd.Window, downloaded <-chan error) {
	t.Helper()
	if err := s.wait(t); err != nil {
		t.Fatalf("Serve (source): %v", err)
	}
	w.Drain()
	if err := <-downloaded; err != nil {
		t.Fatalf("download: %v", err)
	}
}

// waitRecorder counts the reads that had to wait for the download.
type waitRecorder struct {
	*nbd.Window
	waited, reads int
}

func (w *waitRecorder) ReadAt(ctx context.Context, p []byte, off int64) error {
	w.reads++
	if w.Available() < off+int64(len(p)) {
		w.waited++
	}
	return w.Window.ReadAt(ctx, p, off)
}

// windows are the window shapes the conversions are tried with: the sidecar's, and small ones
// that make qemu-img's reads drop, spill and fetch chunks.
var windows = []struct {
	name string
	opts nbd.WindowOptions
}{
	{"default", nbd.WindowOptions{}},
	{"4 chunks of 256 KiB", nbd.WindowOptions{ChunkSize: 256 << 10, Chunks: 4}},
	{"1 chunk of 64 KiB", nbd.WindowOptions{ChunkSize: 64 << 10, Chunks: 1}},
}

func TestConvertFromWindow(t *testing.T) {
	for _, name := range []string{"holes", "full", "tables"} {
		for _, win := range windows {
			t.Run(name+"/"+win.name, func(t *testing.T) {
				fx := getFixture(t, name)
				w, s, downloaded := windowSource(t, fx.img, win.opts, nil, 0, nil)
				out := filepath.Join(t.TempDir(), "out.raw")
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				if _, err := qemu(ctx, t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", s.uri, out); err != nil {
					t.Fatal(err)
				}
				endSource(t, s, w, downloaded)
				equalFiles(t, fx.ref, out)
				if got, want := w.Available(), fileSize(t, fx.img); got != want {
					t.Fatalf("download at %d of %d bytes after the conversion", got, want)
				}
				for i, r := range s.trace.requests() {
					if r.name != "READ" && r.name != "DISC" {
						t.Fatalf("request %d: %s at %d, %d bytes: a source is only read", i, r.name, r.offset, r.length)
					}
				}
				rec := s.export.(*waitRecorder)
				if rec.waited == 0 {
					t.Fatalf("none of %d reads waited for the download: the stages did not overlap", rec.reads)
				}
				st := w.Stats()
				if win.opts.Chunks == 0 && st.Spilled > fileSize(t, fx.img)/4 {
					t.Errorf("the default window spilled %d of %d bytes", st.Spilled, fileSize(t, fx.img))
				}
				t.Logf("%d of %d reads waited for the download; %+v; %s", rec.waited, rec.reads, st, s.trace.summary())
			})
		}
	}
}

// Chunks fetched ahead of the download whose bytes differ from it: qemu-img has read them,
// and may even succeed, but the download fails when it gets there, also after Drain.
func TestConvertFromWindowFetchMismatch(t *testing.T) {
	fx := getFixture(t, "tables")
	var altered atomic.Int64
	w, s, downloaded := windowSource(t, fx.img, nbd.WindowOptions{ChunkSize: 64 << 10, Chunks: 2}, func(p []byte, ahead bool) {
		if ahead {
			p[len(p)/2] ^= 0x40
			altered.Add(1)
		}
	}, 0, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, qerr := qemu(ctx, t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", s.uri, filepath.Join(t.TempDir(), "out.raw"))
	serr := s.wait(t)
	w.Drain()
	derr := <-downloaded
	if altered.Load() == 0 {
		t.Fatal("nothing was fetched ahead: the test proves nothing")
	}
	if !errors.Is(derr, nbd.ErrFetchMismatch) {
		t.Fatalf("download: %v, want ErrFetchMismatch (qemu-img: %v; Serve: %v)", derr, qerr, serr)
	}
	t.Logf("%d chunks altered; qemu-img: %v\nServe: %v\ndownload: %v", altered.Load(), qerr, serr, derr)
}

// A download that fails half way makes every read past what arrived fail: qemu-img exits
// non-zero and Serve returns the download's error.
func TestConvertFromWindowFails(t *testing.T) {
	fx := getFixture(t, "holes")
	broken := errors.New("connection reset by Glance")
	half := fileSize(t, fx.img) / 2
	w, s, _ := windowSource(t, fx.img, nbd.WindowOptions{}, nil, half, broken)
	out := filepath.Join(t.TempDir(), "out.raw")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, qerr := qemu(ctx, t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", s.uri, out)
	if qerr == nil {
		t.Fatal("qemu-img convert succeeded from a download that failed half way")
	}
	serr := s.wait(t)
	if !errors.Is(serr, broken) {
		t.Fatalf("Serve returned %v, want the download's error", serr)
	}
	if a := w.Available(); a < half || a >= fileSize(t, fx.img) {
		t.Fatalf("download stopped at %d, want from %d to the end", a, half)
	}
	t.Logf("qemu-img: %v\nServe: %v", qerr, serr)
}

// Both ends over NBD in one qemu-img run: the source read from a Window while it downloads,
// the raw target streamed into a SequentialWriter.
func TestConvertWindowToSequentialWriter(t *testing.T) {
	for _, name := range []string{"holes", "full"} {
		t.Run(name, func(t *testing.T) {
			fx := getFixture(t, name)
			w, src, downloaded := windowSource(t, fx.img, nbd.WindowOptions{}, nil, 0, nil)
			h := sha256.New()
			sw := nbd.NewSequentialWriter(h, fx.vsize)
			dst := serve(t, sw)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if _, err := qemu(ctx, t, "qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", src.uri, dst.uri); err != nil {
				t.Fatal(err)
			}
			endSource(t, src, w, downloaded)
			if err := dst.wait(t); err != nil {
				t.Fatalf("Serve (target): %v", err)
			}
			if got, want := hex.EncodeToString(h.Sum(nil)), fileHash(t, fx.ref); got != want {
				t.Fatalf("sha256 %s, qemu-img's own raw file %s", got, want)
			}
			if sw.Written() != fx.vsize {
				t.Fatalf("writer got %d bytes, want %d", sw.Written(), fx.vsize)
			}
			checkInOrder(t, dst.trace.requests(), false)
		})
	}
}

// qemu-io's own NBD client against an in-memory export, on a socket whose path needs
// percent-encoding in the URI: writes, zeros, unaligned I/O, reads back, flush.
func TestQemuIO(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a b,c%d")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	m := &memExport{data: patterned(4 * mib)}
	ln, err := nbd.Listen(dir)
	if err != nil {
		t.Fatal(err)
	}
	tr := &trace{}
	done := make(chan error, 1)
	go func() { done <- (&nbd.Server{Export: m, Logger: slog.New(tr)}).Serve(context.Background(), ln) }()
	out := run(t, "qemu-io", "-f", "raw",
		"-c", "write -P 0x5a 0 64k",
		"-c", "write -z 64k 64k",
		"-c", "write -P 0x33 1000 24",
		"-c", "read -P 0x5a 0 1000",
		"-c", "read -P 0x33 1000 24",
		"-c", "read -P 0 64k 64k",
		"-c", "read -P 0x5a 1024 63k",
		"-c", "flush",
		ln.URI())
	if strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("qemu-io read back the wrong bytes:\n%s", out)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	want := patterned(4 * mib)
	copy(want, bytes.Repeat([]byte{0x5a}, 64<<10))
	clear(want[64<<10 : 128<<10])
	copy(want[1000:], bytes.Repeat([]byte{0x33}, 24))
	if i := firstDiff(m.data, want); i >= 0 {
		t.Fatalf("export differs from what qemu-io wrote at byte %d", i)
	}
	seen := map[string]bool{}
	for _, e := range tr.requests() {
		seen[e.name] = true
	}
	for _, c := range []string{"READ", "WRITE", "WRITE_ZEROES", "FLUSH", "DISC"} {
		if !seen[c] {
			t.Errorf("qemu-io sent no %s: %s", c, tr.summary())
		}
	}
	t.Log(tr.summary())
}

// A read-only export: qemu-io -r reads it; qemu-io opening it for writing is refused.
func TestQemuIOReadOnly(t *testing.T) {
	data := patterned(2 * mib)
	f, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	g, err := nbd.NewWindow(nbd.WindowOptions{Size: int64(len(data)), Chunks: 2, ChunkSize: mib, Spill: f,
		Fetch: func(context.Context, []byte, int64) error { return errors.New("no fetch here") }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Write(data); err != nil {
		t.Fatal(err)
	}

	s := serve(t, g)
	out := run(t, "qemu-io", "-r", "-f", "raw", "-c", fmt.Sprintf("read -v %d 16", mib+5), s.uri)
	if want := fmt.Sprintf("% x", data[mib+5:mib+5+16]); !strings.Contains(out, want) {
		t.Fatalf("qemu-io read:\n%s\nwant bytes %s", out, want)
	}
	if err := s.wait(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}

	s = serve(t, g)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err = qemu(ctx, t, "qemu-io", "-f", "raw", "-c", "write -P 1 0 512", s.uri)
	if err == nil || !strings.Contains(out, "Permission denied") {
		t.Fatalf("qemu-io opened a read-only export for writing (%v):\n%s", err, out)
	}
	t.Logf("qemu-io writing to a read-only export: %v", strings.TrimSpace(out))
	s.cancel()
	s.wait(t)
	if g.Available() != int64(len(data)) {
		t.Fatal("the export changed")
	}
}
