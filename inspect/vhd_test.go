package inspect_test

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/glance-sidecar/glance-sidecar/inspect"
)

func vhdDetails(t testing.TB, r *inspect.Report) *inspect.VHDDetails {
	t.Helper()
	d, ok := r.Details.(*inspect.VHDDetails)
	if !ok {
		t.Fatalf("details %T, want *VHDDetails", r.Details)
	}
	return d
}

func TestVHDFixtures(t *testing.T) {
	wantVHD := func(diskType, creator, from string, blockSize uint32) func(t testing.TB, r *inspect.Report) {
		return func(t testing.TB, r *inspect.Report) {
			d := vhdDetails(t, r)
			if d.DiskType != diskType || d.CreatorApp != creator || d.SizeFrom != from || d.BlockSize != blockSize || d.ParentName != "" {
				t.Errorf("details %+v", d)
			}
		}
	}
	converted := func(subformat string) func(t testing.TB) string {
		return func(t testing.TB) string {
			return qemuConvert(t, patterned(9<<20), "vpc", "subformat="+subformat)
		}
	}
	// cut truncates the image build makes to n bytes.
	cut := func(build func(t testing.TB) string, n int64) func(t testing.TB) string {
		return func(t testing.TB) string {
			p := build(t)
			if err := os.Truncate(p, n); err != nil {
				t.Fatal(err)
			}
			return p
		}
	}
	// A fixed VHD whose data is a qcow2 image: qemu-img -f vpc sees a disk, -f qcow2 a qcow2.
	qcow2Inside := func(t testing.TB) string {
		dir := t.TempDir()
		q := filepath.Join(dir, "inner.qcow2")
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", q, "1G")
		p := filepath.Join(dir, "img.vhd")
		run(t, "qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed", q, p)
		return p
	}
	const size = 129<<20 + 512
	fixtures := []fixture{
		{name: "dynamic", qfmt: "vpc", size: size, want: inspect.VHD, check: wantVHD("dynamic", "qemu", "geometry", 2<<20)},
		{name: "dynamic force_size", qfmt: "vpc", opts: "force_size=on", size: size, want: inspect.VHD, check: wantVHD("dynamic", "qem2", "current_size", 2<<20)},
		{name: "fixed", qfmt: "vpc", opts: "subformat=fixed", size: size, want: inspect.VHD, check: wantVHD("fixed", "qemu", "geometry", 0)},
		{name: "fixed force_size", qfmt: "vpc", opts: "subformat=fixed,force_size=on", size: size, want: inspect.VHD, check: wantVHD("fixed", "qem2", "current_size", 0)},
		{name: "dynamic 7M", qfmt: "vpc", size: 7 << 20, want: inspect.VHD},
		{name: "dynamic odd size", qfmt: "vpc", size: 1000000, want: inspect.VHD},
		{name: "dynamic odd size force_size", qfmt: "vpc", opts: "force_size=on", size: 1000001, want: inspect.VHD},
		{name: "fixed odd size", qfmt: "vpc", opts: "subformat=fixed", size: 1000000, want: inspect.VHD},
		{name: "fixed odd size force_size", qfmt: "vpc", opts: "subformat=fixed,force_size=on", size: 1000001, want: inspect.VHD},
		{name: "dynamic one byte", qfmt: "vpc", size: 1, want: inspect.VHD},
		{name: "dynamic empty", qfmt: "vpc", size: 0, want: inspect.VHD},
		{name: "dynamic 2040 GiB", qfmt: "vpc", size: 2040 << 30, want: inspect.VHD, check: wantVHD("dynamic", "qemu", "current_size", 2<<20)},
		{name: "dynamic with data", qfmt: "vpc", build: converted("dynamic"), want: inspect.VHD},
		{name: "fixed with data", qfmt: "vpc", build: converted("fixed"), want: inspect.VHD},
		{name: "dynamic with data cut short", qfmt: "vpc", build: cut(converted("dynamic"), 5<<20), want: inspect.VHD, codes: []inspect.Code{inspect.CodeTruncated, inspect.CodeInvalidFooter}, noDiff: true},
		// qemu cannot open its own empty fixed VHD: the lone footer sits at offset 0.
		{name: "fixed empty", qfmt: "vpc", opts: "subformat=fixed", size: 0, want: inspect.VHD, codes: []inspect.Code{inspect.CodeInvalidHeader}, noDiff: true},
		{name: "fixed holding a qcow2", qfmt: "vpc", build: qcow2Inside, want: inspect.QCOW2, codes: []inspect.Code{inspect.CodeMultipleFormats}, noDiff: true, check: func(t testing.TB, r *inspect.Report) {
			if len(r.Formats) != 2 || r.Formats[1] != inspect.VHD {
				t.Errorf("formats %v", r.Formats)
			}
		}},
	}
	testFixtures(t, fixtures)
}

