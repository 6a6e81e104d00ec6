package inspect_test

import (
	"encoding/binary"
	"path/filepath"
	"testing"

	"github.com/glance-sidecar/glance-sidecar/inspect"
)

func qedDetails(t testing.TB, r *inspect.Report) *inspect.QEDDetails {
	t.Helper()
	d, ok := r.Details.(*inspect.QEDDetails)
	if !ok {
		t.Fatalf("details %T, want *QEDDetails", r.Details)
	}
	return d
}

func TestQEDFixtures(t *testing.T) {
	const size = 129<<20 + 512
	backing := func(bfmt string) func(t testing.TB) string {
		return func(t testing.TB) string {
			dir := t.TempDir()
			base := filepath.Join(dir, "base."+bfmt)
			run(t, "qemu-img", "create", "-q", "-f", bfmt, base, "3M")
			p := filepath.Join(dir, "over.qed")
			run(t, "qemu-img", "create", "-q", "-f", "qed", "-b", base, "-F", bfmt, p, "7M")
			return p
		}
	}
	layout := func(cluster int64, table uint32) func(t testing.TB, r *inspect.Report) {
		return func(t testing.TB, r *inspect.Report) {
			d := qedDetails(t, r)
			if d.ClusterSize != cluster || d.TableSize != table || d.HeaderSize != 1 || d.BackingFile != "" || d.BackingFormat != "" || d.NeedsCheck {
				t.Errorf("details %+v", d)
			}
		}
	}
	fixtures := []fixture{
		{name: "default odd size", qfmt: "qed", size: size, want: inspect.QED, check: layout(64<<10, 4)},
		{name: "7M", qfmt: "qed", size: 7 << 20, want: inspect.QED, check: layout(64<<10, 4)},
		{name: "tiny size rounded", qfmt: "qed", size: 1000, want: inspect.QED, check: layout(64<<10, 4)},
		{name: "cluster 4K", qfmt: "qed", opts: "cluster_size=4096", size: size, want: inspect.QED, check: layout(4096, 4)},
		{name: "cluster 2M table 2", qfmt: "qed", opts: "cluster_size=2M,table_size=2", size: size, want: inspect.QED, check: layout(2<<20, 2)},
		{name: "table 16", qfmt: "qed", opts: "table_size=16", size: 7 << 20, want: inspect.QED, check: layout(64<<10, 16)},
		// Larger clusters overflow qemu's 64-bit maximum image size: qemu-img create refuses them.
		{name: "cluster 4M table 2", qfmt: "qed", opts: "cluster_size=4M,table_size=2", size: 7 << 20, want: inspect.QED, check: layout(4<<20, 2)},
		// qemu writes a one-cluster table but its own overflow check refuses to open it.
		{name: "table 1", qfmt: "qed", opts: "table_size=1", size: 7 << 20, want: inspect.QED,
			codes: []inspect.Code{inspect.CodeInvalidHeader}, noDiff: true},
		{name: "raw backing file", qfmt: "qed", build: backing("raw"), want: inspect.QED, codes: []inspect.Code{inspect.CodeBackingFile},
			check: func(t testing.TB, r *inspect.Report) {
				if d := qedDetails(t, r); filepath.Base(d.BackingFile) != "base.raw" || d.BackingFormat != "raw" {
					t.Errorf("backing %q format %q", d.BackingFile, d.BackingFormat)
				}
			}},
		{name: "qcow2 backing file", qfmt: "qed", build: backing("qcow2"), want: inspect.QED, codes: []inspect.Code{inspect.CodeBackingFile},
			check: func(t testing.TB, r *inspect.Report) {
				if d := qedDetails(t, r); filepath.Base(d.BackingFile) != "base.qcow2" || d.BackingFormat != "" {
					t.Errorf("backing %q format %q", d.BackingFile, d.BackingFormat)
				}
			}},
		{name: "written", qfmt: "qed", build: func(t testing.TB) string {
			b := make([]byte, 5<<20)
			copy(b[3<<20:], "data")
			return qemuConvert(t, b, "qed", "")
		}, want: inspect.QED, check: layout(64<<10, 4)},
	}
	testFixtures(t, fixtures)
}

// qedHeader builds a QED header as qemu writes it: 64 KiB clusters, tables of 4 clusters, the
// L1 table in clusters 1-4, a 1 GiB disk.
func qedHeader() []byte {
	h := make([]byte, 5<<16)
	le := binary.LittleEndian
	copy(h, "QED\x00")
	le.PutUint32(h[4:], 64<<10)
	le.PutUint32(h[8:], 4)
	le.PutUint32(h[12:], 1)
	le.PutUint64(h[40:], 64<<10)
	le.PutUint64(h[48:], 1<<30)
	return h
}

