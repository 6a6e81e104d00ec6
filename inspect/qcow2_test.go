package inspect_test

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/glance-sidecar/glance-sidecar/inspect"
)

func qcow2Details(t testing.TB, r *inspect.Report) *inspect.QCOW2Details {
	t.Helper()
	d, ok := r.Details.(*inspect.QCOW2Details)
	if !ok {
		t.Fatalf("details %T, want *QCOW2Details", r.Details)
	}
	return d
}

func TestQCOW2Fixtures(t *testing.T) {
	const size = 129<<20 + 512
	backing := func(t testing.TB) string {
		dir := t.TempDir()
		base := filepath.Join(dir, "base.raw")
		if err := os.WriteFile(base, []byte("foobar"), 0o644); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "over.qcow2")
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", p, "1M")
		return p
	}
	dataFile := func(t testing.TB) string {
		dir := t.TempDir()
		p := filepath.Join(dir, "img.qcow2")
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file="+filepath.Join(dir, "data.raw")+",data_file_raw=on", p, "5M")
		return p
	}
	fixtures := []fixture{
		{name: "v3 default", qfmt: "qcow2", size: size, want: inspect.QCOW2, check: func(t testing.TB, r *inspect.Report) {
			d := qcow2Details(t, r)
			if d.Version != 3 || d.ClusterSize != 65536 || d.CompressionType != "zlib" || d.RefcountBits != 16 || d.Encrypted || d.BackingFile != "" || d.DataFile != "" {
				t.Errorf("details %+v", d)
			}
		}},
		{name: "v2 compat 0.10", qfmt: "qcow2", opts: "compat=0.10", size: size, want: inspect.QCOW2, check: func(t testing.TB, r *inspect.Report) {
			if d := qcow2Details(t, r); d.Version != 2 {
				t.Errorf("version %d", d.Version)
			}
		}},
		{name: "lazy refcounts", qfmt: "qcow2", opts: "lazy_refcounts=on", size: size, want: inspect.QCOW2, check: func(t testing.TB, r *inspect.Report) {
			if d := qcow2Details(t, r); !d.LazyRefcounts {
				t.Errorf("lazy refcounts not seen: %+v", d)
			}
		}},
		{name: "zstd", qfmt: "qcow2", opts: "compression_type=zstd", size: size, want: inspect.QCOW2, check: func(t testing.TB, r *inspect.Report) {
			if d := qcow2Details(t, r); d.CompressionType != "zstd" {
				t.Errorf("compression %q", d.CompressionType)
			}
		}},
		{name: "extended l2", qfmt: "qcow2", opts: "extended_l2=on", size: size, want: inspect.QCOW2, check: func(t testing.TB, r *inspect.Report) {
			if d := qcow2Details(t, r); !d.ExtendedL2 {
				t.Errorf("extended L2 not seen")
			}
		}},
		{name: "cluster 512", qfmt: "qcow2", opts: "cluster_size=512", size: 7 << 20, want: inspect.QCOW2, check: func(t testing.TB, r *inspect.Report) {
			if d := qcow2Details(t, r); d.ClusterSize != 512 {
				t.Errorf("cluster size %d", d.ClusterSize)
			}
		}},
		{name: "cluster 2M", qfmt: "qcow2", opts: "cluster_size=2M", size: size, want: inspect.QCOW2, check: func(t testing.TB, r *inspect.Report) {
			if d := qcow2Details(t, r); d.ClusterSize != 2<<20 {
				t.Errorf("cluster size %d", d.ClusterSize)
			}
		}},
		{name: "refcount bits 1", qfmt: "qcow2", opts: "refcount_bits=1", size: size, want: inspect.QCOW2, check: func(t testing.TB, r *inspect.Report) {
			if d := qcow2Details(t, r); d.RefcountBits != 1 {
				t.Errorf("refcount bits %d", d.RefcountBits)
			}
		}},
		{name: "refcount bits 64", qfmt: "qcow2", opts: "refcount_bits=64", size: size, want: inspect.QCOW2},
		{name: "preallocation metadata", qfmt: "qcow2", opts: "preallocation=metadata", size: 33 << 20, want: inspect.QCOW2},
		{name: "luks encrypted", qfmt: "qcow2", opts: "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", size: 5 << 20,
			extra: []string{"--object", "secret,id=sec0,data=secret-passphrase"}, want: inspect.QCOW2, check: func(t testing.TB, r *inspect.Report) {
				if d := qcow2Details(t, r); !d.Encrypted || d.EncryptionFormat != "luks" {
					t.Errorf("encryption not seen: %+v", d)
				}
			}},
		{name: "backing file", qfmt: "qcow2", build: backing, want: inspect.QCOW2, codes: []inspect.Code{inspect.CodeBackingFile}, check: func(t testing.TB, r *inspect.Report) {
			if d := qcow2Details(t, r); filepath.Base(d.BackingFile) != "base.raw" || d.BackingFormat != "raw" {
				t.Errorf("backing %q format %q", d.BackingFile, d.BackingFormat)
			}
		}},
		{name: "data file", qfmt: "qcow2", build: dataFile, want: inspect.QCOW2, codes: []inspect.Code{inspect.CodeDataFile}, check: func(t testing.TB, r *inspect.Report) {
			if d := qcow2Details(t, r); filepath.Base(d.DataFile) != "data.raw" || !d.DataFileRaw {
				t.Errorf("data file %q raw %v", d.DataFile, d.DataFileRaw)
			}
		}},
		{name: "qcow v1", qfmt: "qcow", size: 5<<20 + 512, want: inspect.QCOW, codes: []inspect.Code{inspect.CodeUnsupportedVersion}},
	}
	testFixtures(t, fixtures)
}

