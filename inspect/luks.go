package inspect

import (
	"encoding/binary"
	"slices"
	"strings"
)

// LUKSDetails are the facts of a LUKS header. The encrypted payload is never read.
type LUKSDetails struct {
	// Version is the LUKS version: 1, or 2 (which qemu does not support).
	Version int `json:"version"`
	// CipherName is the cipher, such as "aes".
	CipherName string `json:"cipher_name,omitempty"`
	// CipherMode is the cipher mode and IV generator, such as "xts-plain64".
	CipherMode string `json:"cipher_mode,omitempty"`
	// Hash is the hash of the key derivation, such as "sha256".
	Hash string `json:"hash,omitempty"`
	// KeyBytes is the length of the master key in bytes.
	KeyBytes uint32 `json:"key_bytes,omitempty"`
	// PayloadOffset is where the encrypted data starts, in bytes.
	PayloadOffset int64 `json:"payload_offset,omitempty"`
	// ActiveKeySlots is the number of key slots in use.
	ActiveKeySlots int `json:"active_key_slots"`
	// UUID identifies the volume.
	UUID string `json:"uuid"`
	// Label is the volume label (LUKS2 only).
	Label string `json:"label,omitempty"`
}

const (
	luksMagic        = "LUKS\xba\xbe"
	luksHeaderLen    = 592
	luks2HeaderLen   = 4096
	luksSlotsOff     = 208
	luksSlotLen      = 48
	luksSlots        = 8
	luksSlotActive   = 0x00ac71f3
	luksSlotInactive = 0x0000dead
	luksStripes      = 4000 // the only stripe count qemu accepts
	luksHeaderSects  = 8    // qemu keeps the first 4 KiB for the header
)

// probeLUKS recognises a LUKS volume and checks its version 1 header as qemu's
// crypto/block-luks.c does. The virtual size qemu reports is the data after the payload offset,
// so the size of the data is needed.
func probeLUKS(s *src) (*finding, error) {
	h, err := s.at(0, luksHeaderLen)
	if err != nil && !isTruncated(err) {
		return nil, err
	}
	if len(h) < len(luksMagic) || string(h[:len(luksMagic)]) != luksMagic {
		return nil, nil
	}
	d := &LUKSDetails{}
	f := newFinding(LUKS, d)
	if len(h) < 8 {
		return f, err
	}
	be := binary.BigEndian
	d.Version = int(be.Uint16(h[6:]))
	switch d.Version {
	case 1:
	case 2:
		// The LUKS2 binary header is 4 KiB; it keeps the label at 24 and the UUID at 168.
		f.add(CodeUnsupportedVersion, "LUKS2 is not supported by qemu")
		h, err = s.at(0, luks2HeaderLen)
		if err != nil && !isTruncated(err) {
			return f, err
		}
		if len(h) >= 208 {
			d.Label = printable(cstring(h[24:72]))
			d.UUID = printable(cstring(h[168:208]))
		}
		return f, err
	default:
		f.add(CodeUnsupportedVersion, "LUKS version %d is not supported", d.Version)
		return f, nil
	}
	if len(h) < luksHeaderLen {
		return f, err
	}

	name, nameOK := luksString(h[8:40])
	mode, modeOK := luksString(h[40:72])
	hash, hashOK := luksString(h[72:104])
	d.CipherName, d.CipherMode, d.Hash = printable(name), printable(mode), printable(hash)
	payload := be.Uint32(h[104:])
	d.KeyBytes = be.Uint32(h[108:])
	d.PayloadOffset = int64(payload) * 512
	mkIters := be.Uint32(h[164:])
	d.UUID = printable(cstring(h[168:208]))

	switch {
	case !nameOK || !modeOK || !hashOK:
		f.add(CodeInvalidHeader, "cipher name, cipher mode or hash is not NUL terminated")
	default:
		if why := luksCipherSupported(string(name), string(mode), string(hash), d.KeyBytes); why != "" {
			f.add(CodeInvalidHeader, "%s", why)
		}
	}
	if payload < luksHeaderSects {
		f.add(CodeInvalidHeader, "payload at sector %d overlaps the header", payload)
	}
	if mkIters == 0 {
		f.add(CodeInvalidHeader, "master key iteration count is zero")
	}

	// Key slots: each one's key material (key bytes × stripes, in whole 4 KiB units as qemu
	// counts it) must lie between the header and the payload, apart from the others.
	type span struct{ start, end uint64 } // in sectors
	var spans [luksSlots]span
	var keyEnd uint64 // end of the active slots' key material, in bytes
	for i := range luksSlots {
		sl := h[luksSlotsOff+i*luksSlotLen:]
		active := be.Uint32(sl)
		iters := be.Uint32(sl[4:])
		start := uint64(be.Uint32(sl[40:]))
		stripes := be.Uint32(sl[44:])
		material := uint64(d.KeyBytes) * uint64(stripes)
		sectors := (material + 511) / 512
		sectors = (sectors + luksHeaderSects - 1) / luksHeaderSects * luksHeaderSects
		spans[i] = span{start, start + sectors}
		switch {
		case stripes != luksStripes:
			f.add(CodeInvalidHeader, "key slot %d has %d stripes, not %d", i, stripes, luksStripes)
		case active != luksSlotActive && active != luksSlotInactive:
			f.add(CodeInvalidHeader, "key slot %d state %#x is neither active nor inactive", i, active)
		case active == luksSlotActive && iters == 0:
			f.add(CodeInvalidHeader, "key slot %d iteration count is zero", i)
		case start < luksHeaderSects:
			f.add(CodeInvalidHeader, "key slot %d at sector %d overlaps the header", i, start)
		case spans[i].end > uint64(payload):
			f.add(CodeInvalidHeader, "key slot %d (sectors %d to %d) overlaps the payload at sector %d", i, start, spans[i].end, payload)
		}
		for j := range i {
			if spans[j].start < spans[i].end && spans[i].start < spans[j].end {
				f.add(CodeInvalidHeader, "key slots %d and %d overlap", j, i)
			}
		}
		if active == luksSlotActive {
			d.ActiveKeySlots++
			keyEnd = max(keyEnd, start*512+min(material, 1<<62))
		}
	}

	// qemu's virtual size is the data, rounded up to a sector, after the payload offset.
	size, err := s.size()
	if err != nil {
		return f, err
	}
	if keyEnd > uint64(size) {
		f.add(CodeTruncated, "key material ends at %d, past the end of the data at %d", keyEnd, size)
	}
	if d.PayloadOffset > size {
		f.add(CodeTruncated, "payload at %d lies past the end of the data at %d", d.PayloadOffset, size)
	}
	if rounded := (size + 511) &^ 511; rounded >= d.PayloadOffset {
		f.vsize = rounded - d.PayloadOffset
	}
	return f, nil
}

