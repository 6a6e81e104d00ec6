package inspect

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// VMDKDetails are the facts of a VMDK: its descriptor and, for a sparse extent, its header.
type VMDKDetails struct {
	// CreateType is the descriptor's createType (monolithicSparse, streamOptimized,
	// monolithicFlat, twoGbMaxExtentSparse, …), or "" when there is none.
	CreateType string `json:"create_type"`
	// AdapterType is ddb.adapterType (ide, lsilogic, buslogic, legacyESX, …).
	AdapterType string `json:"adapter_type"`
	// HWVersion is ddb.virtualHWVersion.
	HWVersion string `json:"hw_version"`
	// Descriptor says where the descriptor is: "embedded" in a sparse extent, "file" for a
	// descriptor-only file, or "none".
	Descriptor string `json:"descriptor"`
	// Version is the sparse extent header version (0 for a descriptor-only file).
	Version   int    `json:"version,omitempty"`
	CID       string `json:"cid,omitempty"`
	ParentCID string `json:"parent_cid,omitempty"`
	// ParentFileNameHint is the parent link of a delta disk; it is never opened.
	ParentFileNameHint string `json:"parent_file_name_hint,omitempty"`
	// Compressed is set when grains are deflate-compressed (streamOptimized).
	Compressed bool `json:"compressed,omitempty"`
	// FooterAtEnd is set when the header defers its grain directory to a footer at the end.
	FooterAtEnd bool `json:"footer_at_end,omitempty"`
	// Extents are the descriptor's extent lines.
	Extents []VMDKExtent `json:"extents,omitempty"`
}

// VMDKExtent is one extent line of a VMDK descriptor.
type VMDKExtent struct {
	Access  string `json:"access"`
	Sectors int64  `json:"sectors"`
	Type    string `json:"type"`
	File    string `json:"file,omitempty"`
	Offset  int64  `json:"offset,omitempty"`
}

const (
	vmdkMagic      = "KDMV"
	vmdk3Magic     = "COWD"
	vmdkGDAtEnd    = ^uint64(0)
	vmdkDescMax    = 1<<20 - 1 // what qemu reads of a descriptor
	vmdkDescQemu   = 20 * 512  // what qemu reads at 0x200 for CIDs and the parent hint
	vmdkProbeBytes = 2048      // qemu's format probe window
	vmdkMaxExtents = 1024
	vmdkMaxSectors = 1 << 53 // keeps sectors × 512 inside int64
)

// vmdkSafeTypes are the createTypes whose data is all inside the one file (Glance's and Nova's
// default vmdk_allowed_types).
var vmdkSafeTypes = map[string]bool{"monolithicsparse": true, "streamoptimized": true}

// probeVMDK recognises sparse VMDK extents (with their embedded descriptor), the COWD extents of
// ESX, and descriptor-only text files.
func probeVMDK(s *src) (*finding, error) {
	h, err := s.at(0, vmdkProbeBytes)
	if err != nil && !isTruncated(err) {
		return nil, err
	}
	switch {
	case len(h) >= 4 && string(h[:4]) == vmdkMagic:
		return vmdkSparse(s, h, err)
	case len(h) >= 4 && string(h[:4]) == vmdk3Magic:
		return vmdkCOWD(h, err)
	case vmdkTextProbe(h):
		return vmdkText(s)
	}
	return nil, nil
}

// vmdkTextProbe says whether the first bytes are a descriptor file, by qemu's rule (after
// comments and blank lines, the first line is version=1, 2 or 3) or by OpenStack's (the first
// sector is printable text that mentions createType).
func vmdkTextProbe(h []byte) bool {
	for p := 0; p < len(h); {
		switch h[p] {
		case '#':
			i := bytes.IndexByte(h[p:], '\n')
			if i < 0 {
				p = len(h)
			} else {
				p += i + 1
			}
			continue
		case ' ':
			for p < len(h) && h[p] == ' ' {
				p++
			}
			if p < len(h) && h[p] == '\r' {
				p++
			}
			if p == len(h) || h[p] != '\n' {
				break
			}
			p++
			continue
		default:
			for _, v := range []string{"version=1\n", "version=2\n", "version=3\n", "version=1\r\n", "version=2\r\n", "version=3\r\n"} {
				if bytes.HasPrefix(h[p:], []byte(v)) {
					return true
				}
			}
		}
		break
	}
	first := h[:min(len(h), 512)]
	for _, c := range first {
		if (c < 0x20 || c > 0x7e) && c != '\n' && c != '\r' && c != '\t' {
			return false
		}
	}
	return bytes.Contains(bytes.ToLower(first), []byte("createtype"))
}

