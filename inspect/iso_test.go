package inspect_test

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/glance-sidecar/glance-sidecar/inspect"
)

func isoDetails(t testing.TB, r *inspect.Report) *inspect.ISODetails {
	t.Helper()
	d, ok := r.Details.(*inspect.ISODetails)
	if !ok {
		t.Fatalf("details %T, want *ISODetails", r.Details)
	}
	return d
}

// isoTree makes a directory with a few files (and a 2 KiB boot image for El Torito) to master.
func isoTree(t testing.TB, bigFile int64) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tree")
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"hello.txt":           []byte("hello\n"),
		"sub/a-longer-name.x": make([]byte, 3000),
		"boot.img":            make([]byte, 2048),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if bigFile > 0 {
		f, err := os.Create(filepath.Join(dir, "zeros"))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(bigFile); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	return dir
}

// fatImage makes a FAT filesystem image of kib KiB with mkfs.vfat -C.
func fatImage(t testing.TB, kib int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fat.img")
	run(t, "mkfs.vfat", "-C", p, strconv.Itoa(kib))
	return p
}

// mastered returns a build func running tool (genisoimage or xorriso -as mkisofs) with args on
// a fresh tree; "@FAT" in args becomes a FAT image, "@MBR" a 512-byte isohybrid-style MBR
// template.
func mastered(bigFile int64, tool string, args ...string) func(t testing.TB) string {
	return func(t testing.TB) string {
		dir := isoTree(t, bigFile)
		out := filepath.Join(t.TempDir(), "out.iso")
		var a []string
		if tool == "xorriso" {
			a = append(a, "-as", "mkisofs")
		}
		for _, s := range args {
			switch s {
			case "@FAT":
				s = fatImage(t, 2048)
			case "@MBR":
				mbr := make([]byte, 512)
				copy(mbr, "\x33\xed\xfa\x8e\xd5\xbc\x00\x7c")
				s = writeFile(t, "mbr.bin", mbr)
			}
			a = append(a, s)
		}
		a = append(a, "-quiet", "-o", out, dir)
		run(t, tool, a...)
		return out
	}
}

