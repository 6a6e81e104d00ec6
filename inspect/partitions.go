package inspect

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
)

// PartitionTable describes the MBR or GPT at the start of a disk: a detail of a raw disk or of a
// hybrid ISO, never a format of its own.
type PartitionTable struct {
	// Scheme is "mbr", or "gpt" when a GPT header is at LBA 1.
	Scheme string `json:"scheme"`
	// SectorSize is the logical sector size the table was read with (512, or 4096 for a GPT
	// found at byte 4096).
	SectorSize int `json:"sector_size"`
	// DiskGUID is the GPT disk GUID.
	DiskGUID string `json:"disk_guid,omitempty"`
	// DiskSignature is the MBR disk signature (the 32-bit value at byte 440), in hex.
	DiskSignature string `json:"disk_signature,omitempty"`
	// Hybrid is set when a GPT disk's MBR describes partitions besides the protective 0xEE
	// entry, or has no protective entry at all (as hybrid ISOs made by isohybrid do).
	Hybrid bool `json:"hybrid,omitempty"`
	// Partitions are the MBR primary partitions, or the used GPT entries.
	Partitions []Partition `json:"partitions"`
	// MBRPartitions are the MBR entries of a hybrid GPT disk.
	MBRPartitions []Partition `json:"mbr_partitions,omitempty"`
}

// Partition is one entry of a partition table.
type Partition struct {
	// Index is the 1-based slot of the entry in its table.
	Index int `json:"index"`
	// Type is the MBR type byte ("0x83") or the GPT partition type GUID.
	Type string `json:"type"`
	// TypeName names well-known types ("Linux filesystem", "EFI System", ...).
	TypeName string `json:"type_name,omitempty"`
	// GUID is the GPT unique partition GUID.
	GUID string `json:"guid,omitempty"`
	// Start and Size are in bytes.
	Start int64 `json:"start"`
	Size  int64 `json:"size"`
	// Bootable is the MBR active flag (0x80), or GPT attribute bit 2 (legacy BIOS bootable).
	Bootable bool `json:"bootable,omitempty"`
	// Name is the GPT partition name.
	Name string `json:"name,omitempty"`
}

const (
	mbrSize           = 512
	mbrEntries        = 446
	mbrProtective     = 0xee
	gptSignature      = "EFI PART"
	gptMinHeader      = 92
	gptMaxHeader      = 512
	gptMaxEntries     = 1024
	gptMinEntrySize   = 128
	gptMaxEntrySize   = 1024
	partsMaxProblems  = 16
	gptAttrLegacyBoot = 1 << 2
)

// partProbe is the state of one run of probePartitions.
type partProbe struct {
	s *src
	f *finding
	t *PartitionTable
	// iso is set when the disk holds an ISO 9660 or UDF volume (a hybrid ISO). There a
	// partition may lie wholly inside another, and a GPT partition may start at LBA 0, before
	// the first usable LBA: isohybrid and xorriso's -isohybrid-gpt-basdat give the whole ISO
	// a partition with the EFI partition inside it, as Debian's installer ISOs have.
	iso bool
}

// holdsISO reports whether the head holds an ISO 9660 or UDF volume descriptor at sector 16.
func holdsISO(s *src) (bool, error) {
	b, err := s.at(isoDescStart, 7)
	if err != nil {
		return false, err
	}
	switch string(b[1:6]) {
	case "CD001", "BEA01":
		return true, nil
	}
	return false, nil
}

// bad records a partition-table violation, keeping the list short for absurd tables.
func (p *partProbe) bad(format string, args ...any) {
	switch n := len(p.f.problems); {
	case n < partsMaxProblems:
		p.f.add(CodeInvalidPartitionTable, format, args...)
	case n == partsMaxProblems:
		p.f.add(CodeInvalidPartitionTable, "further partition-table problems not listed")
	}
}

// mbrEntry is one of the four primary MBR entries.
type mbrEntry struct {
	index       int
	boot, typ   byte
	start, size uint64 // in sectors
}

