package inspect

import (
	"encoding/binary"
	"errors"
)

// PloopDetails are the facts of a Parallels (ploop) image header.
type PloopDetails struct {
	// Signature is "WithoutFreeSpace" (32-bit sizes) or "WithouFreSpacExt" (64-bit sizes).
	Signature string `json:"signature"`
	// Version is the header version; qemu supports only 2.
	Version uint32 `json:"version"`
	// ClusterSize is the cluster size in bytes (sectors per track × 512).
	ClusterSize int64 `json:"cluster_size"`
	// BATEntries is the number of entries of the block allocation table.
	BATEntries uint32 `json:"bat_entries"`
	// DataOffset is where the data clusters start, in bytes (0: right after the table).
	DataOffset int64 `json:"data_offset"`
	// Dirty is set when the image was not closed cleanly.
	Dirty bool `json:"dirty,omitempty"`
	// ExtensionOffset is where the format extension (dirty bitmaps) lies, in bytes.
	ExtensionOffset int64 `json:"extension_offset,omitempty"`
}

const (
	ploopSig        = "WithoutFreeSpace"
	ploopSigExt     = "WithouFreSpacExt"
	ploopHeaderLen  = 64
	ploopVersion    = 2
	ploopInUse      = 0x746f6e59
	ploopMaxTracks  = (1<<31 - 1) / 513 // qemu: "Too big cluster"
	ploopMaxBAT     = (1<<31 - 1) / 4   // qemu: "Catalog too large"
	ploopMaxSectors = 1 << 53           // qemu cannot size a larger disk
	ploopExtMagic   = 0xab234cef23dcea87
)

// probePloop recognises a Parallels image and checks its header as qemu's block/parallels.c
// does, plus where the table and the data lie.
func probePloop(s *src) (*finding, error) {
	h, err := s.at(0, ploopHeaderLen)
	if err != nil && !isTruncated(err) {
		return nil, err
	}
	if len(h) < 16 || (string(h[:16]) != ploopSig && string(h[:16]) != ploopSigExt) {
		return nil, nil
	}
	d := &PloopDetails{Signature: string(h[:16])}
	f := newFinding(Ploop, d)
	if len(h) < ploopHeaderLen {
		return f, err
	}
	le := binary.LittleEndian
	d.Version = le.Uint32(h[16:])
	if d.Version != ploopVersion {
		f.add(CodeUnsupportedVersion, "parallels version %d is not supported by qemu", d.Version)
		return f, nil
	}
	tracks := le.Uint32(h[28:])
	bat := le.Uint32(h[32:])
	sectors := le.Uint64(h[36:])
	d.Dirty = le.Uint32(h[44:]) == ploopInUse
	dataOff := uint64(le.Uint32(h[48:])) * 512
	extSector := le.Uint64(h[56:])
	d.BATEntries = bat
	d.DataOffset = int64(dataOff)
	if d.Signature == ploopSig {
		sectors &= 0xffffffff // the old format has 32-bit sizes
	}

	if sectors > ploopMaxSectors {
		f.add(CodeInvalidHeader, "disk of %d sectors is too large", sectors)
	} else {
		f.vsize = int64(sectors) * 512
	}
	valid := true
	switch {
	case tracks == 0:
		f.add(CodeInvalidHeader, "zero sectors per cluster")
		valid = false
	case tracks > ploopMaxTracks:
		f.add(CodeInvalidHeader, "cluster of %d sectors is too large", tracks)
		valid = false
	default:
		d.ClusterSize = int64(tracks) * 512
	}
	if bat > ploopMaxBAT {
		f.add(CodeInvalidHeader, "allocation table of %d entries is too large", bat)
		valid = false
	}
	batEnd := ploopHeaderLen + 4*uint64(bat)
	if valid && sectors > uint64(bat)*uint64(tracks) {
		f.add(CodeInvalidHeader, "allocation table of %d clusters of %d sectors does not cover the disk of %d sectors", bat, tracks, sectors)
	}
	if dataOff != 0 && dataOff < batEnd {
		f.add(CodeInvalidHeader, "data at %d overlaps the allocation table ending at %d", dataOff, batEnd)
	}

	// The format extension: qemu reads it on a read-only open and refuses a bad one.
	var extOff uint64
	if extSector != 0 {
		switch {
		case extSector > ploopMaxSectors:
			f.add(CodeInvalidHeader, "format extension at sector %d is out of range", extSector)
		case extSector*512 < batEnd:
			f.add(CodeInvalidHeader, "format extension at %d overlaps the allocation table ending at %d", extSector*512, batEnd)
		default:
			extOff = extSector * 512
			d.ExtensionOffset = int64(extOff)
			b, err := s.at(int64(extOff), 8)
			switch {
			case err == nil:
				if le.Uint64(b) != ploopExtMagic {
					f.add(CodeInvalidHeader, "format extension at %d has a bad magic %#x", extOff, le.Uint64(b))
				}
			case errors.Is(err, errPending):
				return f, err
			case isTruncated(err):
				// Reported below, with the size.
			default:
				f.add(CodeInvalidHeader, "format extension at %d: %v", extOff, err)
			}
		}
	}

	size, err := s.size()
	if err != nil {
		return f, err
	}
	switch {
	case batEnd > uint64(size):
		f.add(CodeTruncated, "allocation table of %d entries lies past the end of the data at %d", bat, size)
	case dataOff > uint64(size):
		f.add(CodeTruncated, "data at %d lies past the end of the data at %d", dataOff, size)
	case extOff != 0 && extOff+uint64(d.ClusterSize) > uint64(size):
		f.add(CodeTruncated, "format extension at %d lies past the end of the data at %d", extOff, size)
	}
	return f, nil
}