func TestISOFixtures(t *testing.T) {
	checkISO := func(vol string, udf, joliet, boot bool, scheme string) func(t testing.TB, r *inspect.Report) {
		return func(t testing.TB, r *inspect.Report) {
			d := isoDetails(t, r)
			if d.VolumeID != vol || d.UDF != udf || d.Joliet != joliet || d.Bootable != boot || d.BlockSize != 2048 {
				t.Errorf("details %+v", d)
			}
			if d.VolumeSize <= 0 || d.VolumeSize > r.Size || d.VolumeSize%2048 != 0 {
				t.Errorf("volume size %d, data %d", d.VolumeSize, r.Size)
			}
			switch {
			case scheme == "" && d.PartitionTable != nil:
				t.Errorf("unexpected partition table %+v", d.PartitionTable)
			case scheme != "" && (d.PartitionTable == nil || d.PartitionTable.Scheme != scheme || len(d.PartitionTable.Partitions) == 0):
				t.Errorf("partition table %+v, want a %s", d.PartitionTable, scheme)
			}
		}
	}
	badISO := func(t testing.TB) string {
		// formats.md test_bad_iso_qcow2: a qcow2's first 32 KiB over an ISO's system area.
		q := readFile(t, qemuCreate(t, "qcow2", "", 5<<20))
		iso := readFile(t, mastered(64<<20, "genisoimage", "-V", "TEST")(t))
		copy(iso, q[:32<<10])
		return writeFile(t, "bad.iso", iso)
	}
	testFixtures(t, []fixture{
		{name: "genisoimage", qfmt: "raw", build: mastered(0, "genisoimage", "-V", "TEST"), want: inspect.ISO,
			check: checkISO("TEST", false, false, false, "")},
		{name: "genisoimage 7M+512 file", qfmt: "raw", build: mastered(7<<20+512, "genisoimage", "-V", "TEST"), want: inspect.ISO,
			check: checkISO("TEST", false, false, false, "")},
		{name: "genisoimage udf", qfmt: "raw", build: mastered(0, "genisoimage", "-udf", "-V", "TEST"), want: inspect.ISO,
			check: checkISO("TEST", true, false, false, "")},
		{name: "genisoimage joliet", qfmt: "raw", build: mastered(0, "genisoimage", "-J", "-V", "JOLIET"), want: inspect.ISO,
			check: checkISO("JOLIET", false, true, false, "")},
		{name: "genisoimage joliet udf rock", qfmt: "raw", build: mastered(129<<20+512, "genisoimage", "-J", "-R", "-udf", "-V", "ALL"), want: inspect.ISO,
			check: checkISO("ALL", true, true, false, "")},
		{name: "genisoimage iso-level 4", qfmt: "raw", build: mastered(0, "genisoimage", "-iso-level", "4", "-V", "L4"), want: inspect.ISO,
			check: checkISO("L4", false, false, false, "")},
		{name: "genisoimage el torito", qfmt: "raw", build: mastered(0, "genisoimage", "-V", "BOOT", "-b", "boot.img", "-no-emul-boot"), want: inspect.ISO,
			check: checkISO("BOOT", false, false, true, "")},
		{name: "xorriso", qfmt: "raw", build: mastered(0, "xorriso", "-V", "X"), want: inspect.ISO,
			check: checkISO("X", false, false, false, "")},
		{name: "xorriso protective msdos label", qfmt: "raw", build: mastered(0, "xorriso", "--protective-msdos-label", "-V", "PROT"), want: inspect.ISO,
			check: func(t testing.TB, r *inspect.Report) {
				checkISO("PROT", false, false, false, "mbr")(t, r)
				p := isoDetails(t, r).PartitionTable.Partitions
				if len(p) != 1 || p[0].Type != "0xcd" || p[0].Start != 512 || p[0].Start+p[0].Size != r.Size || !p[0].Bootable {
					t.Errorf("partitions %+v", p)
				}
			}},
		{name: "xorriso appended gpt partition", qfmt: "raw", build: mastered(0, "xorriso", "-appended_part_as_gpt", "-append_partition", "2", "0xef", "@FAT", "-V", "GPT"), want: inspect.ISO,
			check: func(t testing.TB, r *inspect.Report) {
				checkISO("GPT", false, false, false, "gpt")(t, r)
				d := isoDetails(t, r)
				if d.VolumeSize >= r.Size { // formats.md 1.6.5: the ISO is smaller than the file
					t.Errorf("volume size %d, data %d", d.VolumeSize, r.Size)
				}
				i := slices.IndexFunc(d.PartitionTable.Partitions, func(p inspect.Partition) bool { return p.TypeName == "EFI System" })
				if i < 0 || d.PartitionTable.Partitions[i].Size != 2<<20 || d.PartitionTable.DiskGUID == "" {
					t.Errorf("partition table %+v", d.PartitionTable)
				}
			}},
		{name: "xorriso appended mbr partition", qfmt: "raw", build: mastered(0, "xorriso", "-append_partition", "2", "0xef", "@FAT", "-V", "APP"), want: inspect.ISO,
			check: checkISO("APP", false, false, false, "mbr")},
		{name: "xorriso partition offset", qfmt: "raw", build: mastered(0, "xorriso", "-partition_offset", "16", "-V", "OFF"), want: inspect.ISO,
			check: checkISO("OFF", false, false, false, "mbr")},
		{name: "xorriso efi boot partition", qfmt: "raw", build: mastered(0, "xorriso", "-efi-boot-part", "--efi-boot-image", "-e", "boot.img", "-no-emul-boot", "-V", "EFI"), want: inspect.ISO,
			check: checkISO("EFI", false, false, true, "gpt")},
		{name: "xorriso isohybrid gpt basdat (debian layout)", qfmt: "raw", build: mastered(0, "xorriso", "-isohybrid-mbr", "@MBR", "-b", "boot.img", "-no-emul-boot",
			"-eltorito-alt-boot", "-e", "boot.img", "-no-emul-boot", "-isohybrid-gpt-basdat", "-V", "DEB"), want: inspect.ISO,
			check: func(t testing.TB, r *inspect.Report) {
				checkISO("DEB", false, false, true, "gpt")(t, r)
				pt := isoDetails(t, r).PartitionTable
				if !pt.Hybrid || len(pt.MBRPartitions) != 2 || pt.Partitions[0].Start != 0 {
					t.Errorf("partition table %+v", pt)
				}
			}},
		{name: "xorriso isohybrid gpt basdat offset 16", qfmt: "raw", build: mastered(0, "xorriso", "-isohybrid-mbr", "@MBR", "-b", "boot.img", "-no-emul-boot",
			"-eltorito-alt-boot", "-e", "boot.img", "-no-emul-boot", "-isohybrid-gpt-basdat", "-partition_offset", "16", "-V", "DEB16"), want: inspect.ISO,
			check: checkISO("DEB16", false, false, true, "gpt")},
		{name: "xorriso isohybrid mbr appended", qfmt: "raw", build: mastered(0, "xorriso", "-isohybrid-mbr", "@MBR", "-b", "boot.img", "-no-emul-boot",
			"-eltorito-alt-boot", "-e", "boot.img", "-no-emul-boot", "-isohybrid-gpt-basdat", "-append_partition", "2", "0xef", "@FAT", "-V", "DEBAPP"), want: inspect.ISO,
			check: checkISO("DEBAPP", false, false, true, "gpt")},
		{name: "xorriso ubuntu layout", qfmt: "raw", build: mastered(0, "xorriso", "--grub2-mbr", "@MBR", "-partition_offset", "16", "--mbr-force-bootable",
			"-append_partition", "2", "28732ac11ff8d211ba4b00a0c93ec93b", "@FAT", "-appended_part_as_gpt",
			"-iso_mbr_part_type", "a2a0d0ebe5b9334487c068b6b72699c7", "-c", "boot.catalog", "-b", "boot.img", "-no-emul-boot",
			"-eltorito-alt-boot", "-e", "--interval:appended_partition_2:::", "-no-emul-boot", "-V", "UBU"), want: inspect.ISO,
			check: checkISO("UBU", false, false, true, "gpt")},
		{name: "qcow2 in the system area", qfmt: "qcow2", build: badISO, want: inspect.QCOW2,
			codes: []inspect.Code{inspect.CodeMultipleFormats}, check: func(t testing.TB, r *inspect.Report) {
				if !slices.Equal(r.Formats, []inspect.Format{inspect.QCOW2, inspect.ISO}) || r.VirtualSize != 5<<20 {
					t.Errorf("formats %v, virtual size %d", r.Formats, r.VirtualSize)
				}
			}},
	})
}

