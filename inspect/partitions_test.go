package inspect_test

import (
	"encoding/binary"
	"encoding/hex"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf16"

	"github.com/glance-sidecar/glance-sidecar/inspect"
)

func partTable(t testing.TB, r *inspect.Report) *inspect.PartitionTable {
	t.Helper()
	d, ok := r.Details.(*inspect.RawDetails)
	if !ok {
		t.Fatalf("details %T, want *RawDetails", r.Details)
	}
	return d.PartitionTable
}

// rawDisk returns a build func that makes a sparse raw file of size bytes and runs each
// command on it (the file's path replaces "@").
func rawDisk(size int64, cmds ...[]string) func(t testing.TB) string {
	return func(t testing.TB) string {
		p := filepath.Join(t.TempDir(), "disk.raw")
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		f.Close()
		for _, c := range cmds {
			args := make([]string, len(c)-1)
			for i, a := range c[1:] {
				args[i] = strings.ReplaceAll(a, "@", p)
			}
			run(t, c[0], args...)
		}
		return p
	}
}

const (
	linuxFS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
	efiSys  = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
)

func TestPartitionFixtures(t *testing.T) {
	const size = 129<<20 + 512
	noTable := func(t testing.TB, r *inspect.Report) {
		if pt := partTable(t, r); pt != nil {
			t.Errorf("partition table %+v", pt)
		}
	}
	testFixtures(t, []fixture{
		{name: "sgdisk one partition", qfmt: "raw", build: rawDisk(size, []string{"sgdisk", "-o", "-n", "1:2048:0", "@"}), want: inspect.Raw,
			check: func(t testing.TB, r *inspect.Report) {
				pt := partTable(t, r)
				if pt == nil || pt.Scheme != "gpt" || pt.SectorSize != 512 || pt.Hybrid || len(pt.Partitions) != 1 || pt.DiskGUID == "" {
					t.Fatalf("partition table %+v", pt)
				}
				p := pt.Partitions[0]
				if p.Index != 1 || p.Type != linuxFS || p.TypeName != "Linux filesystem" || p.Start != 1<<20 || p.Start+p.Size > size-33*512 || p.GUID == "" {
					t.Errorf("partition %+v", p)
				}
			}},
		{name: "sgdisk several partitions", qfmt: "raw", build: rawDisk(7<<20, []string{"sgdisk", "-o",
			"-n", "1:2048:+1M", "-t", "1:ef00", "-c", "1:EFI boot",
			"-n", "2:0:+2M", "-t", "2:ef02", "-A", "2:set:2",
			"-n", "3:0:0", "-c", "3:räks", "@"}), want: inspect.Raw,
			check: func(t testing.TB, r *inspect.Report) {
				pt := partTable(t, r)
				if pt == nil || pt.Scheme != "gpt" || len(pt.Partitions) != 3 {
					t.Fatalf("partition table %+v", pt)
				}
				p := pt.Partitions
				if p[0].Type != efiSys || p[0].Name != "EFI boot" || p[0].Size != 1<<20 || p[1].TypeName != "BIOS boot" || !p[1].Bootable ||
					p[1].Start != 2<<20 || p[2].Name != "räks" || p[2].Index != 3 {
					t.Errorf("partitions %+v", p)
				}
			}},
		{name: "sgdisk 128 entries far", qfmt: "raw", build: rawDisk(size, []string{"sgdisk", "-o", "-j", "2048", "-n", "1:4096:+1M", "@"}), want: inspect.Raw,
			check: func(t testing.TB, r *inspect.Report) {
				if pt := partTable(t, r); pt == nil || len(pt.Partitions) != 1 || pt.Partitions[0].Start != 4096*512 {
					t.Errorf("partition table %+v", pt)
				}
			}},
		{name: "sgdisk hybrid mbr", qfmt: "raw", build: rawDisk(64<<20, []string{"sgdisk", "-o", "-n", "1:2048:+10M", "-n", "2:0:+20M", "-n", "3:0:0", "-h", "1:2", "@"}), want: inspect.Raw,
			check: func(t testing.TB, r *inspect.Report) {
				pt := partTable(t, r)
				if pt == nil || pt.Scheme != "gpt" || !pt.Hybrid || len(pt.Partitions) != 3 || len(pt.MBRPartitions) != 3 || pt.MBRPartitions[0].Type != "0xee" {
					t.Errorf("partition table %+v", pt)
				}
			}},
		{name: "parted msdos", qfmt: "raw", build: rawDisk(size, []string{"parted", "-s", "@", "mklabel", "msdos", "mkpart", "primary", "ext4", "1MiB", "100%"}), want: inspect.Raw,
			check: func(t testing.TB, r *inspect.Report) {
				pt := partTable(t, r)
				if pt == nil || pt.Scheme != "mbr" || len(pt.Partitions) != 1 || pt.DiskSignature == "" {
					t.Fatalf("partition table %+v", pt)
				}
				if p := pt.Partitions[0]; p.Type != "0x83" || p.Start != 1<<20 || p.Start+p.Size > size || p.Bootable {
					t.Errorf("partition %+v", p)
				}
			}},
		{name: "parted msdos two partitions bootable", qfmt: "raw", build: rawDisk(7<<20, []string{"parted", "-s", "@", "mklabel", "msdos",
			"mkpart", "primary", "fat32", "1MiB", "3MiB", "mkpart", "primary", "ext4", "3MiB", "100%", "set", "1", "boot", "on"}), want: inspect.Raw,
			check: func(t testing.TB, r *inspect.Report) {
				pt := partTable(t, r)
				if pt == nil || len(pt.Partitions) != 2 || !pt.Partitions[0].Bootable || pt.Partitions[1].Bootable || pt.Partitions[1].Start != 3<<20 {
					t.Errorf("partition table %+v", pt)
				}
			}},
		{name: "parted extended and logical", qfmt: "raw", build: rawDisk(7<<20, []string{"parted", "-s", "@", "mklabel", "msdos",
			"mkpart", "primary", "1MiB", "2MiB", "mkpart", "extended", "2MiB", "100%", "mkpart", "logical", "3MiB", "5MiB"}), want: inspect.Raw,
			check: func(t testing.TB, r *inspect.Report) {
				pt := partTable(t, r)
				if pt == nil || len(pt.Partitions) != 2 || pt.Partitions[1].TypeName != "W95 Extended (LBA)" {
					t.Errorf("partition table %+v", pt)
				}
			}},
		{name: "parted gpt", qfmt: "raw", build: rawDisk(size, []string{"parted", "-s", "@", "mklabel", "gpt", "mkpart", "root", "ext4", "1MiB", "100%"}), want: inspect.Raw,
			check: func(t testing.TB, r *inspect.Report) {
				if pt := partTable(t, r); pt == nil || pt.Scheme != "gpt" || len(pt.Partitions) != 1 || pt.Partitions[0].Name != "root" {
					t.Errorf("partition table %+v", pt)
				}
			}},
		{name: "mkfs.vfat", qfmt: "raw", build: func(t testing.TB) string { return fatImage(t, 8192) }, want: inspect.Raw, check: noTable},
		{name: "mkfs.vfat fat32", qfmt: "raw", build: rawDisk(size, []string{"mkfs.vfat", "-F", "32", "@"}), want: inspect.Raw, check: noTable},
		{name: "mkfs.vfat fat12 floppy media", qfmt: "raw", build: rawDisk(1440<<10, []string{"mkfs.vfat", "-M", "0xf0", "@"}), want: inspect.Raw, check: noTable},
		// oslo's _create_gpt stub (formats.md 4.1): a protective MBR entry with no GPT behind it.
		// UEFI finds no GPT and BIOS sees a zero-sized 0xEE partition: the table contradicts
		// itself, so it is reported (oslo calls it safe only because it never reads LBA 1).
		{name: "oslo gpt stub", qfmt: "raw", build: func(t testing.TB) string { return writeFile(t, "stub.raw", osloGPTStub()) },
			want: inspect.Raw, codes: []inspect.Code{inspect.CodeInvalidPartitionTable},
			check: func(t testing.TB, r *inspect.Report) {
				if pt := partTable(t, r); pt == nil || pt.Scheme != "mbr" || len(pt.Partitions) != 1 || pt.Partitions[0].Type != "0xee" {
					t.Errorf("partition table %+v", pt)
				}
			}},
	})
}

