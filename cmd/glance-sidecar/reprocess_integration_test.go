//go:build integration

package main

// End-to-end tests of reprocess, report and serve's reconcile pass against the project's test
// cloud (test/cloud/up.sh). Each test seeds images of its own, owned by a fresh random project,
// and looks only at those: other tests create images in the same cloud at the same time.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/glance-sidecar/glance-sidecar/glanceclient"
	"github.com/glance-sidecar/glance-sidecar/internal/testcatalog"
	"github.com/glance-sidecar/glance-sidecar/internal/testcloud"
	"github.com/glance-sidecar/glance-sidecar/worker"
)

func testClient(t *testing.T, env map[string]string, cloud string) *glanceclient.Client {
	t.Helper()
	c, err := glanceclient.New(t.Context(), glanceclient.Options{Cloud: cloud, CloudsFile: env["GSC_CLOUDS_YAML"], Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// seedCatalog seeds n images owned by a fresh project. When the test ends, every image of that
// project is deleted: the seeded ones, those the test adds, and those other tests' sidecars
// derive from them.
func seedCatalog(t *testing.T, env map[string]string, n int) (owner string, images []testcatalog.Image) {
	t.Helper()
	admin := testClient(t, env, "admin")
	owner = testcatalog.NewProjectID()
	images, err := testcatalog.Seed(t.Context(), admin, t.TempDir(), owner, n, 8)
	t.Cleanup(func() {
		ids := make([]string, len(images))
		for i, img := range images {
			ids[i] = img.ID
		}
		if err := errors.Join(testcatalog.Delete(context.Background(), admin, ids, 8),
			testcatalog.DeleteOwned(context.Background(), admin, owner, 8)); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	if err != nil {
		t.Fatalf("seeding the catalog: %v", err)
	}
	return owner, images
}

// catalog reads the owner's images (hidden ones included) by id.
func catalog(t *testing.T, c *glanceclient.Client, owner string) map[string]*glanceclient.Image {
	t.Helper()
	out := map[string]*glanceclient.Image{}
	if err := worker.EachImage(t.Context(), c, glanceclient.ListOptions{Owner: owner}, func(img *glanceclient.Image) error {
		out[img.ID] = img
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// runCLI runs the command line in-process and returns its status and output.
func runCLI(ctx context.Context, stdout io.Writer, args ...string) (int, string) {
	var stderr bytes.Buffer
	status := run(ctx, append([]string{"glance-sidecar"}, args...), stdout, &stderr)
	return status, stderr.String()
}

// parseRun splits reprocess's JSON output into the image lines and the summary.
func parseRun(t *testing.T, out string) (map[string]imageResult, runSummary) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	results := map[string]imageResult{}
	for _, l := range lines[:len(lines)-1] {
		checkFields(t, l, "bytes_read", "duration_ms", "format", "image_id", "mode", "outcome", "problems", "reason")
		var r imageResult
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		if _, dup := results[r.ImageID]; dup {
			t.Fatalf("image %s reported twice", r.ImageID)
		}
		results[r.ImageID] = r
	}
	var s struct {
		Summary *runSummary `json:"summary"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &s); err != nil || s.Summary == nil {
		t.Fatalf("last line is not a summary (%v): %s", err, lines[len(lines)-1])
	}
	return results, *s.Summary
}

// ownProperties are the image's properties under prefix.
func ownProperties(img *glanceclient.Image, prefix string) map[string]string {
	out := map[string]string{}
	for k, v := range img.Properties {
		if strings.HasPrefix(k, prefix) {
			out[k] = v
		}
	}
	return out
}

// unchanged fails the test if any of the images in before was written to by the sidecar under
// test: its properties under prefix changed, or the image was updated (a PATCH bumps updated_at
// even when it writes the values already there) with nothing else to show for it. An update
// that changed properties outside prefix, os_hidden or the status is another sidecar's: the
// shared cloud may run one, which inspects and converts every image.
func unchanged(t *testing.T, prefix string, before, after map[string]*glanceclient.Image) {
	t.Helper()
	foreign := 0
	defer func() {
		if foreign > 0 {
			t.Logf("%d images updated by another sidecar", foreign)
		}
	}()
	for id, b := range before {
		a := after[id]
		switch {
		case a == nil:
			t.Fatalf("image %s is gone", id)
		case !maps.Equal(ownProperties(a, prefix), ownProperties(b, prefix)):
			t.Fatalf("image %s changed:\nbefore %v\nafter  %v", id, ownProperties(b, prefix), ownProperties(a, prefix))
		case a.UpdatedAt.Equal(b.UpdatedAt):
		case maps.Equal(a.Properties, b.Properties) && a.Hidden == b.Hidden && a.Status == b.Status:
			t.Fatalf("image %s updated at %v (before %v) with no change to show: a PATCH of ours", id, a.UpdatedAt, b.UpdatedAt)
		default:
			foreign++
		}
	}
}

// only keeps the images of m whose ids are in ids.
func only[V any](m map[string]V, ids map[string]testcatalog.Kind) map[string]V {
	out := map[string]V{}
	for id, v := range m {
		if _, ok := ids[id]; ok {
			out[id] = v
		}
	}
	return out
}

// TestIntegrationReprocess seeds a catalog of 200 images before any sidecar ran, then reprocesses
// and reports on it.
//
// The cloud is shared: a sidecar that another test runs at the same time may inspect the seeded
// images on their upload events, and even convert them into new images of the same owner. So
// the properties here have a prefix of their own, and images of the owner that this test did
// not seed ("foreign") are counted as what they are, never expected.
func TestIntegrationReprocess(t *testing.T) {
	env := testcloud.Env(t, testcloud.Dir())
	c := testClient(t, env, "sidecar")
	owner, images := seedCatalog(t, env, 200)
	kinds := map[string]testcatalog.Kind{}
	for _, img := range images {
		kinds[img.ID] = img.Kind
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	prefix := fmt.Sprintf("gsct%x_", b)
	cloud := []string{"--glance-cloud", "sidecar", "--glance-clouds-file", env["GSC_CLOUDS_YAML"], "--log-level", "warn", "--property-prefix", prefix}
	all := append([]string{"reprocess", "--all", "--owner", owner, "--output", "json"}, cloud...)
	// reprocess runs reprocess --all and checks what holds whatever the images: every seeded
	// image is reported once, the summary counts the lines, the exit status follows the
	// outcomes. It returns the results of the seeded images.
	reprocess := func(t *testing.T, more ...string) (int, map[string]imageResult) {
		t.Helper()
		var stdout bytes.Buffer
		status, stderr := runCLI(t.Context(), &stdout, slices.Concat(all, []string{"--concurrency", "8"}, more)...)
		results, sum := parseRun(t, stdout.String())
		counts, bytesRead, wantStatus := map[string]int{}, int64(0), exitOK
		for id, r := range results {
			counts[r.Outcome]++
			bytesRead += r.BytesRead
			if r.Outcome == "unsafe" || r.Outcome == "failed" {
				wantStatus = exitFinding
			}
			if _, ok := kinds[id]; !ok {
				t.Logf("foreign image %s of the owner: %+v", id, r)
			}
		}
		if status != wantStatus || sum.Total != len(results) || !maps.Equal(sum.Outcomes, counts) || sum.BytesRead != bytesRead || sum.Interrupted {
			t.Fatalf("reprocess %v: status %d (want %d), summary %+v, %d results %v\n%s", more, status, wantStatus, sum, len(results), counts, stderr)
		}
		mine := only(results, kinds)
		if len(mine) != len(images) {
			t.Fatalf("%d of the %d seeded images reported", len(mine), len(images))
		}
		return status, mine
	}
	seeded := only(catalog(t, c, owner), kinds)
	if len(seeded) != len(images) {
		t.Fatalf("listed %d images of %d seeded", len(seeded), len(images))
	}
	want := map[testcatalog.Kind]struct{ outcome, problems string }{
		testcatalog.Clean: {"inspected", ""}, testcatalog.Backed: {"unsafe", "backing_file"}, testcatalog.Mismatched: {"unsafe", "format_mismatch"},
	}

	t.Run("dry run changes nothing", func(t *testing.T) {
		_, results := reprocess(t, "--dry-run")
		for _, r := range results {
			if r.Outcome != string(worker.OutcomeWouldInspect) || r.BytesRead != 0 {
				t.Fatalf("dry run: %+v", r)
			}
		}
		after := only(catalog(t, c, owner), kinds)
		unchanged(t, prefix, seeded, after)
		for id, img := range after {
			if p := ownProperties(img, prefix); len(p) != 0 {
				t.Fatalf("dry run left properties on %s: %v", id, p)
			}
		}
	})

	t.Run("marks every image", func(t *testing.T) {
		status, results := reprocess(t)
		if status != exitFinding {
			t.Fatalf("status %d with unsafe images", status)
		}
		var bytesRead int64
		for id, r := range results {
			w := want[kinds[id]]
			var codes []string
			for _, p := range r.Problems {
				codes = append(codes, string(p.Code))
			}
			if r.Outcome != w.outcome || strings.Join(codes, ",") != w.problems || r.Format == nil || *r.Format != "qcow2" || r.Mode != "range" || r.BytesRead <= 0 {
				t.Errorf("%s image %s: %+v", kinds[id], id, r)
			}
			bytesRead += r.BytesRead
		}
		t.Logf("read %d bytes for %d images: %d per image", bytesRead, len(images), bytesRead/int64(len(images)))
		for id, img := range only(catalog(t, c, owner), kinds) {
			w := want[kinds[id]]
			p := ownProperties(img, prefix)
			if p[prefix+"status"] != w.outcome || p[prefix+"problems"] != w.problems || p[prefix+"format"] != "qcow2" ||
				p[prefix+"virtual_size"] != "1048576" || p[prefix+"checked_hash"] != img.HashAlgo+":"+img.HashValue {
				t.Errorf("%s image %s: %v", kinds[id], id, p)
			}
		}
	})

	t.Run("a second run does nothing", func(t *testing.T) {
		before := only(catalog(t, c, owner), kinds)
		for _, dry := range []bool{false, true} {
			var more []string
			if dry {
				more = []string{"--dry-run"}
			}
			_, results := reprocess(t, more...)
			for _, r := range results {
				if r.Outcome != "skipped" || r.Reason != "outcome is current" || r.BytesRead != 0 {
					t.Fatalf("dry run %v: %+v", dry, r)
				}
			}
		}
		unchanged(t, prefix, before, only(catalog(t, c, owner), kinds))
	})

	t.Run("report", func(t *testing.T) {
		var stdout bytes.Buffer
		status, stderr := runCLI(t.Context(), &stdout, append([]string{"report", "--owner", owner, "--output", "json"}, cloud...)...)
		if status != exitFinding {
			t.Fatalf("report: status %d\n%s", status, stderr)
		}
		var got worker.Census
		if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
			t.Fatalf("%v: %s", err, stdout.String())
		}
		// What the seeded images must add up to, plus what the foreign ones say.
		wantCensus := &worker.Census{Images: 200, Outcomes: map[worker.Outcome]int{"inspected": 100, "unsafe": 100},
			Formats: map[string]int{"qcow2": 200}, Problems: map[string]int{"backing_file": 50, "format_mismatch": 50}}
		for id, img := range catalog(t, c, owner) {
			if _, ok := kinds[id]; !ok {
				f := worker.ReadFindings(img, worker.PropertyOptions{Prefix: prefix})
				wantCensus.Images++
				wantCensus.Outcomes[f.Outcome]++
				wantCensus.Formats[f.Format]++
				for _, p := range f.Problems {
					wantCensus.Problems[p]++
				}
			}
		}
		if got.Images != wantCensus.Images || !maps.Equal(got.Outcomes, wantCensus.Outcomes) || !maps.Equal(got.Formats, wantCensus.Formats) ||
			!maps.Equal(got.Problems, wantCensus.Problems) || len(only(mapOf(got.Unsafe), kinds)) != 100 {
			t.Fatalf("report %+v\nwant %+v", got, wantCensus)
		}
		for _, f := range got.Unsafe {
			if _, ok := kinds[f.ImageID]; !ok {
				continue
			}
			if f.Owner != owner || !slices.Equal(f.Problems, []string{want[kinds[f.ImageID]].problems}) {
				t.Errorf("unsafe image %+v (%s)", f, kinds[f.ImageID])
			}
		}
		stdout.Reset()
		if status, stderr := runCLI(t.Context(), &stdout, append([]string{"report", "--owner", owner}, cloud...)...); status != exitFinding ||
			!strings.Contains(stdout.String(), fmt.Sprintf("IMAGES  %d\n", wantCensus.Images)) || !strings.Contains(stdout.String(), "UNSAFE IMAGE") {
			t.Fatalf("report table: status %d\n%s\n%s", status, stdout.String(), stderr)
		}
	})

	t.Run("named images", func(t *testing.T) {
		var ids []string
		for _, img := range images[:4] {
			ids = append(ids, img.ID)
		}
		var stdout bytes.Buffer
		args := slices.Concat([]string{"reprocess", "--force"}, cloud, ids, ids[:1])
		status, stderr := runCLI(t.Context(), &stdout, args...)
		if status != exitFinding {
			t.Fatalf("status %d\n%s", status, stderr)
		}
		lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
		// The header, the four images (the repeated id once), a blank line, the summary's
		// header, inspected, unsafe, total and the bytes read.
		if len(lines) != 1+4+1+1+2+1+1 || lines[0] != imageLineHeader || !strings.Contains(stdout.String(), "total               4\n") {
			t.Fatalf("table output:\n%s", stdout.String())
		}
		for i, img := range images[:4] {
			if !strings.Contains(stdout.String(), img.ID+"  "+want[img.Kind].outcome+" ") {
				t.Errorf("image %d (%s) not %s:\n%s", i, img.Kind, want[img.Kind].outcome, stdout.String())
			}
		}
	})

	t.Run("interrupted", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		out := &cancelAfter{lines: 3, cancel: cancel}
		status, stderr := runCLI(ctx, out, slices.Concat(all, []string{"--force", "--concurrency", "1"})...)
		if status != exitFinding || !strings.Contains(stderr, "interrupted: ") {
			t.Fatalf("status %d\n%s", status, stderr)
		}
		results, sum := parseRun(t, out.String())
		notStarted := sum.Outcomes[outcomeNotStarted]
		if !sum.Interrupted || notStarted == 0 || len(results)+notStarted != sum.Total || sum.Total < len(images) || sum.Outcomes[outcomeCancelled] != 0 {
			t.Fatalf("%d results, summary %+v", len(results), sum)
		}
		for _, r := range results {
			if r.Outcome != "inspected" && r.Outcome != "unsafe" {
				t.Fatalf("a job in flight did not finish: %+v", r)
			}
		}
	})
}

// mapOf indexes findings by image id.
func mapOf(fs []worker.Findings) map[string]worker.Findings {
	m := map[string]worker.Findings{}
	for _, f := range fs {
		m[f.ImageID] = f
	}
	return m
}

// cancelAfter is an output that cancels the run after some lines.
type cancelAfter struct {
	mu     sync.Mutex
	b      bytes.Buffer
	lines  int
	cancel context.CancelFunc
}

func (w *cancelAfter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.lines -= bytes.Count(p, []byte("\n")); w.lines <= 0 {
		w.cancel()
	}
	return w.b.Write(p)
}

func (w *cancelAfter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// TestIntegrationReconcile checks that serve's reconcile pass finds images whose notifications
// never reached it: one uploaded before serve starts (the first pass finds it), one after (a
// later pass does, within an interval). Serve runs with no RabbitMQ source at all, only the HTTP
// server (health and metrics): a queue declared after the uploads would miss their upload
// events, but not the image.update events of another sidecar that a test runs at the same time
// in the shared cloud, inspecting the same images; with no source, only reconcile can find them.
// As in TestIntegrationReprocess, the properties have a prefix of their own.
func TestIntegrationReconcile(t *testing.T) {
	env := testcloud.Env(t, testcloud.Dir())
	c := testClient(t, env, "sidecar")
	admin := testClient(t, env, "admin")
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	prefix := fmt.Sprintf("gsct%x_", b)
	owner, images := seedCatalog(t, env, 1)

	const interval = 2 * time.Second
	addr := freeAddr(t)
	startServe(t, addr, "--glance-cloud", "sidecar", "--glance-clouds-file", env["GSC_CLOUDS_YAML"], "--log-level", "warn",
		"--webhook-listen", addr, "--reconcile-interval", interval.String(), "--inspect-owners", owner, "--property-prefix", prefix)
	start := time.Now()
	waitProperty(t, c, images[0].ID, prefix+"status", "inspected")
	if took := time.Since(start); took > interval {
		t.Errorf("the first pass found the image uploaded before serve started after %v, interval %v", took, interval)
	}

	t.Logf("first pass: found in %v", time.Since(start))
	seedStart := time.Now()
	later, err := testcatalog.Seed(t.Context(), admin, t.TempDir(), owner, 3, 3) // deleted with the owner's images
	t.Logf("seeded 3 more in %v", time.Since(seedStart))
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	want := map[testcatalog.Kind]string{testcatalog.Clean: "inspected", testcatalog.Backed: "unsafe", testcatalog.Mismatched: "unsafe"}
	for _, img := range later {
		waitProperty(t, c, img.ID, prefix+"status", want[img.Kind])
	}
	t.Logf("later passes: found in %v", time.Since(start))
	if took := time.Since(start); took > interval+5*time.Second {
		t.Errorf("a later pass found the images uploaded while serve ran after %v, interval %v", took, interval)
	}

	// Other tests' sidecars may convert these images into new ones of the same owner, which
	// the passes find too: the counts are lower bounds. A pass and its jobs count themselves a
	// moment after the properties show (a job reads its PATCH back, a pass waits for its jobs),
	// so the metrics are read until they are all there, for a few seconds.
	mins := []struct {
		sample string
		min    float64
	}{
		{`glance_sidecar_reconcile_passes_total{result="ok"}`, 2},
		{`glance_sidecar_reconcile_images_listed_total`, 4},
		{`glance_sidecar_reconcile_images_queued_total`, 4},
		{`glance_sidecar_reconcile_last_pass_images{kind="listed"}`, 4},
		{`glance_sidecar_reconcile_last_pass_timestamp_seconds`, float64(start.Unix())},
		{`glance_sidecar_reconcile_last_pass_duration_seconds`, 1e-6},
		{`glance_sidecar_jobs_total{outcome="inspected"}`, 3},
		{`glance_sidecar_jobs_total{outcome="unsafe"}`, 1},
	}
	var metrics string
	var short []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		metrics, short = string(body), nil
		for _, m := range mins {
			if v := metricValue(metrics, m.sample); v < m.min {
				short = append(short, fmt.Sprintf("%s = %v, want at least %v", m.sample, v, m.min))
			}
		}
		if len(short) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, s := range short {
		t.Error(s)
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", metrics)
	}
}

// metricValue is the value of a sample (name and labels) in a /metrics text, or -1.
func metricValue(metrics, sample string) float64 {
	for line := range strings.SplitSeq(metrics, "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				return f
			}
		}
	}
	return -1
}
