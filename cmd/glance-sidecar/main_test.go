package main

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
)

func qemuImage(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	cmd := exec.Command("qemu-img", append(append([]string{"create", "-q"}, args[:len(args)-1]...), p, args[len(args)-1])...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v\n%s", err, out)
	}
	return p
}

func TestInspectCommand(t *testing.T) {
	dir := t.TempDir()
	clean := qemuImage(t, dir, "clean.qcow2", "-f", "qcow2", "1G")
	backed := qemuImage(t, dir, "backed.qcow2", "-f", "qcow2", "-b", clean, "-F", "qcow2", "1G")
	flat := qemuImage(t, dir, "flat.vmdk", "-f", "vmdk", "-o", "subformat=monolithicFlat", "1M")
	sparse := qemuImage(t, dir, "sparse.vmdk", "-f", "vmdk", "-o", "adapter_type=lsilogic", "1M")
	missing := filepath.Join(dir, "missing")

	tests := []struct {
		name   string
		args   []string
		status int
		lines  int    // JSON lines expected (json output only)
		want   string // substring of stdout
		errOut string // substring of stderr
	}{
		{"safe table", []string{"inspect", clean}, exitOK, 0, "qcow2", ""},
		{"safe json", []string{"inspect", "-o", "json", clean, sparse}, exitOK, 2, `"adapter_type":"lsilogic"`, ""},
		{"unsafe", []string{"inspect", "--output", "json", clean, backed}, exitFinding, 2, `"code":"backing_file"`, ""},
		{"declared mismatch", []string{"inspect", "--declared", "raw", "-o", "json", clean}, exitFinding, 1, `"code":"format_mismatch"`, ""},
		{"declared match", []string{"inspect", "--declared", "qcow2", clean}, exitOK, 0, "yes", ""},
		{"descriptor file", []string{"inspect", flat}, exitFinding, 0, "vmdk_external_extent", ""},
		{"missing file beats unsafe", []string{"inspect", "-o", "json", backed, missing}, exitUsage, 2, `"error":"open `, ""},
		{"no files", []string{"inspect"}, exitUsage, 0, "", "at least one FILE"},
		{"bad output", []string{"inspect", "-o", "yaml", clean}, exitUsage, 0, "", "--output"},
		{"bad declared", []string{"inspect", "--declared", "floppy", clean}, exitUsage, 0, "", "unknown disk format"},
		{"unknown flag", []string{"inspect", "--frobnicate", clean}, exitUsage, 0, "", "frobnicate"},
		{"version", []string{"version"}, exitOK, 0, "dev", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			status := run(context.Background(), append([]string{"glance-sidecar"}, tt.args...), &stdout, &stderr)
			if status != tt.status {
				t.Errorf("status %d, want %d\nstdout: %s\nstderr: %s", status, tt.status, stdout.String(), stderr.String())
			}
			if !strings.Contains(stdout.String(), tt.want) {
				t.Errorf("stdout lacks %q:\n%s", tt.want, stdout.String())
			}
			if !strings.Contains(stderr.String(), tt.errOut) {
				t.Errorf("stderr lacks %q:\n%s", tt.errOut, stderr.String())
			}
			if tt.lines > 0 {
				lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
				if len(lines) != tt.lines {
					t.Fatalf("%d JSON lines, want %d", len(lines), tt.lines)
				}
				for _, l := range lines {
					checkJSONFields(t, l, "details", "file", "format", "problems", "safe", "virtual_size")
				}
			}
		})
	}
}

// checkJSONFields checks one line is a JSON object with exactly the fields want (sorted), plus
// "error" when something failed, and a list, never null, as "problems".
func checkJSONFields(t *testing.T, line string, want ...string) {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatalf("not JSON: %v: %s", err, line)
	}
	if _, ok := m["error"]; ok {
		want = append(slices.Clone(want), "error")
		sort.Strings(want)
	}
	keys := slices.Sorted(maps.Keys(m))
	if !reflect.DeepEqual(keys, want) {
		t.Errorf("fields %v, want %v", keys, want)
	}
	if string(m["problems"]) == "null" {
		t.Errorf("problems is null, want a list")
	}
}

func TestInspectQCOW2DetailsJSON(t *testing.T) {
	dir := t.TempDir()
	img := qemuImage(t, dir, "z.qcow2", "-f", "qcow2", "-o", "compression_type=zstd", "3G")
	var stdout bytes.Buffer
	if s := run(context.Background(), []string{"glance-sidecar", "inspect", "-o", "json", img}, &stdout, os.Stderr); s != exitOK {
		t.Fatalf("status %d", s)
	}
	var got struct {
		Format      string         `json:"format"`
		VirtualSize *int64         `json:"virtual_size"`
		Details     map[string]any `json:"details"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got.Format != "qcow2" || got.VirtualSize == nil || *got.VirtualSize != 3<<30 {
		t.Fatalf("got %+v", got)
	}
	for _, k := range []string{"version", "cluster_size", "compression_type", "backing_file", "data_file", "encrypted"} {
		if _, ok := got.Details[k]; !ok {
			t.Errorf("details lack %q: %v", k, got.Details)
		}
	}
	if got.Details["compression_type"] != "zstd" {
		t.Errorf("compression_type %v", got.Details["compression_type"])
	}
}

func TestInspectStdin(t *testing.T) {
	dir := t.TempDir()
	img := qemuImage(t, dir, "s.vmdk", "-f", "vmdk", "-o", "subformat=streamOptimized", "1G")
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	old := os.Stdin
	os.Stdin = f
	defer func() { os.Stdin = old }()
	var stdout bytes.Buffer
	if s := run(context.Background(), []string{"glance-sidecar", "inspect", "-o", "json", "-"}, &stdout, os.Stderr); s != exitOK {
		t.Fatalf("status %d: %s", s, stdout.String())
	}
	if !strings.Contains(stdout.String(), `"create_type":"streamOptimized"`) || !strings.Contains(stdout.String(), `"virtual_size":1073741824`) {
		t.Errorf("stdout %s", stdout.String())
	}
}
