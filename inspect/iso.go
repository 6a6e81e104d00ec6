package inspect

import (
	"bytes"
	"encoding/binary"
)

// ISODetails are the facts of an ISO 9660 or UDF image. qemu reads an ISO as raw, so its
// virtual size is the data size; VolumeSize is what the primary volume descriptor claims.
type ISODetails struct {
	// VolumeID is the volume identifier of the primary volume descriptor.
	VolumeID string `json:"volume_id"`
	// SystemID and ApplicationID are the PVD's system and application identifiers.
	SystemID      string `json:"system_id,omitempty"`
	ApplicationID string `json:"application_id,omitempty"`
	// BlockSize is the logical block size of the ISO 9660 volume.
	BlockSize int `json:"block_size,omitempty"`
	// VolumeSize is the volume space size times the block size, in bytes. It may be smaller
	// than the image (appended partitions, padding).
	VolumeSize int64 `json:"volume_size,omitempty"`
	// UDF is set when the UDF volume recognition sequence names an NSR02 or NSR03 descriptor.
	UDF bool `json:"udf"`
	// Joliet is set when a supplementary volume descriptor carries Joliet escape sequences.
	Joliet bool `json:"joliet"`
	// Bootable is set when an El Torito boot record is present.
	Bootable bool `json:"bootable"`
	// PartitionTable is the MBR or GPT of a hybrid ISO.
	PartitionTable *PartitionTable `json:"partition_table,omitempty"`
}

const (
	isoDescStart = 32768 // sector 16
	isoDescSize  = 2048
	isoMaxDescs  = 16 // 32768 + 16×2048 = 64 KiB: all in the head

	isoBootRecord    = 0
	isoPrimary       = 1
	isoSupplementary = 2
	isoPartition     = 3
	isoTerminator    = 255

	elToritoID = "EL TORITO SPECIFICATION"
)

// probeISO recognises ISO 9660 and UDF from the volume descriptors from sector 16: a CD001
// descriptor, or an NSR02/NSR03 descriptor in the UDF volume recognition sequence. It reads
// only the head.
func probeISO(s *src) (*finding, error) {
	var (
		d       = &ISODetails{}
		f       *finding
		pvd     []byte
		cd001   bool // an ISO 9660 descriptor was seen
		term    bool // the ISO 9660 set has ended
		ext     bool // inside a UDF extended area (BEA01 ... TEA01)
		badType = -1
		badVer  = -1
		end     = int64(isoDescStart) // end of the descriptors read
	)
	var cut error // a truncation ending the descriptors
	match := func() {
		if f == nil {
			f = newFinding(ISO, d)
		}
	}
read:
	for k := range isoMaxDescs {
		off := int64(isoDescStart + k*isoDescSize)
		b, err := s.at(off, isoDescSize)
		if err != nil {
			if !isTruncated(err) {
				return nil, err
			}
			cut = err
		}
		if len(b) < 7 {
			break
		}
		switch id := string(b[1:6]); id {
		case "CD001":
			if term || ext {
				break read // ISO 9660 descriptors after the set ended: not ours to read
			}
			cd001 = true
			match()
			typ, ver := b[0], b[6]
			if ver != 1 && !(typ == isoSupplementary && ver == 2) && badVer < 0 {
				badVer = k
			}
			switch typ {
			case isoBootRecord:
				if len(b) >= 39 && string(bytes.TrimRight(b[7:39], "\x00 ")) == elToritoID {
					d.Bootable = true
				}
			case isoPrimary:
				if pvd == nil {
					pvd = b
				}
			case isoSupplementary:
				if len(b) >= 91 && b[88] == '%' && b[89] == '/' && (b[90] == '@' || b[90] == 'C' || b[90] == 'E') {
					d.Joliet = true
				}
			case isoPartition:
			case isoTerminator:
				term = true
			default:
				if badType < 0 {
					badType = int(typ)
				}
			}
		case "BEA01":
			ext = true
		case "NSR02", "NSR03":
			d.UDF = true
			match()
		case "BOOT2", "CDW02":
		case "TEA01":
			end = off + int64(len(b))
			break read
		default:
			// Inside a UDF extended area, descriptors of a volume with blocks larger than
			// 2048 bytes are separated by zeros.
			if !ext || !isZero(b) {
				break read
			}
		}
		end = off + int64(len(b))
		if cut != nil {
			break
		}
	}
	if f == nil {
		return nil, nil
	}
	if cut != nil {
		// The descriptors run past the end of the data; qemu still reads what there is.
		size, err := s.size()
		if err != nil {
			return f, err
		}
		f.vsize = size
		return f, cut
	}
	if badVer >= 0 {
		f.add(CodeInvalidHeader, "volume descriptor %d has an unknown version", badVer)
	}
	if badType >= 0 {
		f.add(CodeInvalidHeader, "unknown volume descriptor type %d", badType)
	}
	var volSize int64
	switch {
	case pvd != nil:
		le, be := binary.LittleEndian, binary.BigEndian
		d.SystemID = isoString(pvd[8:40])
		d.VolumeID = isoString(pvd[40:72])
		d.ApplicationID = isoString(pvd[574:702])
		blocks, blocksBE := le.Uint32(pvd[80:]), be.Uint32(pvd[84:])
		bs, bsBE := le.Uint16(pvd[128:]), be.Uint16(pvd[130:])
		if blocks != blocksBE || bs != bsBE {
			f.add(CodeInvalidHeader, "primary volume descriptor: the two byte orders disagree (volume space %d/%d blocks, block size %d/%d)",
				blocks, blocksBE, bs, bsBE)
		}
		// ECMA-119 6.1.2: a logical block is 2^(n+9) bytes, no larger than the 2048-byte sector.
		if bs != 512 && bs != 1024 && bs != 2048 {
			f.add(CodeInvalidHeader, "primary volume descriptor: logical block size %d is not 512, 1024 or 2048", bs)
			break
		}
		d.BlockSize = int(bs)
		volSize = int64(blocks) * int64(bs)
		d.VolumeSize = volSize
		if volSize < end {
			f.add(CodeInvalidHeader, "primary volume descriptor: volume of %d bytes does not cover its own descriptors", volSize)
		}
	case cd001 && !d.UDF:
		f.add(CodeInvalidHeader, "ISO 9660 descriptors without a primary volume descriptor")
	}
	size, err := s.size()
	if err != nil {
		return f, err
	}
	f.vsize = size
	if volSize > size {
		f.add(CodeTruncated, "the volume is %d bytes, the data only %d", volSize, size)
	}
	return f, nil
}

// isoString returns a space-padded identifier of a volume descriptor, for reporting.
func isoString(b []byte) string {
	return printable(bytes.TrimRight(cstring(b), " "))
}