// vmdkText inspects a descriptor-only file: every extent it names is another file.
func vmdkText(s *src) (*finding, error) {
	d := &VMDKDetails{Descriptor: "file"}
	f := newFinding(VMDK, d)
	text, err := s.at(0, vmdkDescMax)
	if err != nil && !isTruncated(err) {
		return nil, err
	}
	desc := parseVMDKDescriptor(f, d, cstring(text))
	desc.checkExtents(f, d, true)
	f.vsize = desc.extentBytes()
	return f, nil
}

// vmdkSparse inspects a hosted sparse extent (KDMV): header, embedded descriptor, footer.
func vmdkSparse(s *src, h []byte, herr error) (*finding, error) {
	d := &VMDKDetails{Descriptor: "embedded"}
	f := newFinding(VMDK, d)
	if len(h) < 79 {
		return f, herr
	}
	hd := parseVMDKHeader(h)
	d.Version = int(min(hd.version, 1<<16))
	if hd.version < 1 || hd.version > 3 {
		f.add(CodeUnsupportedVersion, "sparse extent version %d is not 1, 2 or 3", hd.version)
		return f, nil
	}
	d.Compressed = hd.flags&(1<<16) != 0
	if d.Compressed && hd.compress != 1 {
		f.add(CodeInvalidHeader, "unknown grain compression algorithm %d", hd.compress)
	}
	if hd.capacity > vmdkMaxSectors {
		f.add(CodeInvalidHeader, "capacity of %d sectors is too large", hd.capacity)
	} else if hd.capacity > 0 {
		f.vsize = int64(hd.capacity) * 512
	}
	if hd.grain == 0 || hd.grain&(hd.grain-1) != 0 || hd.grain > 0x200000 {
		f.add(CodeInvalidHeader, "grain size of %d sectors is not a power of two up to 1 GiB", hd.grain)
	}
	if hd.numGTEs == 0 || hd.numGTEs > 1<<16 {
		f.add(CodeInvalidHeader, "%d grain table entries per table is out of range", hd.numGTEs)
	}

	// qemu reads the descriptor, the CIDs and the parent hint at 0x200 whatever the header
	// says, so a descriptor anywhere else would show qemu one thing and us another.
	var desc *vmdkDescriptor
	switch {
	case hd.descOffset == 0 && hd.descSize == 0:
		d.Descriptor = "none"
		f.add(CodeMalformedDescriptor, "sparse extent has no embedded descriptor (a piece of a multi-file VMDK)")
	case hd.descOffset != 1:
		f.add(CodeInvalidHeader, "descriptor at sector %d, not at sector 1 where qemu reads it", hd.descOffset)
	case hd.descSize == 0 || hd.descSize > vmdkDescMax/512+1:
		f.add(CodeInvalidHeader, "descriptor size of %d sectors is out of range", hd.descSize)
	default:
		n := min(max(int(hd.descSize)*512, vmdkDescQemu), vmdkDescMax)
		text, err := s.at(0x200, n)
		if err != nil && !isTruncated(err) {
			return nil, err
		}
		if err != nil && len(text) < int(hd.descSize)*512 {
			f.add(CodeTruncated, "descriptor: %v", err)
		}
		desc = parseVMDKDescriptor(f, d, cstring(text))
	}

	// With capacity 0 qemu opens the embedded descriptor's extents as if it were a descriptor
	// file; otherwise the file itself is the only extent and qemu ignores the extent lines.
	if desc != nil {
		desc.checkExtents(f, d, hd.capacity == 0)
		if hd.capacity == 0 {
			f.vsize = desc.extentBytes()
		}
	}

	if hd.gdOffset == vmdkGDAtEnd {
		d.FooterAtEnd = true
		if ft, ok, err := vmdkFooter(s, f, hd); err != nil {
			return f, err
		} else if ok {
			hd = ft // qemu reads the grain directory and capacity from the footer
		}
	}
	size, err := s.size()
	if err != nil {
		return f, err
	}
	sectors := uint64(size) / 512
	if hd.gdOffset != vmdkGDAtEnd && hd.gdOffset >= sectors && hd.capacity > 0 {
		f.add(CodeTruncated, "grain directory at sector %d lies past the end of the data (%d sectors)", hd.gdOffset, sectors)
	}
	if hd.flags&2 != 0 && hd.rgdOffset != vmdkGDAtEnd && hd.rgdOffset >= sectors && hd.capacity > 0 {
		f.add(CodeTruncated, "redundant grain directory at sector %d lies past the end of the data", hd.rgdOffset)
	}
	return f, nil
}

