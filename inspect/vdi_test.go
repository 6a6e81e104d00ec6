package inspect_test

import (
	"encoding/binary"
	"testing"

	"github.com/glance-sidecar/glance-sidecar/inspect"
)

func vdiDetails(t testing.TB, r *inspect.Report) *inspect.VDIDetails {
	t.Helper()
	d, ok := r.Details.(*inspect.VDIDetails)
	if !ok {
		t.Fatalf("details %T, want *VDIDetails", r.Details)
	}
	return d
}

// vdiPatched makes a qemu VDI image of size bytes and writes p at off in its header.
func vdiPatched(size int64, off int, p []byte) func(t testing.TB) string {
	return qemuPatched("vdi", size, map[int][]byte{off: p})
}

func TestVDIFixtures(t *testing.T) {
	const size = 129<<20 + 512
	le := binary.LittleEndian
	withData := func(t testing.TB) string {
		b := make([]byte, 3<<20)
		copy(b[1<<20:], "some data in the second block")
		return qemuConvert(t, b, "vdi", "")
	}
	wantDetails := func(typ string, blocks, allocated uint32) func(t testing.TB, r *inspect.Report) {
		return func(t testing.TB, r *inspect.Report) {
			d := vdiDetails(t, r)
			if d.Version != "1.1" || d.ImageType != typ || d.BlockSize != 1<<20 || d.BlocksInImage != blocks ||
				d.BlocksAllocated != allocated || len(d.UUID) != 36 || d.ParentUUID != "" || d.LinkUUID != "" {
				t.Errorf("details %+v", d)
			}
		}
	}
	fixtures := []fixture{
		{name: "dynamic odd size", qfmt: "vdi", size: size, want: inspect.VDI, check: wantDetails("dynamic", 130, 0)},
		{name: "dynamic 7M", qfmt: "vdi", size: 7 << 20, want: inspect.VDI, check: wantDetails("dynamic", 7, 0)},
		{name: "static 7M", qfmt: "vdi", opts: "static=on", size: 7 << 20, want: inspect.VDI, check: wantDetails("static", 7, 7)},
		{name: "static odd size", qfmt: "vdi", opts: "static=on", size: 5<<20 + 512, want: inspect.VDI, check: wantDetails("static", 6, 6)},
		{name: "tiny size rounded", qfmt: "vdi", size: 1000, want: inspect.VDI, check: wantDetails("dynamic", 1, 0)},
		{name: "one block written", qfmt: "vdi", build: withData, want: inspect.VDI, check: wantDetails("dynamic", 3, 1)},
		// VBoxManage convertfromraw writes disk sizes that are no multiple of 512: qemu rounds up.
		{name: "odd disk size in header", qfmt: "vdi", build: vdiPatched(7<<20, 0x170, le.AppendUint64(nil, 7<<20-100)), want: inspect.VDI},
		{name: "differencing", qfmt: "vdi", build: vdiPatched(7<<20, 0x1b8, []byte{1, 2, 3, 4}), want: inspect.VDI,
			codes: []inspect.Code{inspect.CodeBackingFile}, noDiff: true, check: func(t testing.TB, r *inspect.Report) {
				if d := vdiDetails(t, r); d.ParentUUID != "04030201-0000-0000-0000-000000000000" {
					t.Errorf("parent %q", d.ParentUUID)
				}
			}},
		{name: "block size 2M", qfmt: "vdi", build: vdiPatched(7<<20, 0x178, le.AppendUint32(nil, 2<<20)), want: inspect.VDI,
			codes: []inspect.Code{inspect.CodeInvalidHeader}, noDiff: true},
	}
	testFixtures(t, fixtures)
}

// vdiHeader builds a dynamic VDI 1.1 header as qemu writes it: 8 blocks of 1 MiB, the block
// map at 512 and the data at 1024, nothing allocated.
func vdiHeader() []byte {
	h := make([]byte, 1024)
	le := binary.LittleEndian
	copy(h, "<<< QEMU VM Virtual Disk Image >>>\n")
	le.PutUint32(h[0x40:], 0xbeda107f)
	le.PutUint32(h[0x44:], 0x00010001)
	le.PutUint32(h[0x48:], 0x180)
	le.PutUint32(h[0x4c:], 1)
	le.PutUint32(h[0x154:], 512)
	le.PutUint32(h[0x158:], 1024)
	le.PutUint32(h[0x168:], 512)
	le.PutUint64(h[0x170:], 8<<20)
	le.PutUint32(h[0x178:], 1<<20)
	le.PutUint32(h[0x180:], 8)
	copy(h[0x188:], "0123456789abcdef")
	for i := 512; i < 1024; i++ {
		h[i] = 0xff
	}
	return h
}

