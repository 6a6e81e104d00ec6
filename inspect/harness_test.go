package inspect_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sync/atomic"
	"testing"

	"github.com/glance-sidecar/glance-sidecar/inspect"
	"github.com/glance-sidecar/glance-sidecar/internal/qemutest"
)

// This file holds what every format test shares: building fixtures with the real qemu-img,
// asking qemu-img what it thinks of them, and inspecting a file through every way in while
// checking that all of them agree.

// run runs a command with LC_ALL=C and fails the test if it fails (see qemutest.Run).
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	return qemutest.Run(t, name, args...)
}

// qemuCreate makes an image with `qemu-img create -f fmt [-o opts] path size` in a temporary
// directory and returns its path.
func qemuCreate(t testing.TB, qfmt, opts string, size int64, extra ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "img."+qfmt)
	args := []string{"create", "-q", "-f", qfmt}
	if opts != "" {
		args = append(args, "-o", opts)
	}
	args = append(args, extra...)
	args = append(args, path, fmt.Sprint(size))
	run(t, "qemu-img", args...)
	return path
}

// qemuPatched returns a build func that makes an image with qemuCreate and writes patches
// (offset → bytes) into it: real qemu output with one field changed.
func qemuPatched(qfmt string, size int64, patches map[int][]byte) func(t testing.TB) string {
	return func(t testing.TB) string {
		path := qemuCreate(t, qfmt, "", size)
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for off, p := range patches {
			if _, err := f.WriteAt(p, int64(off)); err != nil {
				t.Fatal(err)
			}
		}
		return path
	}
}

// qemuConvert writes data to a raw file and converts it with
// `qemu-img convert -f raw -O qfmt [-o opts]`: a qemu image whose data is really allocated.
func qemuConvert(t testing.TB, data []byte, qfmt, opts string) string {
	t.Helper()
	raw := writeFile(t, "data.raw", data)
	out := filepath.Join(t.TempDir(), "img."+qfmt)
	args := []string{"convert", "-q", "-f", "raw", "-O", qfmt}
	if opts != "" {
		args = append(args, "-o", opts)
	}
	run(t, "qemu-img", append(args, raw, out)...)
	return out
}

// qemuInfo is the part of `qemu-img info --output=json` the tests compare with.
type qemuInfo struct {
	Format         string `json:"format"`
	VirtualSize    int64  `json:"virtual-size"`
	BackingFile    string `json:"backing-filename"`
	FormatSpecific struct {
		Type string         `json:"type"`
		Data map[string]any `json:"data"`
	} `json:"format-specific"`
}

// info runs `qemu-img info --output=json -f qfmt path`: always with -f, as everything here.
func info(t testing.TB, qfmt, path string) qemuInfo {
	t.Helper()
	out := run(t, "qemu-img", "info", "--output=json", "-f", qfmt, path)
	var qi qemuInfo
	if err := json.Unmarshal([]byte(out), &qi); err != nil {
		t.Fatalf("qemu-img info %s: %v\n%s", path, err, out)
	}
	return qi
}

// countingReaderAt counts the bytes read through it.
type countingReaderAt struct {
	r     io.ReaderAt
	bytes atomic.Int64
	calls atomic.Int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.bytes.Add(int64(n))
	c.calls.Add(1)
	return n, err
}

// chunkReader returns reads of the sizes in pattern, in turn, for the first limit bytes and
// then 256 KiB reads: parsers must not depend on how the stream is cut.
type chunkReader struct {
	r       io.Reader
	pattern []int
	i       int
	done    int64
	limit   int64
}

func (c *chunkReader) Read(p []byte) (int, error) {
	n := 256 << 10
	if c.done < c.limit {
		n = c.pattern[c.i%len(c.pattern)]
		c.i++
	}
	n = min(n, len(p))
	m, err := c.r.Read(p[:n])
	c.done += int64(m)
	return m, err
}

var chunkPatterns = [][]int{{17}, {512}, {1, 7, 4093, 70001}, {65537}, {1 << 20}}

// inspectAll inspects data through InspectAt, through Inspect with reads cut in several
// patterns, and through Stream fed by io.Copy, fails the test unless all agree, and returns
// the report and the bytes the random-access path read.
func inspectAll(t testing.TB, data io.ReaderAt, size int64, opts inspect.Options) (*inspect.Report, int64) {
	t.Helper()
	ctx := context.Background()
	cr := &countingReaderAt{r: data}
	want, err := inspect.InspectAt(ctx, cr, size, opts)
	if err != nil {
		t.Fatalf("InspectAt: %v", err)
	}
	for _, pat := range chunkPatterns {
		limit := int64(1 << 20)
		if pat[0] == 17 && size > 64<<20 {
			limit = 512 << 10
		}
		got, err := inspect.Inspect(ctx, &chunkReader{r: io.NewSectionReader(data, 0, size), pattern: pat, limit: limit}, opts)
		if err != nil {
			t.Fatalf("Inspect(chunks %v): %v", pat, err)
		}
		if !reflect.DeepEqual(want, got) {
			t.Fatalf("streaming (chunks %v) and random access disagree:\nrandom: %s\nstream: %s", pat, dump(want), dump(got))
		}
	}
	return want, cr.bytes.Load()
}

