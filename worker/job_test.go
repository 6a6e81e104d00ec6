package worker

import (
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/glance-sidecar/glance-sidecar/glanceclient"
)

// rbdLikeGlance is a Keystone and a Glance whose store refuses ranges, as rbd, swift and s3
// do: a real Glance on the filesystem store serves them, so this path needs a fake.
type rbdLikeGlance struct {
	srv   *httptest.Server
	mu    sync.Mutex
	img   map[string]any
	data  []byte
	full  int // full downloads served
	patch []map[string]any
	hold  chan struct{} // when set, full downloads wait for it (or for the client to leave)
	lists []url.Values  // the queries of image listings
	// listFails makes listings answer 500.
	listFails bool
	// patchConflicts makes the next PATCHes answer 409, as Glance does to a replace of a
	// property a concurrent update removed.
	patchConflicts int
}

func newRBDLikeGlance(t *testing.T, data []byte, diskFormat string) *rbdLikeGlance {
	sum := sha512.Sum512(data)
	g := &rbdLikeGlance{data: data, img: map[string]any{
		"id": "img", "status": "active", "container_format": "bare", "disk_format": diskFormat, "size": len(data),
		"virtual_size": nil, "os_hash_algo": "sha512", "os_hash_value": hex.EncodeToString(sum[:]), "checksum": "x",
		"owner": "p", "visibility": "shared", "tags": []string{}, "os_hidden": false, "protected": false,
	}}
	g.srv = httptest.NewServer(http.HandlerFunc(g.serve))
	t.Cleanup(g.srv.Close)
	return g
}

