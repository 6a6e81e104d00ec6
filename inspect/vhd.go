package inspect

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// VHDDetails are the facts of a VHD footer (qemu's vpc format) and, for dynamic and
// differencing disks, of the dynamic disk header.
type VHDDetails struct {
	// DiskType is "fixed", "dynamic", "differencing", or "unknown(N)".
	DiskType string `json:"disk_type"`
	// CreatorApp is the four-byte creator application ("qemu", "qem2", "win ", "vpc ", …).
	CreatorApp   string `json:"creator_app"`
	OriginalSize uint64 `json:"original_size"`
	CurrentSize  uint64 `json:"current_size"`
	// Cylinders, Heads and SectorsPerTrack are the CHS geometry of the footer.
	Cylinders       uint16 `json:"cylinders"`
	Heads           uint8  `json:"heads"`
	SectorsPerTrack uint8  `json:"sectors_per_track"`
	// SizeFrom says which footer field the virtual size comes from, as qemu chooses it:
	// "geometry" or "current_size".
	SizeFrom string `json:"size_from"`
	// BlockSize is the block size of a dynamic or differencing disk; 0 for a fixed disk.
	BlockSize uint32 `json:"block_size,omitempty"`
	// ParentName is a differencing disk's parent, for reporting only: it is never opened.
	ParentName string `json:"parent_name,omitempty"`
}

const (
	vhdFooterMagic = "conectix"
	vhdDynMagic    = "cxsparse"
	vhdFooterSize  = 512
	vhdDynSize     = 1024

	vhdFixed        = 2
	vhdDynamic      = 3
	vhdDifferencing = 4

	// qemu refuses disks above 2040 GiB, and sizes the disk from the current size field when the
	// geometry is the largest CHS can say.
	vhdMaxSectors  = 0xff000000
	vhdMaxGeometry = 65535 * 16 * 255
	vhdNoBAT       = 0xffffffff
	vhdMaxBATRead  = maxRead // larger BATs are bounds-checked but not read
)

// Where problems go (a VHD has a footer and no header, so the codes follow what is wrong rather
// than which structure holds it):
//   - a footer checksum that does not match, at either copy: CodeInvalidFooter;
//   - a dynamic disk whose footer copy at offset 0 and footer at the end disagree, or whose
//     footer at the end is missing: CodeInvalidFooter;
//   - a disk type that is unknown or not valid where the footer was found, a bad dynamic disk
//     header, a size qemu refuses: CodeInvalidHeader;
//   - a BAT, an allocated block or a fixed disk's data past the end of the file: CodeTruncated.

