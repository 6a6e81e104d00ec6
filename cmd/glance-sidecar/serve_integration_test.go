//go:build integration

package main

// End-to-end tests of serve against the project's test cloud (test/cloud/up.sh): the real
// Glance notifies the real RabbitMQ, and serve writes the findings back to the real image.

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/glance-sidecar/glance-sidecar/consumer"
	"github.com/glance-sidecar/glance-sidecar/glanceclient"
	"github.com/glance-sidecar/glance-sidecar/internal/testcloud"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startServe runs serve in-process with args until the test ends, and waits for /readyz.
func startServe(t *testing.T, addr string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var stderr bytes.Buffer
	args = append([]string{"glance-sidecar", "serve", "--workspace-dir", t.TempDir()}, args...)
	go func() { done <- run(ctx, args, io.Discard, &stderr) }()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("serve exited %d:\n%s", code, stderr.String())
		} else if t.Failed() {
			t.Logf("serve's log:\n%s", stderr.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve not ready: %v\n%s", err, stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func uploadQCOW2(t *testing.T, c *glanceclient.Client, args ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "i.qcow2")
	if out, err := exec.Command("qemu-img", append(append([]string{"create", "-q", "-f", "qcow2"}, args...), path, "1G")...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v %s", err, out)
	}
	img, err := c.Create(t.Context(), glanceclient.CreateOptions{Name: t.Name(), DiskFormat: "qcow2", ContainerFormat: "bare"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Delete(context.Background(), img.ID) })
	if _, err := c.UploadFile(t.Context(), img.ID, path); err != nil {
		t.Fatal(err)
	}
	return img.ID
}

func waitStatus(t *testing.T, c *glanceclient.Client, id, want string) *glanceclient.Image {
	t.Helper()
	return waitProperty(t, c, id, "sidecar_status", want)
}

// waitProperty waits up to 30 s until the image's property key has the value want.
func waitProperty(t *testing.T, c *glanceclient.Client, id, key, want string) *glanceclient.Image {
	t.Helper()
	return waitImage(t, c, id, 30*time.Second, fmt.Sprintf("%s = %q", key, want), func(img *glanceclient.Image) bool {
		return img.Properties[key] == want
	})
}

// waitImage polls the image until ok says yes, and fails the test after timeout, saying what
// it waited for and what it saw last. Errors reading the image count as not yet.
func waitImage(t testing.TB, c *glanceclient.Client, id string, timeout time.Duration, what string, ok func(*glanceclient.Image) bool) *glanceclient.Image {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		img, err := c.Get(context.Background(), id)
		if err == nil && ok(img) {
			return img
		}
		if time.Now().After(deadline) {
			var props map[string]string
			if img != nil {
				props = img.Properties
			}
			t.Fatalf("image %s: not %s after %v (error %v; properties %v)", id, what, timeout, err, props)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestIntegrationServe(t *testing.T) {
	env := testcloud.Env(t, testcloud.Dir())
	c, err := glanceclient.New(t.Context(), glanceclient.Options{Cloud: "sidecar", CloudsFile: env["GSC_CLOUDS_YAML"], Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	// No reconcile pass: it would look at every recent image of the shared cloud, not only
	// this test's (reprocess_integration_test.go tests it, filtered by owner).
	glance := []string{"--glance-cloud", "sidecar", "--glance-clouds-file", env["GSC_CLOUDS_YAML"], "--log-level", "warn", "--reconcile-interval", "0"}

	t.Run("from RabbitMQ", func(t *testing.T) {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		queue := fmt.Sprintf("gsc-serve-%x", b)
		t.Cleanup(func() { testcloud.DeleteQueues(env["GSC_AMQP_URL"], queue) })
		addr := freeAddr(t)
		startServe(t, addr, append(glance, "--amqp-transport-url", env["GSC_TRANSPORT_URL"], "--amqp-queue", queue, "--webhook-listen", addr)...)
		base := filepath.Join(t.TempDir(), "base.raw")
		if err := os.WriteFile(base, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		clean := uploadQCOW2(t, c)
		backed := uploadQCOW2(t, c, "-b", base, "-F", "raw")
		img := waitStatus(t, c, clean, "inspected")
		if img.Properties["sidecar_format"] != "qcow2" || img.Properties["sidecar_virtual_size"] != "1073741824" {
			t.Errorf("clean image: %v", img.Properties)
		}
		img = waitStatus(t, c, backed, "unsafe")
		if img.Properties["sidecar_problems"] != "backing_file" {
			t.Errorf("backed image: %v", img.Properties)
		}
		// A job counts itself after reading its PATCH back, a moment after the properties show.
		var metrics []byte
		for deadline := time.Now().Add(5 * time.Second); ; {
			resp, err := http.Get("http://" + addr + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			metrics, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(metrics), `glance_sidecar_jobs_total{outcome="inspected"} 1`) &&
				strings.Contains(string(metrics), `glance_sidecar_jobs_total{outcome="unsafe"} 1`) || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		for _, want := range []string{
			`glance_sidecar_jobs_total{outcome="inspected"} 1`, `glance_sidecar_jobs_total{outcome="unsafe"} 1`,
			`glance_sidecar_broker_connected 1`, `glance_sidecar_events_total{result="done",source="amqp",type="image.upload"}`,
			`glance_sidecar_image_bytes_read_total{mode="range"}`, `glance_sidecar_job_stage_seconds_count{stage="inspect"}`,
			`glance_sidecar_glance_requests_total{code="200",method="get"}`,
		} {
			if !strings.Contains(string(metrics), want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})

	t.Run("from the webhook", func(t *testing.T) {
		secret := filepath.Join(t.TempDir(), "secret")
		if err := os.WriteFile(secret, []byte("a-webhook-secret-of-some-length\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		addr := freeAddr(t)
		startServe(t, addr, append(glance, "--webhook-listen", addr, "--webhook-secret-file", secret)...)
		id := uploadQCOW2(t, c)
		body := []byte(fmt.Sprintf(`{"image_id":%q,"event_type":"image.upload"}`, id))
		ts := strconv.FormatInt(time.Now().Unix(), 10)
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/events", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(consumer.TimestampHeader, ts)
		req.Header.Set(consumer.SignatureHeader, consumer.SignWebhook([]byte("a-webhook-secret-of-some-length"), ts, body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("webhook answered %d", resp.StatusCode)
		}
		waitStatus(t, c, id, "inspected")
	})
}