type vmdkHeader struct {
	magic                   string
	version, flags, numGTEs uint32
	capacity, grain         uint64
	descOffset, descSize    uint64
	rgdOffset, gdOffset     uint64
	compress                uint16
}

func parseVMDKHeader(h []byte) vmdkHeader {
	le := binary.LittleEndian
	return vmdkHeader{
		magic:      string(h[:4]),
		version:    le.Uint32(h[4:]),
		flags:      le.Uint32(h[8:]),
		capacity:   le.Uint64(h[12:]),
		grain:      le.Uint64(h[20:]),
		descOffset: le.Uint64(h[28:]),
		descSize:   le.Uint64(h[36:]),
		numGTEs:    le.Uint32(h[44:]),
		rgdOffset:  le.Uint64(h[48:]),
		gdOffset:   le.Uint64(h[56:]),
		compress:   le.Uint16(h[77:]),
	}
}

// vmdkFooter checks the last 1536 bytes of a stream-optimized extent whose header defers to a
// footer: footer marker, footer (a copy of the header with the real grain directory), end of
// stream marker. It returns the footer when it is sound.
func vmdkFooter(s *src, f *finding, hd vmdkHeader) (vmdkHeader, bool, error) {
	t, _, err := s.tail(1536)
	if err != nil && !isTruncated(err) {
		return hd, false, err
	}
	if len(t) < 1536 {
		f.add(CodeInvalidFooter, "the header defers to a footer, but the data is only %d bytes", len(t))
		return hd, false, nil
	}
	marker, footer, eos := t[:512], t[512:1024], t[1024:]
	le := binary.LittleEndian
	zero := func(b []byte) bool { return bytes.Count(b, []byte{0}) == len(b) }
	ok := true
	fail := func(format string, args ...any) {
		f.add(CodeInvalidFooter, format, args...)
		ok = false
	}
	if le.Uint32(marker[8:]) != 0 || le.Uint32(marker[12:]) != 3 || !zero(marker[16:]) {
		fail("footer marker is invalid")
	}
	if !zero(eos) {
		fail("end-of-stream marker is invalid")
	}
	ft := parseVMDKHeader(footer)
	switch {
	case ft.magic != hd.magic || ft.version != hd.version:
		fail("footer signature or version does not match the header")
	case ft.descOffset != hd.descOffset || ft.descSize != hd.descSize:
		fail("footer specifies a different descriptor than the header")
	case ft.gdOffset == vmdkGDAtEnd:
		fail("footer defers to yet another footer")
	case ft.capacity != hd.capacity:
		fail("footer capacity %d differs from the header's %d", ft.capacity, hd.capacity)
	}
	return ft, ok, nil
}

// vmdkCOWD recognises an ESX COWD (vmfsSparse) extent: not something OpenStack accepts.
func vmdkCOWD(h []byte, herr error) (*finding, error) {
	d := &VMDKDetails{Descriptor: "none", CreateType: "vmfsSparse"}
	f := newFinding(VMDK, d)
	if len(h) < 16 {
		return f, herr
	}
	d.Version = int(min(binary.LittleEndian.Uint32(h[4:]), 1<<16))
	f.vsize = int64(binary.LittleEndian.Uint32(h[12:])) * 512
	f.add(CodeVMDKCreateType, "ESX COWD extent (vmfsSparse) is not monolithicSparse or streamOptimized")
	return f, nil
}

// vmdkDescriptor is what parseVMDKDescriptor found.
type vmdkDescriptor struct {
	extents []VMDKExtent
}