// TestISOBytesRead bounds what the random-access path reads of an ISO: the head, and for a
// GPT hybrid the tail with the backup GPT header (two cache blocks when it is not aligned).
func TestISOBytesRead(t *testing.T) {
	for _, tt := range []struct {
		name  string
		build func(t testing.TB) string
		max   int64
	}{
		{"plain 129M", mastered(129<<20, "genisoimage", "-V", "BIG"), 64 << 10},
		{"udf joliet", mastered(0, "genisoimage", "-udf", "-J", "-V", "U"), 64 << 10},
		{"protective msdos label", mastered(0, "xorriso", "--protective-msdos-label"), 64 << 10},
		{"gpt hybrid", mastered(0, "xorriso", "-appended_part_as_gpt", "-append_partition", "2", "0xef", "@FAT"), 64<<10 + 8<<10},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, n := inspectFile(t, tt.build(t), inspect.Options{})
			if r.Format != inspect.ISO || !r.Safe() {
				t.Fatalf("format %s, problems %v", r.Format, r.Problems)
			}
			if n > tt.max {
				t.Errorf("read %d bytes, want at most %d", n, tt.max)
			}
		})
	}
}

// isoDesc builds one 2048-byte volume descriptor.
func isoDesc(typ byte, id string, version byte) []byte {
	d := make([]byte, 2048)
	d[0] = typ
	copy(d[1:], id)
	d[6] = version
	return d
}