// probePartitions reads the MBR in sector 0 and, when one is there, the GPT at LBA 1 with its
// entries and its backup at the last LBA. It returns a finding with format "" whose details
// are the *PartitionTable, or nil when sector 0 is not a partition table (no 0x55AA signature,
// or a FAT, NTFS or exFAT boot sector).
func probePartitions(s *src) (*finding, error) {
	b, err := s.at(0, mbrSize)
	if err != nil {
		if errors.Is(err, errPending) {
			return nil, err
		}
		return nil, nil // shorter than a sector: no partition table
	}
	if b[510] != 0x55 || b[511] != 0xaa || isFSBootSector(b) {
		return nil, nil
	}
	t := &PartitionTable{Scheme: "mbr", SectorSize: 512, Partitions: []Partition{}}
	p := &partProbe{s: s, f: newFinding("", t), t: t}
	if p.iso, err = holdsISO(s); errors.Is(err, errPending) {
		return nil, err
	}
	if sig := binary.LittleEndian.Uint32(b[440:]); sig != 0 {
		t.DiskSignature = fmt.Sprintf("0x%08x", sig)
	}

	var ents []mbrEntry
	protective := false
	for i := range 4 {
		e := b[mbrEntries+16*i : mbrEntries+16*(i+1)]
		me := mbrEntry{
			index: i + 1,
			boot:  e[0],
			typ:   e[4],
			start: uint64(binary.LittleEndian.Uint32(e[8:])),
			size:  uint64(binary.LittleEndian.Uint32(e[12:])),
		}
		if me.boot != 0 && me.boot != 0x80 {
			p.bad("MBR entry %d has boot flag %#02x (must be 0x00 or 0x80)", me.index, me.boot)
		}
		if me.typ == 0 && me.size == 0 {
			continue
		}
		protective = protective || me.typ == mbrProtective
		ents = append(ents, me)
	}
	p.checkMBROverlaps(ents)

	// A GPT header sits at LBA 1: byte 512, or byte 4096 on a disk of 4 KiB sectors (whose
	// MBR counts in 4 KiB sectors too).
	g := &gptProbe{p: p, ss: 512}
	h, err := s.at(512, gptMaxHeader)
	if errors.Is(err, errPending) {
		return nil, err
	}
	if len(h) < 8 || string(h[:8]) != gptSignature {
		h, err = s.at(4096, gptMaxHeader)
		if errors.Is(err, errPending) {
			return nil, err
		}
		if !protective || len(h) < 8 || string(h[:8]) != gptSignature {
			h = nil
		} else {
			g.ss = 4096
		}
	}
	mbrParts := make([]Partition, 0, len(ents))
	for _, e := range ents {
		mbrParts = append(mbrParts, Partition{
			Index:    e.index,
			Type:     fmt.Sprintf("0x%02x", e.typ),
			TypeName: mbrTypeNames[e.typ],
			Start:    int64(e.start) * int64(g.ss),
			Size:     int64(e.size) * int64(g.ss),
			Bootable: e.boot == 0x80,
		})
	}
	t.Partitions = mbrParts
	if h == nil {
		if protective {
			p.bad("MBR has a GPT protective entry (type 0xee) but there is no GPT header at LBA 1")
		}
		// An MBR disk: its partitions must lie inside the disk.
		size, err := s.size()
		if err != nil {
			return nil, err
		}
		p.checkMBRInside(ents, size, 512, false)
		return p.f, nil
	}

	t.Scheme = "gpt"
	t.SectorSize = g.ss
	if !protective || len(ents) > 1 {
		t.Hybrid = true
		t.MBRPartitions = mbrParts
	}
	t.Partitions = []Partition{}
	if err := g.primary(h); err != nil {
		return nil, err
	}
	size, err := s.size()
	if err != nil {
		return nil, err
	}
	p.checkMBRInside(ents, size, g.ss, true)
	if err := g.backup(size); err != nil {
		return nil, err
	}
	return p.f, nil
}