// osloGPTStub is oslo's _create_gpt: 5120 zero bytes, 0x55AA, one 0xEE entry from LBA 1 of size 0.
func osloGPTStub() []byte {
	b := make([]byte, 5120)
	copy(b[446:], []byte{0, 0, 2, 0, 0xee, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0})
	b[510], b[511] = 0x55, 0xaa
	return b
}

// guid encodes a GUID in GPT's mixed-endian layout.
func guid(s string) []byte {
	h, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(h) != 16 {
		panic("bad guid " + s)
	}
	b := make([]byte, 16)
	b[0], b[1], b[2], b[3] = h[3], h[2], h[1], h[0]
	b[4], b[5], b[6], b[7] = h[5], h[4], h[7], h[6]
	copy(b[8:], h[8:])
	return b
}

type gptPart struct {
	typ        string
	start, end uint64
	name       string
}

// gptDisk builds a valid GPT disk of n sectors of ss bytes: protective MBR, primary header and
// 128 entries at LBA 2, backup entries and header at the end.
func gptDisk(ss int, n uint64, parts ...gptPart) []byte {
	return gptDiskWith(ss, n, 128, 128, parts...)
}

// gptDiskWith is gptDisk with count entries of entSize bytes.
func gptDiskWith(ss int, n uint64, count, entSize int, parts ...gptPart) []byte {
	le := binary.LittleEndian
	img := make([]byte, uint64(ss)*n)
	copy(img[446:], []byte{0, 0, 2, 0, 0xee, 0xff, 0xff, 0xff})
	le.PutUint32(img[446+8:], 1)
	le.PutUint32(img[446+12:], uint32(min(n-1, 0xffffffff)))
	img[510], img[511] = 0x55, 0xaa
	ents := make([]byte, count*entSize)
	entSectors := uint64((len(ents) + ss - 1) / ss)
	for i, p := range parts {
		e := ents[i*entSize:]
		copy(e, guid(p.typ))
		copy(e[16:], guid("11111111-2222-3333-4444-55555555555"+string(rune('0'+i))))
		le.PutUint64(e[32:], p.start)
		le.PutUint64(e[40:], p.end)
		for j, c := range utf16.Encode([]rune(p.name)) {
			le.PutUint16(e[56+2*j:], c)
		}
	}
	first, last := 2+entSectors, n-2-entSectors
	header := func(my, alt, entLBA uint64) []byte {
		h := make([]byte, 92)
		copy(h, "EFI PART")
		le.PutUint32(h[8:], 0x00010000)
		le.PutUint32(h[12:], 92)
		le.PutUint64(h[24:], my)
		le.PutUint64(h[32:], alt)
		le.PutUint64(h[40:], first)
		le.PutUint64(h[48:], last)
		copy(h[56:], guid("DEADBEEF-0000-4000-8000-0123456789AB"))
		le.PutUint64(h[72:], entLBA)
		le.PutUint32(h[80:], uint32(count))
		le.PutUint32(h[84:], uint32(entSize))
		le.PutUint32(h[88:], crc32.ChecksumIEEE(ents))
		le.PutUint32(h[16:], crc32.ChecksumIEEE(h))
		return h
	}
	copy(img[ss:], header(1, n-1, 2))
	copy(img[2*ss:], ents)
	copy(img[(n-1-entSectors)*uint64(ss):], ents)
	copy(img[(n-1)*uint64(ss):], header(n-1, 1, n-1-entSectors))
	return img
}