// vhdFix recomputes the checksum of the footer at off.
func vhdFix(img []byte, off int) []byte {
	inspect.VHDChecksum(img[off:off+512], 64)
	return img
}

// vhdBoth writes p at off in both footers of a dynamic VHD and fixes their checksums.
func vhdBoth(img []byte, off int, p []byte) []byte {
	img = patch(img, off, p)
	img = patch(img, len(img)-512+off, p)
	return vhdFix(vhdFix(img, 0), len(img)-512)
}

// vhdDynFix recomputes the checksum of the dynamic header at off.
func vhdDynFix(img []byte, off int) []byte {
	inspect.VHDChecksum(img[off:off+1024], 36)
	return img
}

func TestVHDHostile(t *testing.T) {
	u16 := func(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
	u32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	u64 := func(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
	dyn := inspect.VHDImage(inspect.VHDSpec{Type: 3, Size: 5 << 20}) // 3 BAT entries
	fixed := inspect.VHDImage(inspect.VHDSpec{Type: 2, Size: 1 << 20})
	end := len(dyn) - 512
	geometry := func(img []byte) int64 {
		return int64(binary.BigEndian.Uint16(img[56:])) * int64(img[58]) * int64(img[59]) * 512
	}
	// far places the dynamic header at 128 KiB and the BAT at bat, past the head.
	far := func(bat uint64) []byte {
		img := make([]byte, 200<<10)
		copy(img, dyn[:512])
		copy(img[128<<10:], dyn[512:1536])
		copy(img[bat:], dyn[1536:2048])
		img = vhdBoth(append(img, dyn[:512]...), 16, u64(128<<10))
		return vhdDynFix(patch(img, 128<<10+16, u64(bat)), 128<<10)
	}
	random := make([]byte, 8192)
	for i := range random {
		random[i] = byte(i*131 + i>>8)
	}
	tests := []struct {
		name  string
		img   []byte
		want  inspect.Format
		codes []inspect.Code
		vsize int64 // 0: do not check
		// qemu: qemu-img info -f vpc must open the image and agree on the virtual size.
		qemu bool
	}{
		{"dynamic", dyn, inspect.VHD, nil, geometry(dyn), true},
		{"fixed", fixed, inspect.VHD, nil, geometry(fixed), true},
		{"differencing", inspect.VHDImage(inspect.VHDSpec{Type: 4, Size: 5 << 20, Parent: "/etc/passwd"}), inspect.VHD, []inspect.Code{inspect.CodeBackingFile}, geometry(dyn), true},
		{"creator win uses current size", vhdBoth(dyn, 28, []byte("win ")), inspect.VHD, nil, 5 << 20, true},
		{"creator tap uses current size", vhdBoth(dyn, 28, []byte("tap\x00")), inspect.VHD, nil, 5 << 20, true},
		{"creator d2v uses current size", vhdBoth(dyn, 28, []byte("d2v ")), inspect.VHD, nil, 5 << 20, true},
		{"creator CTXS uses current size", vhdBoth(dyn, 28, []byte("CTXS")), inspect.VHD, nil, 5 << 20, true},
		{"creator wa uses geometry in qemu 7.2", vhdBoth(dyn, 28, []byte("wa\x00\x00")), inspect.VHD, nil, geometry(dyn), true},
		{"creator vpc uses geometry", vhdBoth(dyn, 28, []byte("vpc ")), inspect.VHD, nil, geometry(dyn), true},
		{"current size rounds down to sectors", vhdBoth(vhdBoth(dyn, 28, []byte("qem2")), 48, u64(5<<20-1)), inspect.VHD, nil, 5<<20 - 512, true},
		{"maximum geometry uses current size", vhdBoth(vhdBoth(dyn, 56, u32(0xffff10ff)), 48, u64(5<<20)), inspect.VHD, nil, 5 << 20, true},
		{"over 2040 GiB", vhdBoth(vhdBoth(dyn, 28, []byte("win ")), 48, u64(3<<40)), inspect.VHD, []inspect.Code{inspect.CodeInvalidHeader}, inspect.SizeUnknown, false},
		{"dynamic header and BAT far in the file", far(129 << 10), inspect.VHD, nil, geometry(dyn), true},
		{"BAT behind the dynamic header", far(80 << 10), inspect.VHD, []inspect.Code{inspect.CodeInvalidHeader}, geometry(dyn), false},
		{"bad checksum at offset 0", patch(dyn, 64, u32(1)), inspect.VHD, []inspect.Code{inspect.CodeInvalidFooter}, 0, false},
		{"bad checksum at the end", patch(dyn, end+64, u32(1)), inspect.VHD, []inspect.Code{inspect.CodeInvalidFooter}, 0, true},
		{"bad checksum of a fixed disk", patch(fixed, len(fixed)-512+64, u32(1)), inspect.VHD, []inspect.Code{inspect.CodeInvalidFooter}, 0, false},
		{"no footer at the end", dyn[:end], inspect.VHD, []inspect.Code{inspect.CodeInvalidFooter}, 0, true},
		{"footers disagree", vhdFix(patch(dyn, end+48, u64(1<<30)), end), inspect.VHD, []inspect.Code{inspect.CodeInvalidFooter}, geometry(dyn), true},
		{"511-byte footer at the end", dyn[:len(dyn)-1], inspect.VHD, nil, geometry(dyn), true},
		{"timestamps may differ", vhdFix(patch(dyn, end+24, u32(12345)), end), inspect.VHD, nil, geometry(dyn), true},
		{"unknown disk type", vhdBoth(dyn, 60, u32(9)), inspect.VHD, []inspect.Code{inspect.CodeInvalidHeader}, 0, false},
		{"fixed type at offset 0", vhdBoth(dyn, 60, u32(2)), inspect.VHD, []inspect.Code{inspect.CodeInvalidHeader}, 0, false},
		{"dynamic type at the end only", vhdFix(patch(fixed, len(fixed)-512+60, u32(3)), len(fixed)-512), inspect.VHD, []inspect.Code{inspect.CodeInvalidHeader}, 0, false},
		{"fixed disk larger than its data", vhdFix(patch(fixed, len(fixed)-512+56, u16(4000)), len(fixed)-512), inspect.VHD, []inspect.Code{inspect.CodeTruncated}, 0, false},
		{"no dynamic header", patch(dyn, 512, []byte("cxsparsf")), inspect.VHD, []inspect.Code{inspect.CodeInvalidHeader}, 0, false},
		{"dynamic header checksum", patch(dyn, 512+36, u32(7)), inspect.VHD, []inspect.Code{inspect.CodeInvalidHeader}, 0, false},
		{"block size not a power of two", vhdDynFix(patch(dyn, 512+32, u32(3<<20)), 512), inspect.VHD, []inspect.Code{inspect.CodeInvalidHeader}, 0, false},
		{"block size 256", vhdDynFix(patch(dyn, 512+32, u32(256)), 512), inspect.VHD, []inspect.Code{inspect.CodeInvalidHeader}, 0, false},
		{"BAT too small for the disk", vhdDynFix(patch(dyn, 512+28, u32(1)), 512), inspect.VHD, []inspect.Code{inspect.CodeInvalidHeader}, 0, false},
		{"BAT too large", vhdDynFix(patch(dyn, 512+28, u32(0x40000000)), 512), inspect.VHD, []inspect.Code{inspect.CodeInvalidHeader}, 0, false},
		{"BAT overlaps the header", vhdDynFix(patch(dyn, 512+16, u64(1024)), 512), inspect.VHD, []inspect.Code{inspect.CodeInvalidHeader}, 0, false},
		{"BAT past the end", vhdDynFix(patch(dyn, 512+16, u64(1<<40)), 512), inspect.VHD, []inspect.Code{inspect.CodeTruncated}, 0, false},
		{"BAT runs past the end", vhdDynFix(patch(dyn, 512+28, u32(2000)), 512), inspect.VHD, []inspect.Code{inspect.CodeTruncated}, 0, false},
		{"allocated block past the end", patch(dyn, 1536, u32(4)), inspect.VHD, []inspect.Code{inspect.CodeTruncated}, 0, false},
		{"dynamic header past the end", vhdBoth(dyn, 16, u64(1<<40)), inspect.VHD, []inspect.Code{inspect.CodeTruncated}, 0, false},
		{"dynamic header offset huge", vhdBoth(dyn, 16, u64(1<<63)), inspect.VHD, []inspect.Code{inspect.CodeInvalidHeader}, 0, false},
		{"footer at offset 0 cut short", dyn[:300], inspect.VHD, []inspect.Code{inspect.CodeTruncated}, inspect.SizeUnknown, false},
		{"magic only", []byte("conectix"), inspect.VHD, []inspect.Code{inspect.CodeTruncated}, inspect.SizeUnknown, false},
		{"seven bytes of magic", []byte("conecti"), inspect.Raw, nil, 0, false},
		{"random data ending in a footer magic", patch(random, len(random)-512, []byte("conectix")), inspect.VHD, []inspect.Code{inspect.CodeInvalidFooter, inspect.CodeInvalidHeader}, 0, false},
		{"footer magic one byte off the end", patch(random, len(random)-511, []byte("conectix")), inspect.Raw, nil, 0, false},
		{"footer magic 1 KiB before the end", patch(random, len(random)-1024, []byte("conectix")), inspect.Raw, nil, 0, false},
		{"zeros", make([]byte, 1<<20), inspect.Raw, nil, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := inspectBytes(t, tt.img, inspect.Options{})
			if r.Format != tt.want {
				t.Fatalf("format %q, want %q (problems %v)", r.Format, tt.want, r.Problems)
			}
			wantCodes(t, r, tt.codes...)
			if tt.vsize != 0 && r.VirtualSize != tt.vsize {
				t.Errorf("virtual size %d, want %d", r.VirtualSize, tt.vsize)
			}
			if tt.qemu {
				qi := info(t, "vpc", writeFile(t, "img.vhd", tt.img))
				if qi.VirtualSize != r.VirtualSize {
					t.Errorf("virtual size %d, qemu-img info says %d", r.VirtualSize, qi.VirtualSize)
				}
			}
		})
	}
}

func TestVHDDifferencingParent(t *testing.T) {
	img := inspect.VHDImage(inspect.VHDSpec{Type: 4, Size: 5 << 20, Parent: "C:\\disks\\base\x01.vhd"})
	r := inspectBytes(t, img, inspect.Options{Declared: "vhd"})
	wantCodes(t, r, inspect.CodeBackingFile)
	if d := vhdDetails(t, r); d.DiskType != "differencing" || d.ParentName != `C:\\disks\\base\x01.vhd` {
		t.Errorf("details %+v", d)
	}
}

// TestVHDReadsLittle checks that a VHD is inspected from its first and last sectors (and its
// dynamic header and BAT).
func TestVHDReadsLittle(t *testing.T) {
	for _, opts := range []string{"", "subformat=fixed"} {
		p := qemuCreate(t, "vpc", opts, 1<<30)
		r, n := inspectFile(t, p, inspect.Options{})
		if r.Format != inspect.VHD || !r.Safe() {
			t.Fatalf("%s: report %s", opts, dump(r))
		}
		if n > 64<<10 {
			t.Errorf("%s: read %d bytes", opts, n)
		}
		t.Logf("%s: read %d bytes", opts, n)
	}
}
