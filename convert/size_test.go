package convert_test

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/glance-sidecar/glance-sidecar/convert"
	"github.com/glance-sidecar/glance-sidecar/inspect"
)

// TestExpectedSize checks ExpectedSize against the worst case qemu-img really produces:
// incompressible data filling the whole disk (a streamOptimized VMDK grows then), at a size that
// is no CHS geometry, for each target; and against `qemu-img measure` for fully allocated qcow2
// images up to 16 TiB.
func TestExpectedSize(t *testing.T) {
	const size = 24<<20 + 3*512
	raw := filepath.Join(t.TempDir(), "random.raw")
	data := make([]byte, size)
	rand.Read(data)
	if err := os.WriteFile(raw, data, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, to := range convert.Formats {
		if to == inspect.Raw {
			continue
		}
		t.Run(string(to), func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "out")
			res, err := convert.File(t.Context(), raw, dst, convert.Options{To: to})
			if err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(dst)
			if err != nil {
				t.Fatal(err)
			}
			if want := convert.ExpectedSize(res.Source, to); st.Size() > want {
				t.Errorf("output %d bytes, ExpectedSize %d", st.Size(), want)
			}
			if back := convert.ExpectedSize(res.Output, inspect.Raw); back < size {
				t.Errorf("ExpectedSize back to raw %d < %d", back, size)
			}
		})
	}
	t.Run("qcow2 measure", func(t *testing.T) {
		for _, v := range []int64{1 << 20, 1 << 30, 1 << 40, 16 << 40} {
			out := run(t, "qemu-img", "measure", "-O", "qcow2", "-o", "compat=1.1", "--size", fmt.Sprint(v))
			_, full, ok := strings.Cut(out, "fully allocated size: ")
			n, err := strconv.ParseInt(strings.TrimSpace(full), 10, 64)
			if !ok || err != nil {
				t.Fatalf("qemu-img measure said %q", out)
			}
			if got := convert.ExpectedSize(&inspect.Report{Format: inspect.Raw, VirtualSize: v}, inspect.QCOW2); got < n {
				t.Errorf("%d bytes: ExpectedSize %d < measured %d", v, got, n)
			}
		}
	})
}

func TestExpectedSizeEdges(t *testing.T) {
	tests := []struct {
		v    int64
		to   inspect.Format
		want int64
	}{
		{inspect.SizeUnknown, inspect.Raw, inspect.SizeUnknown},
		{1 << 20, inspect.VHDX, inspect.SizeUnknown},
		{1000, inspect.Raw, 1024},
		{0, inspect.QCOW2, 2 << 20},
		{1 << 30, inspect.VMDK, 1<<30 + 1<<24 + 2<<20},
		{1<<62 + 1, inspect.QCOW2, 1<<63 - 1},
		{1<<63 - 1, inspect.VMDK, 1<<63 - 1},
	}
	for _, tt := range tests {
		if got := convert.ExpectedSize(&inspect.Report{VirtualSize: tt.v}, tt.to); got != tt.want {
			t.Errorf("ExpectedSize(%d, %s) = %d, want %d", tt.v, tt.to, got, tt.want)
		}
	}
	if got := convert.ExpectedSize(nil, inspect.Raw); got != inspect.SizeUnknown {
		t.Errorf("nil report: %d", got)
	}
}
