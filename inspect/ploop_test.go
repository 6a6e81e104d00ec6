package inspect_test

import (
	"encoding/binary"
	"testing"

	"github.com/glance-sidecar/glance-sidecar/inspect"
)

func ploopDetails(t testing.TB, r *inspect.Report) *inspect.PloopDetails {
	t.Helper()
	d, ok := r.Details.(*inspect.PloopDetails)
	if !ok {
		t.Fatalf("details %T, want *PloopDetails", r.Details)
	}
	return d
}

// ploopPatched makes a qemu parallels image of size bytes and writes the patches into it.
func ploopPatched(size int64, patches map[int][]byte) func(t testing.TB) string {
	return qemuPatched("parallels", size, patches)
}

func TestPloopFixtures(t *testing.T) {
	const size = 129<<20 + 512
	le := binary.LittleEndian
	layout := func(cluster int64, bat uint32) func(t testing.TB, r *inspect.Report) {
		return func(t testing.TB, r *inspect.Report) {
			d := ploopDetails(t, r)
			if d.Signature != "WithouFreSpacExt" || d.Version != 2 || d.ClusterSize != cluster || d.BATEntries != bat ||
				d.DataOffset < 64+4*int64(bat) || d.Dirty || d.ExtensionOffset != 0 {
				t.Errorf("details %+v", d)
			}
		}
	}
	fixtures := []fixture{
		{name: "default odd size", qfmt: "parallels", size: size, want: inspect.Ploop, check: layout(1<<20, 130)},
		{name: "7M", qfmt: "parallels", size: 7 << 20, want: inspect.Ploop, check: layout(1<<20, 7)},
		{name: "tiny size rounded", qfmt: "parallels", size: 1000, want: inspect.Ploop, check: layout(1<<20, 1)},
		{name: "3G", qfmt: "parallels", size: 3 << 30, want: inspect.Ploop, check: layout(1<<20, 3072)},
		{name: "cluster 64K", qfmt: "parallels", opts: "cluster_size=64K", size: size, want: inspect.Ploop, check: layout(64<<10, 2065)},
		{name: "cluster 512", qfmt: "parallels", opts: "cluster_size=512", size: 7 << 20, want: inspect.Ploop, check: layout(512, 14336)},
		{name: "cluster 1536", qfmt: "parallels", opts: "cluster_size=1536", size: 7 << 20, want: inspect.Ploop, check: layout(1536, 4779)},
		{name: "cluster 4M", qfmt: "parallels", opts: "cluster_size=4M", size: size, want: inspect.Ploop, check: layout(4<<20, 33)},
		{name: "preallocated", qfmt: "parallels", opts: "preallocation=falloc", size: 5 << 20, want: inspect.Ploop, check: layout(1<<20, 5)},
		{name: "written", qfmt: "parallels", build: func(t testing.TB) string {
			b := make([]byte, 5<<20)
			copy(b[2<<20:], "data")
			return qemuConvert(t, b, "parallels", "")
		}, want: inspect.Ploop, check: layout(1<<20, 5)},
		// The old signature has 32-bit sizes: qemu ignores the high half of nb_sectors.
		{name: "old signature", qfmt: "parallels", build: ploopPatched(7<<20, map[int][]byte{0: []byte("WithoutFreeSpace"), 40: le.AppendUint32(nil, 1)}),
			want: inspect.Ploop, check: func(t testing.TB, r *inspect.Report) {
				if d := ploopDetails(t, r); d.Signature != "WithoutFreeSpace" || r.VirtualSize != 7<<20 {
					t.Errorf("details %+v, virtual size %d", d, r.VirtualSize)
				}
			}},
		{name: "not closed cleanly", qfmt: "parallels", build: ploopPatched(7<<20, map[int][]byte{44: le.AppendUint32(nil, 0x746f6e59)}),
			want: inspect.Ploop, check: func(t testing.TB, r *inspect.Report) {
				if d := ploopDetails(t, r); !d.Dirty {
					t.Errorf("dirty not seen: %+v", d)
				}
			}},
		{name: "sector count not a cluster multiple", qfmt: "parallels", build: ploopPatched(7<<20, map[int][]byte{36: le.AppendUint64(nil, 257)}),
			want: inspect.Ploop},
		// qemu refuses to open an image whose format extension has no magic. Here the
		// extension cluster also runs past the end of the file.
		{name: "bad format extension", qfmt: "parallels", build: ploopPatched(7<<20, map[int][]byte{56: le.AppendUint64(nil, 1)}),
			want: inspect.Ploop, codes: []inspect.Code{inspect.CodeInvalidHeader, inspect.CodeTruncated}, noDiff: true},
	}
	testFixtures(t, fixtures)
}

