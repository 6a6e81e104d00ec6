package inspect_test

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/glance-sidecar/glance-sidecar/inspect"
)

func luksDetails(t testing.TB, r *inspect.Report) *inspect.LUKSDetails {
	t.Helper()
	d, ok := r.Details.(*inspect.LUKSDetails)
	if !ok {
		t.Fatalf("details %T, want *LUKSDetails", r.Details)
	}
	return d
}

// luksSecret is the qemu-img argument that provides the passphrase named by luksOpts.
var luksSecret = []string{"--object", "secret,id=sec0,data=secret-passphrase"}

const luksOpts = "key-secret=sec0,iter-time=10"

// luksCreate makes a LUKS volume with qemu-img create -o luksOpts,opts.
func luksCreate(t testing.TB, opts string, size int64) string {
	t.Helper()
	if opts != "" {
		opts = "," + opts
	}
	path := filepath.Join(t.TempDir(), "img.luks")
	args := append([]string{"create", "-q", "-f", "luks", "-o", luksOpts + opts}, luksSecret...)
	run(t, "qemu-img", append(args, path, fmt.Sprint(size))...)
	return path
}

// luksBase holds a default qemu LUKS volume of 10 MiB, made once: qemu times its key
// derivation for seconds on every create.
var luksBase struct {
	once sync.Once
	data []byte
}

// luksDefault writes a copy of the default LUKS volume, resized by delta bytes, and returns its path.
func luksDefault(t testing.TB, delta int64) string {
	t.Helper()
	// A failure inside Do ends this test; the others then see no data.
	luksBase.once.Do(func() { luksBase.data = readFile(t, luksCreate(t, "", 10<<20)) })
	if luksBase.data == nil {
		t.Fatal("making the default LUKS volume failed")
	}
	b := luksBase.data
	if delta < 0 {
		b = b[:int64(len(b))+delta]
	} else {
		b = append(append([]byte(nil), b...), make([]byte, delta)...)
	}
	return writeFile(t, "img.luks", b)
}
func TestLUKSFixtures(t *testing.T) {
	spec := func(name, mode, hash string, keyBytes uint32) func(t testing.TB, r *inspect.Report) {
		return func(t testing.TB, r *inspect.Report) {
			d := luksDetails(t, r)
			if d.Version != 1 || d.CipherName != name || d.CipherMode != mode || d.Hash != hash || d.KeyBytes != keyBytes ||
				d.ActiveKeySlots != 1 || len(d.UUID) != 36 || d.PayloadOffset <= 4096 || d.PayloadOffset%512 != 0 {
				t.Errorf("details %+v", d)
			}
		}
	}
	luks := func(name, opts string, size int64, check func(testing.TB, *inspect.Report)) fixture {
		build := func(t testing.TB) string { return luksCreate(t, opts, size) }
		return fixture{name: name, qfmt: "luks", build: build, want: inspect.LUKS, check: check}
	}
	fixtures := []fixture{
		{name: "default", qfmt: "luks", build: func(t testing.TB) string { return luksDefault(t, 0) }, want: inspect.LUKS,
			check: spec("aes", "xts-plain64", "sha256", 64)},
		luks("odd size", "", 129<<20+512, spec("aes", "xts-plain64", "sha256", 64)),
		// Each qemu-img create times its key derivation for seconds: options are combined.
		luks("aes-128 cbc essiv sha1", "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256,hash-alg=sha1", 7<<20,
			spec("aes", "cbc-essiv:sha256", "sha1", 16)),
		// 24-byte keys make qemu abort (4000 stripes of them are no whole number of sectors).
		luks("aes-192 xts sha512 preallocated", "cipher-alg=aes-192,cipher-mode=xts,hash-alg=sha512,preallocation=falloc", 3<<20,
			spec("aes", "xts-plain64", "sha512", 48)),
		luks("aes-256 ctr md5", "cipher-mode=ctr,hash-alg=md5", 5<<20, spec("aes", "ctr-plain64", "md5", 32)),
		luks("serpent xts ripemd160", "cipher-alg=serpent-256,cipher-mode=xts,hash-alg=ripemd160", 5<<20, spec("serpent", "xts-plain64", "ripemd160", 64)),
		luks("twofish xts sha224", "cipher-alg=twofish-128,cipher-mode=xts,hash-alg=sha224", 5<<20, spec("twofish", "xts-plain64", "sha224", 32)),
		luks("cast5 cbc plain", "cipher-alg=cast5-128,cipher-mode=cbc,ivgen-alg=plain", 5<<20, spec("cast5", "cbc-plain", "sha256", 16)),
		// qemu rounds the file up to a sector before it subtracts the payload offset.
		{name: "file size not a sector multiple", qfmt: "luks", build: func(t testing.TB) string { return luksDefault(t, 100) }, want: inspect.LUKS},
		// Cut inside the payload's first sector: qemu still reports a size of 0.
		{name: "cut before the payload", qfmt: "luks", build: func(t testing.TB) string { return luksDefault(t, -(10<<20 + 80)) },
			want: inspect.LUKS, codes: []inspect.Code{inspect.CodeTruncated}},
		{name: "luks2", qfmt: "luks", build: func(t testing.TB) string { return writeFile(t, "luks2.img", luks2Header()) },
			want: inspect.LUKS, codes: []inspect.Code{inspect.CodeUnsupportedVersion}, noDiff: true,
			check: func(t testing.TB, r *inspect.Report) {
				d := luksDetails(t, r)
				if d.Version != 2 || d.Label != "my-volume" || d.UUID != "5e9f2a6c-0b39-4c56-8f6f-5cfb2c6d2e41" || r.VirtualSize != inspect.SizeUnknown {
					t.Errorf("details %+v, virtual size %d", d, r.VirtualSize)
				}
			}},
	}
	testFixtures(t, fixtures)
}

