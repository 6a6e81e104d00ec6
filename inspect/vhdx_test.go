package inspect_test

import (
	"encoding/binary"
	"testing"
	"unicode/utf16"

	"github.com/glance-sidecar/glance-sidecar/inspect"
)

func vhdxDetails(t testing.TB, r *inspect.Report) *inspect.VHDXDetails {
	t.Helper()
	d, ok := r.Details.(*inspect.VHDXDetails)
	if !ok {
		t.Fatalf("details %T, want *VHDXDetails", r.Details)
	}
	return d
}

func TestVHDXFixtures(t *testing.T) {
	want := func(subformat string, blockSize uint32) func(t testing.TB, r *inspect.Report) {
		return func(t testing.TB, r *inspect.Report) {
			d := vhdxDetails(t, r)
			if d.Version != 1 || d.Subformat != subformat || d.BlockSize != blockSize || d.LogicalSectorSize != 512 ||
				d.PhysicalSectorSize != 512 || d.HasParent || d.ParentLocator != nil || d.Creator != "QEMU v7.2.22" {
				t.Errorf("details %+v", d)
			}
		}
	}
	converted := func(t testing.TB) string {
		return qemuConvert(t, patterned(11<<20), "vhdx", "")
	}
	const size = 129<<20 + 512
	fixtures := []fixture{
		{name: "dynamic", qfmt: "vhdx", size: size, want: inspect.VHDX, check: want("dynamic", 8<<20)},
		{name: "7M", qfmt: "vhdx", size: 7 << 20, want: inspect.VHDX},
		{name: "odd size", qfmt: "vhdx", size: 1000000, want: inspect.VHDX},
		{name: "fixed", qfmt: "vhdx", opts: "subformat=fixed", size: 33 << 20, want: inspect.VHDX, check: want("fixed", 8<<20)},
		{name: "block size 1M", qfmt: "vhdx", opts: "block_size=1M", size: 1 << 30, want: inspect.VHDX, check: want("dynamic", 1<<20)},
		{name: "block size 256M", qfmt: "vhdx", opts: "block_size=256M", size: 1 << 30, want: inspect.VHDX, check: want("dynamic", 256<<20)},
		{name: "log size 4M", qfmt: "vhdx", opts: "log_size=4M", size: 1 << 30, want: inspect.VHDX},
		{name: "block state zero off", qfmt: "vhdx", opts: "block_state_zero=off", size: 1 << 30, want: inspect.VHDX},
		{name: "large", qfmt: "vhdx", size: 2 << 40, want: inspect.VHDX},
		{name: "with data", qfmt: "vhdx", build: converted, want: inspect.VHDX},
	}
	testFixtures(t, fixtures)
}

// TestVHDXReadsLittle checks that a qemu VHDX, whose metadata lies at 3 MiB, is inspected by
// reading its headers, region table and metadata only.
func TestVHDXReadsLittle(t *testing.T) {
	p := qemuCreate(t, "vhdx", "", 1<<30)
	r, n := inspectFile(t, p, inspect.Options{})
	if r.Format != inspect.VHDX || !r.Safe() || r.VirtualSize != 1<<30 {
		t.Fatalf("report %s", dump(r))
	}
	if n > 4<<20 {
		t.Errorf("read %d bytes", n)
	}
	t.Logf("read %d bytes", n)
}

// TestVHDXMinimalOpensInQemu checks the hand-made image the hostile tests and the fuzzer start
// from: qemu must open it and agree on its size.
func TestVHDXMinimalOpensInQemu(t *testing.T) {
	img := inspect.MinimalVHDX()
	if len(img) >= 2<<20 {
		t.Fatalf("minimal VHDX is %d bytes", len(img))
	}
	r := inspectBytes(t, img, inspect.Options{Declared: "vhdx"})
	if r.Format != inspect.VHDX || !r.Safe() || r.VirtualSize != inspect.VHDXSize {
		t.Fatalf("report %s", dump(r))
	}
	if d := vhdxDetails(t, r); d.Creator != "glance-sidecar test" || d.BlockSize != 1<<20 || d.PhysicalSectorSize != 4096 || d.Subformat != "dynamic" {
		t.Errorf("details %+v", d)
	}
	if qi := info(t, "vhdx", writeFile(t, "img.vhdx", img)); qi.VirtualSize != inspect.VHDXSize {
		t.Errorf("qemu-img info says %d", qi.VirtualSize)
	}
}

