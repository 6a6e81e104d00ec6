package inspect_test

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/glance-sidecar/glance-sidecar/inspect"
)

func vmdkDetails(t testing.TB, r *inspect.Report) *inspect.VMDKDetails {
	t.Helper()
	d, ok := r.Details.(*inspect.VMDKDetails)
	if !ok {
		t.Fatalf("details %T, want *VMDKDetails", r.Details)
	}
	return d
}

// wantVMDK checks create type, adapter type and hardware version.
func wantVMDK(createType, adapter, hw string) func(testing.TB, *inspect.Report) {
	return func(t testing.TB, r *inspect.Report) {
		d := vmdkDetails(t, r)
		if d.CreateType != createType || d.AdapterType != adapter || d.HWVersion != hw {
			t.Errorf("createType %q adapter %q hw %q, want %q %q %q", d.CreateType, d.AdapterType, d.HWVersion, createType, adapter, hw)
		}
	}
}

// vmdkWithData converts size bytes of random data to a VMDK of the subformat, so that grains
// are really allocated (and streamOptimized really compresses something).
func vmdkWithData(t testing.TB, subformat string, size int) string {
	t.Helper()
	data := make([]byte, size)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	return qemuConvert(t, data, "vmdk", "subformat="+subformat)
}

// vmdkDescriptorOf makes a VMDK of the subformat in its own directory and returns the path of
// its descriptor (the file qemu-img was asked to create).
func vmdkDescriptorOf(subformat string, size int64, opts ...string) func(testing.TB) string {
	return func(t testing.TB) string {
		p := filepath.Join(t.TempDir(), "d.vmdk")
		o := strings.Join(append([]string{"subformat=" + subformat}, opts...), ",")
		run(t, "qemu-img", "create", "-q", "-f", "vmdk", "-o", o, p, fmt.Sprint(size))
		return p
	}
}

func TestVMDKFixtures(t *testing.T) {
	const size = 129<<20 + 512<<10
	external := []inspect.Code{inspect.CodeVMDKCreateType, inspect.CodeVMDKExternalExtent}
	fixtures := []fixture{
		{name: "monolithicSparse", qfmt: "vmdk", size: size, want: inspect.VMDK, check: wantVMDK("monolithicSparse", "ide", "4")},
		{name: "streamOptimized", qfmt: "vmdk", opts: "subformat=streamOptimized", size: size, want: inspect.VMDK, check: wantVMDK("streamOptimized", "ide", "4")},
		{name: "streamOptimized with data", qfmt: "vmdk", build: func(t testing.TB) string { return vmdkWithData(t, "streamOptimized", 3<<20) },
			want: inspect.VMDK, check: func(t testing.TB, r *inspect.Report) {
				if d := vmdkDetails(t, r); !d.Compressed || d.Version != 3 {
					t.Errorf("compressed %v version %d", d.Compressed, d.Version)
				}
			}},
		{name: "monolithicSparse with data", qfmt: "vmdk", build: func(t testing.TB) string { return vmdkWithData(t, "monolithicSparse", 3<<20) }, want: inspect.VMDK},
		{name: "adapter lsilogic hw 6", qfmt: "vmdk", opts: "adapter_type=lsilogic,hwversion=6", size: size, want: inspect.VMDK, check: wantVMDK("monolithicSparse", "lsilogic", "6")},
		{name: "adapter buslogic", qfmt: "vmdk", opts: "adapter_type=buslogic", size: size, want: inspect.VMDK, check: wantVMDK("monolithicSparse", "buslogic", "4")},
		{name: "adapter legacyESX", qfmt: "vmdk", opts: "adapter_type=legacyESX", size: size, want: inspect.VMDK, check: wantVMDK("monolithicSparse", "legacyESX", "4")},
		{name: "adapter ide streamOptimized", qfmt: "vmdk", opts: "adapter_type=ide,subformat=streamOptimized", size: 7 << 20, want: inspect.VMDK, check: wantVMDK("streamOptimized", "ide", "4")},
		{name: "zeroed grain compat6", qfmt: "vmdk", opts: "zeroed_grain=on,compat6=on", size: size, want: inspect.VMDK, check: wantVMDK("monolithicSparse", "ide", "6")},
		{name: "toolsversion", qfmt: "vmdk", opts: "toolsversion=1234", size: 7 << 20, want: inspect.VMDK},
		{name: "monolithicFlat descriptor", qfmt: "vmdk", build: vmdkDescriptorOf("monolithicFlat", 7<<20), want: inspect.VMDK, codes: external,
			check: func(t testing.TB, r *inspect.Report) {
				d := vmdkDetails(t, r)
				if d.Descriptor != "file" || len(d.Extents) != 1 || d.Extents[0].Type != "FLAT" || d.Extents[0].File != "d-flat.vmdk" {
					t.Errorf("details %+v", d)
				}
			}},
		{name: "twoGbMaxExtentSparse descriptor", qfmt: "vmdk", build: vmdkDescriptorOf("twoGbMaxExtentSparse", 5<<30), want: inspect.VMDK, codes: external},
		{name: "twoGbMaxExtentFlat descriptor", qfmt: "vmdk", build: vmdkDescriptorOf("twoGbMaxExtentFlat", 5<<30), want: inspect.VMDK, codes: external},
		{name: "twoGbMaxExtentSparse extent file", qfmt: "vmdk", build: func(t testing.TB) string {
			return strings.TrimSuffix(vmdkDescriptorOf("twoGbMaxExtentSparse", 7<<20)(t), ".vmdk") + "-s001.vmdk"
		}, want: inspect.VMDK, codes: []inspect.Code{inspect.CodeMalformedDescriptor}, noDiff: true},
		{name: "parent link", qfmt: "vmdk", build: func(t testing.TB) string {
			base := vmdkDescriptorOf("monolithicSparse", 7<<20)(t)
			p := filepath.Join(t.TempDir(), "child.vmdk")
			run(t, "qemu-img", "create", "-q", "-f", "vmdk", "-b", base, "-F", "vmdk", p)
			return p
		}, want: inspect.VMDK, codes: []inspect.Code{inspect.CodeBackingFile}, check: func(t testing.TB, r *inspect.Report) {
			if d := vmdkDetails(t, r); filepath.Base(d.ParentFileNameHint) != "d.vmdk" || d.ParentCID == "ffffffff" {
				t.Errorf("parent %q parentCID %q", d.ParentFileNameHint, d.ParentCID)
			}
		}},
	}
	testFixtures(t, fixtures)
}