// reCRC recomputes the CRC of the GPT header at off after a field was patched (when the header
// size is sane).
func reCRC(img []byte, off int) []byte {
	out := append([]byte(nil), img...)
	h := out[off:]
	hs := binary.LittleEndian.Uint32(h[12:])
	if hs < 92 || hs > 512 {
		return out
	}
	binary.LittleEndian.PutUint32(h[16:], 0)
	binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:hs]))
	return out
}

// mbrDisk builds a disk of n 512-byte sectors with the given 16-byte MBR entries.
func mbrDisk(n int, entries ...[]byte) []byte {
	img := make([]byte, 512*n)
	for i, e := range entries {
		copy(img[446+16*i:], e)
	}
	img[510], img[511] = 0x55, 0xaa
	return img
}

// mbrEntry builds one MBR entry.
func mbrEntry(boot, typ byte, start, size uint32) []byte {
	e := []byte{boot, 0, 0, 0, typ, 0, 0, 0}
	e = binary.LittleEndian.AppendUint32(e, start)
	return binary.LittleEndian.AppendUint32(e, size)
}

func TestPartitionsHostile(t *testing.T) {
	const n = 256 // sectors
	u32 := func(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
	u64 := func(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }
	good := gptDisk(512, n, gptPart{linuxFS, 34, 99, "one"}, gptPart{efiSys, 100, 221, "two"})
	backup := (n - 1) * 512
	// entriesCRC recomputes the entries CRC in both headers (and their CRCs).
	entriesCRC := func(img []byte) []byte {
		sum := crc32.ChecksumIEEE(img[1024 : 1024+128*128])
		img = patch(patch(img, 512+88, u32(sum)), backup+88, u32(sum))
		return reCRC(reCRC(img, 512), backup)
	}
	ent := func(i int) int { return 1024 + 128*i }
	far := gptDisk(512, 600, gptPart{linuxFS, 300, 400, "far"})
	far = patch(patch(far, 1024, make([]byte, 128*128)), 200*512, far[1024:1024+128*128])
	far = reCRC(patch(patch(far, 512+72, u64(200)), 512+40, u64(232)), 512)
	far = reCRC(patch(far, 599*512+40, u64(232)), 599*512)
	many := gptDisk(512, n)
	for i := range 128 {
		many = patch(many, ent(i), append(guid(linuxFS), make([]byte, 16)...))
		many = patch(many, ent(i)+32, append(u64(34), u64(40)...))
	}
	iso := isoImage(n*512, isoPVD(n/4, 2048), isoDesc(255, "CD001", 1))

	tests := []struct {
		name  string
		img   []byte
		codes []inspect.Code
		check func(t *testing.T, pt *inspect.PartitionTable)
	}{
		{"valid gpt", good, nil, func(t *testing.T, pt *inspect.PartitionTable) {
			if pt.Scheme != "gpt" || pt.DiskGUID != "DEADBEEF-0000-4000-8000-0123456789AB" || len(pt.Partitions) != 2 ||
				pt.Partitions[1].Name != "two" || pt.Partitions[1].Start != 100*512 || pt.Partitions[1].Size != 122*512 {
				t.Errorf("partition table %+v", pt)
			}
		}},
		{"valid gpt 4K sectors", gptDisk(4096, 64, gptPart{linuxFS, 6, 57, "big"}), nil, func(t *testing.T, pt *inspect.PartitionTable) {
			if pt.Scheme != "gpt" || pt.SectorSize != 4096 || len(pt.Partitions) != 1 || pt.Partitions[0].Start != 6*4096 {
				t.Errorf("partition table %+v", pt)
			}
		}},
		{"1024 entries of 1024 bytes", gptDiskWith(512, 8192, 1024, 1024, gptPart{linuxFS, 2050, 2100, "a"}, gptPart{efiSys, 2101, 6139, "b"}), nil, func(t *testing.T, pt *inspect.PartitionTable) {
			if len(pt.Partitions) != 2 || pt.Partitions[1].Name != "b" || pt.Partitions[1].Size != (6139-2101+1)*512 {
				t.Errorf("partition table %+v", pt)
			}
		}},
		{"4 entries of 1024 bytes", gptDiskWith(512, 64, 4, 1024, gptPart{linuxFS, 10, 50, "a"}), nil, nil},
		{"entries read far away", far, nil, func(t *testing.T, pt *inspect.PartitionTable) {
			if len(pt.Partitions) != 1 || pt.Partitions[0].Name != "far" {
				t.Errorf("partition table %+v", pt)
			}
		}},
		{"gpt without protective entry", patch(good, 446, make([]byte, 16)), nil, func(t *testing.T, pt *inspect.PartitionTable) {
			if pt.Scheme != "gpt" || !pt.Hybrid || len(pt.MBRPartitions) != 0 {
				t.Errorf("partition table %+v", pt)
			}
		}},
		{"hybrid mbr", patch(good, 446, append(mbrEntry(0, 0xee, 1, 33), mbrEntry(0x80, 0x83, 34, 66)...)), nil, func(t *testing.T, pt *inspect.PartitionTable) {
			if !pt.Hybrid || len(pt.MBRPartitions) != 2 || !pt.MBRPartitions[1].Bootable {
				t.Errorf("partition table %+v", pt)
			}
		}},
		{"boot sector without partitions", mbrDisk(8), nil, func(t *testing.T, pt *inspect.PartitionTable) {
			if pt.Scheme != "mbr" || len(pt.Partitions) != 0 {
				t.Errorf("partition table %+v", pt)
			}
		}},
		{"mbr two partitions", mbrDisk(n, mbrEntry(0x80, 0x83, 1, 100), mbrEntry(0, 0x82, 101, n-101)), nil, func(t *testing.T, pt *inspect.PartitionTable) {
			if len(pt.Partitions) != 2 || !pt.Partitions[0].Bootable || pt.Partitions[1].TypeName != "Linux swap" {
				t.Errorf("partition table %+v", pt)
			}
		}},
		{"mbr entries in slots 2 and 4", mbrDisk(n, nil, mbrEntry(0, 0x83, 1, 10), nil, mbrEntry(0, 0x83, 20, 10)), nil, func(t *testing.T, pt *inspect.PartitionTable) {
			if len(pt.Partitions) != 2 || pt.Partitions[0].Index != 2 || pt.Partitions[1].Index != 4 {
				t.Errorf("partition table %+v", pt)
			}
		}},
		{"hybrid mbr overlapping the protective entry", patch(good, 446+16, mbrEntry(0x80, 0x83, 34, 66)), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"bad boot flag", mbrDisk(n, mbrEntry(0x0a, 0x83, 1, 10)), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"bad boot flag on an empty entry", mbrDisk(n, nil, mbrEntry(0x01, 0, 0, 0)), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"bad boot flag on the protective entry", patch(good, 446, []byte{0x7f}), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"mbr partition past the end", mbrDisk(n, mbrEntry(0, 0x83, 1, n)), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"mbr partition at 2^32 sectors", mbrDisk(n, mbrEntry(0, 0x83, 0xffffffff, 0xffffffff)), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"mbr partitions overlap", mbrDisk(n, mbrEntry(0, 0x83, 1, 100), mbrEntry(0, 0x83, 100, 10)), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"mbr partition inside another on a disk", mbrDisk(n, mbrEntry(0, 0x83, 0, 100), mbrEntry(0, 0xef, 10, 10)), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"oslo gpt stub", osloGPTStub(), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"protective entry of 0xffffffff sectors", patch(good, 446+12, u32(0xffffffff)), nil, nil},
		{"protective entry past the end", patch(good, 446+12, u32(n)), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"bad header crc", patch(good, 512+16, u32(1)), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"bad entries crc", patch(good, ent(0)+40, u64(98)), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"bad revision", reCRC(patch(good, 512+8, u32(0x00020000)), 512), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"header size 2^31", reCRC(patch(good, 512+12, u32(1<<31)), 512), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"header size 91", patch(good, 512+12, u32(91)), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"entries count 2^31", reCRC(patch(good, 512+80, u32(1<<31)), 512), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"entries count 0xffffffff in both headers", reCRC(reCRC(patch(patch(good, 512+80, u32(0xffffffff)), backup+80, u32(0xffffffff)), 512), backup), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"entry size 100", reCRC(patch(good, 512+84, u32(100)), 512), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"entry size 2^31", reCRC(patch(good, 512+84, u32(1<<31)), 512), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"my lba not 1", reCRC(patch(good, 512+24, u64(7)), 512), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"entries at lba 0", reCRC(patch(good, 512+72, u64(0)), 512), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"entries at lba 2^60", reCRC(patch(good, 512+72, u64(1<<60)), 512), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"entries past the end", reCRC(patch(patch(good, 512+72, u64(4*n)), 512+40, u64(5*n)), 512), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"first usable after last usable", reCRC(patch(good, 512+40, u64(240)), 512), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"last usable past the end", reCRC(patch(good, 512+48, u64(1<<40)), 512), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"partition past the end", entriesCRC(patch(good, ent(1)+40, u64(1<<50))), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"partition ends before it starts", entriesCRC(patch(good, ent(1)+40, u64(50))), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"partition over the entries", entriesCRC(patch(good, ent(0)+32, u64(2))), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"partitions overlap", entriesCRC(patch(good, ent(1)+32, u64(99))), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"partition inside another on a disk", entriesCRC(patch(good, ent(1)+32, append(u64(50), u64(60)...))), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"128 overlapping partitions", entriesCRC(many), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"backup missing", patch(good, backup, make([]byte, 512)), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"backup corrupt", patch(good, backup+60, []byte{1}), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"backup header size 2^31", reCRC(patch(good, backup+12, u32(1<<31)), backup), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"backup points elsewhere", reCRC(patch(good, backup+32, u64(3)), backup), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"backup disagrees", reCRC(patch(good, backup+56, []byte{9}), backup), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"backup entries inside the usable area", reCRC(patch(good, backup+72, u64(100)), backup), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"disk grown after partitioning", append(good, make([]byte, 1<<20)...), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"disk truncated", good[:200*512], []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"disk cut inside the entries", good[:1500], []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"disk cut inside the header", good[:600], []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"sector 0 only", good[:512], []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
		{"hybrid iso nesting", patch(patch(iso, 446, append(mbrEntry(0x80, 0, 0, n), mbrEntry(0, 0xef, 10, 4)...)), 510, []byte{0x55, 0xaa}), nil, nil},
		{"hybrid iso partial overlap", patch(patch(iso, 446, append(mbrEntry(0x80, 0, 0, 20), mbrEntry(0, 0xef, 10, 40)...)), 510, []byte{0x55, 0xaa}), []inspect.Code{inspect.CodeInvalidPartitionTable}, nil},
	}
	// why: what the problem must say, for each unsafe case.
	why := map[string]string{
		"hybrid mbr overlapping the protective entry": "MBR partitions 1 (sectors 1-255) and 2 (sectors 34-99) overlap",
		"bad boot flag":                            "MBR entry 1 has boot flag 0x0a",
		"bad boot flag on an empty entry":          "MBR entry 2 has boot flag 0x01",
		"bad boot flag on the protective entry":    "MBR entry 1 has boot flag 0x7f",
		"mbr partition past the end":               "MBR partition 1 (sectors 1-256) ends past the end of the disk",
		"mbr partition at 2^32 sectors":            "ends past the end of the disk",
		"mbr partitions overlap":                   "MBR partitions 1 (sectors 1-100) and 2 (sectors 100-109) overlap",
		"mbr partition inside another on a disk":   "MBR partitions 1 (sectors 0-99) and 2 (sectors 10-19) overlap",
		"oslo gpt stub":                            "no GPT header at LBA 1",
		"protective entry past the end":            "MBR entry 1 (sectors 1-256) ends past the end of the disk",
		"bad header crc":                           "primary GPT header: CRC32 0x00000001",
		"bad entries crc":                          "GPT partition entries: CRC32",
		"bad revision":                             "revision 0x00020000",
		"header size 2^31":                         "header size 2147483648 out of range",
		"header size 91":                           "header size 91 out of range",
		"entries count 2^31":                       "2147483648 partition entries, more than 1024",
		"entries count 0xffffffff in both headers": "backup GPT header: 4294967295 partition entries",
		"entry size 100":                           "partition entry size 100",
		"entry size 2^31":                          "partition entry size 2147483648",
		"my lba not 1":                             "its own LBA is 7, not 1",
		"entries at lba 0":                         "partition entries at LBA 0",
		"entries at lba 2^60":                      "partition entries at LBA 1152921504606846976 lie past any disk",
		"entries past the end":                     "GPT partition entries at LBA 1024 lie past the end of the data",
		"first usable after last usable":           "first usable LBA 240 is after last usable LBA 222",
		"last usable past the end":                 "last usable LBA 1099511627776 is past the end of the disk",
		"partition past the end":                   "GPT partition 2 (LBA 100-1125899906842624) lies outside the usable LBAs 34-222",
		"partition ends before it starts":          "GPT partition 2 ends (LBA 50) before it starts (LBA 100)",
		"partition over the entries":               "GPT partition 1 (LBA 2-99) lies outside the usable LBAs",
		"partitions overlap":                       "GPT partitions 1 (LBA 34-99) and 2 (LBA 99-221) overlap",
		"partition inside another on a disk":       "GPT partitions 1 (LBA 34-99) and 2 (LBA 50-60) overlap",
		"128 overlapping partitions":               "further partition-table problems not listed",
		"backup missing":                           "no backup GPT header at the last LBA 255",
		"backup corrupt":                           "backup GPT header: CRC32",
		"backup header size 2^31":                  "backup GPT header: header size 2147483648",
		"backup points elsewhere":                  "the primary header is at LBA 3, not 1",
		"backup disagrees":                         "backup GPT header disagrees with the primary header",
		"backup entries inside the usable area":    "backup GPT header: partition entries (LBA 100, 32 sectors) are not between",
		"disk grown after partitioning":            "puts the backup header at LBA 255, but the last LBA is 2303",
		"disk truncated":                           "no backup GPT header at the last LBA 199",
		"disk cut inside the entries":              "GPT partition entries at LBA 2 lie past the end of the data",
		"disk cut inside the header":               "primary GPT header is cut short",
		"sector 0 only":                            "no GPT header at LBA 1",
		"hybrid iso partial overlap":               "MBR partitions 1 (sectors 0-19) and 2 (sectors 10-49) overlap",
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := inspectBytes(t, tt.img, inspect.Options{})
			wantCodes(t, r, tt.codes...)
			if w := why[tt.name]; (w == "") != (len(tt.codes) == 0) || (w != "" && !hasDetail(r, w)) {
				t.Errorf("problems %v, want one saying %q", r.Problems, w)
			}
			var pt *inspect.PartitionTable
			switch d := r.Details.(type) {
			case *inspect.RawDetails:
				pt = d.PartitionTable
			case *inspect.ISODetails:
				pt = d.PartitionTable
			}
			if pt == nil {
				t.Fatalf("no partition table in %s", r.Format)
			}
			if len(r.Problems) > 17 {
				t.Errorf("%d problems, want them capped", len(r.Problems))
			}
			if tt.check != nil {
				tt.check(t, pt)
			}
		})
	}
}

