package convert_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/glance-sidecar/glance-sidecar/convert"
	"github.com/glance-sidecar/glance-sidecar/inspect"
)

// benchData is the guest data of the benchmark source: a qcow2 holding 256 MiB of written data.
const benchData = 256 << 20

// benchQCOW2 makes the benchmark source (each benchmark function makes its own, once per -count:
// b.Loop runs a benchmark function once).
func benchQCOW2(b *testing.B) string {
	b.Helper()
	dir := b.TempDir()
	raw := filepath.Join(dir, "data.raw")
	writePattern(b, raw, benchData)
	src := filepath.Join(dir, "src.qcow2")
	run(b, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1", raw, src)
	if err := os.Remove(raw); err != nil {
		b.Fatal(err)
	}
	// Let the writeback of what was just written end before timing anything that fsyncs.
	syscall.Sync()
	return src
}

// BenchmarkConvert is convert.File from qcow2 to raw: inspection of the source, qemu-img under
// prlimit in its own process group with progress parsed, re-inspection, fsync and rename.
// Compare with BenchmarkQemuImgDirect, the same conversion by a plain exec of qemu-img.
func BenchmarkConvert(b *testing.B) {
	src := benchQCOW2(b)
	dir := b.TempDir()
	b.SetBytes(benchData)
	i := 0
	for b.Loop() {
		dst := filepath.Join(dir, fmt.Sprintf("out-%d.raw", i))
		i++
		if _, err := convert.File(b.Context(), src, dst, convert.Options{From: inspect.QCOW2, To: inspect.Raw, Progress: func(float64) {}}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := os.Remove(dst); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkQemuImgDirect is the baseline: `qemu-img convert -p -f qcow2 -O raw SRC DST` by a
// plain exec, nothing else ("exec"), and the same followed by the fsync of the output and its
// directory that File does for durability ("exec+fsync").
func BenchmarkQemuImgDirect(b *testing.B) {
	src := benchQCOW2(b)
	for _, sync := range []bool{false, true} {
		name := "exec"
		if sync {
			name = "exec+fsync"
		}
		b.Run(name, func(b *testing.B) {
			dir := b.TempDir()
			b.SetBytes(benchData)
			i := 0
			for b.Loop() {
				dst := filepath.Join(dir, fmt.Sprintf("out-%d.raw", i))
				i++
				cmd := exec.Command("qemu-img", "convert", "-p", "-f", "qcow2", "-O", "raw", src, dst)
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("%v\n%s", err, out)
				}
				if sync {
					fsync(b, dst)
					fsync(b, dir)
				}
				b.StopTimer()
				if err := os.Remove(dst); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

func fsync(b *testing.B, path string) {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
}
