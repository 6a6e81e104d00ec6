package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestConvertCommand(t *testing.T) {
	dir := t.TempDir()
	data := qemuImage(t, dir, "data.qcow2", "-f", "qcow2", "8M")
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x42 1M 2M", data).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	backed := qemuImage(t, dir, "backed.qcow2", "-f", "qcow2", "-b", data, "-F", "qcow2", "8M")
	vhdx := qemuImage(t, dir, "d.vhdx", "-f", "vhdx", "8M")
	existing := filepath.Join(dir, "existing.raw")
	if err := os.WriteFile(existing, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		args   []string // "@DST" is replaced by a path in an empty directory
		status int
		json   bool
		want   string // substring of stdout
		errOut string // substring of stderr
		format string // the format DST must have afterwards ("" : DST must not exist)
	}{
		{"flags after the files", []string{data, "@DST", "--to", "raw"}, exitOK, false, "(raw, virtual size 8388608 (8.0 MiB)", "", "raw"},
		{"flags first, json", []string{"-o", "json", "--to=vmdk", "--adapter-type", "lsiLogic", data, "@DST"}, exitOK, true, `"converted":true`, "", "vmdk"},
		{"vpc, force size, json after", []string{data, "@DST", "--to", "vpc", "--force-size", "--output", "json"}, exitOK, true, `"virtual_size":8388608`, "", "vhd"},
		{"double dash", []string{"--to", "vdi", "--", data, "@DST"}, exitOK, false, "(vdi,", "", "vdi"},
		{"force replaces", []string{data, existing, "--to", "raw", "--force"}, exitOK, false, "existing.raw (raw", "", ""},
		{"unsafe", []string{backed, "@DST", "--to", "raw"}, exitFinding, false, "", "unsafe (backing_file)", ""},
		{"unsafe json", []string{"-o", "json", backed, "@DST", "--to", "raw"}, exitFinding, true, `"code":"backing_file"`, "backing_file", ""},
		{"from mismatch", []string{data, "@DST", "--to", "vdi", "--from", "raw"}, exitFinding, false, "", "format_mismatch", ""},
		{"unsupported source", []string{vhdx, "@DST", "--to", "raw"}, exitUsage, false, "", "vhdx source", ""},
		{"same format json", []string{data, "@DST", "--to", "qcow2", "-o", "json"}, exitUsage, true, `"converted":false`, "already has the target format", ""},
		{"exists", []string{data, existing, "--to", "raw"}, exitUsage, false, "", "file already exists", ""},
		{"missing source", []string{filepath.Join(dir, "missing"), "@DST", "--to", "raw"}, exitUsage, false, "", "no such file", ""},
		{"limits", []string{data, "@DST", "--to", "raw", "--address-space", "16M"}, exitUsage, false, "", "qemu-img aborted by resource limits", ""},
		{"no target", []string{data, "@DST"}, exitUsage, false, "", "needs --to", ""},
		{"bad target", []string{data, "@DST", "--to", "iso"}, exitUsage, false, "", "target format iso", ""},
		{"bad adapter", []string{data, "@DST", "--to", "vmdk", "--adapter-type", "scsi"}, exitUsage, false, "", "adapter type", ""},
		{"bad address space", []string{data, "@DST", "--to", "raw", "--address-space", "lots"}, exitUsage, false, "", "--address-space", ""},
		{"bad output", []string{data, "@DST", "--to", "raw", "-o", "yaml"}, exitUsage, false, "", "--output", ""},
		{"one file", []string{data, "--to", "raw"}, exitUsage, false, "", "needs SRC and DST", ""},
		{"unknown flag after", []string{data, "@DST", "--to", "raw", "--frobnicate"}, exitUsage, false, "", "frobnicate", ""},
		{"missing flag value", []string{data, "@DST", "--to"}, exitUsage, false, "", "needs an argument", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			outDir := t.TempDir()
			dst := filepath.Join(outDir, "out")
			args := []string{"glance-sidecar", "convert"}
			for _, a := range tt.args {
				if a == "@DST" {
					a = dst
				}
				args = append(args, a)
			}
			var stdout, stderr bytes.Buffer
			status := run(context.Background(), args, &stdout, &stderr)
			if status != tt.status {
				t.Fatalf("status %d, want %d\nstdout: %s\nstderr: %s", status, tt.status, stdout.String(), stderr.String())
			}
			if !strings.Contains(stdout.String(), tt.want) {
				t.Errorf("stdout lacks %q:\n%s", tt.want, stdout.String())
			}
			if !strings.Contains(stderr.String(), tt.errOut) {
				t.Errorf("stderr lacks %q:\n%s", tt.errOut, stderr.String())
			}
			if tt.json {
				checkConvertJSON(t, stdout.String())
			}
			if tt.format != "" {
				var got bytes.Buffer
				if s := run(context.Background(), []string{"glance-sidecar", "inspect", "-o", "json", "--declared", tt.format, dst}, &got, &stderr); s != exitOK {
					t.Fatalf("inspecting the output: status %d: %s", s, got.String())
				}
			} else if names, _ := os.ReadDir(outDir); len(names) != 0 {
				t.Errorf("left behind: %v", names)
			}
		})
	}
	if b, err := os.ReadFile(existing); err != nil || bytes.Equal(b, []byte("old")) {
		t.Errorf("--force did not replace the file: %q %v", b, err)
	}
}

// checkConvertJSON checks stdout is one JSON object with exactly the documented fields.
func checkConvertJSON(t *testing.T, out string) {
	t.Helper()
	if n := strings.Count(strings.TrimSpace(out), "\n"); n != 0 {
		t.Fatalf("%d lines, want 1", n+1)
	}
	checkJSONFields(t, out, "converted", "destination", "duration_seconds", "from", "problems", "size", "source", "to", "virtual_size")
}

func TestRenderProgress(t *testing.T) {
	tests := []struct {
		pct     float64
		elapsed time.Duration
		want    string
	}{
		{0, 0, "\r[..............................]   0.00%  0:00"},
		{50, 75 * time.Second, "\r[###############...............]  50.00%  1:15"},
		{100, time.Hour, "\r[##############################] 100.00%  60:00"},
	}
	for _, tt := range tests {
		if got := renderProgress(tt.pct, tt.elapsed); got != tt.want {
			t.Errorf("renderProgress(%v, %v) = %q, want %q", tt.pct, tt.elapsed, got, tt.want)
		}
	}
}

func TestParseBytes(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"2147483648", 2 << 30, true}, {"2G", 2 << 30, true}, {"2GiB", 2 << 30, true}, {"2gb", 2 << 30, true},
		{"16M", 16 << 20, true}, {"512k", 512 << 10, true}, {"1T", 1 << 40, true}, {"100B", 100, true},
		{"", 0, false}, {"lots", 0, false}, {"-1G", 0, false}, {"1.5G", 0, false}, {"99999999999T", 0, false},
	}
	for _, tt := range tests {
		got, err := parseBytes(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

// TestIsTerminal: a pipe or a regular file gets no progress bar.
func TestIsTerminal(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, w := range []io.Writer{w, f, &bytes.Buffer{}} {
		if isTerminal(w) {
			t.Errorf("%T is a terminal", w)
		}
	}
}
