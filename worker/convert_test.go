package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/glance-sidecar/glance-sidecar/convert"
	"github.com/glance-sidecar/glance-sidecar/glanceclient"
	"github.com/glance-sidecar/glance-sidecar/inspect"
	"github.com/glance-sidecar/glance-sidecar/internal/nbd"
)

func TestConvertedID(t *testing.T) {
	a := ConvertedID("9a0d8c1e-0000-4000-8000-000000000001", inspect.Raw)
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(a) {
		t.Errorf("%q is not a version 5 UUID", a)
	}
	if b := ConvertedID("9a0d8c1e-0000-4000-8000-000000000001", inspect.Raw); b != a {
		t.Errorf("not deterministic: %s then %s", a, b)
	}
	for _, other := range []string{
		ConvertedID("9a0d8c1e-0000-4000-8000-000000000002", inspect.Raw),
		ConvertedID("9a0d8c1e-0000-4000-8000-000000000001", inspect.QCOW2),
	} {
		if other == a {
			t.Errorf("two conversions share the id %s", a)
		}
	}
}

func TestConvertOptionsValidate(t *testing.T) {
	ws := openWorkspace(t, t.TempDir(), 1<<20, 1)
	o := ConvertOptions{Target: "vpc", Workspace: ws}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if o.Target != inspect.VHD || o.Original != OriginalKeep || len(o.Sources) != len(convert.Formats) || o.Timeout == 0 {
		t.Errorf("defaults not filled: %+v", o)
	}
	bad := ConvertOptions{Target: "iso", Sources: []inspect.Format{"qcow2", "ploop"}, Original: "burn", MinSize: -1}
	err := bad.Validate()
	for _, want := range []string{"iso", "ploop", "burn", "negative", "workspace"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
	if err := (&ConvertOptions{}).Validate(); err != nil {
		t.Errorf("conversion off: %v", err)
	}
}

func TestConvertDecision(t *testing.T) {
	o := ConvertOptions{Target: inspect.Raw, Sources: []inspect.Format{inspect.QCOW2, inspect.VMDK}, MinSize: 10, MaxSize: 100}
	img := func(props map[string]string) *glanceclient.Image { return &glanceclient.Image{Properties: props} }
	for _, tc := range []struct {
		name   string
		img    *glanceclient.Image
		format inspect.Format
		vsize  int64
		want   string // substring of the reason; "" converts
	}{
		{"converted", img(nil), inspect.QCOW2, 50, ""},
		{"a conversion", img(map[string]string{"sidecar_converted_from": "x"}), inspect.QCOW2, 50, "itself a conversion"},
		{"target format", img(nil), inspect.Raw, 50, "already raw"},
		{"not a source", img(nil), inspect.VDI, 50, "vdi is not converted"},
		{"small", img(nil), inspect.QCOW2, 9, "below min_size"},
		{"large", img(nil), inspect.VMDK, 101, "above max_size"},
	} {
		got := o.convertReason(tc.img, tc.format, tc.vsize, "sidecar_")
		if tc.want == "" && got != "" || tc.want != "" && !strings.Contains(got, tc.want) {
			t.Errorf("%s: reason %q, want %q", tc.name, got, tc.want)
		}
	}
	if got := (&ConvertOptions{}).convertReason(img(nil), inspect.QCOW2, 50, "sidecar_"); got != "conversion is off" {
		t.Errorf("off: %q", got)
	}

	// An image inspected but not yet converted owes a conversion; its outcome is not current.
	inspected := &glanceclient.Image{ContainerFormat: "bare", Size: new(int64), HashAlgo: "sha512", HashValue: "ab",
		Properties: map[string]string{"sidecar_status": "inspected", "sidecar_format": "qcow2", "sidecar_virtual_size": "50",
			"sidecar_checked_hash": "sha512:ab", "sidecar_version": "v"}}
	jo := JobOptions{Properties: PropertyOptions{Version: "v"}, Convert: o}
	if r := skipReason(inspected, jo); r != "" {
		t.Errorf("an image owing a conversion is skipped: %q", r)
	}
	jo.Convert = ConvertOptions{}
	if r := skipReason(inspected, jo); r != "outcome is current" {
		t.Errorf("without conversion: %q", r)
	}
	for status, current := range map[string]bool{"converted": true, "failed": true, "unsafe": true} {
		inspected.Properties["sidecar_status"] = status
		jo.Convert = o
		if got := skipReason(inspected, jo) == "outcome is current"; got != current {
			t.Errorf("status %s with the hash: current %v, want %v", status, got, current)
		}
	}
}

func TestCopyProperties(t *testing.T) {
	got := copyProperties(map[string]string{
		"os_distro": "debian", "hw_firmware_type": "uefi", "vmware_adaptertype": "lsiLogic",
		"vmware_disktype": "sparse", "os_glance_importing_to_stores": "x", "sidecar_format": "vmdk", "sidecar_status": "inspected",
	}, "sidecar_")
	want := map[string]string{"os_distro": "debian", "hw_firmware_type": "uefi", "vmware_adaptertype": "lsiLogic"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("copied %v, want %v", got, want)
	}
}

func TestPermanent(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("x: %w", ErrTooLarge), true},
		{fmt.Errorf("x: %w", convert.ErrOutputRejected), true},
		{fmt.Errorf("x: %w", convert.ErrLimits), true},
		{permanent(errors.New("id burned")), true},
		{fmt.Errorf("x: %w", glanceclient.ErrConflict), false},
		{errors.New("connection reset"), false},
	} {
		if got := isPermanent(tc.err); got != tc.want {
			t.Errorf("isPermanent(%v) = %v", tc.err, got)
		}
	}
}