// isFSBootSector reports whether sector 0 is the boot sector of a FAT, NTFS or exFAT filesystem
// rather than an MBR: such a filesystem image is raw, and its 0x55AA is no partition table.
func isFSBootSector(b []byte) bool {
	if b[0x10] == 2 && b[0x15] == 0xf8 { // oslo's FAT VBR rule (bug #2079850)
		return true
	}
	switch string(b[3:11]) {
	case "NTFS    ", "EXFAT   ":
		return true
	}
	// A sane FAT BIOS parameter block behind an x86 jump.
	if !(b[0] == 0xeb && b[2] == 0x90) && b[0] != 0xe9 {
		return false
	}
	bps := binary.LittleEndian.Uint16(b[11:])
	spc := b[13]
	reserved := binary.LittleEndian.Uint16(b[14:])
	fats := b[16]
	media := b[21]
	return (bps == 512 || bps == 1024 || bps == 2048 || bps == 4096) &&
		spc != 0 && spc&(spc-1) == 0 &&
		reserved != 0 && (fats == 1 || fats == 2) &&
		(media == 0xf0 || media >= 0xf8)
}

// checkMBROverlaps reports MBR partitions that overlap (on a hybrid ISO, that overlap without
// one holding the other).
func (p *partProbe) checkMBROverlaps(ents []mbrEntry) {
	for i, a := range ents {
		for _, b := range ents[i+1:] {
			if a.size == 0 || b.size == 0 {
				continue
			}
			aEnd, bEnd := a.start+a.size, b.start+b.size
			if a.start >= bEnd || b.start >= aEnd {
				continue
			}
			if p.iso && ((a.start <= b.start && bEnd <= aEnd) || (b.start <= a.start && aEnd <= bEnd)) {
				continue
			}
			p.bad("MBR partitions %d (sectors %d-%d) and %d (sectors %d-%d) overlap",
				a.index, a.start, aEnd-1, b.index, b.start, bEnd-1)
		}
	}
}

// checkMBRInside reports MBR partitions that end past the end of the disk. A protective entry
// may say 0xFFFFFFFF sectors (the UEFI value for a disk too large to describe).
func (p *partProbe) checkMBRInside(ents []mbrEntry, size int64, ss int, gpt bool) {
	sectors := uint64(size) / uint64(ss)
	for _, e := range ents {
		if e.typ == mbrProtective && e.size == 0xffffffff {
			continue
		}
		if e.start+e.size > sectors {
			what := "MBR partition"
			if gpt {
				what = "MBR entry"
			}
			p.bad("%s %d (sectors %d-%d) ends past the end of the disk (%d sectors)",
				what, e.index, e.start, e.start+e.size-1, sectors)
		}
	}
}

// gptProbe checks a GPT.
type gptProbe struct {
	p  *partProbe
	ss int // sector size
	// The primary header's fields.
	altLBA, firstUsable, lastUsable uint64
	diskGUID                        [16]byte
	count, entSize, entCRC          uint32
	valid                           bool // the header's fields could be parsed
}

// gptHeader is a parsed GPT header.
type gptHeader struct {
	myLBA, altLBA, firstUsable, lastUsable, entLBA uint64
	diskGUID                                       [16]byte
	count, entSize, entCRC                         uint32
}

