package inspect

import (
	"encoding/binary"
	"errors"
)

// QEDDetails are the facts of a QED header.
type QEDDetails struct {
	// ClusterSize is the cluster size in bytes.
	ClusterSize int64 `json:"cluster_size"`
	// TableSize is the size of the L1 and L2 tables, in clusters.
	TableSize uint32 `json:"table_size"`
	// HeaderSize is the size of the header area, in clusters.
	HeaderSize uint32 `json:"header_size"`
	// BackingFile is the name of the backing file as stored (never opened).
	BackingFile string `json:"backing_file"`
	// BackingFormat is "raw" when the image says its backing file must not be probed.
	BackingFormat string `json:"backing_format,omitempty"`
	// NeedsCheck is set when the image was not closed cleanly.
	NeedsCheck bool `json:"needs_check,omitempty"`
	// CompatFeatures are the compatible feature bits (qemu knows none; they are harmless).
	CompatFeatures uint64 `json:"compat_features,omitempty"`
	// AutoclearFeatures are the autoclear feature bits (qemu knows none and clears them).
	AutoclearFeatures uint64 `json:"autoclear_features,omitempty"`
}

const (
	qedMagic            = "QED\x00"
	qedHeaderLen        = 64
	qedFeatBacking      = 1 << 0
	qedFeatNeedCheck    = 1 << 1
	qedFeatBackingNoFmt = 1 << 2
	qedFeatKnown        = qedFeatBacking | qedFeatNeedCheck | qedFeatBackingNoFmt
	qedMinCluster       = 4 << 10
	qedMaxCluster       = 64 << 20
	qedMaxTable         = 16
	qedMaxNameLen       = 4095 // qemu reads the name into a PATH_MAX buffer with its NUL
)

// probeQED recognises a QED image and checks its header as qemu's block/qed.c does when it
// opens one.
func probeQED(s *src) (*finding, error) {
	h, err := s.at(0, qedHeaderLen)
	if err != nil && !isTruncated(err) {
		return nil, err
	}
	if len(h) < len(qedMagic) || string(h[:len(qedMagic)]) != qedMagic {
		return nil, nil
	}
	d := &QEDDetails{}
	f := newFinding(QED, d)
	if len(h) < qedHeaderLen {
		return f, err
	}
	le := binary.LittleEndian
	cluster := le.Uint32(h[4:])
	table := le.Uint32(h[8:])
	d.HeaderSize = le.Uint32(h[12:])
	features := le.Uint64(h[16:])
	d.CompatFeatures = le.Uint64(h[24:])
	d.AutoclearFeatures = le.Uint64(h[32:])
	l1Off := le.Uint64(h[40:])
	imageSize := le.Uint64(h[48:])
	nameOff := le.Uint32(h[56:])
	nameLen := le.Uint32(h[60:])
	d.ClusterSize = int64(cluster)
	d.TableSize = table
	d.NeedsCheck = features&qedFeatNeedCheck != 0

	if unknown := features &^ qedFeatKnown; unknown != 0 {
		f.add(CodeUnknownFeatures, "unknown feature bits %#x", unknown)
	}
	valid := true
	clusterOK := cluster >= qedMinCluster && cluster <= qedMaxCluster && cluster&(cluster-1) == 0
	if !clusterOK {
		f.add(CodeInvalidHeader, "cluster size %d is not a power of two from 4 KiB to 64 MiB", cluster)
		valid = false
	}
	if table < 1 || table > qedMaxTable || table&(table-1) != 0 {
		f.add(CodeInvalidHeader, "table size %d is not a power of two from 1 to 16 clusters", table)
		valid = false
	}
	if valid {
		// qemu's qed_max_image_size, with its 32-bit and 64-bit wrap-arounds.
		entries := uint64(table*cluster) / 8
		maxSize := entries * uint64(cluster) * entries
		if imageSize%512 != 0 || imageSize > maxSize {
			f.add(CodeInvalidHeader, "image size %d is not a multiple of 512 up to %d", imageSize, maxSize)
		} else {
			f.vsize = int64(imageSize)
		}
	}
	headerBytes := uint64(d.HeaderSize) * uint64(cluster)
	if clusterOK && (d.HeaderSize == 0 || headerBytes > 1<<32-1) {
		f.add(CodeInvalidHeader, "header size of %d clusters is out of range", d.HeaderSize)
		valid = false
	}

	if features&qedFeatBacking != 0 {
		if features&qedFeatBackingNoFmt != 0 {
			d.BackingFormat = "raw"
		}
		switch {
		case !clusterOK:
			d.BackingFile = "(unreadable)"
		case uint64(nameOff)+uint64(nameLen) > headerBytes:
			f.add(CodeInvalidHeader, "backing file name at %d (%d bytes) lies outside the header", nameOff, nameLen)
			d.BackingFile = "(unreadable)"
		case nameLen > qedMaxNameLen:
			f.add(CodeInvalidHeader, "backing file name of %d bytes is too long", nameLen)
			d.BackingFile = "(unreadable)"
		case nameLen == 0:
			d.BackingFile = "(empty name)"
		default:
			b, err := s.at(int64(nameOff), int(nameLen))
			switch {
			case err == nil:
				d.BackingFile = printable(b)
			case errors.Is(err, errPending):
				return f, err
			case isTruncated(err):
				f.add(CodeTruncated, "backing file name at %d lies past the end of the data", nameOff)
				d.BackingFile = "(unreadable)"
			default:
				f.add(CodeInvalidHeader, "backing file name at %d: %v", nameOff, err)
				d.BackingFile = "(unreadable)"
			}
		}
		detail := "image has a backing file " + d.BackingFile
		if d.BackingFormat != "" {
			detail += " of format " + d.BackingFormat
		}
		f.add(CodeBackingFile, "%s", detail)
	}
	if !valid {
		return f, nil
	}

	// The L1 table: cluster aligned, after the header, inside the data (qemu counts only
	// whole clusters of the file).
	c := uint64(cluster)
	last := l1Off + uint64(table-1)*c
	switch {
	case l1Off%c != 0:
		f.add(CodeInvalidHeader, "L1 table offset %d is not cluster aligned", l1Off)
		return f, nil
	case l1Off < headerBytes:
		f.add(CodeInvalidHeader, "L1 table at %d overlaps the header", l1Off)
		return f, nil
	case last <= l1Off:
		// qemu's overflow check also refuses a table of one cluster, even one it wrote itself.
		f.add(CodeInvalidHeader, "L1 table at %d of %d clusters is refused by qemu", l1Off, table)
		return f, nil
	}
	size, err := s.size()
	if err != nil {
		return f, err
	}
	if whole := uint64(size) &^ (c - 1); last >= whole {
		f.add(CodeTruncated, "L1 table at %d (%d clusters) lies past the end of the data at %d", l1Off, table, size)
	}
	return f, nil
}