func TestHoldback(t *testing.T) {
	for _, tc := range []struct {
		name       string
		total      int64
		writes     []int
		passBefore int // bytes the reader has before commit
		err        bool
	}{
		{"holds the tail", 10, []int{3, 3, 4}, 6, false},
		{"one write", 10, []int{10}, 6, false},
		{"smaller than the hold", 3, []int{1, 2}, 0, false},
		{"short", 10, []int{3}, 3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pr, pw := io.Pipe()
			h := &holdback{w: pw, total: tc.total, hold: 4}
			got := make(chan []byte)
			go func() { b, _ := io.ReadAll(pr); got <- b }()
			var want []byte
			for i, n := range tc.writes {
				p := bytes.Repeat([]byte{byte('a' + i)}, n)
				want = append(want, p...)
				if _, err := h.Write(p); err != nil {
					t.Fatal(err)
				}
			}
			if h.off != int64(tc.passBefore) {
				t.Errorf("%d bytes passed before commit, want %d", h.off, tc.passBefore)
			}
			err := h.commit()
			if (err != nil) != tc.err {
				t.Fatalf("commit: %v", err)
			}
			b := <-got
			if !tc.err && !bytes.Equal(b, want) {
				t.Errorf("reader got %q, want %q", b, want)
			}
		})
	}
	h := &holdback{w: func() *io.PipeWriter { _, w := io.Pipe(); return w }(), total: 2, hold: 4}
	if _, err := h.Write([]byte("abc")); err == nil {
		t.Error("a write past the total was accepted")
	}
}

func TestCheckedWriter(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 100)
	rs := []region{{off: 0, data: data[:64]}, {off: 500, data: data[500:520]}, {off: 990, data: data[990:]}}
	for _, tc := range []struct {
		name  string
		flip  int // byte changed in the download, -1 none
		chunk int
		fail  bool
	}{
		{"identical", -1, 7, false},
		{"differs outside the regions", 300, 64, false},
		{"differs in the head", 10, 100, true},
		{"differs in the middle region", 519, 3, true},
		{"differs in the tail", 999, 1000, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dl := bytes.Clone(data)
			if tc.flip >= 0 {
				dl[tc.flip] ^= 0xff
			}
			f, err := os.Create(filepath.Join(t.TempDir(), "source"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			g, err := nbd.NewWindow(nbd.WindowOptions{Size: int64(len(dl)), Spill: f,
				Fetch: func(context.Context, []byte, int64) error { return errors.New("no fetch here") }})
			if err != nil {
				t.Fatal(err)
			}
			w := &checkedWriter{w: g, regions: rs}
			var werr error
			for off := 0; off < len(dl) && werr == nil; off += tc.chunk {
				_, werr = w.Write(dl[off:min(off+tc.chunk, len(dl))])
			}
			if tc.fail != errors.Is(werr, errInconsistent) {
				t.Fatalf("write error %v, want inconsistent %v", werr, tc.fail)
			}
			if tc.fail {
				if g.Available() > int64(tc.flip) {
					t.Errorf("%d bytes released to qemu-img, past the differing byte %d", g.Available(), tc.flip)
				}
				return
			}
			if g.Available() != int64(len(dl)) {
				t.Errorf("released %d of %d bytes", g.Available(), len(dl))
			}
		})
	}
}
