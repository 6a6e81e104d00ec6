package convert

import (
	"math"

	"github.com/glance-sidecar/glance-sidecar/inspect"
)

// ExpectedSize is the most disk space converting a source with the report src to the format to
// may take: a worst case, for reserving workspace before converting, never an estimate of the
// usual size (which, for the sparse formats, is about the data the guest wrote). It is
// inspect.SizeUnknown when the source's virtual size is unknown or to is not in Formats.
//
// With v the source's virtual size rounded up to 512 bytes (every target counts in sectors):
//
//	raw    v                   every byte written (the file is sparse where the data is zero)
//	qcow2  v + v/2048 + 2 MiB  64 KiB clusters: 8-byte L2 entries and 2-byte refcounts per
//	                           cluster (v/6554 at 1 TiB by `qemu-img measure`), header and
//	                           tables
//	vdi    v + v/2048 + 2 MiB  1 MiB blocks: a 4-byte map entry each, header and map aligned to
//	                           1 MiB
//	vmdk   v + v/64 + 2 MiB    streamOptimized: incompressible 64 KiB grains stored by deflate
//	                           grow by a few bytes and a 12-byte marker, rounded up to a
//	                           512-byte sector (v/128), grain tables and their markers
//	vhd    v + v/2048 + 4 MiB  2 MiB blocks with a 512-byte bitmap each, the BAT, header and
//	                           footers, and up to one cylinder more when the size is rounded up
//	                           to a CHS geometry (without ForceSize)
//
// TestExpectedSize checks the bounds against qemu-img's output for incompressible data and
// against `qemu-img measure`.
func ExpectedSize(src *inspect.Report, to inspect.Format) int64 {
	if src == nil || src.VirtualSize < 0 {
		return inspect.SizeUnknown
	}
	const mib = 1 << 20
	v := src.VirtualSize
	if v > 1<<62 {
		// Beyond any disk (4 EiB): no reservation can be made, and the sums would overflow.
		return math.MaxInt64
	}
	if r := v % 512; r != 0 {
		v += 512 - r
	}
	switch to {
	case inspect.Raw:
		return v
	case inspect.QCOW2, inspect.VDI:
		return v + v/2048 + 2*mib
	case inspect.VMDK:
		return v + v/64 + 2*mib
	case inspect.VHD:
		return v + v/2048 + 4*mib
	}
	return inspect.SizeUnknown
}