func (g *rbdLikeGlance) serve(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	defer g.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.URL.Path == "/v3/auth/tokens":
		w.Header().Set("X-Subject-Token", "tok")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"token":{"expires_at":"2099-01-01T00:00:00.000000Z","methods":["password"],"user":{"id":"u","name":"u","domain":{"id":"default","name":"Default"}},
"catalog":[{"type":"image","name":"glance","id":"s","endpoints":[{"id":"e","interface":"public","region":"RegionOne","region_id":"RegionOne","url":"%s"}]}]}}`, g.srv.URL)
	case r.URL.Path == "/":
		fmt.Fprintf(w, `{"versions":[{"id":"v2.15","status":"CURRENT","links":[{"rel":"self","href":"%s/v2/"}]}]}`, g.srv.URL)
	case r.URL.Path == "/v2/images" && r.Method == http.MethodGet:
		// The image is listed with os_hidden=true when it is hidden, and without otherwise.
		g.lists = append(g.lists, r.URL.Query())
		if g.listFails {
			http.Error(w, "database is locked", http.StatusInternalServerError)
			return
		}
		images := []any{}
		if fmt.Sprint(g.img["os_hidden"]) == strconv.FormatBool(r.URL.Query().Get("os_hidden") == "true") {
			images = append(images, g.img)
		}
		json.NewEncoder(w).Encode(map[string]any{"images": images})
	case r.URL.Path == "/v2/images/img" && r.Method == http.MethodGet:
		json.NewEncoder(w).Encode(g.img)
	case r.URL.Path == "/v2/images/img" && r.Method == http.MethodPatch:
		if g.patchConflicts > 0 {
			g.patchConflicts--
			http.Error(w, "conflict", http.StatusConflict)
			return
		}
		var ops []map[string]any
		json.NewDecoder(r.Body).Decode(&ops)
		g.patch = append(g.patch, ops...)
		for _, op := range ops {
			key := strings.TrimPrefix(op["path"].(string), "/")
			if op["op"] == "remove" {
				delete(g.img, key)
			} else {
				g.img[key] = op["value"]
			}
		}
		json.NewEncoder(w).Encode(g.img)
	case r.URL.Path == "/v2/images/img/file":
		if r.Header.Get("Range") != "" {
			http.Error(w, "StoreRandomGetNotSupported", http.StatusBadRequest)
			return
		}
		g.full++
		if hold := g.hold; hold != nil {
			g.mu.Unlock()
			select {
			case <-hold:
			case <-r.Context().Done():
			}
			g.mu.Lock()
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(g.data)
	default:
		http.NotFound(w, r)
	}
}

func (g *rbdLikeGlance) client(t *testing.T) *glanceclient.Client {
	c, err := glanceclient.New(t.Context(), glanceclient.Options{AuthURL: g.srv.URL + "/v3", Username: "u", Password: "p",
		Logger: slog.New(slog.DiscardHandler), RetryBase: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestJobFallsBackToStreaming inspects an image on a store that refuses ranges: one full
// streaming pass inspects it and verifies its checksum.
func TestJobFallsBackToStreaming(t *testing.T) {
	path := filepath.Join(t.TempDir(), "i.vmdk")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "vmdk", "-o", "adapter_type=lsilogic", path, "2G").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v %s", err, out)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	g := newRBDLikeGlance(t, data, "vmdk")
	res, err := Job(t.Context(), g.client(t), "img", JobOptions{Logger: slog.New(slog.DiscardHandler)})
	if err != nil || res.Outcome != OutcomeInspected || res.Mode != "stream" || res.BytesRead != int64(len(data)) || g.full != 1 {
		t.Fatalf("result %+v, %v; %d full downloads", res, err, g.full)
	}
	if g.img["sidecar_vmdk_adapter_type"] != "lsilogic" || g.img["vmware_adaptertype"] != "lsiLogic" || g.img["sidecar_virtual_size"] != "2147483648" {
		t.Fatalf("properties %v", g.img)
	}

	// Data that does not match its checksum fails the job instead of recording findings.
	bad := newRBDLikeGlance(t, data, "vmdk")
	bad.img["os_hash_value"] = "00"
	if _, err := Job(t.Context(), bad.client(t), "img", JobOptions{Logger: slog.New(slog.DiscardHandler)}); !strings.Contains(fmt.Sprint(err), "checksum mismatch") {
		t.Fatalf("corrupt data: %v", err)
	}
	if len(bad.patch) != 0 {
		t.Fatalf("findings written for corrupt data: %v", bad.patch)
	}
	if err := RecordFailure(t.Context(), bad.client(t), "img", fmt.Errorf("checksum mismatch"), JobOptions{}); err != nil {
		t.Fatal(err)
	}
	if bad.img["sidecar_status"] != "failed" || bad.img["sidecar_error"] != "checksum mismatch" {
		t.Fatalf("failure not recorded: %v", bad.img)
	}
}

func TestSkipReason(t *testing.T) {
	size := int64(10)
	base := glanceclient.Image{ContainerFormat: "bare", Owner: "p1", Visibility: "public", DiskFormat: "qcow2", Size: &size,
		HashAlgo: "sha512", HashValue: "abc", Properties: map[string]string{}}
	with := func(f func(*glanceclient.Image)) *glanceclient.Image {
		img := base
		img.Properties = map[string]string{}
		f(&img)
		return &img
	}
	current := func(i *glanceclient.Image) {
		i.Properties["sidecar_status"], i.Properties["sidecar_checked_hash"], i.Properties["sidecar_version"] = "unsafe", "sha512:abc", "v1"
	}
	tests := []struct {
		name string
		img  *glanceclient.Image
		opts JobOptions
		want string
	}{
		{"ours", &base, JobOptions{}, ""},
		{"not bare", with(func(i *glanceclient.Image) { i.ContainerFormat = "ova" }), JobOptions{}, "container format ova is not bare"},
		{"owner filtered", &base, JobOptions{Owners: []string{"p2"}}, "owner p1 is filtered out"},
		{"visibility filtered", &base, JobOptions{Visibilities: []string{"private"}}, "visibility public is filtered out"},
		{"disk format filtered", &base, JobOptions{DiskFormats: []string{"raw"}}, "disk format qcow2 is filtered out"},
		{"no data", with(func(i *glanceclient.Image) { i.Size = nil }), JobOptions{}, "image has no data"},
		{"current", with(current), JobOptions{Properties: PropertyOptions{Version: "v1"}}, "outcome is current"},
		{"current but forced", with(current), JobOptions{Force: true, Properties: PropertyOptions{Version: "v1"}}, ""},
		{"new sidecar version", with(current), JobOptions{Properties: PropertyOptions{Version: "v2"}}, ""},
		{"new data", with(func(i *glanceclient.Image) { current(i); i.HashValue = "def" }), JobOptions{Properties: PropertyOptions{Version: "v1"}}, ""},
		{"failed, given up on (no hash)", with(func(i *glanceclient.Image) {
			current(i)
			i.Properties["sidecar_status"] = "failed"
			delete(i.Properties, "sidecar_checked_hash")
		}), JobOptions{Properties: PropertyOptions{Version: "v1"}}, ""},
		{"failed for good (with the hash)", with(func(i *glanceclient.Image) { current(i); i.Properties["sidecar_status"] = "failed" }), JobOptions{Properties: PropertyOptions{Version: "v1"}}, "outcome is current"},
	}
	for _, tt := range tests {
		if got := skipReason(tt.img, tt.opts); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
}

// TestJobDryRun decides as a job would, from the same skip decision, and changes nothing.
func TestJobDryRun(t *testing.T) {
	g := newRBDLikeGlance(t, qcow2Bytes(t), "qcow2")
	c := g.client(t)
	opts := JobOptions{Logger: slog.New(slog.DiscardHandler), Properties: PropertyOptions{Version: "v1"}, DryRun: true}
	tests := []struct {
		name    string
		set     map[string]any
		force   bool
		outcome Outcome
		reason  string
	}{
		{"never looked at", nil, false, OutcomeWouldInspect, ""},
		{"not bare", map[string]any{"container_format": "ova"}, false, OutcomeSkipped, "container format ova is not bare"},
		{"still uploading: no wait", map[string]any{"status": "saving"}, false, OutcomeSkipped, "image is saving"},
		{"deactivated", map[string]any{"status": "deactivated"}, false, OutcomeSkipped, "image is deactivated"},
		{"current", map[string]any{"sidecar_status": "inspected", "sidecar_version": "v1", "sidecar_checked_hash": "sha512:" + g.img["os_hash_value"].(string)}, false, OutcomeSkipped, "outcome is current"},
		{"current, forced", nil, true, OutcomeWouldInspect, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g.mu.Lock()
			saved := map[string]any{}
			for k, v := range tt.set {
				saved[k] = g.img[k]
				g.img[k] = v
			}
			g.mu.Unlock()
			defer func() {
				g.mu.Lock()
				for k, v := range saved {
					if v == nil {
						delete(g.img, k)
					} else {
						g.img[k] = v
					}
				}
				g.mu.Unlock()
			}()
			o := opts
			o.Force = tt.force
			o.Wait = glanceclient.WaitOptions{Timeout: time.Minute}
			res, err := Job(t.Context(), c, "img", o)
			if err != nil || res.Outcome != tt.outcome || res.Reason != tt.reason || res.BytesRead != 0 {
				t.Fatalf("result %+v, %v; want %s %q", res, err, tt.outcome, tt.reason)
			}
			g.mu.Lock()
			defer g.mu.Unlock()
			if len(g.patch) != 0 || g.full != 0 {
				t.Fatalf("a dry run wrote %d patches and read %d times", len(g.patch), g.full)
			}
		})
	}
}