// ploopHeader builds a parallels image as qemu writes it: 1 MiB clusters (2048 sectors), 8
// table entries, an 8 MiB disk, the data at 1 MiB, no cluster allocated.
func ploopHeader() []byte {
	h := make([]byte, 1<<20)
	le := binary.LittleEndian
	copy(h, "WithouFreSpacExt")
	le.PutUint32(h[16:], 2)
	le.PutUint32(h[20:], 16)
	le.PutUint32(h[24:], 32)
	le.PutUint32(h[28:], 2048)
	le.PutUint32(h[32:], 8)
	le.PutUint64(h[36:], 8<<11)
	le.PutUint32(h[48:], 2048)
	return h
}

func TestPloopHostile(t *testing.T) {
	le := binary.LittleEndian
	u32 := func(v uint32) []byte { return le.AppendUint32(nil, v) }
	u64 := func(v uint64) []byte { return le.AppendUint64(nil, v) }
	good := ploopHeader()
	extMagic := u64(0xab234cef23dcea87)
	withExt := patch(patch(patch(good, 56, u64(4096)), 4096*512, extMagic), 4096*512+1<<20-1, []byte{0})
	bigTable := patch(good, 32, u32(1000)) // the table ends at 4064
	const vsize = 8 << 20
	tests := []hostileCase{
		{"valid", good, inspect.Ploop, vsize, nil},
		{"old signature", patch(good, 0, []byte("WithoutFreeSpace")), inspect.Ploop, vsize, nil},
		{"old signature ignores high sectors", patch(patch(good, 0, []byte("WithoutFreeSpace")), 40, u32(7)), inspect.Ploop, vsize, nil},
		{"dirty", patch(good, 44, u32(0x746f6e59)), inspect.Ploop, vsize, nil},
		{"data offset 0", patch(good, 48, u32(0)), inspect.Ploop, vsize, nil},
		{"format extension", withExt, inspect.Ploop, vsize, nil},
		{"far format extension", patch(good, 56, u64(1<<40)), inspect.Ploop, vsize, []inspect.Code{inspect.CodeTruncated}},
		{"format extension bad magic", patch(withExt, 4096*512, u64(0)), inspect.Ploop, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"format extension over the table", patch(bigTable, 56, u64(1)), inspect.Ploop, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"format extension out of range", patch(good, 56, u64(1<<60)), inspect.Ploop, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"format extension cut", withExt[:4096*512+100], inspect.Ploop, vsize, []inspect.Code{inspect.CodeTruncated}},
		{"version 3", patch(good, 16, u32(3)), inspect.Ploop, -1, []inspect.Code{inspect.CodeUnsupportedVersion}},
		{"zero sectors per cluster", patch(good, 28, u32(0)), inspect.Ploop, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"cluster too large", patch(good, 28, u32(1<<23)), inspect.Ploop, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"table too large", patch(good, 32, u32(1<<29)), inspect.Ploop, vsize, []inspect.Code{inspect.CodeInvalidHeader, inspect.CodeTruncated}},
		{"table does not cover the disk", patch(good, 32, u32(7)), inspect.Ploop, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"disk too large", patch(good, 36, u64(1<<53+1)), inspect.Ploop, -1, []inspect.Code{inspect.CodeInvalidHeader}},
		{"disk of 2^53 sectors", patch(good, 36, u64(1<<53)), inspect.Ploop, 1 << 62, []inspect.Code{inspect.CodeInvalidHeader}},
		{"data over the table", patch(bigTable, 48, u32(1)), inspect.Ploop, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"data past the end", patch(good, 48, u32(4096)), inspect.Ploop, vsize, []inspect.Code{inspect.CodeTruncated}},
		{"table past the end", patch(patch(good, 32, u32(1<<20)), 48, u32(0)), inspect.Ploop, vsize, []inspect.Code{inspect.CodeTruncated}},
		{"cut before the data", good[:4096], inspect.Ploop, vsize, []inspect.Code{inspect.CodeTruncated}},
		{"header cut at 40", good[:40], inspect.Ploop, -1, []inspect.Code{inspect.CodeTruncated}},
		{"signature only", good[:16], inspect.Ploop, -1, []inspect.Code{inspect.CodeTruncated}},
		{"fifteen bytes of signature", good[:15], inspect.Raw, 15, nil},
		{"other signature", patch(good, 0, []byte("WithoutFreeSpacX")), inspect.Raw, int64(len(good)), nil},
	}
	testHostile(t, tests)
	t.Run("details", func(t *testing.T) {
		d := ploopDetails(t, inspectBytes(t, patch(withExt, 44, u32(0x746f6e59)), inspect.Options{}))
		if d.Signature != "WithouFreSpacExt" || d.Version != 2 || d.ClusterSize != 1<<20 || d.BATEntries != 8 ||
			d.DataOffset != 1<<20 || !d.Dirty || d.ExtensionOffset != 4096*512 {
			t.Errorf("details %+v", d)
		}
	})
}