func TestVDIHostile(t *testing.T) {
	le := binary.LittleEndian
	u32 := func(v uint32) []byte { return le.AppendUint32(nil, v) }
	u64 := func(v uint64) []byte { return le.AppendUint64(nil, v) }
	good := vdiHeader()
	oneBlock := patch(patch(good, 0x184, u32(1)), 1024+1<<20-1, []byte{0})
	tests := []hostileCase{
		{"valid", good, inspect.VDI, 8 << 20, nil},
		{"one block allocated", oneBlock, inspect.VDI, 8 << 20, nil},
		{"odd disk size rounds up", patch(good, 0x170, u64(8<<20-511)), inspect.VDI, 8 << 20, nil},
		{"version 1.0", patch(good, 0x44, u32(0x00010000)), inspect.VDI, -1, []inspect.Code{inspect.CodeUnsupportedVersion}},
		{"version 0", patch(good, 0x44, u32(0)), inspect.VDI, -1, []inspect.Code{inspect.CodeUnsupportedVersion}},
		{"undo image", patch(good, 0x4c, u32(3)), inspect.VDI, 8 << 20, []inspect.Code{inspect.CodeBackingFile}},
		{"differencing image", patch(good, 0x4c, u32(4)), inspect.VDI, 8 << 20, []inspect.Code{inspect.CodeBackingFile}},
		{"unknown image type", patch(good, 0x4c, u32(77)), inspect.VDI, 8 << 20, []inspect.Code{inspect.CodeInvalidHeader}},
		{"parent uuid", patch(good, 0x1b8, []byte{9}), inspect.VDI, 8 << 20, []inspect.Code{inspect.CodeBackingFile}},
		{"link uuid", patch(good, 0x1af, []byte{9}), inspect.VDI, 8 << 20, []inspect.Code{inspect.CodeBackingFile}},
		{"sector size 4096", patch(good, 0x168, u32(4096)), inspect.VDI, 8 << 20, []inspect.Code{inspect.CodeInvalidHeader}},
		{"block size 0", patch(good, 0x178, u32(0)), inspect.VDI, 8 << 20, []inspect.Code{inspect.CodeInvalidHeader}},
		{"disk larger than the block map", patch(good, 0x170, u64(8<<20+512)), inspect.VDI, 8<<20 + 512, []inspect.Code{inspect.CodeInvalidHeader}},
		{"disk size beyond qemu's maximum", patch(good, 0x170, u64(1<<62)), inspect.VDI, -1, []inspect.Code{inspect.CodeInvalidHeader}},
		{"disk size all ones", patch(good, 0x170, u64(1<<64-1)), inspect.VDI, -1, []inspect.Code{inspect.CodeInvalidHeader}},
		{"too many blocks", patch(patch(good, 0x180, u32(0x40000000)), 0x158, u32(0xfffffe00)), inspect.VDI, 8 << 20,
			[]inspect.Code{inspect.CodeInvalidHeader, inspect.CodeTruncated}},
		{"more blocks allocated than exist", patch(good, 0x184, u32(9)), inspect.VDI, 8 << 20, []inspect.Code{inspect.CodeInvalidHeader, inspect.CodeTruncated}},
		{"header size 0", patch(good, 0x48, u32(0)), inspect.VDI, 8 << 20, []inspect.Code{inspect.CodeInvalidHeader}},
		{"block map over the header", patch(good, 0x154, u32(0)), inspect.VDI, 8 << 20, []inspect.Code{inspect.CodeInvalidHeader}},
		{"block map unaligned", patch(good, 0x154, u32(513)), inspect.VDI, 8 << 20, []inspect.Code{inspect.CodeInvalidHeader}},
		{"data over the block map", patch(good, 0x158, u32(512)), inspect.VDI, 8 << 20, []inspect.Code{inspect.CodeInvalidHeader}},
		{"block map past the end", patch(patch(good, 0x154, u32(1<<20)), 0x158, u32(2<<20)), inspect.VDI, 8 << 20, []inspect.Code{inspect.CodeTruncated}},
		{"data offset past the end", patch(good, 0x158, u32(4096)), inspect.VDI, 8 << 20, []inspect.Code{inspect.CodeTruncated}},
		{"allocated block cut short", oneBlock[:len(oneBlock)-1], inspect.VDI, 8 << 20, []inspect.Code{inspect.CodeTruncated}},
		{"block map cut", good[:1000], inspect.VDI, 8 << 20, []inspect.Code{inspect.CodeTruncated}},
		{"header cut at 0x180", good[:0x180], inspect.VDI, -1, []inspect.Code{inspect.CodeTruncated}},
		{"header cut after the version", good[:0x48], inspect.VDI, -1, []inspect.Code{inspect.CodeTruncated}},
		{"signature only", good[:0x44], inspect.VDI, -1, []inspect.Code{inspect.CodeTruncated}},
		{"three bytes of signature", good[:0x43], inspect.Raw, 0x43, nil},
	}
	testHostile(t, tests)
}

// TestMiscBytesRead checks how much the random-access path reads of images of every format
// here: the header (a block of the cache) for VDI, a few blocks at most for the others.
func TestMiscBytesRead(t *testing.T) {
	for _, tc := range []struct {
		name  string
		qfmt  string
		opts  string
		extra []string
		limit int64
	}{
		{"vdi", "vdi", "", nil, 64 << 10},
		{"vdi static", "vdi", "static=on", nil, 64 << 10},
		{"qed", "qed", "", nil, 64 << 10},
		{"qed backing", "qed", "", []string{"-b", "/etc/hostname", "-F", "raw"}, 64 << 10},
		{"parallels", "parallels", "", nil, 64 << 10},
		{"luks", "luks", "", nil, 64 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var path string
			if tc.qfmt == "luks" {
				path = luksDefault(t, 0)
			} else {
				path = qemuCreate(t, tc.qfmt, tc.opts, 300<<20, tc.extra...)
			}
			r, n := inspectFile(t, path, inspect.Options{})
			if r.Format == inspect.Raw {
				t.Fatalf("format raw")
			}
			if n > tc.limit || n > 4<<20 {
				t.Errorf("read %d bytes, want at most %d", n, tc.limit)
			}
		})
	}
}