// TestVMDKFooterAtEnd builds the variant VMware writes and qemu reads but does not write: the
// header's grain directory offset is GD_AT_END and the real header follows as a footer.
func TestVMDKFooterAtEnd(t *testing.T) {
	path := vmdkWithData(t, "streamOptimized", 5<<20)
	img := readFile(t, path)
	hdr := append([]byte(nil), img[:512]...)
	gdAtEnd := binary.LittleEndian.AppendUint64(nil, ^uint64(0))
	marker := make([]byte, 512)
	binary.LittleEndian.PutUint32(marker[12:], 3)
	// qemu's streamOptimized output ends with its own end-of-stream marker; footer variants
	// replace it.
	img = bytes.TrimRight(img, "\x00")
	img = append(img, make([]byte, (512-len(img)%512)%512)...)
	good := append(append(append(patch(img, 56, gdAtEnd), marker...), hdr...), make([]byte, 512)...)

	r, _ := inspectAll(t, bytes.NewReader(good), int64(len(good)), inspect.Options{Declared: "vmdk"})
	wantCodes(t, r)
	if d := vmdkDetails(t, r); !d.FooterAtEnd || r.VirtualSize != 5<<20 {
		t.Fatalf("footer %v virtual size %d", d.FooterAtEnd, r.VirtualSize)
	}
	if qi := info(t, "vmdk", writeFile(t, "footer.vmdk", good)); qi.VirtualSize != r.VirtualSize {
		t.Errorf("qemu-img says %d", qi.VirtualSize)
	}

	n := len(good)
	tests := []struct {
		name string
		img  []byte
	}{
		{"no footer at all", patch(img, 56, gdAtEnd)},
		{"footer marker type 7", patch(good, n-1536+12, []byte{7})},
		{"footer marker size 1", patch(good, n-1536+8, []byte{1})},
		{"footer marker padding", patch(good, n-1536+100, []byte{1})},
		{"end-of-stream marker type", patch(good, n-512+12, []byte{3})},
		{"footer signature", patch(good, n-1024, []byte("leak"))},
		{"footer version", patch(good, n-1024+4, []byte{2})},
		{"footer moves the descriptor", patch(good, n-1024+28, []byte{2})},
		{"footer defers again", patch(good, n-1024+56, gdAtEnd)},
		{"footer capacity", patch(good, n-1024+12, []byte{1, 2, 3})},
		{"only 1000 bytes", patch(good[:1000], 56, gdAtEnd)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := inspectBytes(t, tt.img, inspect.Options{})
			if r.Format != inspect.VMDK || !r.Has(inspect.CodeInvalidFooter) {
				t.Fatalf("format %s problems %v, want invalid_footer", r.Format, r.Problems)
			}
		})
	}
}

