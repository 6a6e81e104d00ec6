package convert

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/glance-sidecar/glance-sidecar/inspect"
)

// TestConvertArgs checks the qemu-img command lines: -f and -O always, the target options of
// each format, the adapter type chosen, -n for targets that exist.
func TestConvertArgs(t *testing.T) {
	report := func(f inspect.Format, details any) *inspect.Report {
		return &inspect.Report{Format: f, VirtualSize: 1 << 20, Details: details}
	}
	vmdk := func(adapter string) *inspect.Report {
		return report(inspect.VMDK, &inspect.VMDKDetails{CreateType: "monolithicSparse", AdapterType: adapter})
	}
	tests := []struct {
		name   string
		src    *inspect.Report
		opts   Options
		exists bool
		extra  []string
		want   string
	}{
		{"to raw", report(inspect.QCOW2, nil), Options{To: inspect.Raw}, false, nil, "convert -f qcow2 -O raw -q S D"},
		{"to qcow2", report(inspect.Raw, nil), Options{To: inspect.QCOW2}, false, nil, "convert -f raw -O qcow2 -q -o compat=1.1 S D"},
		{"to vdi", report(inspect.VHD, nil), Options{To: inspect.VDI}, false, nil, "convert -f vpc -O vdi -q S D"},
		{"to vhd", report(inspect.VDI, nil), Options{To: inspect.VHD}, false, nil, "convert -f vdi -O vpc -q -o subformat=dynamic S D"},
		{"to vhd force_size", report(inspect.VDI, nil), Options{To: inspect.VHD, ForceSize: true}, false, nil, "convert -f vdi -O vpc -q -o subformat=dynamic,force_size=on S D"},
		{"to vmdk default", report(inspect.Raw, nil), Options{To: inspect.VMDK, AdapterType: "ide"}, false, nil, "convert -f raw -O vmdk -q -o subformat=streamOptimized,adapter_type=ide S D"},
		{"to vmdk option", report(inspect.Raw, nil), Options{To: inspect.VMDK, AdapterType: "buslogic"}, false, nil, "convert -f raw -O vmdk -q -o subformat=streamOptimized,adapter_type=buslogic S D"},
		// A VMDK source's adapter wins over the option. (vmdk to vmdk is ErrSameFormat, so
		// only this builder sees it; the rule is the one Nova applies.)
		{"vmdk source lsilogic", vmdk("lsilogic"), Options{To: inspect.VMDK, AdapterType: "ide"}, false, nil, "convert -f vmdk -O vmdk -q -o subformat=streamOptimized,adapter_type=lsilogic S D"},
		{"vmdk source pvscsi", vmdk("pvscsi"), Options{To: inspect.VMDK, AdapterType: "ide"}, false, nil, "convert -f vmdk -O vmdk -q -o subformat=streamOptimized,adapter_type=lsilogic S D"},
		{"vmdk source legacyesx", vmdk("legacyesx"), Options{To: inspect.VMDK, AdapterType: "ide"}, false, nil, "convert -f vmdk -O vmdk -q -o subformat=streamOptimized,adapter_type=legacyESX S D"},
		{"vmdk source hostile adapter", vmdk("ide,zeroed_grain=on"), Options{To: inspect.VMDK, AdapterType: "buslogic"}, false, nil, "convert -f vmdk -O vmdk -q -o subformat=streamOptimized,adapter_type=buslogic S D"},
		{"vmdk source no adapter", vmdk(""), Options{To: inspect.VMDK, AdapterType: "ide"}, false, nil, "convert -f vmdk -O vmdk -q -o subformat=streamOptimized,adapter_type=ide S D"},
		{"progress", report(inspect.QCOW2, nil), Options{To: inspect.Raw, Progress: func(float64) {}}, false, nil, "convert -f qcow2 -O raw -p S D"},
		{"target exists", report(inspect.QCOW2, nil), Options{To: inspect.VMDK}, true, nil, "convert -f qcow2 -O vmdk -q -n S D"},
		{"extra", report(inspect.QCOW2, nil), Options{To: inspect.Raw}, true, []string{"-W", "-m", "4", "--target-is-zero"}, "convert -f qcow2 -O raw -q -n -W -m 4 --target-is-zero S D"},
		{"ploop name", report(inspect.Ploop, nil), Options{To: inspect.Raw}, false, nil, "convert -f parallels -O raw -q S D"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := strings.Join(convertArgs("S", "D", tt.src, tt.opts, tt.exists, tt.extra), " ")
			if got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestAdapterType(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"ide", "ide", true}, {"IDE", "ide", true}, {"busLogic", "buslogic", true},
		{"lsiLogic", "lsilogic", true}, {"lsilogicsas", "lsilogic", true}, {"lsiLogicsas", "lsilogic", true},
		{"pvscsi", "lsilogic", true}, {"paraVirtual", "lsilogic", true}, {"legacyESX", "legacyESX", true},
		{" ide ", "ide", true}, {"", "", false}, {"scsi", "", false}, {"ide,x=y", "", false},
	}
	for _, tt := range tests {
		got, ok := AdapterType(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("AdapterType(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// TestCheck is the gate on inspection reports.
func TestCheck(t *testing.T) {
	safe := func(f inspect.Format) *inspect.Report { return &inspect.Report{Format: f, VirtualSize: 1 << 30} }
	unsafe := &inspect.Report{Format: inspect.QCOW2, VirtualSize: 1 << 30, Problems: []inspect.Problem{{Code: inspect.CodeBackingFile, Detail: "/etc/passwd"}}}
	tests := []struct {
		name   string
		rep    *inspect.Report
		opts   Options
		want   error
		detail string
	}{
		{"ok", safe(inspect.QCOW2), Options{To: inspect.Raw}, nil, ""},
		{"ok stated", safe(inspect.VHD), Options{From: "vpc", To: inspect.Raw}, nil, ""},
		{"ami is raw", safe(inspect.Raw), Options{From: "ami", To: inspect.QCOW2}, nil, ""},
		{"unsafe", unsafe, Options{To: inspect.Raw}, ErrUnsafe, "backing_file: /etc/passwd"},
		{"mismatch", safe(inspect.QCOW2), Options{From: inspect.Raw, To: inspect.VDI}, ErrUnsafe, "format_mismatch: the content is qcow2, not raw"},
		{"iso", safe(inspect.ISO), Options{To: inspect.Raw}, ErrUnsupported, "ISO"},
		{"vhdx", safe(inspect.VHDX), Options{To: inspect.Raw}, ErrUnsupported, "vhdx source (qemu's vhdx)"},
		{"ploop", safe(inspect.Ploop), Options{To: inspect.Raw}, ErrUnsupported, "ploop source (qemu's parallels)"},
		{"qcow v1", safe(inspect.QCOW), Options{To: inspect.Raw}, ErrUnsupported, "qcow source"},
		{"size unknown", &inspect.Report{Format: inspect.Raw, VirtualSize: inspect.SizeUnknown}, Options{To: inspect.QCOW2}, ErrUnsupported, "virtual size is unknown"},
		{"same", safe(inspect.VHD), Options{To: "vpc"}, ErrSameFormat, "vhd"},
		{"target iso", safe(inspect.Raw), Options{To: inspect.ISO}, ErrUnsupported, "target format"},
		{"target unknown", safe(inspect.Raw), Options{To: "floppy"}, ErrUnsupported, "target format"},
		{"nil", nil, Options{To: inspect.Raw}, nil, "no inspection report"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Check(tt.rep, tt.opts)
			switch {
			case tt.detail == "" && err != nil:
				t.Fatalf("error %v", err)
			case tt.detail != "" && (err == nil || !strings.Contains(err.Error(), tt.detail)):
				t.Fatalf("error %v, want %q", err, tt.detail)
			case tt.want != nil && !errors.Is(err, tt.want):
				t.Fatalf("error %v, want %v", err, tt.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	o := Options{To: "vpc", From: "parallels"}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if o.To != inspect.VHD || o.From != inspect.Ploop || o.AdapterType != "ide" || o.AddressSpace != DefaultAddressSpace ||
		o.Logger == nil || !strings.HasPrefix(o.qemuImgPath, "/") || !strings.HasPrefix(o.prlimitPath, "/") {
		t.Errorf("defaults %+v", o)
	}
	bad := Options{From: "floppy", To: "iso", AdapterType: "scsi", AddressSpace: -1, CPUTime: -1, QemuImg: "/nonexistent/qemu-img"}
	err := bad.Validate()
	for _, want := range []string{"floppy", "target format iso", "scsi", "negative address-space", "negative CPU-time", "/nonexistent/qemu-img"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
	if !errors.Is(err, ErrUnsupported) {
		t.Errorf("error %v does not wrap ErrUnsupported", err)
	}
	if err := (&Options{}).Validate(); err == nil || !strings.Contains(err.Error(), "no target format") {
		t.Errorf("no target: %v", err)
	}
}

func TestParseProgress(t *testing.T) {
	tests := []struct {
		in   string
		want float64
		ok   bool
	}{
		{"    (0.00/100%)", 0, true},
		{"    (12.34/100%)", 12.34, true},
		{"(100.00/100%)", 100, true},
		{"\t(7/100%)", 7, true},
		{"    (100.01/100%)", 0, false},
		{"    (-1.00/100%)", 0, false},
		{"    (1e2/100%)", 0, false},
		{"    (NaN/100%)", 0, false},
		{"    (.5/100%)", 0, false},
		{"    (5./100%)", 0, false},
		{"    (1.2.3/100%)", 0, false},
		{"    (0000012.5/100%)", 0, false},
		{"    (12.34/99%)", 0, false},
		{"    (12.34/100%) ", 0, false},
		{"12.34", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		got, ok := parseProgress([]byte(tt.in))
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseProgress(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// qemuProgress is the shape of what qemu-img 7.2's convert -p prints (recorded from a real run,
// shortened): updates ended by \r, the last by \r\n.
const qemuProgress = "    (0.00/100%)\r    (6.25/100%)\r    (12.50/100%)\r    (12.50/100%)\r    (50.00/100%)\r    (100.00/100%)\r\n"

func TestProgressWriter(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []float64
	}{
		{"qemu", qemuProgress, []float64{0, 6.25, 12.5, 50, 100}},
		{"newlines", "(1/100%)\n(2/100%)\n", []float64{1, 2}},
		{"going back is ignored", "(50/100%)\r(40/100%)\r(60/100%)\r", []float64{50, 60}},
		{"unterminated", "(50/100%)", nil},
		{"noise between", "qemu-img: warning\r(10/100%)\rjunk(20/100%)\r(30/100%)\r", []float64{10, 30}},
		{"overlong token", strings.Repeat(" ", 100) + "(10/100%)\r(20/100%)\r", []float64{20}},
		{"empty", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, size := range []int{1, 2, 3, 7, 16, 1 << 10} {
				got := feedProgress([]byte(tt.in), size)
				if !slices.Equal(got, tt.want) {
					t.Errorf("writes of %d: got %v, want %v", size, got, tt.want)
				}
			}
		})
	}
}

// feedProgress writes in to a progressWriter in writes of size bytes and returns what it
// reported.
func feedProgress(in []byte, size int) []float64 {
	var got []float64
	w := &progressWriter{fn: func(p float64) { got = append(got, p) }}
	for len(in) > 0 {
		n := min(size, len(in))
		if m, err := w.Write(in[:n]); m != n || err != nil {
			panic("progressWriter.Write failed")
		}
		in = in[n:]
	}
	return got
}

// FuzzProgress: whatever qemu-img (or something posing as it) prints, the writer never fails,
// reports only increasing values within [0, 100], and reports the same whatever the writes'
// sizes.
func FuzzProgress(f *testing.F) {
	f.Add([]byte(qemuProgress), uint8(1))
	f.Add([]byte("    (99.99/100%)\r    (100.00/100%)\r\n"), uint8(5))
	f.Add([]byte(strings.Repeat("(", 70)+"\r(1/100%)\n"), uint8(64))
	f.Add([]byte("(1e308/100%)\r(Inf/100%)\r(0x10/100%)\r"), uint8(3))
	f.Fuzz(func(t *testing.T, in []byte, size uint8) {
		whole := feedProgress(in, len(in)+1)
		cut := feedProgress(in, int(size)+1)
		if !slices.Equal(whole, cut) {
			t.Fatalf("one write: %v; writes of %d: %v", whole, int(size)+1, cut)
		}
		for i, p := range whole {
			if math.IsNaN(p) || p < 0 || p > 100 || (i > 0 && p <= whole[i-1]) {
				t.Fatalf("reported %v", whole)
			}
		}
	})
}

func TestTailBuffer(t *testing.T) {
	tb := &tailBuffer{max: 8}
	for _, s := range []string{"abc", "defg"} {
		tb.Write([]byte(s))
	}
	if got := tb.String(); got != "abcdefg" {
		t.Errorf("%q", got)
	}
	tb.Write([]byte("hij"))
	if got := tb.String(); got != "…cdefghij" {
		t.Errorf("%q", got)
	}
	tb.Write([]byte("0123456789"))
	if got := tb.String(); got != "…23456789" {
		t.Errorf("%q", got)
	}
}