func TestQEDHostile(t *testing.T) {
	le := binary.LittleEndian
	u32 := func(v uint32) []byte { return le.AppendUint32(nil, v) }
	u64 := func(v uint64) []byte { return le.AppendUint64(nil, v) }
	good := qedHeader()
	withName := func(img []byte, off, n uint32, name string) []byte {
		return patch(patch(patch(patch(img, 16, u64(1)), 56, u32(off)), 60, u32(n)), int(off), []byte(name))
	}
	bigHeader := patch(good, 12, u32(16)) // a 1 MiB header area: the L1 table now overlaps it
	const vsize = 1 << 30
	tests := []hostileCase{
		{"valid", good, inspect.QED, vsize, nil},
		{"needs check", patch(good, 16, u64(2)), inspect.QED, vsize, nil},
		{"compat and autoclear bits", patch(patch(good, 24, u64(0xff)), 32, u64(1<<63)), inspect.QED, vsize, nil},
		{"no-probe bit alone", patch(good, 16, u64(4)), inspect.QED, vsize, nil},
		{"unknown feature bit", patch(good, 16, u64(8)), inspect.QED, vsize, []inspect.Code{inspect.CodeUnknownFeatures}},
		{"top feature bit", patch(good, 16, u64(1<<63)), inspect.QED, vsize, []inspect.Code{inspect.CodeUnknownFeatures}},
		{"cluster size 0", patch(good, 4, u32(0)), inspect.QED, -1, []inspect.Code{inspect.CodeInvalidHeader}},
		{"cluster size 2K", patch(good, 4, u32(2048)), inspect.QED, -1, []inspect.Code{inspect.CodeInvalidHeader}},
		{"cluster size not a power of two", patch(good, 4, u32(96<<10)), inspect.QED, -1, []inspect.Code{inspect.CodeInvalidHeader}},
		{"cluster size 128M", patch(good, 4, u32(128<<20)), inspect.QED, -1, []inspect.Code{inspect.CodeInvalidHeader}},
		{"table size 0", patch(good, 8, u32(0)), inspect.QED, -1, []inspect.Code{inspect.CodeInvalidHeader}},
		{"table size 3", patch(good, 8, u32(3)), inspect.QED, -1, []inspect.Code{inspect.CodeInvalidHeader}},
		{"table size 32", patch(good, 8, u32(32)), inspect.QED, -1, []inspect.Code{inspect.CodeInvalidHeader}},
		{"table size 1", patch(good, 8, u32(1)), inspect.QED, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"image size odd", patch(good, 48, u64(1<<30+100)), inspect.QED, -1, []inspect.Code{inspect.CodeInvalidHeader}},
		{"image size past the maximum", patch(good, 48, u64(1<<46+512)), inspect.QED, -1, []inspect.Code{inspect.CodeInvalidHeader}},
		{"image size at the maximum", patch(good, 48, u64(1<<46)), inspect.QED, 1 << 46, nil},
		{"cluster 64M table 4 overflows qemu's maximum", patch(patch(good, 4, u32(64<<20)), 40, u64(64<<20)), inspect.QED, -1,
			[]inspect.Code{inspect.CodeInvalidHeader, inspect.CodeTruncated}},
		{"header size 0", patch(good, 12, u32(0)), inspect.QED, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"header size overflows", patch(good, 12, u32(1<<16)), inspect.QED, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"backing file /etc/passwd", withName(good, 64, 11, "/etc/passwd"), inspect.QED, vsize, []inspect.Code{inspect.CodeBackingFile}},
		{"backing file raw", patch(withName(good, 64, 11, "/etc/passwd"), 16, u64(5)), inspect.QED, vsize, []inspect.Code{inspect.CodeBackingFile}},
		{"backing name empty", withName(good, 64, 0, ""), inspect.QED, vsize, []inspect.Code{inspect.CodeBackingFile}},
		{"backing name outside the header", withName(good, 65530, 11, ""), inspect.QED, vsize, []inspect.Code{inspect.CodeBackingFile, inspect.CodeInvalidHeader}},
		{"backing name too long", withName(patch(patch(bigHeader, 40, u64(1<<20)), 1<<20+4<<16-1, []byte{0}), 64, 5000, "x"),
			inspect.QED, vsize, []inspect.Code{inspect.CodeBackingFile, inspect.CodeInvalidHeader}},
		{"backing name past the end", withName(bigHeader, 900000, 10, ""), inspect.QED, vsize,
			[]inspect.Code{inspect.CodeBackingFile, inspect.CodeTruncated, inspect.CodeInvalidHeader}},
		{"backing name far in the header", withName(patch(patch(bigHeader, 40, u64(1<<20)), 1<<20+4<<16-1, []byte{0}), 900000, 6, "/a/b/c"),
			inspect.QED, vsize, []inspect.Code{inspect.CodeBackingFile}},
		{"L1 table misaligned", patch(good, 40, u64(64<<10+512)), inspect.QED, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"L1 table over the header", patch(good, 40, u64(0)), inspect.QED, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"L1 table wraps around", patch(good, 40, u64(1<<64-64<<10)), inspect.QED, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"L1 table past the end", patch(good, 40, u64(1<<40)), inspect.QED, vsize, []inspect.Code{inspect.CodeTruncated}},
		{"L1 table cut short", good[:len(good)-1], inspect.QED, vsize, []inspect.Code{inspect.CodeTruncated}},
		{"header cut at 40", good[:40], inspect.QED, -1, []inspect.Code{inspect.CodeTruncated}},
		{"magic only", good[:4], inspect.QED, -1, []inspect.Code{inspect.CodeTruncated}},
		{"three bytes of magic", good[:3], inspect.Raw, 3, nil},
	}
	testHostile(t, tests)
	t.Run("details", func(t *testing.T) {
		r := inspectBytes(t, patch(withName(good, 64, 11, "/etc/passwd"), 16, u64(7)), inspect.Options{})
		d := qedDetails(t, r)
		if d.BackingFile != "/etc/passwd" || d.BackingFormat != "raw" || !d.NeedsCheck || d.ClusterSize != 64<<10 || d.TableSize != 4 || d.HeaderSize != 1 {
			t.Errorf("details %+v", d)
		}
	})
}
