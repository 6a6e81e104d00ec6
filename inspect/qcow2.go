package inspect

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// QCOW2Details are the facts of a qcow2 (or qcow v1) header.
type QCOW2Details struct {
	Version          int    `json:"version"`
	ClusterSize      int64  `json:"cluster_size"`
	CompressionType  string `json:"compression_type"`
	RefcountBits     int    `json:"refcount_bits"`
	LazyRefcounts    bool   `json:"lazy_refcounts"`
	ExtendedL2       bool   `json:"extended_l2"`
	Encrypted        bool   `json:"encrypted"`
	EncryptionFormat string `json:"encryption_format,omitempty"` // "aes" or "luks"
	BackingFile      string `json:"backing_file"`
	BackingFormat    string `json:"backing_format,omitempty"`
	DataFile         string `json:"data_file"`
	DataFileRaw      bool   `json:"data_file_raw,omitempty"`
	Dirty            bool   `json:"dirty,omitempty"`
	Corrupt          bool   `json:"corrupt,omitempty"`
	Bitmaps          bool   `json:"bitmaps,omitempty"`
	Snapshots        uint32 `json:"snapshots,omitempty"`
}

const (
	qcowMagic = "QFI\xfb"

	qcow2IncDirty       = 1 << 0
	qcow2IncCorrupt     = 1 << 1
	qcow2IncDataFile    = 1 << 2
	qcow2IncCompression = 1 << 3
	qcow2IncExtendedL2  = 1 << 4
	qcow2IncKnown       = 1<<5 - 1

	qcow2ExtEnd           = 0
	qcow2ExtBackingFormat = 0xe2792aca
	qcow2ExtFeatureNames  = 0x6803f857
	qcow2ExtBitmaps       = 0x23852875
	qcow2ExtCrypto        = 0x0537be77
	qcow2ExtDataFile      = 0x44415441

	qcowMaxNameLen = 1023 // qemu refuses longer backing and data file names
	qcowMaxExts    = 64
)

// probeQCOW recognises qcow2 (versions 2 and 3) and qcow version 1.
func probeQCOW(s *src) (*finding, error) {
	h, err := s.at(0, 112)
	if err != nil && !isTruncated(err) {
		return nil, err
	}
	if len(h) < 4 || string(h[:4]) != qcowMagic {
		return nil, nil
	}
	d := &QCOW2Details{}
	f := newFinding(QCOW2, d)
	if len(h) < 48 {
		return f, err
	}
	be := binary.BigEndian
	version := be.Uint32(h[4:])
	d.Version = int(min(version, 1<<16))
	backingOff := be.Uint64(h[8:])
	backingLen := be.Uint32(h[16:])
	vsize := be.Uint64(h[24:])

	switch {
	case version == 1:
		f.format = QCOW
		f.add(CodeUnsupportedVersion, "qcow version 1 is not supported by OpenStack")
		d.ClusterSize = 1 << min(h[32], 63)
		d.Encrypted = be.Uint32(h[36:]) != 0
		if backingOff != 0 {
			if d.BackingFile, err = readName(s, f, backingOff, backingLen, "backing file"); err != nil {
				return nil, err
			}
			f.add(CodeBackingFile, "image has a backing file %s", d.BackingFile)
		}
		if vsize <= 1<<62 {
			f.vsize = int64(vsize)
		}
		return f, nil
	case version != 2 && version != 3:
		f.add(CodeUnsupportedVersion, "qcow2 version %d is not supported", version)
		return f, nil
	}
	if len(h) < 72 || (version == 3 && len(h) < 104) {
		return f, err
	}

	bits := be.Uint32(h[20:])
	valid := true
	if bits < 9 || bits > 21 {
		f.add(CodeInvalidHeader, "cluster bits %d out of range 9-21", bits)
		valid = false
	} else {
		d.ClusterSize = 1 << bits
	}
	if vsize > 1<<62 {
		f.add(CodeInvalidHeader, "virtual size %d too large", vsize)
	} else {
		f.vsize = int64(vsize)
	}
	crypt := be.Uint32(h[32:])
	switch crypt {
	case 0:
	case 1:
		d.Encrypted, d.EncryptionFormat = true, "aes"
	case 2:
		d.Encrypted, d.EncryptionFormat = true, "luks"
	default:
		f.add(CodeInvalidHeader, "unknown encryption method %d", crypt)
	}
	l1Size := be.Uint32(h[36:])
	l1Off := be.Uint64(h[40:])
	rtOff := be.Uint64(h[48:])
	rtClusters := be.Uint32(h[56:])
	d.Snapshots = be.Uint32(h[60:])

	hdrLen := uint64(72)
	d.RefcountBits = 16
	d.CompressionType = "zlib"
	if version == 3 {
		inc := be.Uint64(h[72:])
		compat := be.Uint64(h[80:])
		autoclear := be.Uint64(h[88:])
		order := be.Uint32(h[96:])
		hdrLen = uint64(be.Uint32(h[100:]))
		d.Dirty = inc&qcow2IncDirty != 0
		d.Corrupt = inc&qcow2IncCorrupt != 0
		d.ExtendedL2 = inc&qcow2IncExtendedL2 != 0
		d.LazyRefcounts = compat&1 != 0
		d.Bitmaps = autoclear&1 != 0
		d.DataFileRaw = autoclear&2 != 0
		if unknown := inc &^ qcow2IncKnown; unknown != 0 {
			f.add(CodeUnknownFeatures, "unknown incompatible feature bits %#x", unknown)
		}
		if d.Corrupt {
			f.add(CodeInvalidHeader, "image is marked corrupt")
		}
		if order > 6 {
			f.add(CodeInvalidHeader, "refcount order %d out of range 0-6", order)
		} else {
			d.RefcountBits = 1 << order
		}
		if hdrLen < 104 || (valid && hdrLen > uint64(d.ClusterSize)) {
			f.add(CodeInvalidHeader, "header length %d out of range", hdrLen)
			valid = false
		}
		ct := byte(0)
		if hdrLen > 104 {
			if len(h) < 105 {
				return f, err
			}
			ct = h[104]
		}
		switch ct {
		case 0:
		case 1:
			d.CompressionType = "zstd"
		default:
			d.CompressionType = fmt.Sprintf("unknown(%d)", ct)
			f.add(CodeUnknownFeatures, "unknown compression type %d", ct)
		}
		if (ct != 0) != (inc&qcow2IncCompression != 0) {
			f.add(CodeInvalidHeader, "compression type %d disagrees with the compression feature bit", ct)
		}
		if inc&qcow2IncDataFile != 0 {
			f.add(CodeDataFile, "image keeps its data in an external data file")
		}
	}
	if backingOff != 0 {
		if d.BackingFile, err = readName(s, f, backingOff, backingLen, "backing file"); err != nil {
			return nil, err
		}
	}
	if valid {
		if err := qcowExtensions(s, f, d, int64(hdrLen), d.ClusterSize); err != nil {
			return f, err
		}
	}
	if backingOff != 0 {
		detail := "image has a backing file " + d.BackingFile
		if d.BackingFormat != "" {
			detail += " of format " + d.BackingFormat
		}
		f.add(CodeBackingFile, "%s", detail)
	}
	if d.DataFile != "" && !f.has(CodeDataFile) {
		f.add(CodeDataFile, "image names an external data file %s", d.DataFile)
	} else if d.DataFile != "" {
		f.problems[f.index(CodeDataFile)].Detail += " " + d.DataFile
	}
	if !valid {
		return f, nil
	}

	// The tables the header points at must lie inside the image.
	size, err := s.size()
	if err != nil {
		return f, err
	}
	cs := uint64(d.ClusterSize)
	checkTable := func(what string, off, length uint64) {
		switch {
		case off%cs != 0:
			f.add(CodeInvalidHeader, "%s offset %d is not cluster aligned", what, off)
		case off > uint64(size) || length > uint64(size)-off:
			f.add(CodeTruncated, "%s at %d (%d bytes) lies past the end of the data at %d", what, off, length, size)
		}
	}
	if l1Size > 0 {
		checkTable("L1 table", l1Off, uint64(l1Size)*8)
	}
	checkTable("refcount table", rtOff, uint64(rtClusters)*cs)
	return f, nil
}

