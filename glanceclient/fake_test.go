package glanceclient

import (
	"crypto/md5"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeCloud is a Keystone and a Glance in one httptest server, for what a real Glance will not
// do on demand: refuse ranges, answer 503 in a storm, expire a token, cut a download short.
// The integration tests (build tag integration) run the same client against a real Glance.
type fakeCloud struct {
	t   *testing.T
	srv *httptest.Server

	mu     sync.Mutex
	images map[string]map[string]any
	data   map[string][]byte
	tokens int // tokens issued
	// valid is the token Glance accepts; "" accepts any.
	valid string
	// knobs
	refuseRanges int  // 0: serve ranges; 400 or 416: answer that; 200: ignore the Range
	storm        int  // answer this many next Glance requests with 503
	cutAfter     int  // cut full downloads after this many bytes (0: never)
	dropPatch    bool // accept PATCH but keep nothing (a concurrent update won)
	patchStatus  int  // answer PATCH with this status when not 0
	// counters
	requests map[string]int // "METHOD path" → count
	ranges   []string
	bodies   [][]byte // uploaded bodies, in order
}

func newFakeCloud(t *testing.T) *fakeCloud {
	f := &fakeCloud{t: t, images: map[string]map[string]any{}, data: map[string][]byte{}, requests: map[string]int{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

// client returns a Client authenticated through the fake Keystone, as New does in production.
func (f *fakeCloud) client(t *testing.T) *Client {
	t.Helper()
	c, err := New(t.Context(), Options{
		AuthURL: f.srv.URL + "/v3", Username: "sidecar", Password: "secret", ProjectName: "service",
		RetryBase: time.Millisecond, RetryMax: 4 * time.Millisecond, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func (f *fakeCloud) addImage(id string, data []byte, props map[string]any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sum := sha512.Sum512(data)
	md := md5.Sum(data)
	img := map[string]any{
		"id": id, "name": "img-" + id, "status": "active", "visibility": "shared", "protected": false,
		"os_hidden": false, "checksum": hex.EncodeToString(md[:]), "os_hash_algo": "sha512",
		"os_hash_value": hex.EncodeToString(sum[:]), "owner": "p1", "size": len(data), "virtual_size": nil,
		"container_format": "bare", "disk_format": "raw", "created_at": "2026-11-22T07:00:00Z",
		"updated_at": "2026-11-22T07:00:00Z", "tags": []string{}, "min_ram": 0, "min_disk": 0,
		"self": "/v2/images/" + id, "file": "/v2/images/" + id + "/file", "schema": "/v2/schemas/image",
	}
	for k, v := range props {
		img[k] = v
	}
	f.images[id] = img
	f.data[id] = data
}

func (f *fakeCloud) count(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests[key]
}

func (f *fakeCloud) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	path := r.URL.Path
	f.requests[r.Method+" "+path]++
	switch {
	case r.Method == http.MethodPost && path == "/v3/auth/tokens":
		f.tokens++
		tok := fmt.Sprintf("token-%d", f.tokens)
		w.Header().Set("X-Subject-Token", tok)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"token":{"expires_at":"2099-01-01T00:00:00.000000Z","issued_at":"2026-11-22T00:00:00.000000Z","methods":["password"],
"user":{"id":"u1","name":"sidecar","domain":{"id":"default","name":"Default"}},
"project":{"id":"p0","name":"service","domain":{"id":"default","name":"Default"}},
"catalog":[{"type":"image","name":"glance","id":"s1","endpoints":[
{"id":"e1","interface":"public","region":"RegionOne","region_id":"RegionOne","url":"%[1]s"},
{"id":"e2","interface":"internal","region":"RegionOne","region_id":"RegionOne","url":"%[1]s"}]}]}}`, f.srv.URL)
		return
	case path == "/" || path == "":
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"versions":[{"id":"v2.15","status":"CURRENT","links":[{"rel":"self","href":"%s/v2/"}]}]}`, f.srv.URL)
		return
	}
	if tok := r.Header.Get("X-Auth-Token"); f.valid != "" && tok != f.valid {
		http.Error(w, "token expired", http.StatusUnauthorized)
		return
	}
	if f.storm > 0 {
		f.storm--
		http.Error(w, "try later", http.StatusServiceUnavailable)
		return
	}
	parts := strings.Split(strings.TrimPrefix(path, "/v2/"), "/")
	if parts[0] != "images" {
		http.NotFound(w, r)
		return
	}
	if len(parts) == 1 {
		f.serveCollection(w, r)
		return
	}
	id := parts[1]
	img, ok := f.images[id]
	if !ok {
		http.NotFound(w, r)
		return
	}
	switch {
	case len(parts) == 2 && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, img)
	case len(parts) == 2 && r.Method == http.MethodPatch:
		f.patch(w, r, img)
	case len(parts) == 2 && r.Method == http.MethodDelete:
		delete(f.images, id)
		w.WriteHeader(http.StatusNoContent)
	case len(parts) == 3 && parts[2] == "file" && r.Method == http.MethodGet:
		f.download(w, r, id)
	case len(parts) == 3 && parts[2] == "file" && r.Method == http.MethodPut:
		// Glance reads chunked bodies slowly: every upload must say its length.
		if r.ContentLength <= 0 || len(r.TransferEncoding) > 0 {
			http.Error(w, "upload without Content-Length", http.StatusLengthRequired)
			return
		}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		f.bodies = append(f.bodies, b)
		f.data[id] = b
		img["status"], img["size"] = "active", len(b)
		w.WriteHeader(http.StatusNoContent)
	case len(parts) == 4 && parts[2] == "actions":
		switch parts[3] {
		case "deactivate":
			img["status"] = "deactivated"
		case "reactivate":
			img["status"] = "active"
		}
		w.WriteHeader(http.StatusNoContent)
	case len(parts) == 4 && parts[2] == "tags":
		tags, _ := img["tags"].([]string)
		if r.Method == http.MethodPut {
			img["tags"] = append(tags, parts[3])
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		http.Error(w, "unexpected "+r.Method+" "+path, http.StatusBadRequest)
	}
}

func (f *fakeCloud) serveCollection(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		var body map[string]any
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		id, _ := body["id"].(string)
		if id == "" {
			id = fmt.Sprintf("gen-%d", len(f.images))
		}
		if _, dup := f.images[id]; dup {
			http.Error(w, "Image ID "+id+" already exists!", http.StatusConflict)
			return
		}
		img := map[string]any{"id": id, "status": "queued", "size": nil, "virtual_size": nil, "tags": []string{},
			"os_hidden": false, "protected": false, "visibility": "shared", "checksum": nil, "os_hash_algo": nil, "os_hash_value": nil}
		for k, v := range body {
			img[k] = v
		}
		f.images[id] = img
		writeJSON(w, http.StatusCreated, img)
		return
	}
	q := r.URL.Query()
	ids := make([]string, 0, len(f.images))
	for id, img := range f.images {
		if s := q.Get("status"); s != "" && img["status"] != s {
			continue
		}
		if o := q.Get("owner"); o != "" && img["owner"] != o {
			continue
		}
		ids = append(ids, id)
	}
	sort.Strings(ids)
	limit, _ := strconv.Atoi(q.Get("limit"))
	start := 0
	if m := q.Get("marker"); m != "" {
		start = sort.SearchStrings(ids, m) + 1
	}
	end := min(start+limit, len(ids))
	page := map[string]any{"images": []any{}}
	var list []any
	for _, id := range ids[min(start, len(ids)):end] {
		list = append(list, f.images[id])
	}
	if list != nil {
		page["images"] = list
	}
	if end < len(ids) {
		q.Set("marker", ids[end-1])
		page["next"] = "/v2/images?" + q.Encode()
	}
	writeJSON(w, http.StatusOK, page)
}

func (f *fakeCloud) patch(w http.ResponseWriter, r *http.Request, img map[string]any) {
	if r.Header.Get("Content-Type") != patchContentType {
		http.Error(w, "bad content type", http.StatusUnsupportedMediaType)
		return
	}
	if f.patchStatus != 0 {
		http.Error(w, "refused", f.patchStatus)
		return
	}
	var ops []map[string]any
	if err := json.NewDecoder(r.Body).Decode(&ops); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	next := map[string]any{}
	for k, v := range img {
		next[k] = v
	}
	for _, op := range ops {
		key := strings.NewReplacer("~1", "/", "~0", "~").Replace(strings.TrimPrefix(op["path"].(string), "/"))
		_, exists := next[key]
		switch op["op"] {
		case "add":
			next[key] = op["value"]
		case "replace":
			if !exists {
				http.Error(w, "Property "+key+" does not exist.", http.StatusConflict)
				return
			}
			next[key] = op["value"]
		case "remove":
			if !exists {
				http.Error(w, "Property "+key+" does not exist.", http.StatusConflict)
				return
			}
			delete(next, key)
		}
	}
	if !f.dropPatch {
		clear(img)
		for k, v := range next {
			img[k] = v
		}
	}
	writeJSON(w, http.StatusOK, next)
}

func (f *fakeCloud) download(w http.ResponseWriter, r *http.Request, id string) {
	data := f.data[id]
	rng := r.Header.Get("Range")
	if rng != "" {
		f.ranges = append(f.ranges, rng)
		switch f.refuseRanges {
		case 400, 416:
			http.Error(w, "range refused", f.refuseRanges)
			return
		case 200:
			rng = ""
		}
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if rng == "" {
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.WriteHeader(http.StatusOK)
		if f.cutAfter > 0 && f.cutAfter < len(data) {
			w.Write(data[:f.cutAfter])
			panic(http.ErrAbortHandler) // drops the connection mid-body
		}
		w.Write(data)
		return
	}
	var a, b int
	if _, err := fmt.Sscanf(rng, "bytes=%d-%d", &a, &b); err != nil || a >= len(data) || a > b {
		http.Error(w, "bad range", http.StatusRequestedRangeNotSatisfiable)
		return
	}
	b = min(b, len(data)-1)
	w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", a, b, len(data)))
	w.Header().Set("Content-Length", strconv.Itoa(b-a+1))
	w.WriteHeader(http.StatusPartialContent)
	w.Write(data[a : b+1])
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
