//go:build integration

package glanceclient

// Integration tests against the project's test cloud (test/cloud/up.sh): a real Keystone and
// Glance from Debian's packages on loopback. Run with `go test -tags integration`; the cloud's
// state directory is GSC_CLOUD_DIR (default /tmp/glance-sidecar-cloud). Without a cloud these
// tests fail: they are only built with the tag, which only .ci/run and `make integration` set
// after bringing the cloud up.

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/glance-sidecar/glance-sidecar/inspect"
	"github.com/glance-sidecar/glance-sidecar/internal/testcloud"
)

func cloudClient(t *testing.T, cloud string) *Client {
	t.Helper()
	c, err := New(t.Context(), Options{Cloud: cloud, CloudsFile: filepath.Join(testcloud.Dir(), "clouds.yaml"), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("client for cloud %q (is the test cloud up? test/cloud/up.sh): %v", cloud, err)
	}
	return c
}

func newUUID(t *testing.T) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// qcow2WithData makes a qcow2 holding n bytes of random data (so ranges and hashes mean
// something) and returns its path.
func qcow2WithData(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	raw := filepath.Join(dir, "data.raw")
	data := make([]byte, n)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(raw, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "img.qcow2")
	if b, err := exec.Command("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, out).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v %s", err, b)
	}
	return out
}

