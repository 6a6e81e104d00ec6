package convert_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/glance-sidecar/glance-sidecar/convert"
	"github.com/glance-sidecar/glance-sidecar/inspect"
)

// pairSize is the virtual size of the pair sources: 64 MiB + 16 KiB, the size `qemu-img create
// -f vpc 64M` rounds up to (CHS 1928/4/17). vpc keeps a virtual size only when it is a CHS
// geometry (or with force_size); this one is, and it is a multiple of 512 as the other formats
// want, so every one of the five formats keeps it exactly and the conversion must too.
const pairSize = 67125248

// TestFilePairs converts patterned images of each of the five formats into each other one and
// checks the output's format and details with inspect and its guest data with qemu-img compare.
func TestFilePairs(t *testing.T) {
	srcDir := t.TempDir()
	sources := map[inspect.Format]string{}
	for _, f := range convert.Formats {
		sources[f] = patterned(t, srcDir, f, pairSize)
	}
	for _, from := range convert.Formats {
		for _, to := range convert.Formats {
			if from == to {
				continue
			}
			t.Run(string(from)+"-"+string(to), func(t *testing.T) {
				dir := t.TempDir()
				dst := filepath.Join(dir, "out."+to.QemuName())
				var last float64 = -1
				res, err := convert.File(t.Context(), sources[from], dst, convert.Options{
					From: from, To: to,
					Progress: func(p float64) {
						if p <= last {
							t.Errorf("progress %v after %v", p, last)
						}
						last = p
					},
				})
				if err != nil {
					t.Fatal(err)
				}
				if last != 100 {
					t.Errorf("last progress %v, want 100", last)
				}
				if res.Source.Format != from || res.Output.Format != to || res.Output.VirtualSize != pairSize || !res.Output.Safe() {
					t.Fatalf("source %s, output %s %d bytes, problems %v", res.Source.Format, res.Output.Format, res.Output.VirtualSize, res.Output.Problems)
				}
				if got := inspectPath(t, dst); got.Format != to || got.VirtualSize != pairSize {
					t.Fatalf("re-inspected output: %s %d", got.Format, got.VirtualSize)
				}
				checkDetails(t, res.Output, "ide")
				compare(t, sources[from], from, dst, to)
				if names := listDir(t, dir); !slices.Equal(names, []string{filepath.Base(dst)}) {
					t.Errorf("directory holds %v", names)
				}
				st, err := os.Stat(dst)
				if err != nil {
					t.Fatal(err)
				}
				if want := convert.ExpectedSize(res.Source, to); st.Size() > want {
					t.Errorf("output is %d bytes, ExpectedSize %d", st.Size(), want)
				}
				if res.Duration <= 0 {
					t.Errorf("duration %v", res.Duration)
				}
			})
		}
	}
}

// checkDetails checks the target options took: qcow2 v3, vmdk streamOptimized with the adapter,
// dynamic vhd.
func checkDetails(t testing.TB, out *inspect.Report, adapter string) {
	t.Helper()
	switch d := out.Details.(type) {
	case *inspect.QCOW2Details:
		if d.Version != 3 {
			t.Errorf("qcow2 version %d, want 3 (compat=1.1)", d.Version)
		}
	case *inspect.VMDKDetails:
		if d.CreateType != "streamOptimized" || d.AdapterType != adapter {
			t.Errorf("vmdk createType %q adapterType %q, want streamOptimized %q", d.CreateType, d.AdapterType, adapter)
		}
	case *inspect.VHDDetails:
		if d.DiskType != "dynamic" {
			t.Errorf("vhd disk type %q, want dynamic", d.DiskType)
		}
	}
}

