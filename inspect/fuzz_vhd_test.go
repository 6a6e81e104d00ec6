package inspect

import (
	"encoding/binary"
	"testing"
	"unicode/utf16"
)

// This file holds the VHD and VHDX fuzz targets and the hand-made images they (and the tests in
// vhd_test.go and vhdx_test.go, through these exported test-only names) start from.

func FuzzVHD(f *testing.F) {
	dynamic := VHDImage(VHDSpec{Type: 3, Size: 5 << 20})
	fixed := VHDImage(VHDSpec{Type: 2, Size: 64 << 10, Creator: "qem2"})
	diff := VHDImage(VHDSpec{Type: 4, Size: 5 << 20, Parent: "../base.vhd"})
	fuzzProbe(f, "vhd", [][]byte{dynamic, fixed, diff, dynamic[:1024]},
		[]string{"-f", "vpc", "1G"},
		[]string{"-f", "vpc", "-o", "force_size=on", "129M"},
		[]string{"-f", "vpc", "-o", "subformat=fixed", "48K"},
	)
}

func FuzzVHDX(f *testing.F) {
	withParent := MinimalVHDX()
	binary.LittleEndian.PutUint32(withParent[VHDXItemsOff+4:], 2) // has parent, no locator
	fuzzProbe(f, "vhdx", [][]byte{MinimalVHDX(), withParent, MinimalVHDX()[:300<<10], compactVHDX()},
		[]string{"-f", "vhdx", "1G"},
	)
}

// VHDSpec describes a VHD for VHDImage.
type VHDSpec struct {
	Type    uint32 // 2 fixed, 3 dynamic, 4 differencing
	Creator string // four bytes; "qemu" when empty
	Size    uint64 // the current size; the geometry is derived from it as the VHD spec says
	Parent  string // a differencing disk's parent name
}

// VHDImage builds a VHD: for a fixed disk, Size zero bytes and the footer; otherwise the footer
// copy, the dynamic disk header at 512, a BAT of unallocated 2 MiB blocks at 1536, and the
// footer.
func VHDImage(spec VHDSpec) []byte {
	creator := spec.Creator
	if creator == "" {
		creator = "qemu"
	}
	be := binary.BigEndian
	ftr := make([]byte, 512)
	copy(ftr, "conectix")
	be.PutUint32(ftr[8:], 2)
	be.PutUint32(ftr[12:], 0x00010000)
	be.PutUint64(ftr[16:], ^uint64(0))
	copy(ftr[28:32], creator)
	be.PutUint32(ftr[32:], 0x00050003)
	copy(ftr[36:], "Wi2k")
	be.PutUint64(ftr[40:], spec.Size)
	be.PutUint64(ftr[48:], spec.Size)
	c, h, s := vhdGeometry(spec.Size / 512)
	be.PutUint16(ftr[56:], c)
	ftr[58], ftr[59] = h, s
	be.PutUint32(ftr[60:], spec.Type)
	copy(ftr[68:84], "unique-id-123456")
	if spec.Type == 2 {
		be.PutUint32(ftr[64:], vhdChecksum(ftr, 64))
		return append(make([]byte, spec.Size), ftr...)
	}
	be.PutUint64(ftr[16:], 512)
	be.PutUint32(ftr[64:], vhdChecksum(ftr, 64))

	const block = 2 << 20
	entries := (spec.Size + block - 1) / block
	dyn := make([]byte, 1024)
	copy(dyn, "cxsparse")
	be.PutUint64(dyn[8:], ^uint64(0))
	be.PutUint64(dyn[16:], 1536)
	be.PutUint32(dyn[24:], 0x00010000)
	be.PutUint32(dyn[28:], uint32(entries))
	be.PutUint32(dyn[32:], block)
	for i, u := range utf16.Encode([]rune(spec.Parent)) {
		if 64+2*i+2 <= 576 {
			be.PutUint16(dyn[64+2*i:], u)
		}
	}
	be.PutUint32(dyn[36:], vhdChecksum(dyn, 36))
	bat := make([]byte, (entries*4+511)&^511)
	for i := range bat {
		bat[i] = 0xff
	}
	img := append(append(append([]byte(nil), ftr...), dyn...), bat...)
	return append(img, ftr...)
}

// vhdGeometry is the CHS geometry the VHD specification derives from a size in sectors.
func vhdGeometry(sectors uint64) (uint16, uint8, uint8) {
	sectors = min(sectors, vhdMaxGeometry)
	var spt, heads, cth uint64
	if sectors >= 65535*16*63 {
		spt, heads = 255, 16
		cth = sectors / spt
	} else {
		spt = 17
		cth = sectors / spt
		heads = max((cth+1023)/1024, 4)
		if cth >= heads*1024 || heads > 16 {
			spt, heads = 31, 16
			cth = sectors / spt
		}
		if cth >= heads*1024 {
			spt, heads = 63, 16
			cth = sectors / spt
		}
	}
	return uint16(cth / heads), uint8(heads), uint8(spt)
}

