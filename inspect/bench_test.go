package inspect_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"runtime"
	"testing"

	"github.com/glance-sidecar/glance-sidecar/inspect"
)

// Budgets the issue sets for inspection, checked by TestBudgets and measured by the benchmarks.
const (
	smallReadBudget  = 64 << 10 // bytes read by random access for qcow2, vdi, dynamic vhd, iso
	readBudget       = 4 << 20  // bytes read by random access for any format
	allocBudget      = 2 << 20  // bytes allocated by one inspection of a normal image
	worstAllocBudget = 4 << 20  // bytes allocated by one inspection of a hostile image
)

// budgetImage is a qemu-made image of each kind the budgets are checked on.
type budgetImage struct {
	name  string
	small bool // held to smallReadBudget
	make  func(t testing.TB) string
}

func qemuImg(qfmt, opts string, size int64) func(t testing.TB) string {
	return func(t testing.TB) string { return qemuCreate(t, qfmt, opts, size) }
}

// budgetImages are large images (4 GiB virtual) so that any read or allocation that grows with
// the image shows.
var budgetImages = []budgetImage{
	{"qcow2", true, qemuImg("qcow2", "", 4<<30)},
	{"qcow2-v2", true, qemuImg("qcow2", "compat=0.10", 4<<30)},
	{"vmdk-sparse", false, qemuImg("vmdk", "", 4<<30)},
	{"vmdk-stream", false, qemuImg("vmdk", "subformat=streamOptimized", 4<<30)},
	{"vhd-dynamic", true, qemuImg("vpc", "", 4<<30)},
	{"vhd-fixed", false, qemuImg("vpc", "subformat=fixed", 64<<20)},
	{"vhdx", false, qemuImg("vhdx", "", 4<<30)},
	{"vdi", true, qemuImg("vdi", "", 4<<30)},
	{"qed", false, qemuImg("qed", "", 4<<30)},
	{"ploop", false, qemuImg("parallels", "", 4<<30)},
	{"raw", false, qemuImg("raw", "", 4<<30)},
	{"raw-gpt", false, rawDisk(4<<30, []string{"sgdisk", "-q", "-o", "-n", "1:2048:0", "@"})},
	{"iso", true, mastered(64<<20, "genisoimage", "-V", "BENCH")},
	{"iso-hybrid-gpt", false, mastered(64<<20, "xorriso", "-appended_part_as_gpt", "-append_partition", "2", "0xef", "@FAT")},
	{"luks", false, func(t testing.TB) string { return luksCreate(t, "", 64<<20) }},
}

// TestBudgets checks the bytes the random-access path reads and the bytes one streaming or
// random-access inspection allocates, for each kind of image.
func TestBudgets(t *testing.T) {
	for _, bi := range budgetImages {
		t.Run(bi.name, func(t *testing.T) {
			path := bi.make(t)
			read := bytesReadAt(t, path)
			limit := int64(readBudget)
			if bi.small {
				limit = smallReadBudget
			}
			if read > limit {
				t.Errorf("random access read %d bytes, budget %d", read, limit)
			}
			if a := allocatedAt(t, path); a > allocBudget {
				t.Errorf("random access allocated %d bytes, budget %d", a, allocBudget)
			}
		})
	}
}

// TestStreamAllocationIndependentOfSize streams the same kind of image at two sizes 64 times
// apart: what one inspection allocates must stay under the budget and not grow with the image.
func TestStreamAllocationIndependentOfSize(t *testing.T) {
	small := allocatedStream(t, &zeroImage{head: qcow2Header(3), size: 64 << 20})
	large := allocatedStream(t, &zeroImage{head: qcow2Header(3), size: 4 << 30})
	if small > allocBudget || large > allocBudget {
		t.Fatalf("allocated %d bytes for 64 MiB, %d for 4 GiB; budget %d", small, large, allocBudget)
	}
	t.Logf("streaming allocation: %d bytes for 64 MiB, %d bytes for 4 GiB", small, large)
	if large > small+64<<10 {
		t.Fatalf("allocation grows with the image: %d bytes for 64 MiB, %d for 4 GiB", small, large)
	}
	// The worst case: a VMDK whose descriptor fills the largest region qemu would read.
	worst := sparseVMDK(20480, goodDescriptor)
	worst = patch(worst, 36, []byte{0x00, 0x08}) // 2048 sectors of descriptor
	worst = patch(worst, 0x200+len(goodDescriptor), bytes.Repeat([]byte("# padding\n"), 110000))
	a := allocatedStream(t, &zeroImage{head: worst, size: 64 << 20})
	t.Logf("streaming allocation, worst case (1 MiB VMDK descriptor): %d bytes", a)
	if a > worstAllocBudget {
		t.Fatalf("worst case allocated %d bytes, budget %d", a, worstAllocBudget)
	}
}