// TestFileTargetOptions covers the options that change the output: the VMDK adapter type
// (Nova's names accepted, mapped to qemu's) and vhd's force_size.
func TestFileTargetOptions(t *testing.T) {
	const size = 64 << 20 // not a CHS geometry: vpc rounds it up to pairSize
	src := patterned(t, t.TempDir(), inspect.QCOW2, size)
	tests := []struct {
		name        string
		opts        convert.Options
		virtualSize int64
		adapter     string
	}{
		{"vmdk default adapter", convert.Options{To: inspect.VMDK}, size, "ide"},
		{"vmdk nova lsiLogic", convert.Options{To: inspect.VMDK, AdapterType: "lsiLogic"}, size, "lsilogic"},
		{"vmdk nova busLogic", convert.Options{To: inspect.VMDK, AdapterType: "busLogic"}, size, "buslogic"},
		{"vmdk paraVirtual is lsilogic", convert.Options{To: inspect.VMDK, AdapterType: "paraVirtual"}, size, "lsilogic"},
		{"vmdk lsilogicsas is lsilogic", convert.Options{To: inspect.VMDK, AdapterType: "lsilogicsas"}, size, "lsilogic"},
		{"vmdk legacyESX", convert.Options{To: inspect.VMDK, AdapterType: "legacyesx"}, size, "legacyESX"},
		{"vhd rounded to CHS", convert.Options{To: inspect.VHD}, pairSize, ""},
		{"vhd force_size", convert.Options{To: inspect.VHD, ForceSize: true}, size, ""},
		{"vpc is vhd", convert.Options{To: "vpc", ForceSize: true}, size, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "out")
			res, err := convert.File(t.Context(), src, dst, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if res.Output.VirtualSize != tt.virtualSize {
				t.Errorf("virtual size %d, want %d", res.Output.VirtualSize, tt.virtualSize)
			}
			checkDetails(t, res.Output, tt.adapter)
			compare(t, src, inspect.QCOW2, dst, res.Output.Format)
		})
	}
}

// TestFileRefusals: everything File must refuse is refused before qemu-img runs. Options.QemuImg
// is a script that records being called; it must not have been.
func TestFileRefusals(t *testing.T) {
	dir := t.TempDir()
	clean := create(t, dir, "clean.qcow2", 16<<20, "-f", "qcow2")
	backed := create(t, dir, "backed.qcow2", 16<<20, "-f", "qcow2", "-b", clean, "-F", "qcow2")
	dataFile := create(t, dir, "datafile.qcow2", 16<<20, "-f", "qcow2", "-o", "data_file="+filepath.Join(dir, "data.raw"))
	flat := create(t, dir, "flat.vmdk", 1<<20, "-f", "vmdk", "-o", "subformat=monolithicFlat")
	hostFlat := filepath.Join(dir, "host.vmdk")
	desc, err := os.ReadFile(flat)
	if err != nil {
		t.Fatal(err)
	}
	// The descriptor qemu wrote, with its extent pointed at a file of the host.
	hostDesc := strings.Replace(string(desc), `"flat-flat.vmdk"`, `"/etc/hostname"`, 1)
	if hostDesc == string(desc) {
		t.Fatalf("no extent line to rewrite in:\n%s", desc)
	}
	if err := os.WriteFile(hostFlat, []byte(hostDesc), 0o644); err != nil {
		t.Fatal(err)
	}
	random := filepath.Join(dir, "random.bin")
	if err := os.WriteFile(random, []byte(strings.Repeat("\x8f\x13garbage\x00", 10000)), 0o644); err != nil {
		t.Fatal(err)
	}
	need(t, "genisoimage")
	isoDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(isoDir, "README"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	iso := filepath.Join(dir, "cd.iso")
	run(t, "genisoimage", "-quiet", "-V", "CONVERT", "-o", iso, isoDir)
	vhdx := create(t, dir, "d.vhdx", 16<<20, "-f", "vhdx")
	qed := create(t, dir, "d.qed", 16<<20, "-f", "qed")
	ploop := create(t, dir, "d.ploop", 16<<20, "-f", "parallels")
	luks := create(t, dir, "d.luks", 16<<20, "--object", "secret,id=sec0,data=passphrase", "-f", "luks", "-o", "key-secret=sec0,iter-time=10")
	existing := filepath.Join(dir, "existing.raw")
	if err := os.WriteFile(existing, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		src    string
		from   inspect.Format
		to     inspect.Format
		dst    string // default: a new file in an empty directory
		want   error
		detail string // in the error message
	}{
		{"qcow2 backing file", backed, inspect.QCOW2, inspect.Raw, "", convert.ErrUnsafe, "backing_file"},
		{"qcow2 backing file, from detected", backed, "", inspect.Raw, "", convert.ErrUnsafe, "backing_file"},
		{"qcow2 data file", dataFile, inspect.QCOW2, inspect.Raw, "", convert.ErrUnsafe, "data_file"},
		{"vmdk monolithicFlat", flat, inspect.VMDK, inspect.Raw, "", convert.ErrUnsafe, "vmdk_"},
		{"vmdk flat extent on a host file", hostFlat, inspect.VMDK, inspect.QCOW2, "", convert.ErrUnsafe, "vmdk_extent_host_path"},
		{"qcow2 stated as raw", clean, inspect.Raw, inspect.VMDK, "", convert.ErrUnsafe, "format_mismatch"},
		{"qcow2 stated as vhd", clean, inspect.VHD, inspect.Raw, "", convert.ErrUnsafe, "format_mismatch"},
		{"random bytes stated as qcow2", random, inspect.QCOW2, inspect.Raw, "", convert.ErrUnsafe, "format_mismatch"},
		{"iso", iso, "", inspect.Raw, "", convert.ErrUnsupported, "ISO images are never converted"},
		{"iso stated as iso", iso, inspect.ISO, inspect.QCOW2, "", convert.ErrUnsupported, "ISO"},
		{"iso stated as raw", iso, inspect.Raw, inspect.QCOW2, "", convert.ErrUnsafe, "format_mismatch"},
		{"vhdx", vhdx, inspect.VHDX, inspect.Raw, "", convert.ErrUnsupported, "vhdx source"},
		{"qed", qed, "", inspect.Raw, "", convert.ErrUnsupported, "qed source"},
		{"ploop", ploop, inspect.Ploop, inspect.Raw, "", convert.ErrUnsupported, "ploop source (qemu's parallels)"},
		{"luks", luks, inspect.LUKS, inspect.Raw, "", convert.ErrUnsupported, "luks source"},
		{"same format", clean, inspect.QCOW2, inspect.QCOW2, "", convert.ErrSameFormat, "qcow2"},
		{"same format, qemu name", clean, "", "qcow2", "", convert.ErrSameFormat, "qcow2"},
		{"unsupported target", clean, inspect.QCOW2, inspect.VHDX, "", convert.ErrUnsupported, "target format vhdx"},
		{"destination exists", clean, inspect.QCOW2, inspect.Raw, existing, fs.ErrExist, "existing.raw"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			qemuImg, called := recorder(t)
			dst, outDir := tt.dst, t.TempDir()
			if dst == "" {
				dst = filepath.Join(outDir, "out")
			}
			res, err := convert.File(t.Context(), tt.src, dst, convert.Options{From: tt.from, To: tt.to, QemuImg: qemuImg})
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.detail) {
				t.Fatalf("error %v, want %v with %q", err, tt.want, tt.detail)
			}
			if called() {
				t.Fatal("qemu-img was run")
			}
			if tt.want != fs.ErrExist && tt.want != convert.ErrSameFormat && !strings.Contains(tt.name, "target") {
				if res == nil || res.Source == nil || res.Output != nil {
					t.Fatalf("result %+v: want the source's report and no output", res)
				}
			}
			if names := listDir(t, outDir); len(names) != 0 {
				t.Errorf("left behind: %v", names)
			}
			if b, err := os.ReadFile(existing); err != nil || string(b) != "keep me" {
				t.Errorf("existing file changed: %q %v", b, err)
			}
		})
	}
}

