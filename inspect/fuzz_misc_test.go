package inspect

import (
	"encoding/binary"
	"testing"
)

// Fuzz targets for the VDI, LUKS, QED and parallels probes, seeded with hand-built headers (the
// same layouts the table tests use) and with images qemu-img makes.

func FuzzVDI(f *testing.F) {
	le := binary.LittleEndian
	h := make([]byte, 1024)
	le.PutUint32(h[0x40:], vdiSignature)
	le.PutUint32(h[0x44:], vdiVersion11)
	le.PutUint32(h[0x48:], 0x180)
	le.PutUint32(h[0x4c:], 1)
	le.PutUint32(h[0x154:], 512)
	le.PutUint32(h[0x158:], 1024)
	le.PutUint32(h[0x168:], 512)
	le.PutUint64(h[0x170:], 8<<20)
	le.PutUint32(h[0x178:], 1<<20)
	le.PutUint32(h[0x180:], 8)
	diff := append([]byte(nil), h...)
	le.PutUint32(diff[0x4c:], 4)
	diff[0x1b8] = 1
	fuzzProbe(f, "vdi", [][]byte{h, diff, h[:0x100]},
		[]string{"-f", "vdi", "1G"},
		[]string{"-f", "vdi", "129M"},
		[]string{"-f", "vdi", "-o", "static=on", "5M"},
	)
}

func FuzzLUKS(f *testing.F) {
	be := binary.BigEndian
	h := make([]byte, 64<<10)
	copy(h, luksMagic)
	be.PutUint16(h[6:], 1)
	copy(h[8:], "aes")
	copy(h[40:], "cbc-essiv:sha256")
	copy(h[72:], "sha256")
	be.PutUint32(h[104:], 24)
	be.PutUint32(h[108:], 16)
	be.PutUint32(h[164:], 1000)
	copy(h[168:], "af15c8b4-a3d6-48e9-aa09-d6db506dfff2")
	for i := range luksSlots {
		sl := h[luksSlotsOff+luksSlotLen*i:]
		be.PutUint32(sl, luksSlotInactive)
		be.PutUint32(sl[40:], uint32(8+128*i))
		be.PutUint32(sl[44:], luksStripes)
	}
	be.PutUint32(h[luksSlotsOff:], luksSlotActive)
	be.PutUint32(h[luksSlotsOff+4:], 1000)
	v2 := make([]byte, 16<<10)
	copy(v2, luksMagic)
	be.PutUint16(v2[6:], 2)
	copy(v2[24:], "label")
	copy(v2[168:], "5e9f2a6c-0b39-4c56-8f6f-5cfb2c6d2e41")
	fuzzProbe(f, "luks", [][]byte{h, h[:600], v2, luksSeed(f, "1G")})
}

func FuzzQED(f *testing.F) {
	le := binary.LittleEndian
	h := make([]byte, 5<<16)
	copy(h, qedMagic)
	le.PutUint32(h[4:], 64<<10)
	le.PutUint32(h[8:], 4)
	le.PutUint32(h[12:], 1)
	le.PutUint64(h[16:], qedFeatBacking|qedFeatBackingNoFmt)
	le.PutUint64(h[40:], 64<<10)
	le.PutUint64(h[48:], 1<<30)
	le.PutUint32(h[56:], 64)
	le.PutUint32(h[60:], 11)
	copy(h[64:], "/etc/passwd")
	fuzzProbe(f, "qed", [][]byte{h, h[:64]},
		[]string{"-f", "qed", "1G"},
		[]string{"-f", "qed", "-o", "cluster_size=4096,table_size=16", "1G"},
		[]string{"-f", "qed", "-b", "/etc/hostname", "-F", "raw", "1G"},
	)
}

func FuzzPloop(f *testing.F) {
	le := binary.LittleEndian
	h := make([]byte, 64<<10)
	copy(h, ploopSigExt)
	le.PutUint32(h[16:], ploopVersion)
	le.PutUint32(h[28:], 16)
	le.PutUint32(h[32:], 8)
	le.PutUint64(h[36:], 8*16)
	le.PutUint32(h[48:], 1)
	le.PutUint64(h[56:], 64)
	le.PutUint64(h[64*512:], ploopExtMagic)
	old := append([]byte(nil), h...)
	copy(old, ploopSig)
	le.PutUint32(old[44:], ploopInUse)
	fuzzProbe(f, "ploop", [][]byte{h, old, h[:64]},
		[]string{"-f", "parallels", "1G"},
		[]string{"-f", "parallels", "-o", "cluster_size=64K", "129M"},
	)
}

// luksSeed is qemuSeed for a LUKS volume of the given size.
func luksSeed(f *testing.F, size string) []byte {
	f.Helper()
	return qemuSeed(f, []string{"-f", "luks", "--object", "secret,id=sec0,data=secret-passphrase",
		"-o", "key-secret=sec0,iter-time=10", size})
}