// uploadImage creates and uploads an image from a file, waits until it is active, and deletes
// it at the end of the test.
func uploadImage(t *testing.T, c *Client, path, diskFormat string, opts CreateOptions) *Image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	opts.ID = newUUID(t)
	if opts.Name == "" {
		opts.Name = t.Name()
	}
	opts.DiskFormat, opts.ContainerFormat = diskFormat, "bare"
	if _, err := c.Create(t.Context(), opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Delete(t.Context(), opts.ID) })
	if err := c.Upload(t.Context(), opts.ID, f, st.Size()); err != nil {
		t.Fatal(err)
	}
	img, err := c.WaitActive(t.Context(), opts.ID, WaitOptions{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestIntegrationImageLifecycle(t *testing.T) {
	c := cloudClient(t, "sidecar")
	path := qcow2WithData(t, 8<<20)
	local, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	img := uploadImage(t, c, path, "qcow2", CreateOptions{Tags: []string{"gsc-test"}, Properties: map[string]string{"hw_disk_bus": "virtio"}})
	if img.Size == nil || *img.Size != int64(len(local)) || img.HashAlgo != "sha512" || img.HashValue == "" || img.Checksum == "" {
		t.Fatalf("image after upload: %+v", img)
	}
	if img.VirtualSize == nil || *img.VirtualSize != 8<<20 {
		t.Fatalf("Glance's virtual size %v", img.VirtualSize)
	}
	if img.Properties["hw_disk_bus"] != "virtio" {
		t.Fatalf("properties %v", img.Properties)
	}

	t.Run("ranged reads", func(t *testing.T) {
		rr, err := c.OpenRange(t.Context(), img, RangeOptions{BlockSize: 16 << 10})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range [][2]int64{{0, 512}, {100000, 70000}, {int64(len(local)) - 1000, 1000}, {1 << 20, 3 << 20}} {
			p := make([]byte, r[1])
			if n, err := rr.ReadAt(p, r[0]); err != nil || int64(n) != r[1] || !bytes.Equal(p, local[r[0]:r[0]+r[1]]) {
				t.Fatalf("ReadAt(%d, %d): %d %v", r[0], r[1], n, err)
			}
		}
		rr2, _ := c.OpenRange(t.Context(), img, RangeOptions{})
		remote, err := inspect.InspectAt(t.Context(), rr2, rr2.Size(), inspect.Options{Declared: img.DiskFormat})
		if err != nil {
			t.Fatal(err)
		}
		want, _ := inspect.InspectAt(t.Context(), bytes.NewReader(local), int64(len(local)), inspect.Options{Declared: img.DiskFormat})
		if !reflect.DeepEqual(remote, want) {
			t.Fatalf("remote inspection %+v, local %+v", remote, want)
		}
		reqs, n := rr2.Stats()
		t.Logf("inspection through ranges: %d requests, %d bytes of %d", reqs, n, len(local))
		if n > 256<<10 {
			t.Fatalf("inspection fetched %d bytes", n)
		}
	})

	t.Run("download verifies", func(t *testing.T) {
		var buf bytes.Buffer
		res, err := c.Download(t.Context(), img, &buf)
		if err != nil || res.Algorithm != "sha512" || !bytes.Equal(buf.Bytes(), local) {
			t.Fatalf("download: %+v %v", res, err)
		}
		bad := *img
		// A different first digit, whatever the real one is ("00" + the rest failed to differ
		// once in 256 runs).
		first := "0"
		if img.HashValue[0] == '0' {
			first = "1"
		}
		bad.HashValue = first + img.HashValue[1:]
		if _, err := c.Download(t.Context(), &bad, io.Discard); !errors.Is(err, ErrChecksumMismatch) {
			t.Fatalf("wrong hash: %v", err)
		}
	})

	t.Run("patch properties", func(t *testing.T) {
		got, err := c.PatchProperties(t.Context(), img.ID, map[string]string{"sidecar_format": "qcow2", "hw_disk_bus": "scsi"}, []string{"sidecar_absent"})
		if err != nil || got.Properties["sidecar_format"] != "qcow2" || got.Properties["hw_disk_bus"] != "scsi" {
			t.Fatalf("patch: %v %v", got, err)
		}
		got, err = c.PatchProperties(t.Context(), img.ID, map[string]string{"sidecar_format": "raw"}, []string{"hw_disk_bus"})
		if _, still := got.Properties["hw_disk_bus"]; err != nil || got.Properties["sidecar_format"] != "raw" || still {
			t.Fatalf("replace and remove: %v %v", got.Properties, err)
		}
		if _, err := c.PatchProperties(t.Context(), img.ID, map[string]string{"os_glance_x": "1"}, nil); !errors.Is(err, ErrInvalidProperty) {
			t.Fatalf("reserved key: %v", err)
		}
	})

	t.Run("tags and hidden", func(t *testing.T) {
		if err := c.AddTag(t.Context(), img.ID, "gsc two"); err != nil {
			t.Fatal(err)
		}
		if err := c.RemoveTag(t.Context(), img.ID, "gsc-test"); err != nil {
			t.Fatal(err)
		}
		if got, _ := c.Get(t.Context(), img.ID); !reflect.DeepEqual(got.Tags, []string{"gsc two"}) {
			t.Fatalf("tags %v", got.Tags)
		}
		if err := c.SetHidden(t.Context(), img.ID, true); err != nil {
			t.Fatal(err)
		}
		if listed(t, c, ListOptions{Owner: img.Owner}, img.ID) || !listed(t, c, ListOptions{Owner: img.Owner, Hidden: true}, img.ID) {
			t.Fatal("hidden image listed among the visible, or not among the hidden")
		}
		if err := c.SetHidden(t.Context(), img.ID, false); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("list filters", func(t *testing.T) {
		if !listed(t, c, ListOptions{Status: "active", UpdatedAfter: img.CreatedAt.Add(-time.Minute), PageSize: 1}, img.ID) {
			t.Fatal("not listed with status and updated_at filters")
		}
		if listed(t, c, ListOptions{UpdatedAfter: time.Now().Add(time.Hour)}, img.ID) {
			t.Fatal("listed as updated in the future")
		}
	})

	t.Run("deactivate", func(t *testing.T) {
		if err := c.Deactivate(t.Context(), img.ID); err != nil {
			t.Fatal(err)
		}
		if err := c.Deactivate(t.Context(), img.ID); err != nil {
			t.Fatalf("deactivate is idempotent: %v", err)
		}
		if _, err := c.WaitActive(t.Context(), img.ID, WaitOptions{}); !errors.Is(err, ErrNotActive) {
			t.Fatalf("WaitActive on deactivated: %v", err)
		}
		// An admin can still read a deactivated image.
		if _, err := c.Download(t.Context(), img, io.Discard); err != nil {
			t.Fatalf("admin download of deactivated image: %v", err)
		}
		if err := c.Reactivate(t.Context(), img.ID); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("create is idempotent by id", func(t *testing.T) {
		if _, err := c.Create(t.Context(), CreateOptions{ID: img.ID, Name: "again"}); !errors.Is(err, ErrConflict) {
			t.Fatalf("second create: %v", err)
		}
	})

	t.Run("delete", func(t *testing.T) {
		if err := c.Delete(t.Context(), img.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Get(t.Context(), img.ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("get deleted: %v", err)
		}
		if _, err := c.Download(t.Context(), img, io.Discard); !errors.Is(err, ErrNotFound) {
			t.Fatalf("download deleted: %v", err)
		}
		if err := c.Delete(t.Context(), img.ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("delete twice: %v", err)
		}
	})
}

func listed(t *testing.T, c *Client, opts ListOptions, id string) bool {
	t.Helper()
	found := false
	if err := c.List(t.Context(), opts, func(img *Image) error {
		found = found || img.ID == id
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return found
}

// TestIntegrationNonAdmin checks what a member of another project may not do.
func TestIntegrationNonAdmin(t *testing.T) {
	admin := cloudClient(t, "sidecar")
	demo := cloudClient(t, "demo")
	path := qcow2WithData(t, 1<<20)
	public := uploadImage(t, admin, path, "qcow2", CreateOptions{Visibility: "public"})
	private := uploadImage(t, admin, path, "qcow2", CreateOptions{Visibility: "private"})

	if _, err := demo.Get(t.Context(), private.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("demo sees another project's private image: %v", err)
	}
	if _, err := demo.PatchProperties(t.Context(), public.ID, map[string]string{"sidecar_x": "1"}, nil); !errors.Is(err, ErrForbidden) {
		t.Errorf("demo patches a public image it does not own: %v", err)
	}
	if err := demo.Deactivate(t.Context(), public.ID); !errors.Is(err, ErrForbidden) {
		t.Errorf("demo deactivates a public image it does not own: %v", err)
	}
	if err := demo.Delete(t.Context(), public.ID); !errors.Is(err, ErrForbidden) {
		t.Errorf("demo deletes a public image it does not own: %v", err)
	}
	if _, err := demo.Create(t.Context(), CreateOptions{Name: "x", Owner: public.Owner, DiskFormat: "raw", ContainerFormat: "bare"}); !errors.Is(err, ErrForbidden) {
		t.Errorf("demo creates an image for another project: %v", err)
	}
	if err := admin.Deactivate(t.Context(), public.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := demo.Download(t.Context(), public, io.Discard); !errors.Is(err, ErrForbidden) {
		t.Errorf("demo downloads a deactivated image: %v", err)
	}
	if err := admin.Reactivate(t.Context(), public.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := demo.Download(t.Context(), public, io.Discard); err != nil {
		t.Errorf("demo downloads a public active image: %v", err)
	}
}

// TestIntegrationAuthSources authenticates every way Options allow and lists images with each.
func TestIntegrationAuthSources(t *testing.T) {
	env := testcloud.Env(t, testcloud.Dir())
	quiet := slog.New(slog.DiscardHandler)
	check := func(t *testing.T, opts Options) {
		t.Helper()
		opts.Logger = quiet
		c, err := New(t.Context(), opts)
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		if err := c.List(t.Context(), ListOptions{PageSize: 1}, func(*Image) error { return nil }); err != nil {
			t.Fatalf("List: %v", err)
		}
	}
	t.Run("explicit password", func(t *testing.T) {
		check(t, Options{AuthURL: env["GSC_KEYSTONE_URL"], Username: env["GSC_SIDECAR_USER"], Password: env["GSC_SIDECAR_PASSWORD"],
			ProjectName: env["GSC_SIDECAR_PROJECT"], Region: env["GSC_REGION"], Interface: "public"})
	})
	t.Run("clouds.yaml through OS_CLOUD", func(t *testing.T) {
		t.Setenv("OS_CLOUD", "demo")
		t.Setenv("OS_CLIENT_CONFIG_FILE", env["GSC_CLOUDS_YAML"])
		check(t, Options{})
	})
	t.Run("OS_ variables", func(t *testing.T) {
		t.Setenv("OS_CLOUD", "")
		for k, v := range map[string]string{
			"OS_AUTH_URL": env["GSC_KEYSTONE_URL"], "OS_USERNAME": env["GSC_DEMO_USER"], "OS_PASSWORD": env["GSC_DEMO_PASSWORD"],
			"OS_PROJECT_NAME": env["GSC_DEMO_PROJECT"], "OS_USER_DOMAIN_NAME": "Default", "OS_PROJECT_DOMAIN_NAME": "Default",
			"OS_DOMAIN_NAME": "Default", "OS_REGION_NAME": env["GSC_REGION"], "OS_INTERFACE": "public",
		} {
			t.Setenv(k, v)
		}
		check(t, Options{})
	})
	t.Run("application credential", func(t *testing.T) {
		name := "gsc-test-" + newUUID(t)[:8]
		cmd := exec.Command("/usr/bin/openstack", "--os-cloud", "demo", "application", "credential", "create", name, "-f", "value", "-c", "id", "-c", "secret")
		cmd.Env = append(os.Environ(), "OS_CLIENT_CONFIG_FILE="+env["GSC_CLOUDS_YAML"])
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("creating an application credential: %v", err)
		}
		t.Cleanup(func() {
			del := exec.Command("/usr/bin/openstack", "--os-cloud", "demo", "application", "credential", "delete", name)
			del.Env = cmd.Env
			_ = del.Run()
		})
		fields := strings.Fields(string(out))
		if len(fields) != 2 {
			t.Fatalf("openstack printed %q", out)
		}
		check(t, Options{AuthURL: env["GSC_KEYSTONE_URL"], ApplicationCredentialID: fields[0], ApplicationCredentialSecret: fields[1], Interface: "public"})
	})
	t.Run("wrong password", func(t *testing.T) {
		_, err := New(t.Context(), Options{AuthURL: env["GSC_KEYSTONE_URL"], Username: "demo", Password: "wrong", ProjectName: "demo", Logger: quiet})
		if err == nil {
			t.Fatal("authenticated with a wrong password")
		}
	})
}