// TestFileOverwrite replaces an existing destination only when told to.
func TestFileOverwrite(t *testing.T) {
	src := patterned(t, t.TempDir(), inspect.QCOW2, 8<<20)
	dir := t.TempDir()
	dst := filepath.Join(dir, "out.raw")
	if err := os.WriteFile(dst, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := convert.File(t.Context(), src, dst, convert.Options{To: inspect.Raw}); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("without Overwrite: %v", err)
	}
	if _, err := convert.File(t.Context(), src, dst, convert.Options{To: inspect.Raw, Overwrite: true}); err != nil {
		t.Fatal(err)
	}
	compare(t, src, inspect.QCOW2, dst, inspect.Raw)
	if names := listDir(t, dir); !slices.Equal(names, []string{"out.raw"}) {
		t.Errorf("directory holds %v", names)
	}
}

// TestFileOutputRejected: qemu-img "succeeds" (a script standing in for it) but writes something
// else than asked: the output is inspected, rejected and removed.
func TestFileOutputRejected(t *testing.T) {
	fixtures := t.TempDir()
	qcow2 := patterned(t, t.TempDir(), inspect.QCOW2, 16<<20)
	raw := patterned(t, t.TempDir(), inspect.Raw, 16<<20)
	base := create(t, fixtures, "base.qcow2", 16<<20, "-f", "qcow2")
	backed := create(t, fixtures, "backed.qcow2", 16<<20, "-f", "qcow2", "-b", base, "-F", "qcow2")
	small := create(t, fixtures, "small.qcow2", 1<<20, "-f", "qcow2")
	vmdk := create(t, fixtures, "stream.vmdk", 16<<20, "-f", "vmdk", "-o", "subformat=streamOptimized")
	// The fake qemu-img copies a fixture over its last argument, the output.
	copyOver := func(fixture string) string {
		return `for a; do out="$a"; done` + "\n" + `cat '` + fixture + `' > "$out"`
	}
	tests := []struct {
		name   string
		script string
		src    string
		to     inspect.Format
		detail string
	}{
		{"garbage", `for a; do out="$a"; done` + "\nhead -c 1048576 /dev/urandom > \"$out\"", raw, inspect.QCOW2, "wrote raw, not qcow2"},
		{"unsafe output", copyOver(backed), raw, inspect.QCOW2, "backing_file"},
		{"smaller output", copyOver(small), raw, inspect.QCOW2, "smaller than the source"},
		{"another format", copyOver(vmdk), qcow2, inspect.Raw, "wrote vmdk, not raw"},
		{"nothing written", "exit 0", qcow2, inspect.Raw, "smaller than the source"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			res, err := convert.File(t.Context(), tt.src, filepath.Join(dir, "out"), convert.Options{To: tt.to, QemuImg: script(t, tt.script)})
			if !errors.Is(err, convert.ErrOutputRejected) || !strings.Contains(err.Error(), tt.detail) {
				t.Fatalf("error %v, want ErrOutputRejected with %q", err, tt.detail)
			}
			if res == nil || res.Output == nil {
				t.Errorf("result %+v: want the output's report", res)
			}
			if names := listDir(t, dir); len(names) != 0 {
				t.Errorf("left behind: %v", names)
			}
		})
	}
}

