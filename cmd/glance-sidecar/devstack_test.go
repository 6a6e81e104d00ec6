//go:build devstack

package main

// The end-to-end check of a glance-sidecar deployed by the devstack plugin (devstack/plugin.sh).
// test/devstack/run.sh runs the plugin against the test cloud and then this test, with GSC_DEVSTACK_*
// telling it what the plugin deployed; it is not meant to run on its own.

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/ini.v1"

	"github.com/glance-sidecar/glance-sidecar/glanceclient"
	"github.com/glance-sidecar/glance-sidecar/internal/testcloud"
)

// devstackEnv returns the variables run.sh sets, failing the test when one is missing.
func devstackEnv(t *testing.T) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, k := range []string{"GSC_DEVSTACK_SIDECAR_CONF", "GSC_DEVSTACK_GLANCE_API_CONF", "GSC_DEVSTACK_SERVICE_USER",
		"GSC_DEVSTACK_QUEUE", "GSC_DEVSTACK_WEBHOOK"} {
		v := os.Getenv(k)
		if v == "" {
			t.Fatalf("%s is not set: run this test through test/devstack/run.sh", k)
		}
		env[k] = v
	}
	return env
}

func TestDevstackDeployment(t *testing.T) {
	env := devstackEnv(t)
	cloud := testcloud.Env(t, testcloud.Dir())

	// What the plugin wrote: Glance notifies on the bus the sidecar consumes from.
	sidecar, err := ini.Load(env["GSC_DEVSTACK_SIDECAR_CONF"])
	if err != nil {
		t.Fatal(err)
	}
	glance, err := ini.Load(env["GSC_DEVSTACK_GLANCE_API_CONF"])
	if err != nil {
		t.Fatal(err)
	}
	notify := glance.Section("oslo_messaging_notifications")
	if got := notify.Key("driver").String(); got != "messagingv2" {
		t.Errorf("glance-api.conf: [oslo_messaging_notifications] driver = %q, want messagingv2", got)
	}
	url := sidecar.Section("amqp").Key("transport_url").String()
	if url == "" || notify.Key("transport_url").String() != url {
		t.Errorf("glance-api.conf notifies on %q, the sidecar consumes from %q", notify.Key("transport_url").String(), url)
	}
	for _, want := range []struct{ section, key, value string }{
		{"glance", "username", env["GSC_DEVSTACK_SERVICE_USER"]},
		{"glance", "project_name", "service"},
		{"amqp", "queue", env["GSC_DEVSTACK_QUEUE"]},
		{"webhook", "listen", env["GSC_DEVSTACK_WEBHOOK"]},
	} {
		if got := sidecar.Section(want.section).Key(want.key).String(); got != want.value {
			t.Errorf("glance-sidecar.conf: [%s] %s = %q, want %q", want.section, want.key, got, want.value)
		}
	}
	if st, err := os.Stat(env["GSC_DEVSTACK_SIDECAR_CONF"]); err != nil {
		t.Error(err)
	} else if st.Mode().Perm() != 0o600 {
		t.Errorf("glance-sidecar.conf holds a password: mode %v, want 0600", st.Mode().Perm())
	}
	base := "http://" + env["GSC_DEVSTACK_WEBHOOK"]
	if code, body := devstackGet(t, base+"/readyz"); code != http.StatusOK {
		t.Fatalf("the deployed sidecar is not ready: %d %s", code, body)
	}

	// A user of the cloud uploads through Glance; the sidecar hears of it only from RabbitMQ.
	c, err := glanceclient.New(t.Context(), glanceclient.Options{Cloud: "demo", CloudsFile: cloud["GSC_CLOUDS_YAML"], Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", file, "1G").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v %s", err, out)
	}
	clean := devstackUpload(t, c, file, "qcow2")
	declaredRaw := devstackUpload(t, c, file, "raw")

	img := devstackWait(t, c, clean, "inspected")
	if img.Properties["sidecar_format"] != "qcow2" || img.Properties["sidecar_virtual_size"] != "1073741824" {
		t.Errorf("clean qcow2: %v", img.Properties)
	}
	img = devstackWait(t, c, declaredRaw, "unsafe")
	if !slices.Contains(strings.Split(img.Properties["sidecar_problems"], ","), "format_mismatch") || img.Properties["sidecar_format"] != "qcow2" {
		t.Errorf("qcow2 declared raw: %v", img.Properties)
	}
	// The notifications must have come through RabbitMQ. serve's first reconcile pass may
	// have written the properties before the events were handled: wait for them a little.
	want := `glance_sidecar_events_total{result="done",source="amqp",type="image.upload"}`
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if _, metrics := devstackGet(t, base+"/metrics"); strings.Contains(metrics, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sidecar's /metrics lacks %s after 15 s", want)
		}
	}
}

func devstackGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// devstackUpload creates an image declared as diskFormat with file's bytes, deleted at the end.
func devstackUpload(t *testing.T, c *glanceclient.Client, file, diskFormat string) string {
	t.Helper()
	img, err := c.Create(t.Context(), glanceclient.CreateOptions{Name: "gsc-devstack-" + diskFormat, DiskFormat: diskFormat, ContainerFormat: "bare"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A DELETE that Glance committed but answered 500 (SQLite busy under load) is retried
		// and refused: the image being gone is what counts.
		if err := c.Delete(context.Background(), img.ID); err != nil {
			if _, gerr := c.Get(context.Background(), img.ID); !errors.Is(gerr, glanceclient.ErrNotFound) {
				t.Errorf("deleting image %s: %v", img.ID, err)
			}
		}
	})
	if _, err := c.UploadFile(t.Context(), img.ID, file); err != nil {
		t.Fatal(err)
	}
	return img.ID
}

// devstackWait waits up to a minute for the sidecar to write sidecar_status = want on image id.
func devstackWait(t *testing.T, c *glanceclient.Client, id, want string) *glanceclient.Image {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		img, err := c.Get(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if got := img.Properties["sidecar_status"]; got == want {
			return img
		} else if got != "" {
			t.Fatalf("image %s: sidecar_status %q, want %q; properties %v", id, got, want, img.Properties)
		}
		if time.Now().After(deadline) {
			t.Fatalf("image %s: no sidecar_status after a minute (want %q); properties %v", id, want, img.Properties)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