// header checks and parses the header in h (at least gptMinHeader bytes), recording problems
// with the name what ("primary" or "backup").
func (g *gptProbe) header(h []byte, what string) (gptHeader, bool) {
	p := g.p
	le := binary.LittleEndian
	if len(h) < gptMinHeader {
		p.bad("%s GPT header is cut short by the end of the data", what)
		return gptHeader{}, false
	}
	if rev := le.Uint32(h[8:]); rev>>16 != 1 {
		p.bad("%s GPT header: revision %#08x is not 1.x", what, rev)
	}
	hsize := le.Uint32(h[12:])
	switch {
	case hsize < gptMinHeader || hsize > gptMaxHeader || int(hsize) > len(h):
		p.bad("%s GPT header: header size %d out of range %d-%d", what, hsize, gptMinHeader, gptMaxHeader)
	default:
		c := bytes.Clone(h[:hsize])
		clear(c[16:20])
		if sum, want := crc32.ChecksumIEEE(c), le.Uint32(h[16:]); sum != want {
			p.bad("%s GPT header: CRC32 %#08x, computed %#08x", what, want, sum)
		}
	}
	gh := gptHeader{
		myLBA:       le.Uint64(h[24:]),
		altLBA:      le.Uint64(h[32:]),
		firstUsable: le.Uint64(h[40:]),
		lastUsable:  le.Uint64(h[48:]),
		entLBA:      le.Uint64(h[72:]),
		count:       le.Uint32(h[80:]),
		entSize:     le.Uint32(h[84:]),
		entCRC:      le.Uint32(h[88:]),
	}
	copy(gh.diskGUID[:], h[56:72])
	if gh.firstUsable > gh.lastUsable {
		p.bad("%s GPT header: first usable LBA %d is after last usable LBA %d", what, gh.firstUsable, gh.lastUsable)
	}
	if gh.count > gptMaxEntries {
		p.bad("%s GPT header: %d partition entries, more than %d", what, gh.count, gptMaxEntries)
	}
	if gh.entSize < gptMinEntrySize || gh.entSize > gptMaxEntrySize || gh.entSize%8 != 0 {
		p.bad("%s GPT header: partition entry size %d is not a multiple of 8 in the range %d-%d",
			what, gh.entSize, gptMinEntrySize, gptMaxEntrySize)
	}
	return gh, true
}

// entriesSectors is the number of sectors the entry array of gh takes (of its first
// gptMaxEntries entries), when its entry size is in range.
func (g *gptProbe) entriesSectors(gh gptHeader) (uint64, bool) {
	if gh.entSize < gptMinEntrySize || gh.entSize > gptMaxEntrySize || gh.entSize%8 != 0 {
		return 0, false
	}
	n := uint64(min(gh.count, gptMaxEntries)) * uint64(gh.entSize)
	return (n + uint64(g.ss) - 1) / uint64(g.ss), true
}

// primary checks the primary header h (read at LBA 1) and reads its partition entries.
func (g *gptProbe) primary(h []byte) error {
	p := g.p
	gh, ok := g.header(h, "primary")
	if !ok {
		return nil
	}
	g.valid = true
	g.altLBA, g.firstUsable, g.lastUsable = gh.altLBA, gh.firstUsable, gh.lastUsable
	g.diskGUID, g.count, g.entSize, g.entCRC = gh.diskGUID, gh.count, gh.entSize, gh.entCRC
	p.t.DiskGUID = guidString(gh.diskGUID[:])
	if gh.myLBA != 1 {
		p.bad("primary GPT header: its own LBA is %d, not 1", gh.myLBA)
	}
	if gh.entLBA < 2 {
		p.bad("primary GPT header: partition entries at LBA %d, inside the MBR or the header", gh.entLBA)
		return nil
	}
	n, ok := g.entriesSectors(gh)
	if !ok {
		return nil // already reported: the entries cannot be read
	}
	if gh.entLBA > 1<<40 {
		p.bad("primary GPT header: partition entries at LBA %d lie past any disk", gh.entLBA)
		return nil
	}
	if gh.entLBA+n > gh.firstUsable {
		p.bad("primary GPT header: partition entries (LBA %d, %d sectors) overlap the usable area from LBA %d",
			gh.entLBA, n, gh.firstUsable)
		return nil
	}
	count := min(gh.count, gptMaxEntries) // more is reported: read the first ones
	ents, err := p.s.at(int64(gh.entLBA)*int64(g.ss), int(count)*int(gh.entSize))
	switch {
	case err == nil:
	case errors.Is(err, errPending):
		return err
	case isTruncated(err):
		p.bad("GPT partition entries at LBA %d lie past the end of the data", gh.entLBA)
		return nil
	default:
		p.bad("GPT partition entries at LBA %d cannot be read: %v", gh.entLBA, err)
		return nil
	}
	if sum := crc32.ChecksumIEEE(ents); count == gh.count && sum != gh.entCRC {
		p.bad("GPT partition entries: CRC32 %#08x, computed %#08x", gh.entCRC, sum)
	}
	g.entries(ents, int(count), gh)
	return nil
}

