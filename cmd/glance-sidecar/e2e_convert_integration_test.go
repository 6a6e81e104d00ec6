//go:build integration

package main

// End-to-end tests of conversion in the test cloud: serve converts what Glance notifies, the
// new image is linked both ways and holds the same disk, the original is handled per policy,
// and serve killed mid-upload converts the image exactly once after a restart.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/glance-sidecar/glance-sidecar/glanceclient"
	"github.com/glance-sidecar/glance-sidecar/inspect"
	"github.com/glance-sidecar/glance-sidecar/worker"
)

// waitProperty waits until the image's property key has the value want.
func (cl *cloud) waitProperty(t *testing.T, id, key, want string, timeout time.Duration) *glanceclient.Image {
	t.Helper()
	return waitImage(t, cl.c, id, timeout, fmt.Sprintf("%s = %q", key, want), func(img *glanceclient.Image) bool {
		return img.Properties[key] == want
	})
}

// download writes an image's data into a file in the test's temp dir.
func (cl *cloud) download(t *testing.T, id string) string {
	t.Helper()
	img, err := cl.c.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "download")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := cl.c.Download(t.Context(), img, f); err != nil {
		t.Fatal(err)
	}
	return path
}

// checkConverted checks the conversion of orig (uploaded from path, format from) into to.
func (cl *cloud) checkConverted(t *testing.T, orig, path, from string, to inspect.Format) *glanceclient.Image {
	t.Helper()
	o := cl.waitProperty(t, orig, "sidecar_status", "converted", 2*time.Minute)
	newID := worker.ConvertedID(orig, to)
	if o.Properties["sidecar_converted_to"] != newID {
		t.Errorf("original's sidecar_converted_to = %q, want %s", o.Properties["sidecar_converted_to"], newID)
	}
	n := cl.waitProperty(t, newID, "sidecar_status", "inspected", time.Minute)
	t.Cleanup(func() { _ = cl.c.Delete(context.Background(), newID) })
	checks := map[string][2]string{
		"status":           {n.Status, "active"},
		"disk_format":      {n.DiskFormat, string(to)},
		"container_format": {n.ContainerFormat, "bare"},
		"name":             {n.Name, o.Name},
		"owner":            {n.Owner, o.Owner},
		"visibility":       {n.Visibility, o.Visibility},
		"converted_from":   {n.Properties["sidecar_converted_from"], orig},
		"sidecar_format":   {n.Properties["sidecar_format"], string(to)},
		"os_distro":        {n.Properties["os_distro"], "debian"},
		"converted_to":     {n.Properties["sidecar_converted_to"], ""},
	}
	for what, c := range checks {
		if c[0] != c[1] {
			t.Errorf("converted image %s: %s = %q, want %q", newID, what, c[0], c[1])
		}
	}
	if len(n.Tags) != 1 || n.Tags[0] != "e2e-tag" || n.MinDisk != 1 || n.MinRAM != 64 {
		t.Errorf("converted image: tags %v, min_disk %d, min_ram %d; want [e2e-tag], 1, 64", n.Tags, n.MinDisk, n.MinRAM)
	}
	got := cl.download(t, newID)
	if out, err := exec.Command("qemu-img", "compare", "-f", from, "-F", to.QemuName(), path, got).CombinedOutput(); err != nil {
		t.Errorf("qemu-img compare of the original and the conversion: %v\n%s", err, out)
	}
	return o
}

