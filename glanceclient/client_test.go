package glanceclient

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/glance-sidecar/glance-sidecar/inspect"
)

func randomBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(1, uint64(n)))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestGetTellsNullFromZero(t *testing.T) {
	f := newFakeCloud(t)
	f.addImage("a", []byte{}, map[string]any{"size": 0, "virtual_size": nil, "hw_disk_bus": "scsi", "odd": 7})
	c := f.client(t)
	img, err := c.Get(t.Context(), "a")
	if err != nil {
		t.Fatal(err)
	}
	if img.Size == nil || *img.Size != 0 || img.VirtualSize != nil {
		t.Fatalf("size %v virtual size %v", img.Size, img.VirtualSize)
	}
	if img.Properties["hw_disk_bus"] != "scsi" || img.Properties["odd"] != "7" || img.HashAlgo != "sha512" {
		t.Fatalf("properties %v", img.Properties)
	}
	if _, err := c.Get(t.Context(), "missing"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing image: %v", err)
	}
	if n := f.count("GET /v2/images/missing"); n != 1 {
		t.Fatalf("404 was tried %d times, want once", n)
	}
}

func TestWaitActive(t *testing.T) {
	f := newFakeCloud(t)
	f.addImage("s", []byte("x"), map[string]any{"status": "saving"})
	f.addImage("d", []byte("x"), map[string]any{"status": "deactivated"})
	f.addImage("i", []byte("x"), map[string]any{"os_glance_import_task": "t1"})
	c := f.client(t)
	go func() {
		time.Sleep(150 * time.Millisecond)
		f.mu.Lock()
		f.images["s"]["status"] = "active"
		f.mu.Unlock()
	}()
	img, err := c.WaitActive(t.Context(), "s", WaitOptions{Interval: 10 * time.Millisecond})
	if err != nil || img.Status != "active" {
		t.Fatalf("saving then active: %v %v", img, err)
	}
	if f.count("GET /v2/images/s") < 2 {
		t.Fatalf("did not poll")
	}
	if _, err := c.WaitActive(t.Context(), "d", WaitOptions{}); !errors.Is(err, ErrNotActive) {
		t.Fatalf("deactivated: %v", err)
	}
	if _, err := c.WaitActive(t.Context(), "i", WaitOptions{Timeout: 100 * time.Millisecond, Interval: 10 * time.Millisecond}); !errors.Is(err, ErrNotActive) {
		t.Fatalf("importing: %v", err)
	}
	if _, err := c.WaitActive(t.Context(), "gone", WaitOptions{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted: %v", err)
	}
}

func TestRangeReader(t *testing.T) {
	data := randomBytes(1<<20 + 123)
	f := newFakeCloud(t)
	f.addImage("r", data, nil)
	c := f.client(t)
	img, err := c.Get(t.Context(), "r")
	if err != nil {
		t.Fatal(err)
	}
	rr, err := c.OpenRange(t.Context(), img, RangeOptions{BlockSize: 4096, CacheBlocks: 8})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		off, n   int64
		requests int64 // requests made by this read
	}{
		{0, 10, 1},              // block 0
		{100, 200, 0},           // cached
		{4000, 200, 1},          // block 1 (block 0 cached)
		{3 * 4096, 3 * 4096, 1}, // blocks 3-5 in one request
		{2 * 4096, 4 * 4096, 1}, // blocks 2-5: only 2 missing
		{int64(len(data)) - 50, 50, 1},
		{0, 64 << 10, 1}, // larger than the cache: straight through
	}
	for _, tt := range tests {
		before, _ := rr.Stats()
		p := make([]byte, tt.n)
		n, err := rr.ReadAt(p, tt.off)
		if err != nil || int64(n) != tt.n || !bytes.Equal(p, data[tt.off:tt.off+tt.n]) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", tt.off, tt.n, n, err)
		}
		if after, _ := rr.Stats(); after-before != tt.requests {
			t.Errorf("ReadAt(%d, %d) made %d requests, want %d", tt.off, tt.n, after-before, tt.requests)
		}
	}
	p := make([]byte, 100)
	if n, err := rr.ReadAt(p, int64(len(data))-40); n != 40 || err != io.EOF {
		t.Fatalf("read across the end: %d %v", n, err)
	}
	if n, err := rr.ReadAt(p, int64(len(data))); n != 0 || err != io.EOF {
		t.Fatalf("read at the end: %d %v", n, err)
	}
}