// hasDetail reports whether a problem of r says s.
func hasDetail(r *inspect.Report, s string) bool {
	for _, p := range r.Problems {
		if strings.Contains(p.Detail, s) {
			return true
		}
	}
	return false
}

// TestNotPartitionTables: sectors that end in 0x55AA without being an MBR, and short data.
func TestNotPartitionTables(t *testing.T) {
	sector := func(mods ...func(b []byte)) []byte {
		b := mbrDisk(8, mbrEntry(0x12, 0x34, 5, 6)) // boot flag garbage: would be invalid
		for _, m := range mods {
			m(b)
		}
		return b
	}
	fatBPB := func(b []byte) {
		copy(b, []byte{0xeb, 0x3c, 0x90})
		copy(b[3:], "MSWIN4.1")
		binary.LittleEndian.PutUint16(b[11:], 512)
		b[13], b[14], b[16], b[21] = 8, 1, 1, 0xf0
	}
	for _, tt := range []struct {
		name string
		img  []byte
	}{
		{"fat vbr (oslo rule)", sector(func(b []byte) { b[0x10], b[0x15] = 2, 0xf8 })},
		{"fat bpb", sector(fatBPB)},
		{"fat bpb e9 jump", sector(fatBPB, func(b []byte) { b[0] = 0xe9 })},
		{"ntfs", sector(func(b []byte) { copy(b[3:], "NTFS    ") })},
		{"exfat", sector(func(b []byte) { copy(b[3:], "EXFAT   ") })},
		{"no signature", sector(func(b []byte) { b[511] = 0 })},
		{"511 bytes", sector()[:511]},
		{"empty", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := inspectBytes(t, tt.img, inspect.Options{})
			if r.Format != inspect.Raw || !r.Safe() {
				t.Fatalf("format %s, problems %v", r.Format, r.Problems)
			}
			if pt := partTable(t, r); pt != nil {
				t.Errorf("partition table %+v", pt)
			}
		})
	}
	// And a FAT-looking BPB that is not sane is an MBR (here with a bad boot flag).
	bad := sector(fatBPB, func(b []byte) { b[16] = 9 })
	if r := inspectBytes(t, bad, inspect.Options{}); !r.Has(inspect.CodeInvalidPartitionTable) {
		t.Errorf("insane BPB: problems %v", r.Problems)
	}
}

// TestPartitionsBytesRead: a GPT disk costs its first sectors, the entries and the tail.
func TestPartitionsBytesRead(t *testing.T) {
	p := rawDisk(129<<20+512, []string{"sgdisk", "-o", "-n", "1:2048:0", "@"})(t)
	r, n := inspectFile(t, p, inspect.Options{})
	if pt := partTable(t, r); pt == nil || !r.Safe() {
		t.Fatalf("partition table %+v, problems %v", pt, r.Problems)
	}
	if n > 64<<10+8<<10 {
		t.Errorf("read %d bytes", n)
	}
}