// openFile opens path for the test's duration and returns it with its size.
func openFile(t testing.TB, path string) (*os.File, int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return f, st.Size()
}

// inspectFile is inspectAll over a file.
func inspectFile(t testing.TB, path string, opts inspect.Options) (*inspect.Report, int64) {
	t.Helper()
	f, size := openFile(t, path)
	return inspectAll(t, f, size, opts)
}

// inspectBytes is inspectAll over a byte slice.
func inspectBytes(t testing.TB, b []byte, opts inspect.Options) *inspect.Report {
	t.Helper()
	r, _ := inspectAll(t, bytes.NewReader(b), int64(len(b)), opts)
	return r
}

func dump(r *inspect.Report) string {
	b, _ := json.Marshal(struct {
		*inspect.Report
		Details any
	}{r, r.Details})
	return string(b)
}

// writeFile writes b to a new temporary file and returns its path.
func writeFile(t testing.TB, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// readFile returns the content of path.
func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// patch returns a copy of b with p written at off (growing b when needed).
func patch(b []byte, off int, p []byte) []byte {
	out := append([]byte(nil), b...)
	if need := off + len(p); need > len(out) {
		out = append(out, make([]byte, need-len(out))...)
	}
	copy(out[off:], p)
	return out
}

// wantCodes fails the test unless the report's problem codes are exactly codes (in any order).
func wantCodes(t testing.TB, r *inspect.Report, codes ...inspect.Code) {
	t.Helper()
	got := map[inspect.Code]bool{}
	for _, c := range r.Codes() {
		got[c] = true
	}
	want := map[inspect.Code]bool{}
	for _, c := range codes {
		want[c] = true
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("problems %v, want codes %v", r.Problems, codes)
	}
}

// fixture is an image made by qemu-img at test time, and what inspection must say of it.
type fixture struct {
	name  string
	qfmt  string   // qemu-img format to create (and to pass to qemu-img info -f)
	opts  string   // -o options
	size  int64    // virtual size asked for
	extra []string // more qemu-img create arguments (-b, --object, ...)
	// build, when set, makes the image instead of qemu-img create and returns its path.
	build func(t testing.TB) string
	want  inspect.Format
	codes []inspect.Code // expected problem codes; none means safe
	// check, when set, checks the details.
	check func(t testing.TB, r *inspect.Report)
	// noDiff skips comparing the virtual size with qemu-img info (qemu cannot open the image).
	noDiff bool
}

// testFixtures builds each fixture, inspects it every way, and checks format, problems,
// details, and the virtual size against `qemu-img info -f`.
func testFixtures(t *testing.T, fixtures []fixture) {
	t.Helper()
	for _, fx := range fixtures {
		t.Run(fx.name, func(t *testing.T) {
			t.Parallel()
			var path string
			if fx.build != nil {
				path = fx.build(t)
			} else {
				path = qemuCreate(t, fx.qfmt, fx.opts, fx.size, fx.extra...)
			}
			r, _ := inspectFile(t, path, inspect.Options{})
			if r.Format != fx.want {
				t.Fatalf("format %q, want %q (problems %v)", r.Format, fx.want, r.Problems)
			}
			wantCodes(t, r, fx.codes...)
			if !fx.noDiff {
				qi := info(t, fx.qfmt, path)
				if r.VirtualSize != qi.VirtualSize {
					t.Errorf("virtual size %d, qemu-img info -f %s says %d", r.VirtualSize, fx.qfmt, qi.VirtualSize)
				}
			}
			if fx.check != nil {
				fx.check(t, r)
			}
			// Declaring the detected format adds nothing; declaring another adds a mismatch.
			decl, _ := inspectFile(t, path, inspect.Options{Declared: string(fx.want)})
			if decl.Has(inspect.CodeFormatMismatch) {
				t.Errorf("declared %s: %v", fx.want, decl.Problems)
			}
			other := "qcow2"
			if fx.want == inspect.QCOW2 {
				other = "raw"
			}
			mis, _ := inspectFile(t, path, inspect.Options{Declared: other})
			if !mis.Has(inspect.CodeFormatMismatch) {
				t.Errorf("declared %s: no format_mismatch in %v", other, mis.Problems)
			}
		})
	}
}

// hostileCase is a hand-built image and what inspecting it must say.
type hostileCase struct {
	name  string
	img   []byte
	want  inspect.Format
	vsize int64 // the virtual size it must report
	codes []inspect.Code
}

// testHostile inspects each case every way (inspectBytes) and checks format, problem codes and
// virtual size.
func testHostile(t *testing.T, tests []hostileCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := inspectBytes(t, tt.img, inspect.Options{})
			if r.Format != tt.want {
				t.Fatalf("format %q, want %q (problems %v)", r.Format, tt.want, r.Problems)
			}
			wantCodes(t, r, tt.codes...)
			if r.VirtualSize != tt.vsize {
				t.Errorf("virtual size %d, want %d", r.VirtualSize, tt.vsize)
			}
		})
	}
}

// patterned returns n bytes that are neither zero nor repeating at any cluster size.
func patterned(n int) []byte {
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i*7 + i>>12)
	}
	return data
}