// span is a partition's sectors [start, end].
type span struct {
	index      int
	start, end uint64
}

// entries lists the used partition entries and checks they lie in the usable area without
// overlapping.
func (g *gptProbe) entries(b []byte, count int, gh gptHeader) {
	p := g.p
	le := binary.LittleEndian
	var spans []span
	for i := range count {
		e := b[i*int(gh.entSize) : (i+1)*int(gh.entSize)]
		if isZero(e[:16]) {
			continue
		}
		start, end := le.Uint64(e[32:]), le.Uint64(e[40:])
		typ := guidString(e[:16])
		part := Partition{
			Index:    i + 1,
			Type:     typ,
			TypeName: gptTypeNames[typ],
			GUID:     guidString(e[16:32]),
			Start:    mulSat(start, g.ss),
			Bootable: le.Uint64(e[48:])&gptAttrLegacyBoot != 0,
			Name:     utf16Name(e[56:128], binary.LittleEndian),
		}
		if end >= start {
			part.Size = mulSat(end-start+1, g.ss)
		}
		p.t.Partitions = append(p.t.Partitions, part)
		switch {
		case end < start:
			p.bad("GPT partition %d ends (LBA %d) before it starts (LBA %d)", i+1, end, start)
			continue
		case (start < gh.firstUsable && !(p.iso && start == 0)) || end > gh.lastUsable:
			p.bad("GPT partition %d (LBA %d-%d) lies outside the usable LBAs %d-%d",
				i+1, start, end, gh.firstUsable, gh.lastUsable)
		}
		spans = append(spans, span{i + 1, start, end})
	}
	slices.SortFunc(spans, func(a, b span) int {
		switch {
		case a.start < b.start:
			return -1
		case a.start > b.start:
			return 1
		case a.end > b.end:
			return -1
		case a.end < b.end:
			return 1
		}
		return a.index - b.index
	})
	// Sorted by start, and by end backwards among equal starts, a partition overlaps when it
	// starts at or before the end of an open one. open is a chain of partitions each inside
	// the one before (a single partition but on a hybrid ISO).
	var open []span
	for _, s := range spans {
		for len(open) > 0 && open[len(open)-1].end < s.start {
			open = open[:len(open)-1]
		}
		if len(open) == 0 {
			open = append(open, s)
			continue
		}
		top := open[len(open)-1]
		if !p.iso || s.end > top.end {
			p.bad("GPT partitions %d (LBA %d-%d) and %d (LBA %d-%d) overlap",
				top.index, top.start, top.end, s.index, s.start, s.end)
		}
		if s.end > top.end {
			open[len(open)-1] = s
		} else {
			open = append(open, s)
		}
	}
}