// probeVHD recognises a VHD by its footer: "conectix" at offset 0 (the copy dynamic and
// differencing disks keep there) or in the last 512 bytes (a fixed disk has only that one).
func probeVHD(s *src) (*finding, error) {
	h, err := s.at(0, vhdFooterSize)
	if err != nil && !isTruncated(err) {
		return nil, err
	}
	atHead := len(h) >= len(vhdFooterMagic) && string(h[:len(vhdFooterMagic)]) == vhdFooterMagic
	if !atHead {
		t, _, terr := s.tail(vhdFooterSize)
		if terr != nil || len(t) < vhdFooterSize || string(t[:len(vhdFooterMagic)]) != vhdFooterMagic {
			return nil, terr
		}
		h, err = t, nil
	}
	d := &VHDDetails{}
	f := newFinding(VHD, d)
	if len(h) < vhdFooterSize {
		return f, err
	}

	be := binary.BigEndian
	dataOff := be.Uint64(h[16:])
	d.CreatorApp = printable(h[28:32])
	d.OriginalSize = be.Uint64(h[40:])
	d.CurrentSize = be.Uint64(h[48:])
	d.Cylinders = be.Uint16(h[56:])
	d.Heads = h[58]
	d.SectorsPerTrack = h[59]
	diskType := be.Uint32(h[60:])
	d.DiskType = vhdTypeName(diskType)

	where := "at offset 0"
	if !atHead {
		where = "at the end of the file"
	}
	if sum, want := vhdChecksum(h[:vhdFooterSize], 64), be.Uint32(h[64:]); sum != want {
		f.add(CodeInvalidFooter, "footer %s has checksum %#08x, its content sums to %#08x", where, want, sum)
	}

	sectors, from := vhdSectors(h)
	d.SizeFrom = from
	if sectors > vhdMaxSectors {
		f.add(CodeInvalidHeader, "virtual size of %d sectors exceeds the %d qemu allows", sectors, uint64(vhdMaxSectors))
	} else {
		f.vsize = int64(sectors) * 512
	}

	switch {
	case diskType != vhdFixed && diskType != vhdDynamic && diskType != vhdDifferencing:
		f.add(CodeInvalidHeader, "unknown disk type %d", diskType)
	case atHead && diskType == vhdFixed:
		f.add(CodeInvalidHeader, "footer at offset 0 says fixed disk: a fixed disk keeps its footer only at the end, and qemu reads a footer at offset 0 as a dynamic disk's")
	case !atHead && diskType != vhdFixed:
		f.add(CodeInvalidHeader, "%s disk without the footer copy at offset 0 (qemu refuses it)", d.DiskType)
	}

	var bat vhdBAT
	if atHead && (diskType == vhdDynamic || diskType == vhdDifferencing) {
		bat, err = vhdDynamicHeader(s, f, d, dataOff, sectors, diskType == vhdDifferencing)
	}
	if diskType == vhdDifferencing {
		parent := d.ParentName
		if parent == "" {
			parent = "(unnamed)"
		}
		f.add(CodeBackingFile, "differencing disk with parent %s", parent)
	}
	if err != nil {
		return f, err
	}

	// Everything below needs the size of the data: no more reads past the head but the tail.
	size, err := s.size()
	if err != nil {
		return f, err
	}
	if !atHead {
		if diskType == vhdFixed && sectors <= vhdMaxSectors && sectors*512 > uint64(size-vhdFooterSize) {
			f.add(CodeTruncated, "fixed disk of %d bytes has only %d bytes of data before its footer", sectors*512, size-vhdFooterSize)
		}
		return f, nil
	}
	if bat.ok && bat.end > uint64(size) {
		f.add(CodeTruncated, "the BAT, or a block it allocates, ends at %d, past the end of the data at %d", bat.end, size)
	}
	t, _, err := s.tail(vhdFooterSize)
	if err != nil {
		return f, err
	}
	if len(t) == vhdFooterSize && string(t[1:1+len(vhdFooterMagic)]) == vhdFooterMagic {
		t = t[1:] // a 511-byte footer, as Virtual PC wrote them before 2004
	}
	switch {
	case diskType == vhdFixed:
		// Already reported; a lone 512-byte footer is its own tail.
	case len(t) < vhdFooterSize-1 || string(t[:len(vhdFooterMagic)]) != vhdFooterMagic:
		f.add(CodeInvalidFooter, "no footer at the end of the file (the copy at offset 0 is the only one)")
	case !vhdSameFooter(h, t):
		f.add(CodeInvalidFooter, "the footer at the end of the file differs from its copy at offset 0")
	case vhdChecksum(t, 64) != be.Uint32(t[64:]):
		f.add(CodeInvalidFooter, "footer at the end of the file has a bad checksum")
	}
	return f, nil
}

// vhdBAT is where a dynamic disk's allocation table and the blocks it allocates end.
type vhdBAT struct {
	ok  bool
	end uint64 // the end of the BAT (rounded up to a sector) or of the last allocated block
}

