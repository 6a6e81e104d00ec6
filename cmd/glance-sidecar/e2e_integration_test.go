//go:build integration

package main

// End-to-end tests of serve in the test cloud: every format through the real Glance and
// RabbitMQ, deactivation, a burst of uploads processed exactly once, serve killed with SIGKILL
// mid-burst and restarted, and RabbitMQ stopped mid-burst.

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/glance-sidecar/glance-sidecar/glanceclient"
	"github.com/glance-sidecar/glance-sidecar/inspect"
	"github.com/glance-sidecar/glance-sidecar/internal/testcloud"
	"github.com/glance-sidecar/glance-sidecar/worker"
)

// cloud is what every end-to-end test needs: the env file, a client as the sidecar's user and
// the flags that point serve at the cloud.
type cloud struct {
	env   map[string]string
	c     *glanceclient.Client
	flags []string
}

func newCloud(t *testing.T) *cloud {
	t.Helper()
	env := testcloud.Env(t, testcloud.Dir())
	c, err := glanceclient.New(t.Context(), glanceclient.Options{Cloud: "sidecar", CloudsFile: env["GSC_CLOUDS_YAML"], Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	// No reconcile pass unless a test asks for one: it would look at every recent image of the
	// shared cloud, not only the test's.
	return &cloud{env: env, c: c, flags: []string{"--glance-cloud", "sidecar", "--glance-clouds-file", env["GSC_CLOUDS_YAML"],
		"--reconcile-interval", "0"}}
}

// queue names a fresh sidecar queue, deleted when the test ends.
func (cl *cloud) queue(t *testing.T) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	q := fmt.Sprintf("gsc-e2e-%x", b)
	t.Cleanup(func() { testcloud.DeleteQueues(cl.env["GSC_AMQP_URL"], q) })
	return q
}

// runCmd runs a command, failing the test with its output.
func runCmd(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// converted writes 8 MiB of patterned data (with a hole) into a raw file and converts it to qfmt.
func converted(t *testing.T, qfmt, opts string) string {
	t.Helper()
	dir := t.TempDir()
	raw := filepath.Join(dir, "data.raw")
	runCmd(t, "qemu-img", "create", "-q", "-f", "raw", raw, "64M")
	runCmd(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 4M", "-c", "write -P 0xa5 32M 4M", raw)
	out := filepath.Join(dir, "image."+qfmt)
	args := []string{"convert", "-q", "-f", "raw", "-O", qfmt}
	if opts != "" {
		args = append(args, "-o", opts)
	}
	runCmd(t, "qemu-img", append(args, raw, out)...)
	return out
}

// upload creates an image as the cloud's sidecar user and uploads path into it.
func (cl *cloud) upload(t testing.TB, path, diskFormat string, props map[string]string) string {
	t.Helper()
	id, err := cl.tryUpload(t, path, diskFormat, props)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// tryUpload is upload for other goroutines than the test's: it reports errors. The image is
// deleted when the test ends.
func (cl *cloud) tryUpload(t testing.TB, path, diskFormat string, props map[string]string) (string, error) {
	ctx := context.Background()
	img, err := cl.c.Create(ctx, glanceclient.CreateOptions{Name: "e2e-" + filepath.Base(path), DiskFormat: diskFormat, ContainerFormat: "bare", Properties: props})
	if err != nil {
		return "", err
	}
	t.Cleanup(func() { _ = cl.c.Delete(context.Background(), img.ID) })
	if _, err := cl.c.UploadFile(ctx, img.ID, path); err != nil {
		return "", fmt.Errorf("uploading %s: %w", img.ID, err)
	}
	return img.ID, nil
}

// waitOutcome waits until the image carries one of the sidecar's outcomes and returns it.
func (cl *cloud) waitOutcome(t testing.TB, id string, timeout time.Duration) *glanceclient.Image {
	t.Helper()
	return waitImage(t, cl.c, id, timeout, "carrying an outcome", func(img *glanceclient.Image) bool {
		return img.Properties["sidecar_status"] != ""
	})
}

// sample is one image of the format matrix and what must be written on it.
type sample struct {
	name       string
	build      func(t *testing.T) string
	diskFormat string
	props      map[string]string // set by the uploader
	// want are properties that must have exactly these values; "-" means absent.
	want map[string]string
}

func samples() []sample {
	iso := func(t *testing.T) string {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "README"), []byte("hello\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(t.TempDir(), "image.iso")
		runCmd(t, "genisoimage", "-quiet", "-V", "E2E", "-o", out, dir)
		return out
	}
	backed := func(t *testing.T) string {
		dir := t.TempDir()
		base := qemuImage(t, dir, "base.raw", "-f", "raw", "1M")
		return qemuImage(t, dir, "backed.qcow2", "-f", "qcow2", "-b", base, "-F", "raw", "1G")
	}
	random := func(t *testing.T) string {
		b := make([]byte, 3<<20)
		_, _ = rand.Read(b)
		b[510], b[511] = 0, 0 // no MBR boot signature by chance (1 run in 65536)
		path := filepath.Join(t.TempDir(), "random.bin")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	return []sample{
		{name: "clean qcow2", diskFormat: "qcow2", build: func(t *testing.T) string { return converted(t, "qcow2", "") },
			want: map[string]string{"sidecar_status": "inspected", "sidecar_format": "qcow2", "sidecar_virtual_size": "67108864",
				"sidecar_qcow2_version": "3", "sidecar_qcow2_cluster_size": "65536", "sidecar_qcow2_compression_type": "zlib",
				"sidecar_problems": "-", "vmware_disktype": "-"}},
		{name: "streamOptimized vmdk busLogic", diskFormat: "vmdk", build: func(t *testing.T) string {
			return converted(t, "vmdk", "subformat=streamOptimized,adapter_type=buslogic")
		}, want: map[string]string{"sidecar_status": "inspected", "sidecar_format": "vmdk", "sidecar_virtual_size": "67108864",
			"sidecar_vmdk_create_type": "streamOptimized", "sidecar_vmdk_adapter_type": "buslogic", "sidecar_vmdk_compressed": "true",
			"vmware_disktype": "streamOptimized", "vmware_adaptertype": "busLogic", "sidecar_problems": "-"}},
		{name: "monolithicSparse vmdk with a person's adapter type", diskFormat: "vmdk", props: map[string]string{"vmware_adaptertype": "ide"},
			build: func(t *testing.T) string { return converted(t, "vmdk", "adapter_type=lsilogic") },
			want: map[string]string{"sidecar_status": "inspected", "sidecar_vmdk_create_type": "monolithicSparse",
				"sidecar_vmdk_adapter_type": "lsilogic", "vmware_disktype": "sparse", "vmware_adaptertype": "ide"}},
		{name: "dynamic vhd", diskFormat: "vhd", build: func(t *testing.T) string { return converted(t, "vpc", "subformat=dynamic") },
			want: map[string]string{"sidecar_status": "inspected", "sidecar_format": "vhd", "sidecar_virtual_size": "67125248",
				"sidecar_vhd_disk_type": "dynamic", "sidecar_vhd_block_size": "2097152"}},
		{name: "fixed vhd", diskFormat: "vhd", build: func(t *testing.T) string { return converted(t, "vpc", "subformat=fixed") },
			want: map[string]string{"sidecar_status": "inspected", "sidecar_format": "vhd", "sidecar_virtual_size": "67125248",
				"sidecar_vhd_disk_type": "fixed"}},
		{name: "vhdx", diskFormat: "vhdx", build: func(t *testing.T) string { return converted(t, "vhdx", "") },
			want: map[string]string{"sidecar_status": "inspected", "sidecar_format": "vhdx", "sidecar_virtual_size": "67108864",
				"sidecar_vhdx_subformat": "dynamic"}},
		{name: "vdi", diskFormat: "vdi", build: func(t *testing.T) string { return converted(t, "vdi", "") },
			want: map[string]string{"sidecar_status": "inspected", "sidecar_format": "vdi", "sidecar_virtual_size": "67108864",
				"sidecar_vdi_image_type": "dynamic", "sidecar_vdi_blocks_allocated": "8"}},
		{name: "iso", diskFormat: "iso", build: iso,
			want: map[string]string{"sidecar_status": "inspected", "sidecar_format": "iso", "sidecar_iso_volume_id": "E2E"}},
		{name: "qcow2 with a backing file", diskFormat: "qcow2", build: backed,
			want: map[string]string{"sidecar_status": "unsafe", "sidecar_format": "qcow2", "sidecar_problems": "backing_file",
				"sidecar_virtual_size": "1073741824"}},
		{name: "qcow2 declared raw", diskFormat: "raw", build: func(t *testing.T) string { return converted(t, "qcow2", "") },
			want: map[string]string{"sidecar_status": "unsafe", "sidecar_format": "qcow2", "sidecar_problems": "format_mismatch"}},
		{name: "random bytes declared qcow2", diskFormat: "qcow2", build: random,
			want: map[string]string{"sidecar_status": "unsafe", "sidecar_format": "raw", "sidecar_problems": "format_mismatch",
				"sidecar_virtual_size": "3145728"}},
	}
}

// TestIntegrationServeFormats uploads every sample through Glance with serve consuming its
// notifications, and checks every property: the values the sample names, and that the whole
// set equals what inspecting the local file gives (so ranged reads saw what the file holds).
func TestIntegrationServeFormats(t *testing.T) {
	cl := newCloud(t)
	addr := freeAddr(t)
	startServe(t, addr, append(cl.flags, "--log-level", "warn", "--amqp-transport-url", cl.env["GSC_TRANSPORT_URL"],
		"--amqp-queue", cl.queue(t), "--webhook-listen", addr)...)
	rfc3339 := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`)
	for _, s := range samples() {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			path := s.build(t)
			start := time.Now().UTC().Truncate(time.Second)
			id := cl.upload(t, path, s.diskFormat, s.props)
			img := cl.waitOutcome(t, id, time.Minute)
			for k, v := range s.want {
				got, ok := img.Properties[k]
				if v == "-" && ok {
					t.Errorf("%s = %q, want it absent", k, got)
				} else if v != "-" && got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if at, err := time.Parse(time.RFC3339, img.Properties["sidecar_checked_at"]); !rfc3339.MatchString(img.Properties["sidecar_checked_at"]) || err != nil || at.Before(start) {
				t.Errorf("sidecar_checked_at = %q, want RFC 3339 UTC after %v", img.Properties["sidecar_checked_at"], start)
			}
			if img.Properties["sidecar_version"] == "" || img.Properties["sidecar_checked_hash"] != img.HashAlgo+":"+img.HashValue {
				t.Errorf("version %q, checked hash %q", img.Properties["sidecar_version"], img.Properties["sidecar_checked_hash"])
			}

			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			st, _ := f.Stat()
			rep, err := inspect.InspectAt(t.Context(), f, st.Size(), inspect.Options{Declared: s.diskFormat})
			if err != nil {
				t.Fatal(err)
			}
			want, _ := worker.Properties(rep, s.props, time.Now(), worker.PropertyOptions{})
			for k, v := range want {
				if k != "sidecar_checked_at" && img.Properties[k] != v {
					t.Errorf("%s = %q; inspecting the local file gives %q", k, img.Properties[k], v)
				}
			}
			for k := range img.Properties {
				if _, ok := want[k]; strings.HasPrefix(k, "sidecar_") && !ok && !slices.Contains([]string{"sidecar_version", "sidecar_checked_hash"}, k) {
					t.Errorf("%s = %q was written; inspecting the local file does not give it", k, img.Properties[k])
				}
			}
		})
	}
}

// TestIntegrationServeDeactivates: with deactivate_unsafe, an unsafe image ends deactivated and
// a clean one stays active.
func TestIntegrationServeDeactivates(t *testing.T) {
	cl := newCloud(t)
	addr := freeAddr(t)
	startServe(t, addr, append(cl.flags, "--log-level", "warn", "--amqp-transport-url", cl.env["GSC_TRANSPORT_URL"],
		"--amqp-queue", cl.queue(t), "--webhook-listen", addr, "--deactivate-unsafe")...)
	unsafe := cl.upload(t, converted(t, "qcow2", ""), "raw", nil)
	clean := cl.upload(t, converted(t, "qcow2", ""), "qcow2", nil)
	for id, want := range map[string]string{unsafe: "deactivated", clean: "active"} {
		cl.waitOutcome(t, id, time.Minute)
		var img *glanceclient.Image
		for deadline := time.Now().Add(10 * time.Second); ; {
			var err error
			if img, err = cl.c.Get(t.Context(), id); err != nil {
				t.Fatal(err)
			}
			if img.Status == want || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if img.Status != want {
			t.Errorf("image %s (%s): status %s, want %s", id, img.Properties["sidecar_status"], img.Status, want)
		}
	}
}

// serveProcess is serve run as its own process (so that it can be killed with SIGKILL).
type serveProcess struct {
	cmd  *exec.Cmd
	addr string
	log  *os.File
}

var buildOnce = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "glance-sidecar-e2e-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "glance-sidecar")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// startProcess starts the serve binary with args, logging into the test's temp dir, and waits
// until it is ready. It is stopped (SIGTERM, then SIGKILL) when the test ends, unless killed.
func startProcess(t *testing.T, args ...string) *serveProcess {
	t.Helper()
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	log, err := os.CreateTemp(t.TempDir(), "serve-*.log")
	if err != nil {
		t.Fatal(err)
	}
	p := &serveProcess{addr: addr, log: log}
	p.cmd = exec.Command(bin, append([]string{"serve", "--webhook-listen", addr}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = log, log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan error, 1)
			go func() { done <- p.cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(40 * time.Second):
				_ = p.cmd.Process.Kill()
				<-done
			}
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(log.Name())
			t.Fatalf("serve not ready: %v\n%s", err, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kill sends SIGKILL and reaps the process.
func (p *serveProcess) kill() error {
	if err := p.cmd.Process.Kill(); err != nil {
		return err
	}
	_ = p.cmd.Wait()
	return nil
}

// metric reads one sample of /metrics (0 when absent).
func (p *serveProcess) metric(t *testing.T, name string) float64 {
	t.Helper()
	return scrape(t, p.addr, name)
}

// scrape reads one sample (name and labels) of serve's /metrics, 0 when absent.
func scrape(t *testing.T, addr, sample string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return max(metricValue(string(b), sample), 0)
}

// burst uploads n small qcow2 images, a few at a time, and returns their ids in order; every
// seventh is declared raw (so unsafe). uploaded is called after each upload; an error it
// returns stops the burst.
func (cl *cloud) burst(t *testing.T, n int, uploaded func(i int) error) ([]string, error) {
	t.Helper()
	clean := converted(t, "qcow2", "")
	ids := make([]string, n)
	var g errgroup.Group
	g.SetLimit(6)
	for i := range n {
		g.Go(func() error {
			format := "qcow2"
			if i%7 == 0 {
				format = "raw"
			}
			id, err := cl.tryUpload(t, clean, format, nil)
			if err != nil {
				return err
			}
			ids[i] = id
			if uploaded != nil {
				return uploaded(i)
			}
			return nil
		})
	}
	return ids, g.Wait()
}

// checkBurst waits (up to timeout in all) for every image's outcome and checks it; it names
// every image left without one.
func (cl *cloud) checkBurst(t *testing.T, ids []string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	pending := slices.Clone(ids)
	for len(pending) > 0 && time.Now().Before(deadline) {
		pending = slices.DeleteFunc(pending, func(id string) bool {
			img, err := cl.c.Get(context.Background(), id)
			if err != nil || img.Properties["sidecar_status"] == "" {
				return false
			}
			want := "inspected"
			if i := slices.Index(ids, id); i%7 == 0 {
				want = "unsafe"
			}
			if got := img.Properties["sidecar_status"]; got != want {
				t.Errorf("image %s: sidecar_status %q, want %q (error %q)", id, got, want, img.Properties["sidecar_error"])
			}
			return true
		})
		time.Sleep(200 * time.Millisecond)
	}
	if len(pending) > 0 {
		t.Errorf("%d of %d images have no outcome after %v: %v", len(pending), len(ids), timeout, pending)
	}
}

// TestIntegrationServeBurst: 100 uploads at once are each inspected exactly once, though Glance
// sends two events per upload (image.upload and image.activate): one job writes, the other
// finds the outcome current.
func TestIntegrationServeBurst(t *testing.T) {
	cl := newCloud(t)
	p := startProcess(t, append(cl.flags, "--amqp-transport-url", cl.env["GSC_TRANSPORT_URL"], "--amqp-queue", cl.queue(t),
		"--workspace-dir", t.TempDir(), "--max-workers", "8")...)
	const n = 100
	ids, err := cl.burst(t, n, nil)
	if err != nil {
		t.Fatal(err)
	}
	cl.checkBurst(t, ids, 2*time.Minute)
	var written float64
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if written = p.metric(t, `glance_sidecar_jobs_total{outcome="inspected"}`) + p.metric(t, `glance_sidecar_jobs_total{outcome="unsafe"}`); written >= n {
			break
		}
	}
	if written != n {
		t.Errorf("%v jobs wrote an outcome for %d images", written, n)
	}
	if e := p.metric(t, `glance_sidecar_jobs_total{outcome="error"}`) + p.metric(t, `glance_sidecar_jobs_total{outcome="failed"}`); e != 0 {
		t.Errorf("%v jobs failed", e)
	}
}

// TestIntegrationServeKilled: serve killed with SIGKILL mid-burst and started again: every image
// ends with an outcome (unacknowledged events are redelivered) and the workspace holds nothing
// but its lock.
func TestIntegrationServeKilled(t *testing.T) {
	cl := newCloud(t)
	ws := t.TempDir()
	args := append(cl.flags, "--amqp-transport-url", cl.env["GSC_TRANSPORT_URL"], "--amqp-queue", cl.queue(t),
		"--workspace-dir", ws, "--max-workers", "4")
	p := startProcess(t, args...)
	var once sync.Once
	ids, err := cl.burst(t, 100, func(i int) (err error) {
		if i >= 40 {
			once.Do(func() { err = p.kill() })
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.cmd.ProcessState == nil {
		t.Fatal("serve was not killed")
	}
	startProcess(t, args...)
	cl.checkBurst(t, ids, 2*time.Minute)
	entries, err := os.ReadDir(ws)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != ".lock" {
			t.Errorf("workspace holds %s after the restart", e.Name())
		}
	}
}