// zeroImage is an image whose bytes are head followed by zeros up to size, made on the fly.
type zeroImage struct {
	head []byte
	size int64
	off  int64
}

func (z *zeroImage) Read(p []byte) (int, error) {
	if z.off >= z.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), z.size-z.off))
	p = p[:n]
	clear(p)
	if z.off < int64(len(z.head)) {
		copy(p, z.head[z.off:])
	}
	z.off += int64(n)
	return n, nil
}

func (z *zeroImage) ReadAt(p []byte, off int64) (int, error) {
	if off >= z.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), z.size-off))
	clear(p[:n])
	if off < int64(len(z.head)) {
		copy(p[:n], z.head[off:])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// bytesReadAt inspects path by random access only (the agreement with streaming is checked by
// the format tests) and returns the bytes read.
func bytesReadAt(t testing.TB, path string) int64 {
	t.Helper()
	f, size := openFile(t, path)
	cr := &countingReaderAt{r: f}
	if _, err := inspect.InspectAt(context.Background(), cr, size, inspect.Options{}); err != nil {
		t.Fatal(err)
	}
	return cr.bytes.Load()
}

func allocated(t testing.TB, f func()) int64 {
	t.Helper()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return int64(after.TotalAlloc - before.TotalAlloc)
}

func allocatedStream(t testing.TB, r io.Reader) int64 {
	t.Helper()
	return allocated(t, func() {
		if _, err := inspect.Inspect(context.Background(), r, inspect.Options{}); err != nil {
			t.Fatal(err)
		}
	})
}

func allocatedAt(t testing.TB, path string) int64 {
	t.Helper()
	f, size := openFile(t, path)
	return allocated(t, func() {
		if _, err := inspect.InspectAt(context.Background(), f, size, inspect.Options{}); err != nil {
			t.Fatal(err)
		}
	})
}

// BenchmarkInspectAt inspects each kind of image by random access and reports the bytes read
// (read-B/op) and the reads made (reads/op) besides time and allocation.
func BenchmarkInspectAt(b *testing.B) {
	for _, bi := range budgetImages {
		b.Run(bi.name, func(b *testing.B) {
			f, size := openFile(b, bi.make(b))
			cr := &countingReaderAt{r: f}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := inspect.InspectAt(b.Context(), cr, size, inspect.Options{}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cr.bytes.Load())/float64(b.N), "read-B/op")
			b.ReportMetric(float64(cr.calls.Load())/float64(b.N), "reads/op")
		})
	}
}

// BenchmarkInspectStream streams a 1 GiB qcow2 (header then zeros, made on the fly) through
// Inspect; BenchmarkStreamBaseline moves the same bytes to io.Discard, so the ratio of the two
// is the cost of inspection itself.
func BenchmarkInspectStream(b *testing.B) {
	const size = 1 << 30
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := inspect.Inspect(b.Context(), &zeroImage{head: qcow2Header(3), size: size}, inspect.Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkStreamBaseline(b *testing.B) {
	const size = 1 << 30
	b.SetBytes(size)
	buf := make([]byte, 256<<10)
	for b.Loop() {
		if _, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{&zeroImage{head: qcow2Header(3), size: size}}, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// streamFile writes a 256 MiB qcow2-headed file of non-zero data once per benchmark, so that
// the streaming benchmarks over a real file read from the page cache.
func streamFile(b *testing.B) (string, int64) {
	b.Helper()
	const size = 256 << 20
	data := bytes.Repeat([]byte{0x5a}, size)
	copy(data, qcow2Header(3))
	p := writeFile(b, "stream.qcow2", data)
	return p, size
}

// BenchmarkInspectStreamFile streams a file through Inspect; BenchmarkStreamFileBaseline
// copies the same file to io.Discard with the same buffer size.
func BenchmarkInspectStreamFile(b *testing.B) {
	path, size := streamFile(b)
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := inspect.Inspect(b.Context(), f, inspect.Options{}); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
}

func BenchmarkStreamFileBaseline(b *testing.B) {
	path, size := streamFile(b)
	b.SetBytes(size)
	buf := make([]byte, 256<<10)
	for b.Loop() {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{f}, buf); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
}