// The layout of MinimalVHDX: the header section (identifier, two headers, two region tables),
// then the metadata region at 1 MiB (the table, and the items 64 KiB in), then the BAT region.
const (
	VHDXMetaOff  = 1 << 20
	VHDXMetaLen  = 68 << 10
	VHDXItemsOff = VHDXMetaOff + 64<<10 // file parameters; then size, page 83, sector sizes
	VHDXBATOff   = VHDXMetaOff + VHDXMetaLen
	VHDXBATLen   = 4 << 10
	VHDXSize     = 64 << 20 // the virtual disk size
)

// MinimalVHDX builds a valid dynamic VHDX of VHDXSize bytes with 1 MiB blocks in 1.07 MiB,
// with an empty log, and nothing allocated.
func MinimalVHDX() []byte {
	le := binary.LittleEndian
	img := make([]byte, VHDXBATOff+VHDXBATLen)
	copy(img, "vhdxfile")
	for i, u := range utf16.Encode([]rune("glance-sidecar test")) {
		le.PutUint16(img[8+2*i:], u)
	}
	for i, off := range []int{64 << 10, 128 << 10} {
		h := img[off:]
		copy(h, "head")
		le.PutUint64(h[8:], uint64(10+i))
		copy(h[16:32], "file-write-guid!")
		copy(h[32:48], "data-write-guid!")
		le.PutUint16(h[66:], 1)
		le.PutUint64(h[72:], 1<<20) // log offset; the log is empty
	}
	for _, off := range []int{192 << 10, 256 << 10} {
		rt := img[off:]
		copy(rt, "regi")
		le.PutUint32(rt[8:], 2)
		copy(rt[16:32], vhdxBATRegion[:])
		le.PutUint64(rt[32:], VHDXBATOff)
		le.PutUint32(rt[40:], VHDXBATLen)
		le.PutUint32(rt[44:], 1)
		copy(rt[48:64], vhdxMetadataRegion[:])
		le.PutUint64(rt[64:], VHDXMetaOff)
		le.PutUint32(rt[72:], VHDXMetaLen)
		le.PutUint32(rt[76:], 1)
	}
	mt := img[VHDXMetaOff:]
	copy(mt, "metadata")
	items := []struct {
		id    [16]byte
		off   int
		size  uint32
		flags uint32
	}{
		{vhdxItems[itemFileParameters].id, 0, 8, 4},
		{vhdxItems[itemVirtualSize].id, 8, 8, 6},
		{vhdxItems[itemPage83].id, 16, 16, 6},
		{vhdxItems[itemLogicalSector].id, 32, 4, 6},
		{vhdxItems[itemPhysicalSector].id, 36, 4, 6},
	}
	le.PutUint16(mt[10:], uint16(len(items)))
	for i, it := range items {
		e := mt[32+32*i:]
		copy(e, it.id[:])
		le.PutUint32(e[16:], uint32(64<<10+it.off))
		le.PutUint32(e[20:], it.size)
		le.PutUint32(e[24:], it.flags)
	}
	data := img[VHDXItemsOff:]
	le.PutUint32(data[0:], 1<<20) // block size; dynamic, no parent
	le.PutUint64(data[8:], VHDXSize)
	copy(data[16:32], "page-83-data-id!")
	le.PutUint32(data[32:], 512)
	le.PutUint32(data[36:], 4096)
	FixVHDXChecksums(img)
	return img
}

// compactVHDX is MinimalVHDX with its metadata and BAT regions moved from 1 MiB to 256 KiB, the
// first offset past the region table, so that the fuzzer mutates a third of the bytes. The regions
// then overlap the header section, which the probe reports.
func compactVHDX() []byte {
	const to = 256 << 10
	img := MinimalVHDX()
	copy(img[to:], img[VHDXMetaOff:])
	img = img[:to+VHDXMetaLen+VHDXBATLen]
	binary.LittleEndian.PutUint64(img[192<<10+32:], to+VHDXMetaLen)
	binary.LittleEndian.PutUint64(img[192<<10+64:], to)
	FixVHDXChecksums(img)
	return img
}

// FixVHDXChecksums recomputes the CRC-32C of both headers and both region tables.
func FixVHDXChecksums(img []byte) {
	for _, r := range [][2]int{{64 << 10, 4 << 10}, {128 << 10, 4 << 10}, {192 << 10, 64 << 10}, {256 << 10, 64 << 10}} {
		if len(img) >= r[0]+r[1] {
			b := img[r[0] : r[0]+r[1]]
			binary.LittleEndian.PutUint32(b[4:], vhdxCRC(b))
		}
	}
}

// VHDChecksum recomputes the checksum of a VHD footer (field 64) or dynamic disk header (field
// 36) in place.
func VHDChecksum(b []byte, field int) {
	binary.BigEndian.PutUint32(b[field:], vhdChecksum(b, field))
}

// VHDXGUID returns the stored form of a GUID written as text.
func VHDXGUID(text string) [16]byte { return guid(text) }