// luks2Header builds the binary header of a LUKS2 volume (its JSON area left empty).
func luks2Header() []byte {
	h := make([]byte, 32<<10)
	be := binary.BigEndian
	copy(h, "LUKS\xba\xbe")
	be.PutUint16(h[6:], 2)
	be.PutUint64(h[8:], 16<<10)
	copy(h[24:], "my-volume")
	copy(h[72:], "sha256")
	copy(h[168:], "5e9f2a6c-0b39-4c56-8f6f-5cfb2c6d2e41")
	return h
}

// luksHeader builds a LUKS1 volume as qemu lays it out: aes-xts with a 64-byte key, eight key
// slots of 504 sectors from sector 8, slot 0 active, the payload at sector 4040, followed by
// 1 MiB of payload.
func luksHeader() []byte {
	h := make([]byte, 4040*512+1<<20)
	be := binary.BigEndian
	copy(h, "LUKS\xba\xbe")
	be.PutUint16(h[6:], 1)
	copy(h[8:], "aes")
	copy(h[40:], "xts-plain64")
	copy(h[72:], "sha256")
	be.PutUint32(h[104:], 4040)
	be.PutUint32(h[108:], 64)
	be.PutUint32(h[164:], 1000)
	copy(h[168:], "af15c8b4-a3d6-48e9-aa09-d6db506dfff2")
	for i := range 8 {
		sl := h[208+48*i:]
		be.PutUint32(sl, 0xdead)
		be.PutUint32(sl[40:], uint32(8+504*i))
		be.PutUint32(sl[44:], 4000)
	}
	be.PutUint32(h[208:], 0x00ac71f3)
	be.PutUint32(h[212:], 1000)
	return h
}