// qcowExtensions walks the header extensions in the first cluster.
func qcowExtensions(s *src, f *finding, d *QCOW2Details, off, clusterSize int64) error {
	for range qcowMaxExts {
		if off+8 > clusterSize {
			return nil
		}
		e, err := s.at(off, 8)
		if err != nil {
			return err
		}
		typ := binary.BigEndian.Uint32(e)
		n := int64(binary.BigEndian.Uint32(e[4:]))
		if typ == qcow2ExtEnd {
			return nil
		}
		if n > clusterSize-off-8 {
			f.add(CodeInvalidHeader, "header extension %#x of %d bytes overruns the first cluster", typ, n)
			return nil
		}
		switch typ {
		case qcow2ExtBackingFormat:
			if d.BackingFormat, err = readName(s, f, uint64(off+8), uint32(n), "backing format"); err != nil {
				return err
			}
		case qcow2ExtDataFile:
			if d.DataFile, err = readName(s, f, uint64(off+8), uint32(n), "data file"); err != nil {
				return err
			}
			if d.DataFile == "" {
				d.DataFile = "(empty name)"
			}
		}
		off += 8 + (n+7)&^7
	}
	f.add(CodeInvalidHeader, "more than %d header extensions", qcowMaxExts)
	return nil
}

// readName reads a file name stored in an image, for reporting only: it is never opened.
// Only errPending is returned: every other failure is recorded on f.
func readName(s *src, f *finding, off uint64, n uint32, what string) (string, error) {
	if n == 0 {
		return `""`, nil
	}
	if n > qcowMaxNameLen || off > 1<<62 {
		f.add(CodeInvalidHeader, "%s name of %d bytes at %d is out of range", what, n, off)
		return "(unreadable)", nil
	}
	b, err := s.at(int64(off), int(n))
	switch {
	case err == nil:
		return printable(b), nil
	case errors.Is(err, errPending):
		return "", err
	case isTruncated(err):
		f.add(CodeTruncated, "%s name at %d lies past the end of the data", what, off)
	default:
		f.add(CodeInvalidHeader, "%s name at %d: %v", what, off, err)
	}
	return "(unreadable)", nil
}

func (f *finding) has(c Code) bool { return f.index(c) >= 0 }

func (f *finding) index(c Code) int {
	for i, p := range f.problems {
		if p.Code == c {
			return i
		}
	}
	return -1
}