// backup checks the primary header against the disk size and the backup header at the last
// LBA, read from the tail.
func (g *gptProbe) backup(size int64) error {
	p := g.p
	if !g.valid {
		return nil
	}
	ss := int64(g.ss)
	if size/ss < 3 {
		p.bad("disk of %d bytes is too small for a GPT", size)
		return nil
	}
	last := uint64(size/ss - 1)
	if g.altLBA != last {
		p.bad("primary GPT header puts the backup header at LBA %d, but the last LBA is %d", g.altLBA, last)
	}
	if g.lastUsable >= last {
		p.bad("GPT last usable LBA %d is past the end of the disk (last LBA %d)", g.lastUsable, last)
	}
	tail, toff, err := p.s.tail(tailSize)
	if err != nil {
		if errors.Is(err, errPending) {
			return err
		}
		p.bad("backup GPT header cannot be read: %v", err)
		return nil
	}
	boff := int64(last) * ss
	if boff < toff || boff+gptMaxHeader > toff+int64(len(tail)) {
		p.bad("backup GPT header at LBA %d lies outside the last %d bytes of the data", last, tailSize)
		return nil
	}
	bh := tail[boff-toff : boff-toff+gptMaxHeader]
	if string(bh[:8]) != gptSignature {
		p.bad("no backup GPT header at the last LBA %d", last)
		return nil
	}
	gh, ok := g.header(bh, "backup")
	if !ok {
		return nil
	}
	if gh.myLBA != last {
		p.bad("backup GPT header: its own LBA is %d, not the last LBA %d", gh.myLBA, last)
	}
	if gh.altLBA != 1 {
		p.bad("backup GPT header: the primary header is at LBA %d, not 1", gh.altLBA)
	}
	if gh.firstUsable != g.firstUsable || gh.lastUsable != g.lastUsable || gh.diskGUID != g.diskGUID ||
		gh.count != g.count || gh.entSize != g.entSize || gh.entCRC != g.entCRC {
		p.bad("backup GPT header disagrees with the primary header (usable LBAs, disk GUID or partition entries)")
	}
	if n, ok := g.entriesSectors(gh); ok && (gh.entLBA <= gh.lastUsable || gh.entLBA > last || n > last-gh.entLBA) {
		p.bad("backup GPT header: partition entries (LBA %d, %d sectors) are not between the last usable LBA %d and the backup header",
			gh.entLBA, n, gh.lastUsable)
	}
	return nil
}

// mulSat returns n×ss in bytes, saturating at the largest int64.
func mulSat(n uint64, ss int) int64 {
	if n > (1<<63-1)/uint64(ss) {
		return 1<<63 - 1
	}
	return int64(n) * int64(ss)
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

var mbrTypeNames = map[byte]string{
	0x01: "FAT12",
	0x04: "FAT16 <32M",
	0x05: "Extended",
	0x06: "FAT16",
	0x07: "HPFS/NTFS/exFAT",
	0x0b: "W95 FAT32",
	0x0c: "W95 FAT32 (LBA)",
	0x0e: "W95 FAT16 (LBA)",
	0x0f: "W95 Extended (LBA)",
	0x17: "Hidden HPFS/NTFS",
	0x82: "Linux swap",
	0x83: "Linux",
	0x85: "Linux extended",
	0x8e: "Linux LVM",
	0xa5: "FreeBSD",
	0xcd: "ISO 9660 (hybrid)",
	0xee: "GPT protective",
	0xef: "EFI System",
	0xfd: "Linux RAID autodetect",
}

var gptTypeNames = map[string]string{
	"C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "EFI System",
	"21686148-6449-6E6F-744E-656564454649": "BIOS boot",
	"024DEE41-33E7-11D3-9D69-0008C781F39F": "MBR partition scheme",
	"0FC63DAF-8483-4772-8E79-3D69D8477DE4": "Linux filesystem",
	"0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "Linux swap",
	"E6D6D379-F507-44C2-A23C-238F2A3DF928": "Linux LVM",
	"A19D880F-05FC-4D3B-A006-743F0F84911E": "Linux RAID",
	"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "Linux root (x86-64)",
	"B921B045-1DF0-41C3-AF44-4C6F280D3FAE": "Linux root (ARM64)",
	"BC13C2FF-59E6-4262-A352-B275FD6F7172": "Linux extended boot",
	"933AC7E1-2EB4-4F13-B844-0E14E2AEF915": "Linux home",
	"EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "Microsoft basic data",
	"E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "Microsoft reserved",
	"DE94BBA4-06D1-4D40-A16A-BFD50179D6AC": "Windows recovery environment",
	"516E7CB4-6ECF-11D6-8FF8-00022D09712B": "FreeBSD",
	"48465300-0000-11AA-AA11-00306543ECAC": "Apple HFS+",
}