func TestRangeUnsupported(t *testing.T) {
	for _, status := range []int{400, 416, 200} {
		f := newFakeCloud(t)
		f.addImage("r", randomBytes(100000), nil)
		f.refuseRanges = status
		c := f.client(t)
		img, _ := c.Get(t.Context(), "r")
		rr, err := c.OpenRange(t.Context(), img, RangeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rr.ReadAt(make([]byte, 10), 0); !errors.Is(err, ErrRangeUnsupported) {
			t.Errorf("store answering %d: %v", status, err)
		}
		if n := f.count("GET /v2/images/r/file"); n != 1 {
			t.Errorf("store answering %d: %d requests, want 1 (no retry)", status, n)
		}
	}
}

// TestInspectThroughRanges inspects a qemu-made image through the RangeReader and checks the
// report equals the local one while only a few KiB cross the wire.
func TestInspectThroughRanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "i.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", path, "20G").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v %s", err, out)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeCloud(t)
	f.addImage("q", data, nil)
	c := f.client(t)
	img, _ := c.Get(t.Context(), "q")
	rr, _ := c.OpenRange(t.Context(), img, RangeOptions{})
	remote, err := inspect.InspectAt(t.Context(), rr, rr.Size(), inspect.Options{Declared: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	local, err := inspect.InspectAt(t.Context(), bytes.NewReader(data), int64(len(data)), inspect.Options{Declared: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(remote, local) || !remote.Safe() || remote.VirtualSize != 20<<30 {
		t.Fatalf("remote %+v local %+v", remote, local)
	}
	if reqs, n := rr.Stats(); n > 256<<10 || reqs > 4 {
		t.Fatalf("%d requests, %d bytes for a %d-byte image", reqs, n, len(data))
	}
}

func TestDownloadVerifies(t *testing.T) {
	data := randomBytes(3<<20 + 7)
	f := newFakeCloud(t)
	f.addImage("ok", data, nil)
	f.addImage("bad", data, map[string]any{"os_hash_value": "00"})
	f.addImage("md5", data, map[string]any{"os_hash_algo": nil, "os_hash_value": nil})
	f.addImage("badmd5", data, map[string]any{"os_hash_algo": nil, "os_hash_value": nil, "checksum": "00"})
	f.addImage("short", data, map[string]any{"size": len(data) + 1})
	c := f.client(t)
	for _, tt := range []struct {
		id   string
		algo string
		err  error
	}{
		{"ok", "sha512", nil},
		{"bad", "sha512", ErrChecksumMismatch},
		{"md5", "md5", nil},
		{"badmd5", "md5", ErrChecksumMismatch},
		{"short", "sha512", ErrChecksumMismatch},
	} {
		img, err := c.Get(t.Context(), tt.id)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		res, err := c.Download(t.Context(), img, &buf)
		if !errors.Is(err, tt.err) || (tt.err == nil && err != nil) {
			t.Errorf("%s: %v, want %v", tt.id, err, tt.err)
		}
		if res.Algorithm != tt.algo || !bytes.Equal(buf.Bytes(), data) {
			t.Errorf("%s: algorithm %q, %d bytes", tt.id, res.Algorithm, buf.Len())
		}
	}
}

func TestDownloadCutMidStream(t *testing.T) {
	data := randomBytes(4 << 20)
	f := newFakeCloud(t)
	f.addImage("c", data, nil)
	f.cutAfter = 1 << 20
	c := f.client(t)
	img, _ := c.Get(t.Context(), "c")
	_, err := c.Download(t.Context(), img, io.Discard)
	if err == nil || errors.Is(err, ErrChecksumMismatch) {
		t.Fatalf("a cut connection must be an I/O error, got %v", err)
	}
	if n := f.count("GET /v2/images/c/file"); n != 1 {
		t.Fatalf("retried a download already under way: %d requests", n)
	}
}

func TestRetries503Storm(t *testing.T) {
	f := newFakeCloud(t)
	f.addImage("a", []byte("x"), nil)
	c := f.client(t)
	f.mu.Lock()
	f.storm = 3
	f.mu.Unlock()
	if _, err := c.Get(t.Context(), "a"); err != nil {
		t.Fatalf("3 x 503 then 200: %v", err)
	}
	if n := f.count("GET /v2/images/a"); n != 4 {
		t.Fatalf("%d requests, want 4", n)
	}
	f.mu.Lock()
	f.storm = 100
	f.mu.Unlock()
	if _, err := c.Get(t.Context(), "a"); err == nil || statusOf(err) != 503 {
		t.Fatalf("endless 503: %v", err)
	}
	if n := f.count("GET /v2/images/a"); n != 4+5 {
		t.Fatalf("%d requests, want 4 + 1 + 4 retries", n)
	}
}

func TestReauthenticatesOnExpiredToken(t *testing.T) {
	f := newFakeCloud(t)
	f.addImage("a", []byte("x"), map[string]any{"status": "queued", "size": nil})
	c := f.client(t)
	f.mu.Lock()
	f.valid = "token-2" // token-1, from New, has expired
	f.mu.Unlock()
	if _, err := c.Get(t.Context(), "a"); err != nil {
		t.Fatalf("after re-auth: %v", err)
	}
	f.mu.Lock()
	f.valid = "token-3"
	f.mu.Unlock()
	data := randomBytes(300000)
	if err := c.Upload(t.Context(), "a", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("upload across a re-auth: %v", err)
	}
	if f.tokens != 3 {
		t.Fatalf("%d tokens issued, want 3", f.tokens)
	}
	if last := f.bodies[len(f.bodies)-1]; !bytes.Equal(last, data) {
		t.Fatalf("upload after re-auth sent %d bytes, want all %d", len(last), len(data))
	}
}

// TestUploadStreamExpiredToken: a stream cannot be sent twice, so the token is renewed before it
// starts: one PUT, with every byte.
func TestUploadStreamExpiredToken(t *testing.T) {
	f := newFakeCloud(t)
	c := f.client(t)
	if _, err := c.Create(t.Context(), CreateOptions{ID: "s", Name: "s", DiskFormat: "raw", ContainerFormat: "bare"}); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.valid = "token-2" // token-1, from New, has expired
	f.mu.Unlock()
	data := randomBytes(70000)
	if err := c.UploadStream(t.Context(), "s", io.MultiReader(bytes.NewReader(data[:5]), bytes.NewReader(data[5:])), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if n := f.count("PUT /v2/images/s/file"); n != 1 {
		t.Fatalf("%d PUTs of the stream, want 1", n)
	}
	if got := f.data["s"]; !bytes.Equal(got, data) {
		t.Fatalf("stored %d bytes, want the %d sent", len(got), len(data))
	}
}

func TestPatchProperties(t *testing.T) {
	f := newFakeCloud(t)
	f.addImage("p", []byte("x"), map[string]any{"sidecar_old": "1", "keep": "me", "a/b~c": "x"})
	c := f.client(t)
	img, err := c.PatchProperties(t.Context(), "p",
		map[string]string{"sidecar_old": "2", "sidecar_new": "n", "keep": "me", "a/b~c": "y"},
		[]string{"sidecar_absent", "sidecar_gone"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"sidecar_old": "2", "sidecar_new": "n", "keep": "me", "a/b~c": "y"}
	for k, v := range want {
		if img.Properties[k] != v {
			t.Errorf("%s = %q, want %q", k, img.Properties[k], v)
		}
	}
	if _, err := c.PatchProperties(t.Context(), "p", nil, []string{"keep"}); err != nil {
		t.Fatalf("remove: %v", err)
	}
	// Nothing to change makes no PATCH.
	before := f.count("PATCH /v2/images/p")
	if _, err := c.PatchProperties(t.Context(), "p", map[string]string{"sidecar_new": "n"}, []string{"keep"}); err != nil || f.count("PATCH /v2/images/p") != before {
		t.Fatalf("no-op patch: %v", err)
	}

	for _, key := range []string{"", "os_glance_x", "virtual_size", "status", string(make([]byte, 256)), " padded"} {
		if _, err := c.PatchProperties(t.Context(), "p", map[string]string{key: "v"}, nil); !errors.Is(err, ErrInvalidProperty) {
			t.Errorf("key %.20q: %v", key, err)
		}
	}
	for status, want := range map[int]error{403: ErrForbidden, 409: ErrConflict, 413: ErrQuota} {
		f.mu.Lock()
		f.patchStatus = status
		f.mu.Unlock()
		if _, err := c.PatchProperties(t.Context(), "p", map[string]string{"sidecar_x": "1"}, nil); !errors.Is(err, want) {
			t.Errorf("PATCH answered %d: %v, want %v", status, err, want)
		}
	}
	f.mu.Lock()
	f.patchStatus, f.dropPatch = 0, true
	f.mu.Unlock()
	if _, err := c.PatchProperties(t.Context(), "p", map[string]string{"sidecar_x": "1"}, nil); !errors.Is(err, ErrNotPersisted) {
		t.Errorf("lost update: %v", err)
	}
}

func TestCreateUploadActions(t *testing.T) {
	f := newFakeCloud(t)
	c := f.client(t)
	img, err := c.Create(t.Context(), CreateOptions{ID: "c1", Name: "conv", DiskFormat: "raw", ContainerFormat: "bare",
		Visibility: "private", MinDisk: 2, Tags: []string{"t"}, Properties: map[string]string{"sidecar_converted_from": "o"}})
	if err != nil || img.Status != "queued" || img.Properties["sidecar_converted_from"] != "o" {
		t.Fatalf("create: %+v %v", img, err)
	}
	if _, err := c.Create(t.Context(), CreateOptions{ID: "c1", Name: "again"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("second create: %v", err)
	}
	if _, err := c.Create(t.Context(), CreateOptions{Name: "x", Properties: map[string]string{"os_glance_y": "1"}}); !errors.Is(err, ErrInvalidProperty) {
		t.Fatalf("reserved key: %v", err)
	}
	data := randomBytes(5000)
	if err := c.Upload(t.Context(), "c1", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	// A stream is sent once, with its length; one that ends short fails.
	if _, err := c.Create(t.Context(), CreateOptions{ID: "s1", Name: "stream", DiskFormat: "raw", ContainerFormat: "bare"}); err != nil {
		t.Fatal(err)
	}
	if err := c.UploadStream(t.Context(), "s1", io.MultiReader(bytes.NewReader(data[:100]), bytes.NewReader(data[100:])), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if got := f.data["s1"]; !bytes.Equal(got, data) {
		t.Errorf("streamed %d bytes, want the %d sent", len(got), len(data))
	}
	if _, err := c.Create(t.Context(), CreateOptions{ID: "s2", Name: "short", DiskFormat: "raw", ContainerFormat: "bare"}); err != nil {
		t.Fatal(err)
	}
	if err := c.UploadStream(t.Context(), "s2", bytes.NewReader(data[:10]), int64(len(data))); err == nil {
		t.Error("a stream shorter than its size was uploaded")
	}
	for _, step := range []struct {
		do     func() error
		status string
	}{
		{func() error { return c.Deactivate(t.Context(), "c1") }, "deactivated"},
		{func() error { return c.Reactivate(t.Context(), "c1") }, "active"},
	} {
		if err := step.do(); err != nil {
			t.Fatal(err)
		}
		if got, _ := c.Get(t.Context(), "c1"); got.Status != step.status {
			t.Fatalf("status %s, want %s", got.Status, step.status)
		}
	}
	if err := c.SetHidden(t.Context(), "c1", true); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.Get(t.Context(), "c1"); !got.Hidden {
		t.Fatal("not hidden")
	}
	if err := c.AddTag(t.Context(), "c1", "with space"); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(t.Context(), "c1"); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(t.Context(), "c1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

func TestListPages(t *testing.T) {
	f := newFakeCloud(t)
	for i := range 25 {
		owner := "p1"
		if i%5 == 0 {
			owner = "p2"
		}
		f.addImage(string(rune('a'+i)), []byte("x"), map[string]any{"owner": owner})
	}
	c := f.client(t)
	var got []string
	if err := c.List(t.Context(), ListOptions{PageSize: 7}, func(img *Image) error { got = append(got, img.ID); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 25 || f.count("GET /v2/images") != 4 {
		t.Fatalf("%d images in %d pages", len(got), f.count("GET /v2/images"))
	}
	got = got[:0]
	if err := c.List(t.Context(), ListOptions{Owner: "p2", PageSize: 2}, func(img *Image) error { got = append(got, img.ID); return nil }); err != nil || len(got) != 5 {
		t.Fatalf("owner filter: %v %v", got, err)
	}
	stop := errors.New("stop")
	if err := c.List(t.Context(), ListOptions{}, func(*Image) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("callback error: %v", err)
	}
}