// vhdxParentLocator returns a parent locator item holding the key-value pairs.
func vhdxParentLocator(kv ...string) []byte {
	le := binary.LittleEndian
	locType := inspect.VHDXGUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")
	p := append([]byte(nil), locType[:]...)
	p = le.AppendUint16(p, 0)
	p = le.AppendUint16(p, uint16(len(kv)/2))
	entries := len(p)
	p = append(p, make([]byte, 12*len(kv)/2)...)
	for i, s := range kv {
		off := len(p)
		for _, u := range utf16.Encode([]rune(s)) {
			p = le.AppendUint16(p, u)
		}
		e := p[entries+12*(i/2):]
		le.PutUint32(e[4*(i%2):], uint32(off))
		le.PutUint16(e[8+2*(i%2):], uint16(len(p)-off))
	}
	return p
}

func TestVHDXHostile(t *testing.T) {
	le := binary.LittleEndian
	u16 := func(v uint16) []byte { return le.AppendUint16(nil, v) }
	u32 := func(v uint32) []byte { return le.AppendUint32(nil, v) }
	u64 := func(v uint64) []byte { return le.AppendUint64(nil, v) }
	good := inspect.MinimalVHDX()
	const (
		h1, h2  = 64 << 10, 128 << 10
		rt      = 192 << 10
		rtBAT   = rt + 16 // region table entries
		rtMeta  = rt + 48
		mt      = inspect.VHDXMetaOff
		items   = inspect.VHDXItemsOff
		tableAt = mt + 32 // metadata table entries
	)
	// fixed rebuilds the checksums after the patches, as a well-formed image would have them.
	fixed := func(img []byte) []byte { inspect.FixVHDXChecksums(img); return img }
	// region adds a third region table entry.
	region := func(id [16]byte, off uint64, length, required uint32) []byte {
		img := patch(good, rt+8, u32(3))
		e := append(append(append(id[:], u64(off)...), u32(length)...), u32(required)...)
		return fixed(patch(img, rt+16+64, e))
	}
	// item adds a sixth metadata table entry.
	item := func(id [16]byte, off, length, flags uint32, data []byte) []byte {
		img := patch(good, mt+10, u16(6))
		e := append(append(append(append(id[:], u32(off)...), u32(length)...), u32(flags)...), u32(0)...)
		img = patch(img, tableAt+5*32, e)
		if data != nil {
			img = patch(img, mt+int(off), data)
		}
		return img
	}
	unknown := inspect.VHDXGUID("01234567-89AB-CDEF-0123-456789ABCDEF")
	parentLocator := inspect.VHDXGUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
	locator := vhdxParentLocator("parent_linkage", "{83ff0d9f-3a3c-4ce4-94b5-6e5a7e0c1a3b}", "relative_path", `..\..\etc\passwd`, "absolute_win32_path", `\\?\C:\base.vhdx`)
	withParent := patch(item(parentLocator, 64<<10+256, uint32(len(locator)), 6, locator), items+4, u32(2))

	tests := []struct {
		name  string
		img   []byte
		want  inspect.Format
		codes []inspect.Code
		vsize int64 // 0: do not check
	}{
		{"valid", good, inspect.VHDX, nil, inspect.VHDXSize},
		{"header 1 corrupt", patch(good, h1+100, []byte{1}), inspect.VHDX, nil, inspect.VHDXSize},
		{"header 2 corrupt", patch(good, h2+100, []byte{1}), inspect.VHDX, nil, inspect.VHDXSize},
		{"both headers corrupt", patch(patch(good, h1+100, []byte{1}), h2+100, []byte{1}), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.VHDXSize},
		{"header signature", fixed(patch(patch(good, h1, []byte("HEAD")), h2, []byte("HEAD"))), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, 0},
		{"current header version 2", fixed(patch(good, h2+66, u16(2))), inspect.VHDX, []inspect.Code{inspect.CodeUnsupportedVersion}, 0},
		{"older header version 2", fixed(patch(good, h1+66, u16(2))), inspect.VHDX, nil, 0},
		{"same sequence, different headers", fixed(patch(patch(good, h2+8, u64(10)), h2+16, []byte("other-write-guid"))), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, 0},
		{"identical headers", fixed(patch(good, h2, good[h1:h1+4096])), inspect.VHDX, nil, 0},
		{"active log", fixed(patch(patch(good, h2+48, []byte("log-guid-1234567")), h2+68, u32(1<<20))), inspect.VHDX, []inspect.Code{inspect.CodeUnknownFeatures, inspect.CodeInvalidHeader, inspect.CodeTruncated}, 0},
		{"log version 1", fixed(patch(good, h2+64, u16(1))), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, 0},
		{"log in the header section", fixed(patch(good, h2+72, u64(4096))), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, 0},
		{"region table signature", fixed(patch(good, rt, []byte("REGI"))), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.SizeUnknown},
		{"region table checksum", patch(good, rt+4, u32(1)), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.VHDXSize},
		{"region table entries clamped", fixed(patch(good, rt+8, u32(0xffffffff))), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.VHDXSize},
		{"unknown required region", region(unknown, 8<<20, 1<<20, 1), inspect.VHDX, []inspect.Code{inspect.CodeUnknownFeatures}, inspect.VHDXSize},
		{"unknown optional region", region(unknown, 8<<20, 1<<20, 0), inspect.VHDX, nil, inspect.VHDXSize},
		{"second metadata region", region(inspect.VHDXGUID("8B7CA206-4790-4B9A-B8FE-575F050F886E"), 8<<20, 1<<20, 1), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.VHDXSize},
		{"no BAT region", fixed(patch(good, rtBAT, make([]byte, 32))), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.VHDXSize},
		{"no metadata region", fixed(patch(good, rtMeta, make([]byte, 32))), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.SizeUnknown},
		{"BAT overlaps metadata", fixed(patch(good, rtBAT+16, u64(mt+4096))), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.VHDXSize},
		{"metadata in the header section", fixed(patch(good, rtMeta+16, u64(512<<10))), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.SizeUnknown},
		{"metadata behind the region table", fixed(patch(good, rtMeta+16, u64(200<<10))), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.SizeUnknown},
		{"metadata before the region table", fixed(patch(good, rtMeta+16, u64(8192))), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.SizeUnknown},
		{"metadata past the end", fixed(patch(good, rtMeta+16, u64(1<<40))), inspect.VHDX, []inspect.Code{inspect.CodeTruncated}, inspect.SizeUnknown},
		{"metadata region longer than the file", fixed(patch(good, rtMeta+24, u32(16<<20))), inspect.VHDX, []inspect.Code{inspect.CodeTruncated, inspect.CodeInvalidHeader}, inspect.VHDXSize},
		{"BAT region past the end", fixed(patch(good, rtBAT+24, u32(16<<20))), inspect.VHDX, []inspect.Code{inspect.CodeTruncated}, inspect.VHDXSize},
		{"BAT region too small", fixed(patch(good, rtBAT+24, u32(64))), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.VHDXSize},
		{"metadata table signature", patch(good, mt, []byte("METADATA")), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.SizeUnknown},
		{"metadata entries clamped", patch(good, mt+10, u16(0xffff)), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.VHDXSize},
		{"unknown required item", item(unknown, 64<<10+256, 8, 4, nil), inspect.VHDX, []inspect.Code{inspect.CodeUnknownFeatures}, inspect.VHDXSize},
		{"unknown optional item", item(unknown, 64<<10+256, 8, 0, nil), inspect.VHDX, nil, inspect.VHDXSize},
		{"second virtual size item", item(inspect.VHDXGUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8"), 64<<10+256, 8, 6, u64(1<<40)), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.VHDXSize},
		{"virtual size item missing", patch(good, tableAt+32, make([]byte, 32)), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.SizeUnknown},
		{"page 83 item missing", patch(good, tableAt+64, make([]byte, 32)), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.VHDXSize},
		{"virtual size 0", patch(good, items+8, u64(0)), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.SizeUnknown},
		{"virtual size not whole sectors", patch(good, items+8, u64(inspect.VHDXSize+100)), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.VHDXSize},
		{"virtual size over 64 TiB", patch(good, items+8, u64(1<<47)), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.SizeUnknown},
		{"virtual size item short", patch(good, tableAt+32+20, u32(4)), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.SizeUnknown},
		{"virtual size item outside the region", patch(good, tableAt+32+16, u32(1<<20)), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.SizeUnknown},
		{"virtual size item past the end", patch(fixed(patch(good, rtMeta+24, u32(16<<20))), tableAt+32+16, u32(8<<20)), inspect.VHDX, []inspect.Code{inspect.CodeTruncated, inspect.CodeInvalidHeader}, inspect.SizeUnknown},
		{"items overlapping the table", patch(good, tableAt+32+16, u32(8)), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, 0},
		{"items sharing bytes", patch(good, tableAt+3*32+16, u32(64<<10+8)), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.VHDXSize},
		{"block size 3 MiB", patch(good, items, u32(3<<20)), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.VHDXSize},
		{"block size 512 KiB", patch(good, items, u32(512<<10)), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.VHDXSize},
		{"logical sector size 1000", patch(good, items+32, u32(1000)), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.VHDXSize},
		{"physical sector size 0", patch(good, items+36, u32(0)), inspect.VHDX, []inspect.Code{inspect.CodeInvalidHeader}, inspect.VHDXSize},
		{"fixed subformat", patch(good, items+4, u32(1)), inspect.VHDX, nil, inspect.VHDXSize},
		{"has parent without locator", patch(good, items+4, u32(2)), inspect.VHDX, []inspect.Code{inspect.CodeBackingFile, inspect.CodeInvalidHeader}, inspect.VHDXSize},
		{"differencing", withParent, inspect.VHDX, []inspect.Code{inspect.CodeBackingFile}, inspect.VHDXSize},
		{"parent locator without the flag", item(parentLocator, 64<<10+256, uint32(len(locator)), 6, locator), inspect.VHDX, []inspect.Code{inspect.CodeBackingFile}, inspect.VHDXSize},
		{"parent locator entries out of bounds", patch(withParent, mt+64<<10+256+20, u32(0xfffffff0)), inspect.VHDX, []inspect.Code{inspect.CodeBackingFile, inspect.CodeInvalidHeader}, inspect.VHDXSize},
		{"parent locator count too large", patch(withParent, mt+64<<10+256+18, u16(0xffff)), inspect.VHDX, []inspect.Code{inspect.CodeBackingFile, inspect.CodeInvalidHeader}, inspect.VHDXSize},
		{"cut in the metadata table", good[:mt+16], inspect.VHDX, []inspect.Code{inspect.CodeTruncated}, inspect.SizeUnknown},
		{"cut in the region table", good[:rt+100], inspect.VHDX, []inspect.Code{inspect.CodeTruncated}, inspect.SizeUnknown},
		{"cut after the identifier", good[:4096], inspect.VHDX, []inspect.Code{inspect.CodeTruncated}, inspect.SizeUnknown},
		{"magic only", good[:8], inspect.VHDX, []inspect.Code{inspect.CodeTruncated}, inspect.SizeUnknown},
		{"seven bytes of magic", good[:7], inspect.Raw, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := inspectBytes(t, tt.img, inspect.Options{})
			if r.Format != tt.want {
				t.Fatalf("format %q, want %q (problems %v)", r.Format, tt.want, r.Problems)
			}
			wantCodes(t, r, tt.codes...)
			if tt.vsize != 0 && r.VirtualSize != tt.vsize {
				t.Errorf("virtual size %d, want %d (problems %v)", r.VirtualSize, tt.vsize, r.Problems)
			}
		})
	}
}

func TestVHDXParentLocator(t *testing.T) {
	locator := vhdxParentLocator("relative_path", `..\base.vhdx`, "absolute_win32_path", "C:\\base\x00.vhdx")
	img := inspect.MinimalVHDX()
	le := binary.LittleEndian
	img = patch(img, inspect.VHDXMetaOff+10, le.AppendUint16(nil, 6))
	id := inspect.VHDXGUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
	e := append(append(append(append(id[:], le.AppendUint32(nil, 64<<10+256)...), le.AppendUint32(nil, uint32(len(locator)))...), le.AppendUint32(nil, 6)...), 0, 0, 0, 0)
	img = patch(img, inspect.VHDXMetaOff+32+5*32, e)
	img = patch(img, inspect.VHDXMetaOff+64<<10+256, locator)
	img = patch(img, inspect.VHDXItemsOff+4, le.AppendUint32(nil, 2))
	r := inspectBytes(t, img, inspect.Options{})
	wantCodes(t, r, inspect.CodeBackingFile)
	d := vhdxDetails(t, r)
	if !d.HasParent || len(d.ParentLocator) != 2 || d.ParentLocator[0] != `relative_path=..\base.vhdx` || d.ParentLocator[1] != `absolute_win32_path=C:\base` {
		t.Errorf("details %+v", d)
	}
}
