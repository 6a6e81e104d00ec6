package inspect

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"math"
	"slices"
	"strings"
)

// VHDXDetails are the facts of a VHDX image: its current header and its metadata items.
type VHDXDetails struct {
	// Version is the current header's version (1 is the only one).
	Version int `json:"version"`
	// Creator is the diagnostic name of the software that created the file ("QEMU v7.2.22").
	Creator string `json:"creator,omitempty"`
	// Subformat is "dynamic" or "fixed" (the "leave blocks allocated" file parameter).
	Subformat          string `json:"subformat,omitempty"`
	BlockSize          uint32 `json:"block_size"`
	LogicalSectorSize  uint32 `json:"logical_sector_size"`
	PhysicalSectorSize uint32 `json:"physical_sector_size"`
	// HasParent is the differencing-disk file parameter.
	HasParent bool `json:"has_parent"`
	// ParentLocator holds the parent locator's entries as "key=value" (relative_path,
	// absolute_win32_path, …), for reporting only: they are never followed.
	ParentLocator []string `json:"parent_locator,omitempty"`
}

const (
	vhdxMagic          = "vhdxfile"
	vhdxHeader1        = 64 << 10
	vhdxHeader2        = 128 << 10
	vhdxHeaderSize     = 4 << 10
	vhdxRegionTableOff = 192 << 10
	vhdxRegionSize     = 64 << 10
	vhdxHeaderSection  = 1 << 20  // the first MiB: identifier, headers, region tables
	vhdxMaxEntries     = 2047     // region table and metadata table entries
	vhdxMaxItem        = 64 << 10 // parent locators are read up to this size
	vhdxMaxLocatorKeys = 16       // parent locator entries reported
	vhdxMaxDiskSize    = 64 << 40
	vhdxLogUnit        = 1 << 20

	vhdxRegionRequired = 1 << 0
	vhdxItemRequired   = 1 << 2
	vhdxLeaveAllocated = 1 << 0
	vhdxHasParent      = 1 << 1
)