// uploadWithMetadata uploads path like upload, with a tag, min_disk, min_ram and a property the
// conversion must carry over.
func (cl *cloud) uploadWithMetadata(t *testing.T, path, diskFormat string) string {
	t.Helper()
	img, err := cl.c.Create(t.Context(), glanceclient.CreateOptions{Name: "e2e-convert-" + filepath.Base(path), DiskFormat: diskFormat,
		ContainerFormat: "bare", Tags: []string{"e2e-tag"}, MinDisk: 1, MinRAM: 64, Properties: map[string]string{"os_distro": "debian"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.c.Delete(context.Background(), img.ID) })
	if _, err := cl.c.UploadFile(t.Context(), img.ID, path); err != nil {
		t.Fatal(err)
	}
	return img.ID
}

func TestIntegrationServeConverts(t *testing.T) {
	cl := newCloud(t)
	for _, tc := range []struct {
		name     string
		to       inspect.Format
		original string
		check    func(t *testing.T, o *glanceclient.Image)
	}{
		{"qcow2 to raw, streamed, original hidden", inspect.Raw, "hide", func(t *testing.T, o *glanceclient.Image) {
			if !o.Hidden || o.Status != "active" {
				t.Errorf("original: hidden %v, status %s; want hidden and active", o.Hidden, o.Status)
			}
		}},
		{"qcow2 to vmdk, through the workspace, original deactivated", inspect.VMDK, "deactivate", func(t *testing.T, o *glanceclient.Image) {
			if o.Status != "deactivated" {
				t.Errorf("original: status %s, want deactivated", o.Status)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := freeAddr(t)
			startServe(t, addr, append(cl.flags, "--log-level", "warn", "--amqp-transport-url", cl.env["GSC_TRANSPORT_URL"],
				"--amqp-queue", cl.queue(t), "--webhook-listen", addr,
				"--convert-target-format", string(tc.to), "--convert-original", tc.original)...)
			path := converted(t, "qcow2", "")
			orig := cl.uploadWithMetadata(t, path, "qcow2")
			// Neither an unsafe image nor an ISO is converted.
			unsafe := cl.upload(t, path, "raw", nil)
			iso := cl.upload(t, samples()[7].build(t), "iso", nil)

			cl.checkConverted(t, orig, path, "qcow2", tc.to)
			o, err := cl.c.Get(t.Context(), orig)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, o)
			cl.waitProperty(t, unsafe, "sidecar_status", "unsafe", time.Minute)
			cl.waitProperty(t, iso, "sidecar_status", "inspected", time.Minute)
			for _, id := range []string{unsafe, iso} {
				if _, err := cl.c.Get(t.Context(), worker.ConvertedID(id, tc.to)); err == nil {
					t.Errorf("image %s was converted", id)
				}
			}
		})
	}
}

// TestIntegrationServeConvertKilled: serve killed with SIGKILL while it uploads a conversion, and
// started again, ends with exactly one converted image and an empty workspace.
func TestIntegrationServeConvertKilled(t *testing.T) {
	cl := newCloud(t)
	ws := t.TempDir()
	args := append(cl.flags, "--amqp-transport-url", cl.env["GSC_TRANSPORT_URL"], "--amqp-queue", cl.queue(t),
		"--workspace-dir", ws, "--convert-target-format", "raw")
	p := startProcess(t, args...)

	// 1 GiB of random data, so that the upload lasts long enough to be killed in.
	dir := t.TempDir()
	raw := filepath.Join(dir, "data.raw")
	runCmd(t, "sh", "-c", "head -c 1G /dev/urandom > "+raw)
	path := filepath.Join(dir, "image.qcow2")
	runCmd(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, path)
	if err := os.Remove(raw); err != nil {
		t.Fatal(err)
	}
	orig := cl.uploadWithMetadata(t, path, "qcow2")
	newID := worker.ConvertedID(orig, inspect.Raw)
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		img, err := cl.c.Get(t.Context(), newID)
		if err == nil && img.Status == "saving" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the conversion's upload never started (last error %v)", err)
		}
	}
	time.Sleep(300 * time.Millisecond) // well into the upload
	if err := p.kill(); err != nil {
		t.Fatal(err)
	}
	// Glance notices the upload cut short and puts the image back to queued for the retry.
	var status string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if status = mustGet(t, cl, newID).Status; status != "saving" {
			break
		}
	}
	if status != "queued" {
		t.Fatalf("after the kill the converted image is %s, want queued (was serve killed mid-upload?)", status)
	}
	startProcess(t, args...)
	cl.checkConverted(t, orig, path, "qcow2", inspect.Raw)

	var conversions []string
	err := cl.c.List(t.Context(), glanceclient.ListOptions{Owner: mustGet(t, cl, orig).Owner}, func(img *glanceclient.Image) error {
		if img.Properties["sidecar_converted_from"] == orig {
			conversions = append(conversions, img.ID)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(conversions) != 1 || conversions[0] != newID {
		t.Errorf("conversions of %s: %v, want exactly [%s]", orig, conversions, newID)
	}
	entries, err := os.ReadDir(ws)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != ".lock" {
			t.Errorf("workspace holds %s after the conversion", e.Name())
		}
	}
}

func mustGet(t *testing.T, cl *cloud, id string) *glanceclient.Image {
	t.Helper()
	img, err := cl.c.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return img
}
