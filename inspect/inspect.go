// Package inspect tells what a disk image really is from its bytes: the format, the virtual
// size, the details Nova and operators need, and whether it is safe to hand to qemu-img.
//
// Start with [Inspect] (one streaming pass over an io.Reader) or [InspectAt] (random access
// over an io.ReaderAt, reading only the few regions the formats need, so a remote image can be
// introspected with a handful of HTTP Range requests). Both return the same [Report] for the
// same bytes. A Report names the detected [Format], the virtual size, format-specific details
// and a list of [Problem]s, each with a stable [Code]; an image is safe when it has none.
//
// The package never follows a path found inside an image, never allocates from a length field
// it has not bounded, and never panics on any input: hostile images are the norm. Every format
// parser is written against one small reader (see source.go) whose rules make the streaming and
// random-access paths agree byte for byte.
package inspect

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Format is a disk image format, named as Glance names its disk_format where one exists.
type Format string

// Formats the inspector recognises.
const (
	Raw   Format = "raw"
	QCOW2 Format = "qcow2"
	QCOW  Format = "qcow" // qcow version 1: recognised, never supported
	QED   Format = "qed"
	VMDK  Format = "vmdk"
	VHD   Format = "vhd" // qemu calls it vpc
	VHDX  Format = "vhdx"
	VDI   Format = "vdi"
	ISO   Format = "iso"
	LUKS  Format = "luks"
	Ploop Format = "ploop" // qemu calls it parallels
)

// QemuName is the name qemu-img uses for the format's driver (vhd is vpc, ploop is parallels,
// an ISO is read as raw).
func (f Format) QemuName() string {
	switch f {
	case VHD:
		return "vpc"
	case Ploop:
		return "parallels"
	case ISO:
		return "raw"
	}
	return string(f)
}

// ParseDeclared maps a Glance disk_format (or a qemu-img format name) to the Format its content
// must have. Glance's container-ish kernel and ramdisk formats ami, ari and aki are raw bytes.
func ParseDeclared(name string) (Format, error) {
	switch strings.ToLower(strings.TrimSpace(name)) {
	case "raw", "ami", "ari", "aki", "gpt":
		return Raw, nil
	case "qcow2":
		return QCOW2, nil
	case "qcow":
		return QCOW, nil
	case "qed":
		return QED, nil
	case "vmdk":
		return VMDK, nil
	case "vhd", "vpc":
		return VHD, nil
	case "vhdx":
		return VHDX, nil
	case "vdi":
		return VDI, nil
	case "iso":
		return ISO, nil
	case "luks":
		return LUKS, nil
	case "ploop", "parallels":
		return Ploop, nil
	}
	return "", fmt.Errorf("unknown disk format %q", name)
}

// Code is the stable, machine-readable name of a safety problem. Codes are written to Glance
// image properties, so they never change meaning.
type Code string

// Problem codes.
const (
	// CodeBackingFile: the image refers to another image it reads through (qcow2 or qed backing
	// file, VMDK parent link, VHD/VHDX/VDI differencing parent).
	CodeBackingFile Code = "backing_file"
	// CodeDataFile: a qcow2 image keeps its data in an external file.
	CodeDataFile Code = "data_file"
	// CodeUnknownFeatures: feature bits or required structures this inspector does not know.
	CodeUnknownFeatures Code = "unknown_features"
	// CodeVMDKExternalExtent: a VMDK extent lies outside the file itself.
	CodeVMDKExternalExtent Code = "vmdk_external_extent"
	// CodeVMDKExtentHostPath: a VMDK extent names a path (a directory separator, "..").
	CodeVMDKExtentHostPath Code = "vmdk_extent_host_path"
	// CodeVMDKCreateType: a VMDK createType other than monolithicSparse or streamOptimized.
	CodeVMDKCreateType Code = "vmdk_create_type"
	// CodeMalformedDescriptor: a VMDK descriptor that cannot be trusted or parsed.
	CodeMalformedDescriptor Code = "malformed_descriptor"
	// CodeInvalidHeader: a header field out of range, a bad checksum, a structure pointing
	// somewhere it may not.
	CodeInvalidHeader Code = "invalid_header"
	// CodeInvalidFooter: a VHD or VMDK footer that is inconsistent with the header.
	CodeInvalidFooter Code = "invalid_footer"
	// CodeTruncated: the header, or a table it points to, lies past the end of the data.
	CodeTruncated Code = "truncated"
	// CodeMultipleFormats: the content is valid as two formats at once (an ISO with a
	// partition table is not counted: that is what a bootable ISO is).
	CodeMultipleFormats Code = "multiple_formats"
	// CodeUnsupportedVersion: a format version qemu or OpenStack do not support (qcow v1,
	// LUKS v2, …).
	CodeUnsupportedVersion Code = "unsupported_version"
	// CodeFormatMismatch: the content differs from the declared disk_format.
	CodeFormatMismatch Code = "format_mismatch"
	// CodeInvalidPartitionTable: an MBR or GPT that breaks its own rules (bad boot flag, bad
	// checksum, partitions outside the disk or overlapping).
	CodeInvalidPartitionTable Code = "invalid_partition_table"
)

