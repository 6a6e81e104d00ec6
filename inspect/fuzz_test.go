package inspect

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// Fuzzing: one target per parser (a probe alone) and one for detection (all probes). Each input
// goes through the random-access path and through the streaming path cut at a size the input
// chooses; both must finish without panicking and give the same report.

// fuzzCompare inspects data with the probes both ways and fails if they disagree.
func fuzzCompare(t *testing.T, ps []probe, data []byte) *Report {
	t.Helper()
	ctx := context.Background()
	want, err := inspectAt(ctx, ps, bytes.NewReader(data), int64(len(data)), "")
	if err != nil {
		t.Fatalf("random access: %v", err)
	}
	chunk := 4096
	if len(data) > 0 {
		chunk = 1 + int(data[len(data)-1])*37
	}
	s := newStream(ps, "")
	for p := data; len(p) > 0; {
		n := min(chunk, len(p))
		s.feed(p[:n])
		p = p[n:]
	}
	got, err := s.Close()
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	if !reflect.DeepEqual(want, got) {
		t.Fatalf("streaming and random access disagree:\nrandom: %+v %+v\nstream: %+v %+v", want, want.Details, got, got.Details)
	}
	if want.VirtualSize < SizeUnknown {
		t.Fatalf("virtual size %d", want.VirtualSize)
	}
	return want
}

// fuzzProbe runs the fuzzer on one probe, seeded with seeds and with the images qemu-img makes
// with each of the given create argument lists (the last argument is the size).
func fuzzProbe(f *testing.F, name string, seeds [][]byte, qemuArgs ...[]string) {
	var ps []probe
	for _, p := range probes {
		if p.name == name {
			ps = append(ps, p)
		}
	}
	if len(ps) != 1 {
		f.Fatalf("no probe %q", name)
	}
	for _, s := range seeds {
		f.Add(s)
	}
	for _, args := range qemuArgs {
		f.Add(qemuSeed(f, args))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzCompare(t, ps, data)
	})
}

// maxSeed bounds a seed taken from a qemu-made image: Go's fuzzer crawls on large inputs.
const maxSeed = 64 << 10

// qemuSeed makes an image with `qemu-img create args... FILE SIZE` and returns its bytes (the
// head and the tail when it is larger than maxSeed).
//
// Seeds are cached in the temporary directory by their arguments: every fuzzing worker process
// runs the fuzz function's setup again, and a LUKS volume takes qemu-img a second or more.
func qemuSeed(f *testing.F, args []string) []byte {
	f.Helper()
	cache := filepath.Join(os.TempDir(), "glance-sidecar-fuzz-seeds", fmt.Sprintf("%x", sha256.Sum256([]byte(strings.Join(args, "\x00")))))
	if b, err := os.ReadFile(cache); err == nil {
		return b
	}
	path := filepath.Join(f.TempDir(), "seed")
	a := append([]string{"create", "-q"}, args[:len(args)-1]...)
	a = append(a, path, args[len(args)-1])
	for try := 1; ; try++ {
		cmd := exec.Command("qemu-img", a...)
		cmd.Env = append(os.Environ(), "LC_ALL=C")
		out, err := cmd.CombinedOutput()
		if err == nil {
			break
		}
		// qemu fails to time a LUKS key derivation now and then on a loaded machine.
		if try == 10 || !strings.Contains(string(out), "Unable to get accurate CPU usage") {
			f.Fatalf("qemu-img %v: %v\n%s", a, err, out)
		}
	}
	b := seedBytes(f, path)
	if err := os.MkdirAll(filepath.Dir(cache), 0o755); err == nil {
		tmp := fmt.Sprintf("%s.%d", cache, os.Getpid())
		if os.WriteFile(tmp, b, 0o644) == nil {
			_ = os.Rename(tmp, cache)
		}
	}
	return b
}

// seedBytes returns the bytes of the file at path, or its head and tail when it is larger than
// maxSeed.
func seedBytes(f *testing.F, path string) []byte {
	f.Helper()
	fh, err := os.Open(path)
	if err != nil {
		f.Fatal(err)
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		f.Fatal(err)
	}
	if st.Size() <= maxSeed {
		b, err := io.ReadAll(fh)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	b := make([]byte, maxSeed)
	if _, err := fh.ReadAt(b[:maxSeed-tailSize], 0); err != nil {
		f.Fatal(err)
	}
	if _, err := fh.ReadAt(b[maxSeed-tailSize:], st.Size()-tailSize); err != nil {
		f.Fatal(err)
	}
	return b
}

func FuzzQCOW2(f *testing.F) {
	fuzzProbe(f, "qcow2", nil,
		[]string{"-f", "qcow2", "1G"},
		[]string{"-f", "qcow2", "-o", "compat=0.10", "1G"},
		[]string{"-f", "qcow2", "-o", "compression_type=zstd,extended_l2=on", "1G"},
		[]string{"-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", "1G"},
		[]string{"-f", "qcow", "1G"},
	)
}

// FuzzDetect runs every probe together, seeded with one image of each format qemu-img writes.
func FuzzDetect(f *testing.F) {
	for _, args := range [][]string{
		{"-f", "qcow2", "1G"}, {"-f", "qed", "1G"}, {"-f", "vmdk", "1G"},
		{"-f", "vmdk", "-o", "subformat=streamOptimized", "1G"}, {"-f", "vpc", "1G"},
		{"-f", "vhdx", "1G"}, {"-f", "vdi", "1G"}, {"-f", "parallels", "1G"}, {"-f", "raw", "64K"},
	} {
		f.Add(qemuSeed(f, args))
	}
	f.Add([]byte("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"/etc/passwd\" 0\n"))
	f.Add(luksSeed(f, "1M"))
	f.Add(compactVHDX())
	f.Add(fuzzISOImage(64, "CD001", "BEA01", "NSR02", "TEA01"))
	f.Add(fuzzGPTDisk(512, 2048, 128))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzCompare(t, probes, data)
	})
}

func FuzzVMDK(f *testing.F) {
	fuzzProbe(f, "vmdk", [][]byte{
		[]byte("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"/etc/passwd\" 0\n"),
		[]byte("version=1\n\xff"),
		[]byte("COWD\x01\x00\x00\x00\x03\x00\x00\x00\x00\x28\x00\x00"),
	},
		[]string{"-f", "vmdk", "1G"},
		[]string{"-f", "vmdk", "-o", "subformat=streamOptimized", "1G"},
		[]string{"-f", "vmdk", "-o", "adapter_type=lsilogic,hwversion=6", "1G"},
		[]string{"-f", "vmdk", "-o", "subformat=monolithicFlat", "1M"},
	)
}

// FuzzVMDKDescriptor feeds text straight to the descriptor parser.
func FuzzVMDKDescriptor(f *testing.F) {
	f.Add([]byte("# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicSparse\"\nRW 2048 SPARSE \"d.vmdk\"\nddb.adapterType = \"ide\"\n"))
	f.Add([]byte("parentFileNameHint=\"/x\"\ncreateType=\"a\"\nRW 1 FLAT \"x\" 9\nNOACCESS\nRDONLY 5\n"))
	f.Fuzz(func(t *testing.T, text []byte) {
		d := &VMDKDetails{}
		fd := newFinding(VMDK, d)
		desc := parseVMDKDescriptor(fd, d, text)
		desc.checkExtents(fd, d, true)
		if n := desc.extentBytes(); n < SizeUnknown {
			t.Fatalf("extent bytes %d", n)
		}
	})
}
