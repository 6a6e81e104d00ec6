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
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/glance-sidecar/glance-sidecar/internal/nbd"
)

// This file holds what the tests share: running qemu-img and qemu-io, building qcow2 fixtures
// with them, serving an export on a socket while recording what the client sent, and an
// in-memory export.

// tool returns the path of a program the tests need, failing the test when it is missing.
func tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is needed by this test and is not installed (Debian: apt-get install qemu-utils): %v", name, err)
	}
	return p
}

// qemu runs qemu-img or qemu-io with LC_ALL=C under ctx and returns its combined output and
// error.
func qemu(ctx context.Context, t testing.TB, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, tool(t, name), args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C")
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		err = fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), err
}

// run is qemu, failing the test on error, with a 2-minute bound.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := qemu(ctx, t, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// patterned returns n bytes that are neither zero nor repeating at any cluster size.
func patterned(n int) []byte {
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i*7+i>>12) | 1
	}
	return data
}

const mib = 1 << 20

// withHoles is 64 MiB of patterned data with zero runs of many sizes and alignments: whole
// MiBs, runs not aligned to the 64 KiB cluster, a zero tail.
func withHoles() []byte {
	data := patterned(64 * mib)
	for _, h := range [][2]int{
		{0, 64 << 10},                  // first cluster
		{3 * mib, 5 * mib},             // 2 MiB
		{9*mib + 4096, 11*mib + 12288}, // unaligned both ends
		{20 * mib, 20*mib + 512},       // one sector
		{30 * mib, 38 * mib},           // 8 MiB
		{61 * mib, 64 * mib},           // the tail
	} {
		clear(data[h[0]:h[1]])
	}
	return data
}

// qcow2Fixture writes data to a raw file, converts it to qcow2 with qemu-img (zero runs become
// unallocated clusters) and runs the qemu-io commands given on the result (zero clusters,
// discards, sub-cluster writes). It returns the qcow2 path.
func qcow2Fixture(t testing.TB, dir string, data []byte, qemuIO ...string) string {
	t.Helper()
	raw := filepath.Join(dir, "data.raw")
	if err := os.WriteFile(raw, data, 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "src.qcow2")
	run(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, img)
	if err := os.Remove(raw); err != nil {
		t.Fatal(err)
	}
	if len(qemuIO) > 0 {
		args := []string{"-f", "qcow2"}
		for _, c := range qemuIO {
			args = append(args, "-c", c)
		}
		run(t, "qemu-io", append(args, img)...)
	}
	return img
}

// reference converts a qcow2 image to a raw file with qemu-img and returns the raw file's
// path: what every NBD path must reproduce byte for byte.
func reference(t testing.TB, img string) string {
	t.Helper()
	out := filepath.Join(filepath.Dir(img), "reference.raw")
	run(t, "qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", img, out)
	return out
}

func fileHash(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// event is one option or request the server logged.
type event struct {
	msg     string // "nbd option", "nbd option refused", "nbd request", ...
	name    string // option or command name
	flags   int
	offset  int64
	length  int64
	at      time.Time
	errText string
}

// trace is a slog handler that keeps the server's debug records as events.
type trace struct {
	mu     sync.Mutex
	events []event
}

func (tr *trace) Enabled(context.Context, slog.Level) bool { return true }
func (tr *trace) WithAttrs([]slog.Attr) slog.Handler       { return tr }
func (tr *trace) WithGroup(string) slog.Handler            { return tr }
func (tr *trace) Handle(_ context.Context, r slog.Record) error {
	e := event{msg: r.Message, at: r.Time}
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "option", "command":
			e.name = a.Value.String()
		case "flags":
			e.flags = int(a.Value.Int64())
		case "offset":
			e.offset = int64(a.Value.Uint64())
		case "length":
			if a.Value.Kind() == slog.KindUint64 {
				e.length = int64(a.Value.Uint64())
			} else {
				e.length = a.Value.Int64()
			}
		case "error", "reason":
			if a.Value.Any() != nil {
				e.errText = a.Value.String()
			}
		}
		return true
	})
	tr.mu.Lock()
	tr.events = append(tr.events, e)
	tr.mu.Unlock()
	return nil
}

// requests returns the requests logged, in order of arrival.
func (tr *trace) requests() []event {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var out []event
	for _, e := range tr.events {
		if e.msg == "nbd request" {
			out = append(out, e)
		}
	}
	return out
}

// options returns the options logged, refused ones marked with a trailing "!".
func (tr *trace) options() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var out []string
	for _, e := range tr.events {
		switch e.msg {
		case "nbd option":
			out = append(out, e.name)
		case "nbd option refused":
			out[len(out)-1] += "!"
		}
	}
	return out
}