// Problem is one reason an image is unsafe.
type Problem struct {
	Code   Code   `json:"code"`
	Detail string `json:"detail"`
}

func (p Problem) String() string { return string(p.Code) + ": " + p.Detail }

// SizeUnknown is Report.VirtualSize when the virtual size could not be determined.
const SizeUnknown int64 = -1

// Report is what inspection found.
type Report struct {
	// Format is the format the content has. When several formats match, it is the first of
	// them in the order of Formats, and Problems holds CodeMultipleFormats.
	Format Format
	// Formats lists every format whose signature matched, when more than one did.
	Formats []Format
	// VirtualSize is the size of the virtual disk in bytes, as `qemu-img info -f FMT` reports
	// it, or SizeUnknown.
	VirtualSize int64
	// Size is the number of bytes of image data inspected (the file size).
	Size int64
	// Problems lists why the image is unsafe; it is empty for a safe image.
	Problems []Problem
	// Details holds the format-specific facts: one of *QCOW2Details, *VMDKDetails,
	// *VHDDetails, *VHDXDetails, *VDIDetails, *ISODetails, *LUKSDetails, *QEDDetails,
	// *PloopDetails or *RawDetails. It may be nil.
	Details any
}

// Safe reports whether the image has no problems.
func (r *Report) Safe() bool { return len(r.Problems) == 0 }

// Has reports whether the report holds a problem with the code.
func (r *Report) Has(c Code) bool {
	for _, p := range r.Problems {
		if p.Code == c {
			return true
		}
	}
	return false
}

// Codes returns the problem codes, in order, without duplicates.
func (r *Report) Codes() []Code {
	var out []Code
	seen := map[Code]bool{}
	for _, p := range r.Problems {
		if !seen[p.Code] {
			seen[p.Code] = true
			out = append(out, p.Code)
		}
	}
	return out
}

// Options tune an inspection. The zero value is ready to use.
type Options struct {
	// Declared is the disk_format the image claims to have (Glance's name; "" when unknown).
	// When set, content of another format is reported as CodeFormatMismatch.
	Declared string
}

func (o Options) declared() (Format, error) {
	if o.Declared == "" {
		return "", nil
	}
	return ParseDeclared(o.Declared)
}

// ErrInvalidOptions is wrapped by the error Inspect and InspectAt return for bad Options.
var ErrInvalidOptions = errors.New("invalid inspect options")

// Inspect reads r to its end in one pass and reports what the image is. Memory stays bounded
// whatever the size of the image. Errors are returned only for failures to read r, a cancelled
// context or invalid options; everything wrong with the image itself is a Problem.
func Inspect(ctx context.Context, r io.Reader, opts Options) (*Report, error) {
	s, err := NewStream(opts)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, streamBufSize)
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("inspecting image stream: %w", err)
		}
		n, rerr := r.Read(buf)
		if n > 0 {
			s.feed(buf[:n])
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return nil, fmt.Errorf("reading image stream at byte %d: %w", s.sb.pos, rerr)
		}
	}
	return s.Close()
}

// streamBufSize is the read size of Inspect: large enough that per-chunk work is noise, small
// enough that the allocation per inspection stays well under a megabyte.
const streamBufSize = 256 << 10

// InspectAt inspects the size bytes readable through r, reading only the regions the formats
// need (a few KiB for most images; at most a few MiB for any). It reports exactly what Inspect
// reports for the same bytes.
func InspectAt(ctx context.Context, r io.ReaderAt, size int64, opts Options) (*Report, error) {
	decl, err := opts.declared()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	if size < 0 {
		return nil, fmt.Errorf("%w: negative size %d", ErrInvalidOptions, size)
	}
	return inspectAt(ctx, probes, r, size, decl)
}

func inspectAt(ctx context.Context, ps []probe, r io.ReaderAt, size int64, decl Format) (*Report, error) {
	b := newRandomBackend(ctx, r, size)
	results := make([]result, len(ps))
	for i, p := range ps {
		f, perr := run(p, b)
		if b.err != nil {
			return nil, b.err
		}
		results[i] = result{f, perr}
	}
	return decide(ps, results, size, decl), nil
}
