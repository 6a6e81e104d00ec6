package inspect

import (
	"encoding/binary"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// toolSeed runs a command in a fresh directory holding a small tree ("tree") and a 2 KiB boot
// image ("tree/boot.img"); "@" in args is the output file. It returns the output's bytes, or
// its head and tail when it is larger than maxSeed.
func toolSeed(f *testing.F, name string, args ...string) []byte {
	f.Helper()
	dir := f.TempDir()
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(tree, 0o755); err != nil {
		f.Fatal(err)
	}
	for file, size := range map[string]int{"hello.txt": 6, "boot.img": 2048} {
		if err := os.WriteFile(filepath.Join(tree, file), make([]byte, size), 0o644); err != nil {
			f.Fatal(err)
		}
	}
	mbr := make([]byte, 512)
	copy(mbr, "\x33\xed\xfa\x8e\xd5\xbc\x00\x7c")
	if err := os.WriteFile(filepath.Join(dir, "mbr.bin"), mbr, 0o644); err != nil {
		f.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	a := make([]string, len(args))
	for i, s := range args {
		a[i] = strings.ReplaceAll(s, "@", out)
	}
	cmd := exec.Command(name, a...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if b, err := cmd.CombinedOutput(); err != nil {
		f.Fatalf("%s %v: %v\n%s", name, a, err, b)
	}
	return seedBytes(f, out)
}

// fuzzISOImage lays 2048-byte descriptors from sector 16, each given as type and identifier,
// with a primary descriptor of blocks 2048-byte blocks for type 1, and pads the image to the
// volume size (at most 64 KiB).
func fuzzISOImage(blocks uint32, descs ...string) []byte {
	img := make([]byte, 32768, 32768+len(descs)*2048)
	for _, d := range descs {
		b := make([]byte, 2048)
		b[0] = d[0]
		copy(b[1:], d[1:])
		b[6] = 1
		switch {
		case d == "\x01CD001":
			copy(b[40:], "FUZZ")
			binary.LittleEndian.PutUint32(b[80:], blocks)
			binary.BigEndian.PutUint32(b[84:], blocks)
			binary.LittleEndian.PutUint16(b[128:], 2048)
			binary.BigEndian.PutUint16(b[130:], 2048)
		case d == "\x00CD001":
			copy(b[7:], "EL TORITO SPECIFICATION")
		case d == "\x02CD001":
			copy(b[88:], "%/E")
		}
		img = append(img, b...)
	}
	if size := int(min(blocks, 32)) * 2048; len(img) < size {
		img = append(img, make([]byte, size-len(img))...)
	}
	return img
}

func FuzzISO(f *testing.F) {
	for _, s := range [][]byte{
		fuzzISOImage(19, "\x01CD001", "\xffCD001"),
		fuzzISOImage(24, "\x01CD001", "\x00CD001", "\x02CD001", "\xffCD001", "\x00BEA01", "\x00NSR02", "\x00TEA01"),
		fuzzISOImage(0, "\x00BEA01", "\x00NSR03", "\x00TEA01"),
		fuzzISOImage(9999, "\x01CD001"),
		fuzzISOImage(0, "\x00NSR02")[:32775],
	} {
		f.Add(s)
	}
	f.Add(toolSeed(f, "genisoimage", "-quiet", "-V", "TEST", "-o", "@", "tree"))
	f.Add(toolSeed(f, "genisoimage", "-quiet", "-udf", "-J", "-V", "TEST", "-o", "@", "tree"))
	f.Add(toolSeed(f, "genisoimage", "-quiet", "-b", "boot.img", "-no-emul-boot", "-o", "@", "tree"))
	f.Add(toolSeed(f, "xorriso", "-as", "mkisofs", "-quiet", "--protective-msdos-label", "-o", "@", "tree"))
	fuzzProbe(f, "iso", nil)
}

// fuzzGPTDisk builds a small valid GPT disk of n sectors of ss bytes with count entries and one
// partition filling the usable area.
func fuzzGPTDisk(ss int, n uint64, count uint32) []byte {
	le := binary.LittleEndian
	img := make([]byte, uint64(ss)*n)
	copy(img[446:], []byte{0, 0, 2, 0, 0xee, 0xff, 0xff, 0xff, 1, 0, 0, 0})
	le.PutUint32(img[446+12:], uint32(n-1))
	img[510], img[511] = 0x55, 0xaa
	ents := make([]byte, int(count)*128)
	entSectors := (uint64(len(ents)) + uint64(ss) - 1) / uint64(ss)
	first, last := 2+entSectors, n-2-entSectors
	copy(ents, "\xaf\x3d\xc6\x0f\x83\x84\x72\x47\x8e\x79\x3d\x69\xd8\x47\x7d\xe4")
	ents[16] = 1
	le.PutUint64(ents[32:], first)
	le.PutUint64(ents[40:], last)
	copy(ents[56:], "r\x00o\x00o\x00t\x00")
	header := func(my, alt, entLBA uint64) []byte {
		h := make([]byte, 92)
		copy(h, "EFI PART")
		le.PutUint32(h[8:], 0x00010000)
		le.PutUint32(h[12:], 92)
		le.PutUint64(h[24:], my)
		le.PutUint64(h[32:], alt)
		le.PutUint64(h[40:], first)
		le.PutUint64(h[48:], last)
		h[56] = 0xdd
		le.PutUint64(h[72:], entLBA)
		le.PutUint32(h[80:], count)
		le.PutUint32(h[84:], 128)
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

func FuzzPartitions(f *testing.F) {
	mbr := make([]byte, 4096)
	copy(mbr[446:], []byte{0x80, 0, 0, 0, 0x83, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0})
	copy(mbr[462:], []byte{0, 0, 0, 0, 0x82, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0})
	mbr[510], mbr[511] = 0x55, 0xaa
	hybrid := fuzzGPTDisk(512, 64, 16)
	copy(hybrid[446+12:], []byte{5, 0, 0, 0})
	copy(hybrid[462:], []byte{0x80, 0, 0, 0, 0x83, 0, 0, 0, 6, 0, 0, 0, 20, 0, 0, 0})
	for _, s := range [][]byte{
		mbr,
		fuzzGPTDisk(512, 64, 16),
		fuzzGPTDisk(512, 100, 128),
		fuzzGPTDisk(4096, 12, 4),
		hybrid,
	} {
		f.Add(s)
	}
	f.Add(toolSeed(f, "sh", "-c", "truncate -s 64K @ && sgdisk -o -n 1:40:+8 -n 2:0:0 -h 2 @ >/dev/null"))
	f.Add(toolSeed(f, "xorriso", "-as", "mkisofs", "-quiet", "-isohybrid-mbr", "mbr.bin", "-b", "boot.img", "-no-emul-boot",
		"-eltorito-alt-boot", "-e", "boot.img", "-no-emul-boot", "-isohybrid-gpt-basdat", "-o", "@", "tree"))
	fuzzProbe(f, "partitions", nil)
}