func TestLUKSHostile(t *testing.T) {
	be := binary.BigEndian
	u16 := func(v uint16) []byte { return be.AppendUint16(nil, v) }
	u32 := func(v uint32) []byte { return be.AppendUint32(nil, v) }
	str := func(s string) []byte { b := make([]byte, 32); copy(b, s); return b }
	slot := func(i, field int) int { return 208 + 48*i + field }
	good := luksHeader()
	const vsize = 1 << 20
	tests := []hostileCase{
		{"valid", good, inspect.LUKS, vsize, nil},
		{"aes-128 cbc essiv sha256", patch(patch(good, 108, u32(16)), 40, str("cbc-essiv:sha256")), inspect.LUKS, vsize, nil},
		{"no active slot", patch(good, 208, u32(0xdead)), inspect.LUKS, vsize, nil},
		{"version 2", patch(good, 6, u16(2)), inspect.LUKS, -1, []inspect.Code{inspect.CodeUnsupportedVersion}},
		{"luks2 cut at 1000", luks2Header()[:1000], inspect.LUKS, -1, []inspect.Code{inspect.CodeUnsupportedVersion, inspect.CodeTruncated}},
		{"version 0", patch(good, 6, u16(0)), inspect.LUKS, -1, []inspect.Code{inspect.CodeUnsupportedVersion}},
		{"cipher name not terminated", patch(good, 8, []byte("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")), inspect.LUKS, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"hash not terminated", patch(good, 72, []byte("ssssssssssssssssssssssssssssssss")), inspect.LUKS, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"unknown cipher", patch(good, 8, str("des")), inspect.LUKS, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"key length unknown to aes", patch(good, 108, u32(40)), inspect.LUKS, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"mode without ivgen", patch(good, 40, str("xts")), inspect.LUKS, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"unknown mode", patch(good, 40, str("gcm-plain64")), inspect.LUKS, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"unknown ivgen", patch(good, 40, str("xts-benbi")), inspect.LUKS, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"essiv without hash", patch(good, 40, str("xts-essiv")), inspect.LUKS, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"essiv hash fits no aes key", patch(good, 40, str("xts-essiv:sha1")), inspect.LUKS, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"unknown ivgen hash", patch(good, 40, str("xts-plain64:crc")), inspect.LUKS, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"unknown hash", patch(good, 72, str("whirlpool")), inspect.LUKS, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"payload over the header", patch(good, 104, u32(1)), inspect.LUKS, int64(len(good)) - 512, []inspect.Code{inspect.CodeInvalidHeader}},
		{"master key iterations 0", patch(good, 164, u32(0)), inspect.LUKS, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"stripes 0", patch(good, slot(3, 44), u32(0)), inspect.LUKS, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"stripes huge", patch(good, slot(0, 44), u32(0xffffffff)), inspect.LUKS, vsize, []inspect.Code{inspect.CodeInvalidHeader, inspect.CodeTruncated}},
		{"slot state corrupt", patch(good, slot(5, 0), u32(1)), inspect.LUKS, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"active slot iterations 0", patch(good, slot(0, 4), u32(0)), inspect.LUKS, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"key material over the header", patch(good, slot(0, 40), u32(2)), inspect.LUKS, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"key slots overlap", patch(good, slot(1, 40), u32(200)), inspect.LUKS, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"key material in the payload", patch(good, slot(7, 40), u32(4000)), inspect.LUKS, vsize, []inspect.Code{inspect.CodeInvalidHeader}},
		{"key material past the end", patch(good, slot(0, 40), u32(1<<20)), inspect.LUKS, vsize, []inspect.Code{inspect.CodeInvalidHeader, inspect.CodeTruncated}},
		{"payload past the end", patch(good, 104, u32(0xffffffff)), inspect.LUKS, -1, []inspect.Code{inspect.CodeTruncated}},
		{"cut inside the payload's first sector", good[:4040*512-100], inspect.LUKS, 0, []inspect.Code{inspect.CodeTruncated}},
		{"cut inside the key material", good[:100000], inspect.LUKS, -1, []inspect.Code{inspect.CodeTruncated}},
		{"payload empty", good[:4040*512], inspect.LUKS, 0, nil},
		{"header cut at 300", good[:300], inspect.LUKS, -1, []inspect.Code{inspect.CodeTruncated}},
		{"magic and half a version", good[:7], inspect.LUKS, -1, []inspect.Code{inspect.CodeTruncated}},
		{"five bytes of magic", good[:5], inspect.Raw, 5, nil},
	}
	testHostile(t, tests)
}