// parseVMDKDescriptor reads a descriptor's lines into d and records what is wrong on f. It
// reads it the way qemu does where qemu is lax (the first occurrence of a key anywhere in the
// text wins), and reports any text that would read differently line by line. It allocates
// little whatever the text holds: descriptors can be a megabyte of hostile lines.
func parseVMDKDescriptor(f *finding, d *VMDKDetails, text []byte) *vmdkDescriptor {
	desc := &vmdkDescriptor{}
	for _, c := range text {
		if c >= 0x80 {
			f.add(CodeMalformedDescriptor, "descriptor is not ASCII text")
			return desc
		}
	}
	var ct, cid, parentCID []byte
	var hasCT bool
	var bad []string
	lineNo := 0
	for rest := text; len(rest) > 0; {
		var line []byte
		line, rest, _ = bytes.Cut(rest, []byte{'\n'})
		lineNo++
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		if len(line) >= 3 && bytes.EqualFold(line[:3], []byte("ddb")) {
			k, v, _ := bytes.Cut(line, []byte("="))
			k = bytes.TrimSpace(k)
			switch {
			case bytes.EqualFold(k, []byte("ddb.adapterType")):
				d.AdapterType = unquote(v)
			case bytes.EqualFold(k, []byte("ddb.virtualHWVersion")):
				d.HWVersion = unquote(v)
			}
			continue
		}
		if e, ok := parseVMDKExtent(line); ok {
			if len(desc.extents) < vmdkMaxExtents {
				desc.extents = append(desc.extents, e)
			}
			continue
		}
		k, v, ok := bytes.Cut(line, []byte("="))
		k = bytes.TrimSpace(k)
		if !ok || len(k) == 0 || bytes.ContainsAny(k, " \t") {
			if len(bad) < 3 {
				bad = append(bad, fmt.Sprintf("line %d %q", lineNo, printable(line[:min(len(line), 60)])))
			}
			continue
		}
		var slot *[]byte
		switch {
		case bytes.EqualFold(k, []byte("createType")):
			slot, hasCT = &ct, true
		case bytes.EqualFold(k, []byte("CID")):
			slot = &cid
		case bytes.EqualFold(k, []byte("parentCID")):
			slot = &parentCID
		default:
			continue
		}
		if *slot != nil {
			f.add(CodeMalformedDescriptor, "descriptor sets %s twice", k)
			continue
		}
		*slot = bytes.Trim(bytes.TrimSpace(v), `"`)
		if *slot == nil {
			*slot = []byte{}
		}
	}
	if len(bad) > 0 {
		f.add(CodeMalformedDescriptor, "descriptor has lines that are no comment, key=value, ddb or extent: %s", strings.Join(bad, ", "))
	}

	d.CID = printable(cid)
	d.ParentCID = printable(parentCID)
	d.CreateType = printable(ct[:min(len(ct), 256)])
	// qemu takes the first "createType" anywhere in the text, comments included.
	if q, ok := qemuDescValue(text, []byte("createType"), 2); ok && !bytes.Equal(q, ct) {
		f.add(CodeMalformedDescriptor, "qemu would read createType %q, the descriptor's line says %q", printable(q), d.CreateType)
	}
	switch {
	case !hasCT:
		f.add(CodeMalformedDescriptor, "descriptor has no createType")
	case len(ct) >= 64:
		f.add(CodeMalformedDescriptor, "createType of %d characters", len(ct))
	case !vmdkSafeTypes[strings.ToLower(d.CreateType)]:
		f.add(CodeVMDKCreateType, "createType %q keeps data outside this file (allowed: monolithicSparse, streamOptimized)", d.CreateType)
	}
	// qemu opens whatever follows the first "parentFileNameHint" anywhere in the text.
	if i := indexFold(text, "parentfilenamehint"); i >= 0 {
		hint, _ := qemuDescValue(text[i:], text[i:i+len("parentFileNameHint")], 2)
		d.ParentFileNameHint = printable(hint)
		f.add(CodeBackingFile, "descriptor names a parent image %q", d.ParentFileNameHint)
	} else if p := strings.ToLower(d.ParentCID); p != "" && p != "ffffffff" {
		f.add(CodeBackingFile, "descriptor names a parent (parentCID=%s)", d.ParentCID)
	}
	return desc
}