// isoPVD builds a primary volume descriptor with both byte orders filled in.
func isoPVD(blocks uint32, bs uint16) []byte {
	d := isoDesc(1, "CD001", 1)
	copy(d[8:40], "LINUX                           ")
	copy(d[40:72], "HAND MADE                       ")
	binary.LittleEndian.PutUint32(d[80:], blocks)
	binary.BigEndian.PutUint32(d[84:], blocks)
	binary.LittleEndian.PutUint16(d[128:], bs)
	binary.BigEndian.PutUint16(d[130:], bs)
	return d
}

// isoImage lays descriptors from sector 16 and pads the image to size bytes.
func isoImage(size int, descs ...[]byte) []byte {
	img := make([]byte, 32768)
	for _, d := range descs {
		img = append(img, d...)
	}
	if len(img) < size {
		img = append(img, make([]byte, size-len(img))...)
	}
	return img
}

func TestISOHostile(t *testing.T) {
	const size = 48 * 2048
	term := isoDesc(255, "CD001", 1)
	good := isoImage(size, isoPVD(48, 2048), term)
	joliet := isoDesc(2, "CD001", 1)
	copy(joliet[88:], "%/E")
	torito := isoDesc(0, "CD001", 1)
	copy(torito[7:], "EL TORITO SPECIFICATION")
	bea, nsr, tea := isoDesc(0, "BEA01", 1), isoDesc(0, "NSR03", 1), isoDesc(0, "TEA01", 1)
	zero := make([]byte, 2048)
	le := func(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
	parts := make([][]byte, 0, 20)
	for range 20 {
		parts = append(parts, isoDesc(3, "CD001", 1))
	}
	qcowISO := append(qcow2Header(3)[:32768:32768], isoImage(128<<10, isoPVD(64, 2048), term)[32768:]...)

	tests := []struct {
		name  string
		img   []byte
		want  inspect.Format
		codes []inspect.Code
		check func(t *testing.T, d *inspect.ISODetails)
	}{
		{"valid", good, inspect.ISO, nil, func(t *testing.T, d *inspect.ISODetails) {
			if d.VolumeID != "HAND MADE" || d.SystemID != "LINUX" || d.VolumeSize != size || d.UDF || d.Joliet || d.Bootable {
				t.Errorf("details %+v", d)
			}
		}},
		{"joliet and el torito", isoImage(size, isoPVD(48, 2048), torito, joliet, term), inspect.ISO, nil, func(t *testing.T, d *inspect.ISODetails) {
			if !d.Joliet || !d.Bootable {
				t.Errorf("details %+v", d)
			}
		}},
		{"udf bridge", isoImage(size, isoPVD(48, 2048), term, bea, nsr, tea), inspect.ISO, nil, func(t *testing.T, d *inspect.ISODetails) {
			if !d.UDF || d.VolumeID != "HAND MADE" {
				t.Errorf("details %+v", d)
			}
		}},
		{"pure udf", isoImage(size, bea, nsr, tea), inspect.ISO, nil, func(t *testing.T, d *inspect.ISODetails) {
			if !d.UDF || d.VolumeSize != 0 {
				t.Errorf("details %+v", d)
			}
		}},
		{"pure udf 4K blocks", isoImage(size, bea, zero, isoDesc(0, "NSR02", 1), zero, tea), inspect.ISO, nil, nil},
		{"nsr alone", isoImage(size, nsr), inspect.ISO, nil, nil},
		{"udf without nsr", isoImage(size, bea, tea), inspect.Raw, nil, nil},
		{"nsr after the first non-descriptor", isoImage(size, bea, isoDesc(0, "XXXXX", 1), nsr, tea), inspect.Raw, nil, nil},
		{"no terminator within 16 descriptors", isoImage(size, append([][]byte{isoPVD(48, 2048)}, parts...)...), inspect.ISO, nil, nil},
		{"cd001 after the terminator is not read", isoImage(size, isoPVD(48, 2048), term, isoDesc(9, "CD001", 7)), inspect.ISO, nil, nil},
		{"empty system area and descriptors", make([]byte, size), inspect.Raw, nil, nil},
		{"volume larger than the data", patch(patch(good, 32768+80, le(4800)), 32768+84, []byte{0, 0, 0x12, 0xc0}), inspect.ISO, []inspect.Code{inspect.CodeTruncated}, nil},
		{"volume of one block", isoImage(size, isoPVD(1, 2048), term), inspect.ISO, []inspect.Code{inspect.CodeInvalidHeader}, nil},
		{"block size 4096", isoImage(size, isoPVD(24, 4096), term), inspect.ISO, []inspect.Code{inspect.CodeInvalidHeader}, nil},
		{"block size 0", isoImage(size, isoPVD(48, 0), term), inspect.ISO, []inspect.Code{inspect.CodeInvalidHeader}, nil},
		{"block size 3000", isoImage(size, isoPVD(48, 3000), term), inspect.ISO, []inspect.Code{inspect.CodeInvalidHeader}, nil},
		{"block size 512", isoImage(size, isoPVD(48*4, 512), term), inspect.ISO, nil, func(t *testing.T, d *inspect.ISODetails) {
			if d.BlockSize != 512 || d.VolumeSize != size {
				t.Errorf("details %+v", d)
			}
		}},
		{"byte orders disagree", patch(good, 32768+84, []byte{0, 0, 0, 1}), inspect.ISO, []inspect.Code{inspect.CodeInvalidHeader}, nil},
		{"huge volume, byte orders disagree", patch(good, 32768+80, le(0xffffffff)), inspect.ISO, []inspect.Code{inspect.CodeInvalidHeader, inspect.CodeTruncated}, nil},
		{"pvd version 2", patch(good, 32768+6, []byte{2}), inspect.ISO, []inspect.Code{inspect.CodeInvalidHeader}, nil},
		{"unknown descriptor type", isoImage(size, isoPVD(48, 2048), isoDesc(77, "CD001", 1), term), inspect.ISO, []inspect.Code{inspect.CodeInvalidHeader}, nil},
		{"terminator only", isoImage(size, term), inspect.ISO, []inspect.Code{inspect.CodeInvalidHeader}, nil},
		{"cut inside the pvd", good[:32768+100], inspect.ISO, []inspect.Code{inspect.CodeTruncated}, nil},
		{"cut after the pvd", good[:32768+2048], inspect.ISO, []inspect.Code{inspect.CodeTruncated}, nil},
		{"cut after the magic", good[:32768+7], inspect.ISO, []inspect.Code{inspect.CodeTruncated}, nil},
		{"cut inside the magic", good[:32768+4], inspect.Raw, nil, nil},
		{"qcow2 in the system area", qcowISO, inspect.QCOW2, []inspect.Code{inspect.CodeMultipleFormats}, nil},
	}
	why := map[string]string{
		"volume larger than the data":       "the volume is 9830400 bytes, the data only 98304",
		"volume of one block":               "volume of 2048 bytes does not cover its own descriptors",
		"block size 4096":                   "logical block size 4096",
		"block size 0":                      "logical block size 0",
		"block size 3000":                   "logical block size 3000",
		"byte orders disagree":              "the two byte orders disagree (volume space 48/1 blocks",
		"huge volume, byte orders disagree": "the two byte orders disagree",
		"pvd version 2":                     "volume descriptor 0 has an unknown version",
		"unknown descriptor type":           "unknown volume descriptor type 77",
		"terminator only":                   "without a primary volume descriptor",
		"cut inside the pvd":                "needs bytes 32768 to 34816, data ends at 32868",
		"cut after the pvd":                 "needs bytes 34816 to 36864, data ends at 34816",
		"cut after the magic":               "data ends at 32775",
		"qcow2 in the system area":          "content is valid as qcow2 and iso at once",
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := inspectBytes(t, tt.img, inspect.Options{})
			if r.Format != tt.want {
				t.Fatalf("format %q, want %q (problems %v)", r.Format, tt.want, r.Problems)
			}
			wantCodes(t, r, tt.codes...)
			if w := why[tt.name]; (w == "") != (len(tt.codes) == 0) || (w != "" && !hasDetail(r, w)) {
				t.Errorf("problems %v, want one saying %q", r.Problems, w)
			}
			if tt.want == inspect.ISO && r.VirtualSize != int64(len(tt.img)) {
				t.Errorf("virtual size %d, want the data size %d", r.VirtualSize, len(tt.img))
			}
			if tt.check != nil {
				tt.check(t, isoDetails(t, r))
			}
		})
	}
}