// vhdDynamicHeader reads and checks the dynamic disk header at off and, when it is small enough,
// the BAT. It returns an error only when the probe must stop.
func vhdDynamicHeader(s *src, f *finding, d *VHDDetails, off, sectors uint64, differencing bool) (vhdBAT, error) {
	if off > 1<<62 {
		f.add(CodeInvalidHeader, "dynamic disk header offset %#x out of range", off)
		return vhdBAT{}, nil
	}
	dh, err := s.at(int64(off), vhdDynSize)
	if err != nil {
		return vhdBAT{}, err
	}
	if string(dh[:len(vhdDynMagic)]) != vhdDynMagic {
		f.add(CodeInvalidHeader, "no dynamic disk header (%q) at offset %d", vhdDynMagic, off)
		return vhdBAT{}, nil
	}
	be := binary.BigEndian
	if sum, want := vhdChecksum(dh, 36), be.Uint32(dh[36:]); sum != want {
		f.add(CodeInvalidHeader, "dynamic disk header has checksum %#08x, its content sums to %#08x", want, sum)
	}
	batOff := be.Uint64(dh[16:])
	entries := uint64(be.Uint32(dh[28:]))
	bs := be.Uint32(dh[32:])
	if differencing {
		d.ParentName = utf16Name(dh[64:576], binary.BigEndian)
	}

	valid := true
	if bs < 512 || bs&(bs-1) != 0 {
		f.add(CodeInvalidHeader, "block size %d is not a power of two of at least 512", bs)
		valid = false
	} else {
		d.BlockSize = bs
		switch {
		case sectors*512/uint64(bs) > 0xffffffff:
			f.add(CodeInvalidHeader, "disk of %d sectors needs too many blocks of %d bytes", sectors, bs)
		case entries*uint64(bs) < sectors*512:
			f.add(CodeInvalidHeader, "BAT of %d entries of %d bytes cannot map a disk of %d bytes", entries, bs, sectors*512)
		}
	}
	if entries > 0x7fffffff/4 {
		f.add(CodeInvalidHeader, "BAT of %d entries is too large", entries)
		valid = false
	}
	batLen := entries * 4
	switch {
	case batOff > 1<<62:
		f.add(CodeInvalidHeader, "BAT offset %#x out of range", batOff)
		valid = false
	case entries > 0 && (batOff < vhdFooterSize || batOff < off+vhdDynSize && batOff+batLen > off):
		f.add(CodeInvalidHeader, "BAT at %d (%d bytes) overlaps the footer copy or the dynamic disk header", batOff, batLen)
		valid = false
	}
	if !valid {
		return vhdBAT{}, nil
	}

	bat := vhdBAT{ok: true, end: (batOff + batLen + 511) &^ 511}
	if batLen == 0 || batLen > vhdMaxBATRead {
		return bat, nil
	}
	// Like qemu, check that every allocated block lies inside the file when the BAT is small
	// enough to read; a larger one is only checked for its bounds.
	b, err := s.at(int64(batOff), int(batLen))
	switch {
	case err == nil:
	case isTruncated(err):
		return bat, nil // the bounds check reports it
	case errors.Is(err, errBehind):
		f.add(CodeInvalidHeader, "BAT at %d lies before the dynamic disk header at %d", batOff, off)
		return bat, nil
	default:
		return bat, err
	}
	bitmap := (uint64(bs)/(8*512) + 511) &^ 511
	for i := 0; i+4 <= len(b); i += 4 {
		if e := be.Uint32(b[i:]); e != vhdNoBAT {
			bat.end = max(bat.end, uint64(e)*512+bitmap+uint64(bs))
		}
	}
	return bat, nil
}

// vhdSectors is the virtual size in sectors as qemu 7.2 computes it, and where it comes from:
// the CHS geometry, except for the creator applications that size the disk by the current size
// field (Hyper-V, qemu with force_size, Disk2vhd, XenConverter, XenServer), and for a disk whose
// geometry is the maximum.
func vhdSectors(h []byte) (uint64, string) {
	chs := uint64(binary.BigEndian.Uint16(h[56:])) * uint64(h[58]) * uint64(h[59])
	switch string(h[28:32]) {
	case "win ", "qem2", "d2v ", "CTXS", "tap\x00":
	default:
		if chs != vhdMaxGeometry {
			return chs, "geometry"
		}
	}
	return binary.BigEndian.Uint64(h[48:]) / 512, "current_size"
}

// vhdChecksum is the one's complement of the byte sum of b, leaving out the four-byte checksum
// field at field.
func vhdChecksum(b []byte, field int) uint32 {
	var sum uint32
	for i, c := range b {
		if i < field || i >= field+4 {
			sum += uint32(c)
		}
	}
	return ^sum
}

// vhdSameFooter reports whether two footers agree on everything but the timestamp, the
// checksum and the saved-state flag.
func vhdSameFooter(a, b []byte) bool {
	return bytes.Equal(a[:24], b[:24]) && bytes.Equal(a[28:64], b[28:64]) && bytes.Equal(a[68:84], b[68:84])
}

func vhdTypeName(t uint32) string {
	switch t {
	case vhdFixed:
		return "fixed"
	case vhdDynamic:
		return "dynamic"
	case vhdDifferencing:
		return "differencing"
	}
	return fmt.Sprintf("unknown(%d)", t)
}