// sparseVMDK builds a hosted sparse extent header with an embedded descriptor.
func sparseVMDK(capacity uint64, descriptor string) []byte {
	img := make([]byte, 64<<10)
	le := binary.LittleEndian
	copy(img, "KDMV")
	le.PutUint32(img[4:], 1)
	le.PutUint32(img[8:], 3)
	le.PutUint64(img[12:], capacity)
	le.PutUint64(img[20:], 128)
	le.PutUint64(img[28:], 1)
	le.PutUint64(img[36:], 20)
	le.PutUint32(img[44:], 512)
	le.PutUint64(img[48:], 21)
	le.PutUint64(img[56:], 26)
	copy(img[0x200:], descriptor)
	return img
}

const goodDescriptor = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicSparse\"\n\n" +
	"# Extent description\nRW 20480 SPARSE \"d.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.adapterType = \"lsilogic\"\n"

func TestVMDKHostile(t *testing.T) {
	le := binary.LittleEndian
	desc := func(old, new string) string { return strings.Replace(goodDescriptor, old, new, 1) }
	tests := []struct {
		name  string
		img   []byte
		want  inspect.Format
		codes []inspect.Code
	}{
		{"valid", sparseVMDK(20480, goodDescriptor), inspect.VMDK, nil},
		{"extent names a host path", sparseVMDK(20480, desc(`"d.vmdk"`, `"/etc/hosts"`)), inspect.VMDK, []inspect.Code{inspect.CodeVMDKExtentHostPath}},
		{"extent names a parent directory", sparseVMDK(20480, desc(`"d.vmdk"`, `"../d.vmdk"`)), inspect.VMDK, []inspect.Code{inspect.CodeVMDKExtentHostPath}},
		{"extent names a protocol", sparseVMDK(20480, desc(`"d.vmdk"`, `"nbd:127.0.0.1:10809"`)), inspect.VMDK, []inspect.Code{inspect.CodeVMDKExtentHostPath}},
		{"second extent", sparseVMDK(20480, desc("RW 20480 SPARSE \"d.vmdk\"\n", "RW 20480 SPARSE \"d.vmdk\"\nRW 2048 FLAT \"other.img\" 0\n")), inspect.VMDK, []inspect.Code{inspect.CodeVMDKExternalExtent}},
		{"flat extent in sparse", sparseVMDK(20480, desc("SPARSE", "FLAT")), inspect.VMDK, []inspect.Code{inspect.CodeVMDKExternalExtent}},
		{"no extents", sparseVMDK(20480, desc("RW 20480 SPARSE \"d.vmdk\"\n", "")), inspect.VMDK, []inspect.Code{inspect.CodeMalformedDescriptor}},
		{"capacity zero opens descriptor extents", sparseVMDK(0, desc("RW 20480 SPARSE \"d.vmdk\"", "RW 2048 FLAT \"/etc/passwd\" 0")), inspect.VMDK,
			[]inspect.Code{inspect.CodeVMDKExternalExtent, inspect.CodeVMDKExtentHostPath}},
		{"parentFileNameHint", sparseVMDK(20480, desc("parentCID=ffffffff", "parentCID=abcdef01\nparentFileNameHint=\"/var/lib/nova/base.vmdk\"")), inspect.VMDK, []inspect.Code{inspect.CodeBackingFile}},
		{"parentFileNameHint in a comment", sparseVMDK(20480, desc("# Disk DescriptorFile", "# parentFileNameHint=\"/etc/shadow\"")), inspect.VMDK, []inspect.Code{inspect.CodeBackingFile}},
		{"parentFileNameHint after the declared descriptor", patch(sparseVMDK(20480, goodDescriptor), 0x200+len(goodDescriptor), []byte("parentFileNameHint=\"/x\"\n")), inspect.VMDK, []inspect.Code{inspect.CodeBackingFile}},
		{"parentCID only", sparseVMDK(20480, desc("parentCID=ffffffff", "parentCID=abcdef01")), inspect.VMDK, []inspect.Code{inspect.CodeBackingFile}},
		{"createType hidden in a comment", sparseVMDK(20480, desc("# Disk DescriptorFile", "# createType=\"streamOptimized\"")), inspect.VMDK, []inspect.Code{inspect.CodeMalformedDescriptor}},
		{"createType twice", sparseVMDK(20480, desc("version=1", "version=1\ncreateType=\"monolithicFlat\"")), inspect.VMDK, []inspect.Code{inspect.CodeMalformedDescriptor, inspect.CodeVMDKCreateType}},
		{"createType monolithicFlat", sparseVMDK(20480, desc("monolithicSparse", "monolithicFlat")), inspect.VMDK, []inspect.Code{inspect.CodeVMDKCreateType}},
		{"createType missing", sparseVMDK(20480, desc("createType=\"monolithicSparse\"", "")), inspect.VMDK, []inspect.Code{inspect.CodeMalformedDescriptor}},
		{"createType too long", sparseVMDK(20480, desc("monolithicSparse", strings.Repeat("x", 70))), inspect.VMDK, []inspect.Code{inspect.CodeMalformedDescriptor}},
		{"bad line", sparseVMDK(20480, desc("#DDB", "wronly 2048 somefile2.vmdk")), inspect.VMDK, []inspect.Code{inspect.CodeMalformedDescriptor}},
		{"not ASCII", sparseVMDK(20480, desc("#DDB", "# caf\xc3\xa9")), inspect.VMDK, []inspect.Code{inspect.CodeMalformedDescriptor}},
		{"descriptor elsewhere", patch(sparseVMDK(20480, goodDescriptor), 28, le.AppendUint64(nil, 2)), inspect.VMDK, []inspect.Code{inspect.CodeInvalidHeader}},
		{"descriptor size 2 GiB", patch(sparseVMDK(20480, goodDescriptor), 36, le.AppendUint64(nil, 1<<22)), inspect.VMDK, []inspect.Code{inspect.CodeInvalidHeader}},
		{"descriptor size 2 MiB of text", patch(patch(sparseVMDK(20480, goodDescriptor), 36, le.AppendUint64(nil, 2048)), 0x200+len(goodDescriptor), bytes.Repeat([]byte("# padding\n"), 200000)), inspect.VMDK, nil},
		{"version 4", patch(sparseVMDK(20480, goodDescriptor), 4, []byte{4}), inspect.VMDK, []inspect.Code{inspect.CodeUnsupportedVersion}},
		{"grain size 3", patch(sparseVMDK(20480, goodDescriptor), 20, []byte{3}), inspect.VMDK, []inspect.Code{inspect.CodeInvalidHeader}},
		{"grain directory past the end", patch(sparseVMDK(20480, goodDescriptor), 56, le.AppendUint64(nil, 1<<30)), inspect.VMDK, []inspect.Code{inspect.CodeTruncated}},
		{"capacity overflows", patch(sparseVMDK(20480, goodDescriptor), 12, le.AppendUint64(nil, 1<<62)), inspect.VMDK, []inspect.Code{inspect.CodeInvalidHeader}},
		{"header only", sparseVMDK(20480, goodDescriptor)[:70], inspect.VMDK, []inspect.Code{inspect.CodeTruncated}},
		{"descriptor cut", sparseVMDK(20480, goodDescriptor)[:0x200+40], inspect.VMDK, []inspect.Code{inspect.CodeTruncated, inspect.CodeMalformedDescriptor}},
		{"COWD extent", append([]byte("COWD\x01\x00\x00\x00\x03\x00\x00\x00\x00\x28\x00\x00"), make([]byte, 2048)...), inspect.VMDK, []inspect.Code{inspect.CodeVMDKCreateType}},
		{"descriptor file with host path", []byte("# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"/etc/passwd\" 0\n"),
			inspect.VMDK, []inspect.Code{inspect.CodeVMDKCreateType, inspect.CodeVMDKExternalExtent, inspect.CodeVMDKExtentHostPath}},
		{"descriptor file claiming monolithicSparse", []byte("version=1\ncreateType=\"monolithicSparse\"\nRW 2048 SPARSE \"x.vmdk\"\n"), inspect.VMDK, []inspect.Code{inspect.CodeVMDKExternalExtent}},
		{"qemu's probe: version line then binary", append([]byte("version=1\n"), 0xff, 0xfe, 0), inspect.VMDK, []inspect.Code{inspect.CodeMalformedDescriptor}},
		{"openstack's probe: createType in printable text", []byte("a descriptor without version\ncreateType=\"vmfs\"\nRW 1 VMFS \"x\"\n"), inspect.VMDK, []inspect.Code{inspect.CodeMalformedDescriptor, inspect.CodeVMDKCreateType, inspect.CodeVMDKExternalExtent}},
		{"shell script is raw", []byte("#!/bin/sh\necho hello\n"), inspect.Raw, nil},
		{"zero extent is not external", []byte("version=1\ncreateType=\"monolithicFlat\"\nRW 2048 ZERO\n"), inspect.VMDK, []inspect.Code{inspect.CodeVMDKCreateType}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := inspectBytes(t, tt.img, inspect.Options{})
			if r.Format != tt.want {
				t.Fatalf("format %q, want %q (%v)", r.Format, tt.want, r.Problems)
			}
			wantCodes(t, r, tt.codes...)
		})
	}
}