// TestFileQemuImgFails: a qemu-img failure is reported with its standard error, and nothing is
// left behind.
func TestFileQemuImgFails(t *testing.T) {
	src := patterned(t, t.TempDir(), inspect.QCOW2, 8<<20)
	dir := t.TempDir()
	fake := script(t, `for a; do out="$a"; done`+"\n"+`echo partial > "$out"; echo "qemu-img: something broke" >&2; exit 1`)
	_, err := convert.File(t.Context(), src, filepath.Join(dir, "out"), convert.Options{To: inspect.Raw, QemuImg: fake})
	if err == nil || !strings.Contains(err.Error(), "exit status 1: qemu-img: something broke") {
		t.Fatalf("error %v", err)
	}
	if errors.Is(err, convert.ErrLimits) || errors.Is(err, convert.ErrOutputRejected) {
		t.Errorf("error %v wraps a sentinel it should not", err)
	}
	if names := listDir(t, dir); len(names) != 0 {
		t.Errorf("left behind: %v", names)
	}
}

// TestFileNoSpace fills a small file system: qemu-img fails with ENOSPC and its partial output
// is removed. Mounting the tmpfs needs root (as CI and the dev machines run the tests).
func TestFileNoSpace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts a 2 MiB tmpfs to fill it, and needs root (as CI and the dev machines have)")
	}
	src := patterned(t, t.TempDir(), inspect.QCOW2, 16<<20)
	mnt := t.TempDir()
	run(t, "mount", "-t", "tmpfs", "-o", "size=2m", "convert-test", mnt)
	t.Cleanup(func() { run(t, "umount", mnt) })
	_, err := convert.File(context.Background(), src, filepath.Join(mnt, "out.raw"), convert.Options{To: inspect.Raw})
	if err == nil || !strings.Contains(err.Error(), "No space left on device") {
		t.Fatalf("error %v, want ENOSPC", err)
	}
	if names := listDir(t, mnt); len(names) != 0 {
		t.Errorf("left behind: %v", names)
	}
}

// TestFileNotRegular refuses devices and directories as sources.
func TestFileNotRegular(t *testing.T) {
	qemuImg, called := recorder(t)
	for _, src := range []string{"/dev/zero", t.TempDir()} {
		_, err := convert.File(t.Context(), src, filepath.Join(t.TempDir(), "out"), convert.Options{To: inspect.Raw, QemuImg: qemuImg})
		if !errors.Is(err, convert.ErrUnsupported) {
			t.Errorf("%s: error %v", src, err)
		}
	}
	if _, err := convert.File(t.Context(), filepath.Join(t.TempDir(), "missing"), filepath.Join(t.TempDir(), "out"), convert.Options{To: inspect.Raw, QemuImg: qemuImg}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing source: %v", err)
	}
	if called() {
		t.Fatal("qemu-img was run")
	}
}