// VHDX GUIDs as stored: the first three fields little-endian, the last eight bytes as written.
var (
	vhdxBATRegion      = guid("2DC27766-F623-4200-9D64-115E9BFD4A08")
	vhdxMetadataRegion = guid("8B7CA206-4790-4B9A-B8FE-575F050F886E")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// The metadata items the probe knows, as indexes into vhdxItems.
const (
	itemFileParameters = iota
	itemVirtualSize
	itemPage83
	itemLogicalSector
	itemPhysicalSector
	itemParentLocator
)

// vhdxItems are the metadata items the probe knows: their GUIDs, names and the bytes it reads of
// each (0: none; -1: the item's own length, up to vhdxMaxItem). All but the parent locator are
// required.
var vhdxItems = [...]struct {
	id   [16]byte
	name string
	size int
}{
	itemFileParameters: {guid("CAA16737-FA36-4D43-B3B6-33F0AA44E76B"), "file parameters", 8},
	itemVirtualSize:    {guid("2FA54224-CD1B-4876-B211-5DBED83BF4B8"), "virtual disk size", 8},
	itemPage83:         {guid("BECA12AB-B2E6-4523-93EF-C309E000C746"), "page 83 data", 0},
	itemLogicalSector:  {guid("8141BF1D-A96F-4709-BA47-F233A8FAAB5F"), "logical sector size", 4},
	itemPhysicalSector: {guid("CDA348C7-445D-4471-9CC9-E9885251C556"), "physical sector size", 4},
	itemParentLocator:  {guid("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C"), "parent locator", -1},
}

// probeVHDX recognises a VHDX by "vhdxfile" at offset 0, then reads, in file order, the two
// headers, the region table, the metadata table and the metadata items it needs.
func probeVHDX(s *src) (*finding, error) {
	h, err := s.at(0, len(vhdxMagic)+512)
	if err != nil && !isTruncated(err) {
		return nil, err
	}
	if len(h) < len(vhdxMagic) || string(h[:len(vhdxMagic)]) != vhdxMagic {
		return nil, nil
	}
	d := &VHDXDetails{Creator: utf16Name(h[len(vhdxMagic):], binary.LittleEndian)}
	f := newFinding(VHDX, d)
	if err != nil {
		return f, err
	}
	hdr, err := vhdxCurrentHeader(s, f, d)
	if err != nil {
		return f, err
	}
	regions, err := vhdxReadRegions(s, f, hdr)
	if err != nil || regions.meta == nil {
		return f, err
	}
	items, err := vhdxMetadata(s, f, regions.meta)
	if err != nil {
		return f, err
	}
	if items != nil {
		vhdxCheckItems(f, d, items, regions.bat)
	}

	// Everything below needs the size of the data: no more reads past the head but the tail.
	size, err := s.size()
	if err != nil {
		return f, err
	}
	spans := []vhdxSpan{}
	if hdr != nil {
		spans = append(spans, vhdxSpan{"log", hdr.logOffset, uint64(hdr.logLength)})
	}
	for _, r := range []*vhdxSpan{regions.bat, regions.meta} {
		if r != nil {
			spans = append(spans, *r)
		}
	}
	for _, r := range spans {
		if r.length > 0 && r.end() > uint64(size) {
			f.add(CodeTruncated, "%s region at %d (%d bytes) lies past the end of the data at %d", r.name, r.off, r.length, size)
		}
	}
	return f, nil
}

// vhdxHeader is the part of a VHDX header the probe uses.
type vhdxHeader struct {
	seq        uint64
	version    uint16
	logGUID    [16]byte
	logVersion uint16
	logLength  uint32
	logOffset  uint64
}

// vhdxCurrentHeader reads both headers and returns the current one: the valid one (signature
// and CRC-32C) with the higher sequence number. It returns nil when neither is valid.
func vhdxCurrentHeader(s *src, f *finding, d *VHDXDetails) (*vhdxHeader, error) {
	var raw [2][]byte
	var hs [2]*vhdxHeader
	for i, off := range []int64{vhdxHeader1, vhdxHeader2} {
		b, err := s.at(off, vhdxHeaderSize)
		if err != nil {
			return nil, err
		}
		raw[i] = b
		if string(b[:4]) == "head" && vhdxCRC(b) == binary.LittleEndian.Uint32(b[4:]) {
			le := binary.LittleEndian
			hs[i] = &vhdxHeader{
				seq:        le.Uint64(b[8:]),
				logGUID:    [16]byte(b[48:64]),
				logVersion: le.Uint16(b[64:]),
				version:    le.Uint16(b[66:]),
				logLength:  le.Uint32(b[68:]),
				logOffset:  le.Uint64(b[72:]),
			}
		}
	}
	var cur *vhdxHeader
	switch {
	case hs[0] == nil && hs[1] == nil:
		f.add(CodeInvalidHeader, "neither header (at 64 KiB and 128 KiB) has a valid signature and checksum")
		return nil, nil
	case hs[1] == nil || hs[0] != nil && hs[0].seq > hs[1].seq:
		cur = hs[0]
	case hs[0] == nil || hs[1].seq > hs[0].seq:
		cur = hs[1]
	default:
		cur = hs[0]
		if !bytes.Equal(raw[0], raw[1]) {
			f.add(CodeInvalidHeader, "both headers have sequence number %d but differ", cur.seq)
		}
	}
	d.Version = int(cur.version)
	if cur.version != 1 {
		f.add(CodeUnsupportedVersion, "VHDX version %d is not supported", cur.version)
	}
	switch {
	case cur.logVersion != 0:
		f.add(CodeInvalidHeader, "log version %d is not supported", cur.logVersion)
	case cur.logOffset < vhdxLogUnit || cur.logOffset%vhdxLogUnit != 0 || cur.logLength%vhdxLogUnit != 0:
		f.add(CodeInvalidHeader, "log at %d (%d bytes) is not aligned to 1 MiB past the header section", cur.logOffset, cur.logLength)
	case cur.logLength != 0 && cur.logGUID != [16]byte{}:
		f.add(CodeUnknownFeatures, "the header names an active log (%s): opening the image for writing replays it, rewriting structures this inspector read", guidString(cur.logGUID[:]))
	}
	return cur, nil
}

// vhdxSpan is a region of the file.
type vhdxSpan struct {
	name   string
	off    uint64
	length uint64
}

// end is where the span ends, saturating instead of wrapping.
func (r vhdxSpan) end() uint64 {
	if r.off > math.MaxUint64-r.length {
		return math.MaxUint64
	}
	return r.off + r.length
}

type vhdxRegions struct {
	bat, meta *vhdxSpan
}

// vhdxReadRegions reads the region table and finds the BAT and metadata regions.
func vhdxReadRegions(s *src, f *finding, hdr *vhdxHeader) (vhdxRegions, error) {
	var out vhdxRegions
	rt, err := s.at(vhdxRegionTableOff, vhdxRegionSize)
	if err != nil {
		return out, err
	}
	le := binary.LittleEndian
	if string(rt[:4]) != "regi" {
		f.add(CodeInvalidHeader, "no region table signature at 192 KiB")
		return out, nil
	}
	if vhdxCRC(rt) != le.Uint32(rt[4:]) {
		f.add(CodeInvalidHeader, "region table checksum does not match")
	}
	n := le.Uint32(rt[8:])
	if n > vhdxMaxEntries {
		f.add(CodeInvalidHeader, "region table has %d entries, more than %d", n, vhdxMaxEntries)
		n = vhdxMaxEntries
	}
	spans := []vhdxSpan{{"header section", 0, vhdxHeaderSection}}
	if hdr != nil {
		spans = append(spans, vhdxSpan{"log", hdr.logOffset, uint64(hdr.logLength)})
	}
	for i := range int(n) {
		e := rt[16+32*i : 48+32*i]
		r := vhdxSpan{off: le.Uint64(e[16:]), length: uint64(le.Uint32(e[24:]))}
		id := [16]byte(e[:16])
		switch {
		case r.off > 1<<62:
			f.add(CodeInvalidHeader, "region %s at offset %#x out of range", guidString(e[:16]), r.off)
			continue
		case id == vhdxBATRegion && out.bat != nil, id == vhdxMetadataRegion && out.meta != nil:
			f.add(CodeInvalidHeader, "region %s appears twice", guidString(e[:16]))
			continue
		case id == vhdxBATRegion:
			r.name = "BAT"
			out.bat = &r
		case id == vhdxMetadataRegion:
			r.name = "metadata"
			out.meta = &r
		default:
			r.name = "region " + guidString(e[:16])
			if le.Uint32(e[28:])&vhdxRegionRequired != 0 {
				f.add(CodeUnknownFeatures, "unknown required region %s", guidString(e[:16]))
			}
		}
		spans = append(spans, r)
	}
	if a, b, ok := vhdxOverlap(spans); ok {
		f.add(CodeInvalidHeader, "%s at %d (%d bytes) overlaps %s at %d (%d bytes)", a.name, a.off, a.length, b.name, b.off, b.length)
	}
	if out.bat == nil {
		f.add(CodeInvalidHeader, "no BAT region")
	}
	if out.meta == nil {
		f.add(CodeInvalidHeader, "no metadata region")
	}
	return out, nil
}

// vhdxOverlap returns two of the spans that overlap, if any, by qemu's rule: a span of length
// zero overlaps only a span it lies strictly inside.
func vhdxOverlap(spans []vhdxSpan) (vhdxSpan, vhdxSpan, bool) {
	spans = slices.Clone(spans)
	slices.SortFunc(spans, func(a, b vhdxSpan) int {
		if c := cmp.Compare(a.off, b.off); c != 0 {
			return c
		}
		return cmp.Compare(a.length, b.length)
	})
	// Sorted so, a span overlaps one before it exactly when it starts before the furthest end.
	var furthest vhdxSpan
	for i, r := range spans {
		if i > 0 && r.off < furthest.end() {
			return furthest, r, true
		}
		if i == 0 || r.end() > furthest.end() {
			furthest = r
		}
	}
	return vhdxSpan{}, vhdxSpan{}, false
}

// vhdxItem is a known metadata item found in the metadata table, and the bytes read of it.
type vhdxItem struct {
	kind   int // index in vhdxItems
	off    uint64
	length uint32
	data   []byte
}

// vhdxMetadata reads the metadata table and, in file order, the known items it lists. It returns
// the items found, indexed like vhdxItems (nil when absent).
func vhdxMetadata(s *src, f *finding, meta *vhdxSpan) ([]*vhdxItem, error) {
	hdr, err := s.at(int64(meta.off), 32)
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	if string(hdr[:8]) != "metadata" {
		f.add(CodeInvalidHeader, "no metadata table signature at %d", meta.off)
		return nil, nil
	}
	n := int(le.Uint16(hdr[10:]))
	if n > vhdxMaxEntries {
		f.add(CodeInvalidHeader, "metadata table has %d entries, more than %d", n, vhdxMaxEntries)
		n = vhdxMaxEntries
	}
	r := &lastRead{s: s}
	var table []byte
	if n > 0 {
		if table, err = r.at(int64(meta.off)+32, n*32); err != nil {
			return nil, err
		}
	}
	items := make([]*vhdxItem, len(vhdxItems))
	var toRead []*vhdxItem
	for i := range n {
		e := table[32*i : 32*i+32]
		id := [16]byte(e[:16])
		it := &vhdxItem{kind: -1, off: uint64(le.Uint32(e[16:])), length: le.Uint32(e[20:])}
		for k, known := range vhdxItems {
			if id == known.id {
				it.kind = k
			}
		}
		if it.kind < 0 {
			if le.Uint32(e[24:])&vhdxItemRequired != 0 {
				f.add(CodeUnknownFeatures, "unknown required metadata item %s", guidString(e[:16]))
			}
			continue
		}
		known := vhdxItems[it.kind]
		switch {
		case items[it.kind] != nil:
			f.add(CodeInvalidHeader, "metadata item %s appears twice", known.name)
			continue
		case it.off+uint64(it.length) > meta.length:
			f.add(CodeInvalidHeader, "metadata item %s at %d (%d bytes) lies outside the metadata region of %d bytes", known.name, it.off, it.length, meta.length)
		case known.size > 0 && it.length < uint32(known.size):
			f.add(CodeInvalidHeader, "metadata item %s is %d bytes, shorter than %d", known.name, it.length, known.size)
		case known.size != 0 && it.length > 0:
			toRead = append(toRead, it)
		}
		items[it.kind] = it
	}
	slices.SortStableFunc(toRead, func(a, b *vhdxItem) int { return cmp.Compare(a.off, b.off) })
	for _, it := range toRead {
		want := vhdxItems[it.kind].size
		if want < 0 {
			want = int(min(it.length, vhdxMaxItem))
		}
		b, err := r.at(int64(meta.off+it.off), want)
		switch {
		case err == nil:
			it.data = b
		case errors.Is(err, errBehind):
			f.add(CodeInvalidHeader, "metadata item %s at %d overlaps data read before it", vhdxItems[it.kind].name, it.off)
		default:
			return items, err
		}
	}
	return items, nil
}

// vhdxCheckItems checks the metadata items and fills in the details and the virtual size.
func vhdxCheckItems(f *finding, d *VHDXDetails, items []*vhdxItem, bat *vhdxSpan) {
	for k, it := range items {
		if it == nil && k != itemParentLocator {
			f.add(CodeInvalidHeader, "required metadata item %s is missing", vhdxItems[k].name)
		}
	}
	le := binary.LittleEndian
	data := func(k int) []byte {
		if items[k] == nil {
			return nil
		}
		return items[k].data
	}
	bsOK, lssOK := false, false
	if p := data(itemFileParameters); p != nil {
		d.BlockSize = le.Uint32(p)
		flags := le.Uint32(p[4:])
		d.Subformat = "dynamic"
		if flags&vhdxLeaveAllocated != 0 {
			d.Subformat = "fixed"
		}
		d.HasParent = flags&vhdxHasParent != 0
		bs := d.BlockSize
		if bsOK = bs >= 1<<20 && bs <= 256<<20 && bs&(bs-1) == 0; !bsOK {
			f.add(CodeInvalidHeader, "block size %d is not a power of two from 1 MiB to 256 MiB", bs)
		}
	}
	if p := data(itemLogicalSector); p != nil {
		d.LogicalSectorSize = le.Uint32(p)
		if lssOK = d.LogicalSectorSize == 512 || d.LogicalSectorSize == 4096; !lssOK {
			f.add(CodeInvalidHeader, "logical sector size %d is neither 512 nor 4096", d.LogicalSectorSize)
		}
	}
	if p := data(itemPhysicalSector); p != nil {
		d.PhysicalSectorSize = le.Uint32(p)
		if d.PhysicalSectorSize != 512 && d.PhysicalSectorSize != 4096 {
			f.add(CodeInvalidHeader, "physical sector size %d is neither 512 nor 4096", d.PhysicalSectorSize)
		}
	}
	if p := data(itemVirtualSize); p != nil {
		vds := le.Uint64(p)
		switch {
		case vds == 0:
			f.add(CodeInvalidHeader, "virtual disk size is 0")
		case vds > vhdxMaxDiskSize:
			f.add(CodeInvalidHeader, "virtual disk size %d exceeds 64 TiB", vds)
		default:
			if lssOK && vds%uint64(d.LogicalSectorSize) != 0 {
				f.add(CodeInvalidHeader, "virtual disk size %d is not a multiple of the logical sector size %d", vds, d.LogicalSectorSize)
			}
			f.vsize = int64(vds &^ 511) // qemu counts whole sectors
			if bsOK && lssOK && !d.HasParent && bat != nil {
				// As qemu: one BAT entry per data block, plus one per chunk of blocks for the
				// sector bitmaps.
				blocks := (vds + uint64(d.BlockSize) - 1) / uint64(d.BlockSize)
				chunk := (1 << 23) * uint64(d.LogicalSectorSize) / uint64(d.BlockSize)
				if need := blocks + (blocks-1)/chunk; need > bat.length/8 {
					f.add(CodeInvalidHeader, "BAT region of %d bytes cannot hold the %d entries the disk needs", bat.length, need)
				}
			}
		}
	}
	loc := items[itemParentLocator]
	if loc != nil && loc.data != nil {
		d.ParentLocator = vhdxParentEntries(f, loc.data)
	}
	if d.HasParent || loc != nil {
		detail := "differencing disk"
		if len(d.ParentLocator) > 0 {
			detail += " with parent locator " + strings.Join(d.ParentLocator, ", ")
		}
		f.add(CodeBackingFile, "%s", detail)
	}
	if d.HasParent && loc == nil {
		f.add(CodeInvalidHeader, "differencing disk without a parent locator")
	}
}

// vhdxParentEntries decodes a parent locator's key-value entries as "key=value".
func vhdxParentEntries(f *finding, p []byte) []string {
	if len(p) < 20 {
		f.add(CodeInvalidHeader, "parent locator of %d bytes is too short", len(p))
		return nil
	}
	le := binary.LittleEndian
	n := int(le.Uint16(p[18:]))
	if room := (len(p) - 20) / 12; n > room {
		f.add(CodeInvalidHeader, "parent locator lists %d entries, its %d bytes hold %d", n, len(p), room)
		n = room
	}
	var out []string
	outside := 0
	for i := range n {
		e := p[20+12*i:]
		ko, vo := uint64(le.Uint32(e)), uint64(le.Uint32(e[4:]))
		kl, vl := uint64(le.Uint16(e[8:])), uint64(le.Uint16(e[10:]))
		switch {
		case ko+kl > uint64(len(p)) || vo+vl > uint64(len(p)):
			outside++
		case len(out) < vhdxMaxLocatorKeys:
			out = append(out, utf16Name(p[ko:ko+kl], le)+"="+utf16Name(p[vo:vo+vl], le))
		}
	}
	if outside > 0 {
		f.add(CodeInvalidHeader, "%d parent locator entries lie outside the locator", outside)
	}
	return out
}

// lastRead serves a read from the one before it when it lies inside it, so that structures
// sharing bytes are read once and in file order.
type lastRead struct {
	s   *src
	off int64
	b   []byte
}

func (r *lastRead) at(off int64, n int) ([]byte, error) {
	if off >= r.off && off+int64(n) <= r.off+int64(len(r.b)) {
		return r.b[off-r.off : off-r.off+int64(n)], nil
	}
	b, err := r.s.at(off, n)
	if err == nil {
		r.off, r.b = off, b
	}
	return b, err
}

// vhdxCRC is the CRC-32C of a header or region table with its checksum field (bytes 4-7)
// taken as zero.
func vhdxCRC(b []byte) uint32 {
	c := crc32.Update(0, castagnoli, b[:4])
	c = crc32.Update(c, castagnoli, make([]byte, 4))
	return crc32.Update(c, castagnoli, b[8:])
}

// guid returns the stored form of a GUID written as text.
func guid(text string) [16]byte {
	b, err := hex.DecodeString(strings.ReplaceAll(text, "-", ""))
	if err != nil || len(b) != 16 {
		panic("inspect: bad GUID constant " + text)
	}
	var g [16]byte
	copy(g[:], b)
	slices.Reverse(g[0:4])
	slices.Reverse(g[4:6])
	slices.Reverse(g[6:8])
	return g
}
