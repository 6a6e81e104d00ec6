//go:build integration

package worker

// Integration tests of the job against the project's test cloud (test/cloud/up.sh).

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/glance-sidecar/glance-sidecar/glanceclient"
	"github.com/glance-sidecar/glance-sidecar/internal/nbd"
	"github.com/glance-sidecar/glance-sidecar/internal/testcloud"
)

func cloudClient(t *testing.T) *glanceclient.Client {
	t.Helper()
	c, err := glanceclient.New(t.Context(), glanceclient.Options{Cloud: "sidecar", CloudsFile: filepath.Join(testcloud.Dir(), "clouds.yaml"), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("test cloud (test/cloud/up.sh): %v", err)
	}
	return c
}

func uuid(t *testing.T) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// image makes a file with the shell-free command args (qemu-img create/convert …, "@" the
// output path) or writes data, uploads it declared as diskFormat, and waits until it is active.
func image(t *testing.T, c *glanceclient.Client, diskFormat string, data []byte, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "img")
	if data != nil {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	} else {
		a := make([]string, len(args)-1)
		for i, s := range args[1:] {
			if s == "@" {
				s = path
			}
			a[i] = s
		}
		if out, err := exec.Command(args[0], a...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	id := uuid(t)
	if _, err := c.Create(t.Context(), glanceclient.CreateOptions{ID: id, Name: t.Name(), DiskFormat: diskFormat, ContainerFormat: "bare"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Delete(t.Context(), id) })
	if _, err := c.UploadFile(t.Context(), id, path); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitActive(t.Context(), id, glanceclient.WaitOptions{Timeout: time.Minute}); err != nil {
		t.Fatal(err)
	}
	return id
}

func TestIntegrationJob(t *testing.T) {
	c := cloudClient(t)
	random := make([]byte, 1<<20)
	_, _ = rand.Read(random)
	base := filepath.Join(t.TempDir(), "base.raw")
	if err := os.WriteFile(base, []byte("base"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		id   string
		want map[string]string
		gone []string
		outc Outcome
	}{
		{"clean qcow2", image(t, c, "qcow2", nil, "qemu-img", "create", "-q", "-f", "qcow2", "@", "3G"), map[string]string{
			"sidecar_status": "inspected", "sidecar_format": "qcow2", "sidecar_virtual_size": "3221225472", "sidecar_qcow2_version": "3",
			"sidecar_qcow2_cluster_size": "65536"}, []string{"sidecar_problems", "vmware_disktype"}, OutcomeInspected},
		{"streamOptimized vmdk, busLogic", image(t, c, "vmdk", nil, "qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized,adapter_type=buslogic", "@", "1G"),
			map[string]string{"sidecar_status": "inspected", "sidecar_format": "vmdk", "sidecar_vmdk_create_type": "streamOptimized",
				"sidecar_vmdk_adapter_type": "buslogic", "vmware_disktype": "streamOptimized", "vmware_adaptertype": "busLogic"}, nil, OutcomeInspected},
		{"qcow2 with a backing file", image(t, c, "qcow2", nil, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", "@", "1G"),
			map[string]string{"sidecar_status": "unsafe", "sidecar_problems": "backing_file", "sidecar_qcow2_backing_file": base}, nil, OutcomeUnsafe},
		{"qcow2 declared raw", image(t, c, "raw", nil, "qemu-img", "create", "-q", "-f", "qcow2", "@", "1G"),
			map[string]string{"sidecar_status": "unsafe", "sidecar_format": "qcow2", "sidecar_problems": "format_mismatch"}, nil, OutcomeUnsafe},
		{"random bytes declared qcow2", image(t, c, "qcow2", random),
			map[string]string{"sidecar_status": "unsafe", "sidecar_format": "raw", "sidecar_problems": "format_mismatch", "sidecar_virtual_size": "1048576"}, nil, OutcomeUnsafe},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := Job(t.Context(), c, tt.id, JobOptions{Logger: slog.New(slog.DiscardHandler)})
			if err != nil || res.Outcome != tt.outc || res.Mode != "range" {
				t.Fatalf("result %+v, %v", res, err)
			}
			if res.BytesRead > 256<<10 {
				t.Errorf("read %d bytes", res.BytesRead)
			}
			img, err := c.Get(t.Context(), tt.id)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.want {
				if img.Properties[k] != v {
					t.Errorf("%s = %q, want %q", k, img.Properties[k], v)
				}
			}
			for _, k := range tt.gone {
				if v, ok := img.Properties[k]; ok {
					t.Errorf("%s = %q, want absent", k, v)
				}
			}
			if img.Properties["sidecar_checked_hash"] != "sha512:"+img.HashValue {
				t.Errorf("checked hash %q", img.Properties["sidecar_checked_hash"])
			}
			// The same data again: nothing to do.
			again, err := Job(t.Context(), c, tt.id, JobOptions{Logger: slog.New(slog.DiscardHandler)})
			if err != nil || again.Outcome != OutcomeSkipped || again.Reason != "outcome is current" {
				t.Fatalf("second job %+v, %v", again, err)
			}
		})
	}

	t.Run("deactivate unsafe", func(t *testing.T) {
		id := image(t, c, "raw", nil, "qemu-img", "create", "-q", "-f", "qcow2", "@", "1G")
		res, err := Job(t.Context(), c, id, JobOptions{DeactivateUnsafe: true, Logger: slog.New(slog.DiscardHandler)})
		if err != nil || !res.Deactivated {
			t.Fatalf("%+v %v", res, err)
		}
		if img, _ := c.Get(t.Context(), id); img.Status != "deactivated" {
			t.Fatalf("status %s", img.Status)
		}
		if res, _ := Job(t.Context(), c, id, JobOptions{Wait: glanceclient.WaitOptions{Timeout: time.Second}, Logger: slog.New(slog.DiscardHandler)}); res.Outcome != OutcomeSkipped {
			t.Fatalf("deactivated image: %+v", res)
		}
	})
	t.Run("skips", func(t *testing.T) {
		if res, err := Job(t.Context(), c, uuid(t), JobOptions{Logger: slog.New(slog.DiscardHandler)}); err != nil || res.Reason != "image is gone" {
			t.Fatalf("missing image: %+v %v", res, err)
		}
		id := image(t, c, "qcow2", nil, "qemu-img", "create", "-q", "-f", "qcow2", "@", "1G")
		if res, err := Job(t.Context(), c, id, JobOptions{DiskFormats: []string{"raw"}, Logger: slog.New(slog.DiscardHandler)}); err != nil || res.Outcome != OutcomeSkipped {
			t.Fatalf("filtered: %+v %v", res, err)
		}
	})
}

// TestIntegrationConvertChecksWhatExists: a converted image an earlier attempt left behind is
// checked before the original is linked to it. One that is active but wrong (here: the wrong
// size of raw data) is a failure recorded at once, and the original is not marked converted.
func TestIntegrationConvertChecksWhatExists(t *testing.T) {
	c := cloudClient(t)
	orig := image(t, c, "qcow2", nil, "qemu-img", "create", "-q", "-f", "qcow2", "@", "4M")
	id := ConvertedID(orig, "raw")
	if _, err := c.Create(t.Context(), glanceclient.CreateOptions{ID: id, Name: "left behind", DiskFormat: "raw", ContainerFormat: "bare"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Delete(t.Context(), id) })
	short := make([]byte, 1<<20)
	if err := c.UploadStream(t.Context(), id, bytes.NewReader(short), int64(len(short))); err != nil {
		t.Fatal(err)
	}
	ws, err := OpenWorkspace(WorkspaceOptions{Dir: t.TempDir(), MaxBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	opts := JobOptions{Properties: PropertyOptions{Version: "t"}, Convert: ConvertOptions{Target: "raw", Workspace: ws}}
	if err := opts.Convert.Validate(); err != nil {
		t.Fatal(err)
	}
	res, err := Job(t.Context(), c, orig, opts)
	if err != nil {
		t.Fatal(err)
	}
	img, err := c.Get(t.Context(), orig)
	if err != nil {
		t.Fatal(err)
	}
	if res.Outcome != OutcomeFailed || img.Properties["sidecar_status"] != "failed" || img.Properties["sidecar_converted_to"] != "" ||
		!strings.Contains(img.Properties["sidecar_error"], "converted image rejected") {
		t.Fatalf("outcome %s (%s); original's properties %v", res.Outcome, res.Reason, img.Properties)
	}
	// Recorded with the hash: the next event does not convert again.
	if res, err := Job(t.Context(), c, orig, opts); err != nil || res.Outcome != OutcomeSkipped {
		t.Fatalf("second job: %s (%s), %v", res.Outcome, res.Reason, err)
	}
}

// TestIntegrationConvertWindow: converting to raw through a small source window a qcow2 whose
// tables qemu-img reads far ahead of the download fetches those chunks by range from Glance,
// checks them when the download gets there, and the new image holds the same disk.
func TestIntegrationConvertWindow(t *testing.T) {
	defer func(w nbd.WindowOptions) { sourceWindow = w }(sourceWindow)
	sourceWindow = nbd.WindowOptions{ChunkSize: 64 << 10, Chunks: 2}
	c := cloudClient(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.qcow2")
	for _, args := range [][]string{
		{"qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", src, "16M"},
		{"qemu-io", "-f", "qcow2", "-c", "write -P 0x21 8M 8M", "-c", "write -P 0x42 0 8M", src},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	orig := image(t, c, "qcow2", data)
	ws, err := OpenWorkspace(WorkspaceOptions{Dir: t.TempDir(), MaxBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	var logs bytes.Buffer
	opts := JobOptions{Properties: PropertyOptions{Version: "t"}, Convert: ConvertOptions{Target: "raw", Workspace: ws},
		Logger: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if err := opts.Convert.Validate(); err != nil {
		t.Fatal(err)
	}
	res, err := Job(t.Context(), c, orig, opts)
	if err != nil || res.Outcome != OutcomeConverted {
		t.Fatalf("job: %s (%s), %v\n%s", res.Outcome, res.Reason, err, logs.String())
	}
	t.Cleanup(func() { _ = c.Delete(t.Context(), res.Converted) })
	var window struct{ Fetches, FetchedBytes int64 }
	for line := range strings.Lines(logs.String()) {
		var rec struct {
			Msg          string
			Fetches      int64 `json:"fetches"`
			FetchedBytes int64 `json:"fetched_bytes"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "source window" {
			window.Fetches, window.FetchedBytes = rec.Fetches, rec.FetchedBytes
		}
	}
	if window.Fetches == 0 {
		t.Fatalf("nothing fetched by range through a window of 128 KiB:\n%s", logs.String())
	}
	img, err := c.Get(t.Context(), res.Converted)
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(filepath.Join(dir, "converted.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := c.Download(t.Context(), img, out); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command("qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", out.Name(), src).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img compare: %v\n%s", err, b)
	}
	t.Logf("%d fetches by range, %d bytes", window.Fetches, window.FetchedBytes)
}