// indexFold is the index of the first case-insensitive occurrence of the lower-case ASCII key
// in text, or -1.
func indexFold(text []byte, key string) int {
	for i := 0; i+len(key) <= len(text); i++ {
		if c := text[i] | 0x20; c == key[0] && bytes.EqualFold(text[i:i+len(key)], []byte(key)) {
			return i
		}
	}
	return -1
}

// qemuDescValue reads a descriptor value the way qemu's vmdk_parse_description does: find the
// first occurrence of key, skip skip characters, take everything up to the next quote.
func qemuDescValue(text, key []byte, skip int) ([]byte, bool) {
	i := bytes.Index(text, key)
	if i < 0 {
		return nil, false
	}
	rest := text[min(i+len(key)+skip, len(text)):]
	if j := bytes.IndexByte(rest, '"'); j >= 0 {
		rest = rest[:j]
	}
	return rest[:min(len(rest), 1024)], true
}

// parseVMDKExtent parses `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`.
func parseVMDKExtent(line []byte) (VMDKExtent, bool) {
	access, rest, _ := bytes.Cut(line, []byte(" "))
	if !bytes.EqualFold(access, []byte("RW")) && !bytes.EqualFold(access, []byte("RDONLY")) && !bytes.EqualFold(access, []byte("NOACCESS")) {
		return VMDKExtent{}, false
	}
	e := VMDKExtent{Access: string(access)}
	fields := bytes.Fields(rest)
	if len(fields) < 2 {
		e.Type = "?"
		return e, true
	}
	n, err := strconv.ParseInt(string(fields[0]), 10, 64)
	if err != nil || n < 0 || n > vmdkMaxSectors {
		n = -1
	}
	e.Sectors = n
	e.Type = printable(fields[1][:min(len(fields[1]), 16)])
	if q := bytes.IndexByte(rest, '"'); q >= 0 {
		name := rest[q+1:]
		var after []byte
		if r := bytes.IndexByte(name, '"'); r >= 0 {
			name, after = name[:r], name[r+1:]
		}
		e.File = printable(name[:min(len(name), 1024)])
		if o, err := strconv.ParseInt(string(bytes.TrimSpace(after)), 10, 64); err == nil {
			e.Offset = o
		}
	}
	return e, true
}

// checkExtents reports the extents that lie outside the file. external says every named
// extent is another file (a descriptor file, or a header qemu treats as one); otherwise the
// one SPARSE extent of a monolithic descriptor is the file itself.
func (desc *vmdkDescriptor) checkExtents(f *finding, d *VMDKDetails, external bool) {
	d.Extents = desc.extents
	if len(desc.extents) == 0 {
		f.add(CodeMalformedDescriptor, "descriptor has no extents")
		return
	}
	for i, e := range desc.extents {
		if e.Sectors < 0 || e.Type == "?" {
			f.add(CodeMalformedDescriptor, "extent %d is malformed", i+1)
		}
		if hostPath(e.File) {
			f.add(CodeVMDKExtentHostPath, "extent %d names the path %q", i+1, e.File)
		}
		self := !external && len(desc.extents) == 1 && strings.EqualFold(e.Type, "SPARSE")
		if !self && (e.File != "" || !strings.EqualFold(e.Type, "ZERO")) {
			f.add(CodeVMDKExternalExtent, "extent %d (%s %q) lies outside this file", i+1, e.Type, e.File)
		}
	}
}

// extentBytes is the virtual size qemu computes for a descriptor: the sum of its extents.
func (desc *vmdkDescriptor) extentBytes() int64 {
	var total int64
	for _, e := range desc.extents {
		if e.Sectors < 0 || total+e.Sectors > vmdkMaxSectors {
			return SizeUnknown
		}
		total += e.Sectors
	}
	if len(desc.extents) == 0 {
		return SizeUnknown
	}
	return total * 512
}

// hostPath reports whether an extent file name is more than a bare name beside the
// descriptor: a directory, a parent directory, a home directory or a qemu protocol prefix.
func hostPath(name string) bool {
	return strings.ContainsAny(name, `/\:`) || name == "." || name == ".." || strings.HasPrefix(name, "~")
}

func unquote(v []byte) string {
	v = bytes.TrimSpace(v)
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	return printable(v[:min(len(v), 256)])
}