// luksString returns a NUL-terminated string field and whether it is terminated.
func luksString(b []byte) ([]byte, bool) {
	s := cstring(b)
	return s, len(s) < len(b)
}

// luksHashLen maps the hashes qemu knows to their digest length.
var luksHashLen = map[string]int{
	"md5": 16, "sha1": 20, "sha224": 28, "sha256": 32, "sha384": 48, "sha512": 64, "ripemd160": 20,
}

// luksCipherKeyLens maps the ciphers qemu's LUKS driver knows to their key lengths.
var luksCipherKeyLens = map[string][]uint32{
	"aes":     {16, 24, 32},
	"cast5":   {16},
	"serpent": {16, 24, 32},
	"twofish": {16, 24, 32},
}

// luksCipherSupported checks the cipher specification as qemu parses it, and returns why qemu
// would refuse it, or "".
func luksCipherSupported(name, mode, hash string, keyBytes uint32) string {
	if _, ok := luksHashLen[hash]; !ok {
		return "hash " + printable([]byte(hash)) + " is not supported by qemu"
	}
	cipherMode, ivgen, ok := strings.Cut(mode, "-")
	if !ok {
		return "cipher mode " + printable([]byte(mode)) + " is not of the form mode-ivgen"
	}
	ivgen, ivhash, hasIVHash := strings.Cut(ivgen, ":")
	if hasIVHash {
		if _, ok := luksHashLen[ivhash]; !ok {
			return "IV generator hash " + printable([]byte(ivhash)) + " is not supported by qemu"
		}
	}
	switch cipherMode {
	case "ecb", "cbc", "ctr":
	case "xts":
		keyBytes /= 2
	default:
		return "cipher mode " + printable([]byte(cipherMode)) + " is not supported by qemu"
	}
	lens, ok := luksCipherKeyLens[name]
	if !ok || !slices.Contains(lens, keyBytes) {
		return "cipher " + printable([]byte(name)) + " with a key of the given length is not supported by qemu"
	}
	switch ivgen {
	case "plain", "plain64":
	case "essiv":
		if !hasIVHash {
			return "ESSIV without a hash"
		}
		// ESSIV keys the cipher with the hash digest: some cipher of that family must take it.
		dl := uint32(luksHashLen[ivhash])
		if dl != keyBytes && (name == "cast5" || !slices.Contains(lens, dl)) {
			return "ESSIV hash " + ivhash + " fits no " + name + " key length"
		}
	default:
		return "IV generator " + printable([]byte(ivgen)) + " is not supported by qemu"
	}
	return ""
}