// qcow2Header builds a minimal qcow2 v3 header: 64 KiB clusters, no tables.
func qcow2Header(version uint32) []byte {
	h := make([]byte, 4096)
	copy(h, "QFI\xfb")
	be := binary.BigEndian
	be.PutUint32(h[4:], version)
	be.PutUint32(h[20:], 16)
	be.PutUint64(h[24:], 1<<30)
	be.PutUint64(h[48:], 65536) // refcount table at cluster 1...
	be.PutUint32(h[56:], 1)     // ...one cluster long
	if version == 3 {
		be.PutUint32(h[96:], 4)
		be.PutUint32(h[100:], 112)
	}
	return append(h, make([]byte, 128<<10-len(h))...)
}

func TestQCOW2Hostile(t *testing.T) {
	u32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	u64 := func(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
	good := qcow2Header(3)
	tests := []struct {
		name  string
		img   []byte
		want  inspect.Format
		codes []inspect.Code
	}{
		{"valid", good, inspect.QCOW2, nil},
		{"v2 ignores feature bytes", patch(qcow2Header(2), 72, u64(0xffff)), inspect.QCOW2, nil},
		{"dirty bit is fine", patch(good, 72, u64(1)), inspect.QCOW2, nil},
		{"unknown incompatible bit", patch(good, 72, u64(1<<5)), inspect.QCOW2, []inspect.Code{inspect.CodeUnknownFeatures}},
		{"high incompatible byte", patch(good, 72, u64(1<<56)), inspect.QCOW2, []inspect.Code{inspect.CodeUnknownFeatures}},
		{"data file bit", patch(good, 72, u64(1<<2)), inspect.QCOW2, []inspect.Code{inspect.CodeDataFile}},
		{"corrupt bit", patch(good, 72, u64(1<<1)), inspect.QCOW2, []inspect.Code{inspect.CodeInvalidHeader}},
		{"version 4", patch(good, 4, u32(4)), inspect.QCOW2, []inspect.Code{inspect.CodeUnsupportedVersion}},
		{"version 0", patch(good, 4, u32(0)), inspect.QCOW2, []inspect.Code{inspect.CodeUnsupportedVersion}},
		{"version 1", patch(good, 4, u32(1)), inspect.QCOW, []inspect.Code{inspect.CodeUnsupportedVersion}},
		{"cluster bits 8", patch(good, 20, u32(8)), inspect.QCOW2, []inspect.Code{inspect.CodeInvalidHeader}},
		{"cluster bits huge", patch(good, 20, u32(0xffffffff)), inspect.QCOW2, []inspect.Code{inspect.CodeInvalidHeader}},
		{"header length short", patch(good, 100, u32(72)), inspect.QCOW2, []inspect.Code{inspect.CodeInvalidHeader}},
		{"backing file /etc/passwd", patch(patch(patch(good, 8, u64(512)), 16, u32(11)), 512, []byte("/etc/passwd")), inspect.QCOW2, []inspect.Code{inspect.CodeBackingFile}},
		{"backing name past the end", patch(patch(good, 8, u64(1<<40)), 16, u32(11)), inspect.QCOW2, []inspect.Code{inspect.CodeBackingFile, inspect.CodeTruncated}},
		{"backing name too long", patch(patch(good, 8, u64(512)), 16, u32(1<<31)), inspect.QCOW2, []inspect.Code{inspect.CodeBackingFile, inspect.CodeInvalidHeader}},
		{"data file extension", patch(patch(good, 112, append(u32(0x44415441), u32(11)...)), 120, []byte("/etc/shadow")), inspect.QCOW2, []inspect.Code{inspect.CodeDataFile}},
		{"extension overruns cluster", patch(good, 112, append(u32(0x6803f857), u32(0xfffffff0)...)), inspect.QCOW2, []inspect.Code{inspect.CodeInvalidHeader}},
		{"L1 table past the end", patch(patch(good, 36, u32(1000)), 40, u64(1<<40)), inspect.QCOW2, []inspect.Code{inspect.CodeTruncated}},
		{"L1 table misaligned", patch(patch(good, 36, u32(1)), 40, u64(100)), inspect.QCOW2, []inspect.Code{inspect.CodeInvalidHeader}},
		{"refcount table past the end", patch(good, 56, u32(1000)), inspect.QCOW2, []inspect.Code{inspect.CodeTruncated}},
		{"unknown compression type", patch(patch(good, 100, u32(112)), 104, []byte{7}), inspect.QCOW2, []inspect.Code{inspect.CodeUnknownFeatures, inspect.CodeInvalidHeader}},
		{"unknown encryption", patch(good, 32, u32(9)), inspect.QCOW2, []inspect.Code{inspect.CodeInvalidHeader}},
		{"header cut at 40 bytes", good[:40], inspect.QCOW2, []inspect.Code{inspect.CodeTruncated}},
		{"header cut at 90 bytes", good[:90], inspect.QCOW2, []inspect.Code{inspect.CodeTruncated}},
		{"magic only", good[:4], inspect.QCOW2, []inspect.Code{inspect.CodeTruncated}},
		{"three bytes of magic", good[:3], inspect.Raw, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := inspectBytes(t, tt.img, inspect.Options{})
			if r.Format != tt.want {
				t.Fatalf("format %q, want %q", r.Format, tt.want)
			}
			wantCodes(t, r, tt.codes...)
		})
	}
}