// summary describes the requests: count, bytes and the sizes seen per command, and the
// options, for the test log.
func (tr *trace) summary() string {
	type stat struct {
		n, bytes int64
		sizes    map[int64]int
		flags    map[int]int
	}
	stats := map[string]*stat{}
	var order []string
	for _, e := range tr.requests() {
		s := stats[e.name]
		if s == nil {
			s = &stat{sizes: map[int64]int{}, flags: map[int]int{}}
			stats[e.name] = s
			order = append(order, e.name)
		}
		s.n++
		s.bytes += e.length
		s.sizes[e.length]++
		s.flags[e.flags]++
	}
	var b strings.Builder
	fmt.Fprintf(&b, "options %v; requests in order of first use:", tr.options())
	for _, name := range order {
		s := stats[name]
		fmt.Fprintf(&b, "\n  %-12s %5d requests, %10d bytes, lengths %s, flags %v", name, s.n, s.bytes, topSizes(s.sizes), s.flags)
	}
	return b.String()
}

// topSizes prints the most frequent request lengths.
func topSizes(m map[int64]int) string {
	type kv struct {
		size int64
		n    int
	}
	var all []kv
	for k, v := range m {
		all = append(all, kv{k, v})
	}
	for i := range all {
		for j := i + 1; j < len(all); j++ {
			if all[j].n > all[i].n || all[j].n == all[i].n && all[j].size > all[i].size {
				all[i], all[j] = all[j], all[i]
			}
		}
	}
	var parts []string
	for i, e := range all {
		if i == 4 {
			parts = append(parts, fmt.Sprintf("… (%d distinct)", len(all)))
			break
		}
		parts = append(parts, fmt.Sprintf("%d×%d", e.n, e.size))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// discardLogger logs nothing, and is not even asked to.
var discardLogger = slog.New(slog.DiscardHandler)

// served is an export being served on a unix socket by Serve in a goroutine.
type served struct {
	export nbd.Export
	uri    string
	path   string // the socket
	trace  *trace
	done   chan error
	cancel context.CancelFunc
}

// serve serves exp on a new socket under t's temporary directory until the client
// disconnects; wait returns Serve's result.
func serve(t testing.TB, exp nbd.Export) *served {
	t.Helper()
	ln, err := nbd.Listen(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &served{export: exp, uri: ln.URI(), path: ln.Path(), trace: &trace{}, done: make(chan error, 1), cancel: cancel}
	srv := &nbd.Server{Export: exp, Logger: slog.New(s.trace)}
	go func() { s.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		<-s.done
		if _, err := os.Stat(ln.Path()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket %s still there after Serve returned: %v", ln.Path(), err)
		}
	})
	return s
}

// wait returns what Serve returned, failing the test if it does not return within a minute.
func (s *served) wait(t testing.TB) error {
	t.Helper()
	select {
	case err := <-s.done:
		s.done <- err // for the cleanup
		return err
	case <-time.After(time.Minute):
		s.cancel()
		t.Fatalf("Serve did not return within a minute of the client finishing")
		return nil
	}
}

// checkInOrder fails the test unless the writes (WRITE and WRITE_ZEROES) each start where the
// previous one ended, from 0, no request other than writes and FLUSH arrived, and DISC came
// last; with gaps, a write may also start beyond the end of the previous one.
func checkInOrder(t testing.TB, reqs []event, gaps bool) {
	t.Helper()
	if len(reqs) == 0 || reqs[len(reqs)-1].name != "DISC" {
		t.Fatalf("the last of %d requests is not DISC", len(reqs))
	}
	var next int64
	for i, r := range reqs[:len(reqs)-1] {
		switch r.name {
		case "WRITE", "WRITE_ZEROES":
			if r.offset < next || !gaps && r.offset != next {
				t.Fatalf("request %d: %s at %d, %d bytes, after writes up to %d", i, r.name, r.offset, r.length, next)
			}
			next = r.offset + r.length
		case "FLUSH":
		default:
			t.Fatalf("request %d: unexpected %s at %d, %d bytes", i, r.name, r.offset, r.length)
		}
	}
}

// memExport is an export held in memory.
type memExport struct {
	data []byte
	ro   bool
}

func (m *memExport) Size() int64    { return int64(len(m.data)) }
func (m *memExport) ReadOnly() bool { return m.ro }
func (m *memExport) ReadAt(_ context.Context, p []byte, off int64) error {
	copy(p, m.data[off:])
	return nil
}
func (m *memExport) WriteAt(_ context.Context, p []byte, off int64) error {
	if m.ro {
		return nbd.ErrReadOnly
	}
	copy(m.data[off:], p)
	return nil
}

// hashWriter hashes what it is given and writes it to a file too.
type hashWriter struct {
	h io.Writer
	f *os.File
}

func (w hashWriter) Write(p []byte) (int, error) {
	w.h.Write(p)
	return w.f.Write(p)
}

// equalFiles fails the test unless the files at a and b have the same bytes.
func equalFiles(t testing.TB, a, b string) {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(x) != len(y) {
		t.Fatalf("%s has %d bytes, %s %d", a, len(x), b, len(y))
	}
	if i := firstDiff(x, y); i >= 0 {
		t.Fatalf("%s and %s differ first at byte %d", a, b, i)
	}
}

func firstDiff(x, y []byte) int {
	for off := 0; off < len(x); off += 4096 {
		end := min(off+4096, len(x))
		if !bytes.Equal(x[off:end], y[off:end]) {
			for i := off; i < end; i++ {
				if x[i] != y[i] {
					return i
				}
			}
		}
	}
	return -1
}
