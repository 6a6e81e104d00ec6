package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/glance-sidecar/glance-sidecar/inspect"
	"github.com/glance-sidecar/glance-sidecar/worker"
)

// TestReprocessUsage checks the arguments before anything reaches Glance: no cloud is
// configured here, so a check that let one through would fail with "glance:" instead.
func TestReprocessUsage(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		errOut string
	}{
		{"nothing to do", []string{"reprocess"}, "needs IMAGE_IDs or --all"},
		{"ids and all", []string{"reprocess", "--all", "abc"}, "--all takes no IMAGE_IDs"},
		{"filter without all", []string{"reprocess", "--owner", "p", "abc"}, "--owner filters --all"},
		{"status without all", []string{"reprocess", "--status", "queued", "abc"}, "--status filters --all"},
		{"bad since", []string{"reprocess", "--all", "--since", "yesterday"}, `--since "yesterday"`},
		{"negative since", []string{"reprocess", "--all", "--since", "-24h"}, `--since "-24h"`},
		{"bad output", []string{"reprocess", "--output", "yaml", "abc"}, "--output must be table or json"},
		{"bad concurrency", []string{"reprocess", "--concurrency", "-1", "abc"}, "--concurrency -1"},
		{"bad config", []string{"reprocess", "--max-workers", "0", "abc"}, "max_workers 0"},
		{"report arguments", []string{"report", "abc"}, "report takes no arguments"},
		{"report output", []string{"report", "-o", "csv"}, "--output must be table or json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if s := run(context.Background(), append([]string{"glance-sidecar"}, tt.args...), &stdout, &stderr); s != exitUsage {
				t.Errorf("status %d, want %d; stderr: %s", s, exitUsage, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.errOut) {
				t.Errorf("stderr lacks %q: %s", tt.errOut, stderr.String())
			}
		})
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Time
		ok   bool
	}{
		{"24h", now.Add(-24 * time.Hour), true},
		{"90m", now.Add(-90 * time.Minute), true},
		{"2026-11-01T00:00:00Z", time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), true},
		{"2026-11-01T02:00:00+02:00", time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), true},
		{"0s", time.Time{}, false},
		{"2026-11-01", time.Time{}, false},
		{"", time.Time{}, false},
	}
	for _, tt := range tests {
		got, err := parseSince(tt.in, now)
		if (err == nil) != tt.ok || !got.Equal(tt.want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v (ok %v)", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestRenderBar(t *testing.T) {
	tests := []struct {
		done, total int
		elapsed     time.Duration
		want        string
	}{
		{0, 200, 0, "[------------------------] 0/200   0%  - images/s  ETA -"},
		{50, 200, 5 * time.Second, "[######------------------] 50/200  25%  10.0 images/s  ETA 15s"},
		{199, 200, 20 * time.Second, "[#######################-] 199/200  99%  9.9 images/s  ETA 0s"},
		{200, 200, 16 * time.Second, "[########################] 200/200 100%  12.5 images/s  ETA 0s"},
		{3, 4000, 2 * time.Second, "[------------------------] 3/4000   0%  1.5 images/s  ETA 44m25s"},
		{0, 0, time.Second, "[########################] 0/0 100%  - images/s  ETA -"},
	}
	for _, tt := range tests {
		if got := renderBar(tt.done, tt.total, tt.elapsed); got != tt.want {
			t.Errorf("renderBar(%d, %d, %v)\n got %q\nwant %q", tt.done, tt.total, tt.elapsed, got, tt.want)
		}
	}
}

// TestProgress keeps the bar below the lines printed on the same terminal, and draws nothing
// when stderr is not one.
func TestProgress(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	var term bytes.Buffer
	p := newProgress(&term, true, clock)
	p.listing(1)
	p.listing(2) // within minRedraw: not drawn again
	now = now.Add(time.Second)
	p.listing(3)
	p.begin(2)
	now = now.Add(time.Second)
	if err := p.step(&term, "first"); err != nil {
		t.Fatal(err)
	}
	p.Write([]byte(`{"level":"WARN"}` + "\n"))
	now = now.Add(time.Second)
	p.step(&term, "second")
	p.end()
	p.tick() // after end: nothing
	const clear = "\r\x1b[K"
	want := "\rlisting images: 1\x1b[K" + "\rlisting images: 3\x1b[K" +
		"\r[------------------------] 0/2   0%  - images/s  ETA -\x1b[K" +
		clear + "first\n" + "\r[############------------] 1/2  50%  1.0 images/s  ETA 1s\x1b[K" +
		clear + `{"level":"WARN"}` + "\n" + "\r[############------------] 1/2  50%  1.0 images/s  ETA 1s\x1b[K" +
		clear + "second\n" + "\r[########################] 2/2 100%  1.0 images/s  ETA 0s\x1b[K" +
		clear
	if got := term.String(); got != want {
		t.Errorf("terminal\n got %q\nwant %q", got, want)
	}

	var out, errOut bytes.Buffer
	p = newProgress(&errOut, false, clock)
	p.begin(1)
	p.Write([]byte("log\n"))
	p.step(&out, "line")
	p.end()
	if out.String() != "line\n" || errOut.String() != "log\n" {
		t.Errorf("without a terminal: stdout %q, stderr %q", out.String(), errOut.String())
	}
}

func TestImageResult(t *testing.T) {
	qcow2 := inspect.QCOW2
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name    string
		ctx     context.Context
		res     worker.Result
		err     error
		outcome string
		line    string
	}{
		{"unsafe", context.Background(), worker.Result{ImageID: "i1", Outcome: worker.OutcomeUnsafe, Mode: "range", BytesRead: 131072,
			Report: &inspect.Report{Format: qcow2, Problems: []inspect.Problem{{Code: "backing_file"}, {Code: "format_mismatch"}}}}, nil,
			"unsafe", "i1                                    unsafe         qcow2   backing_file, format_mismatch"},
		{"inspected", context.Background(), worker.Result{ImageID: "i2", Outcome: worker.OutcomeInspected, Mode: "range", BytesRead: 131072,
			Report: &inspect.Report{Format: qcow2}}, nil,
			"inspected", "i2                                    inspected      qcow2   read 128.0 KiB by range"},
		{"skipped", context.Background(), worker.Result{ImageID: "i3", Outcome: worker.OutcomeSkipped, Reason: "outcome is current"}, nil,
			"skipped", "i3                                    skipped        -       outcome is current"},
		{"failed", context.Background(), worker.Result{ImageID: "i4"}, errors.New("getting image i4: 503"),
			"failed", "i4                                    failed         -       getting image i4: 503"},
		{"cancelled", cancelled, worker.Result{ImageID: "i5"}, context.Canceled,
			"cancelled", "i5                                    cancelled      -       context canceled"},
		{"failed, not by the interrupt", cancelled, worker.Result{ImageID: "i6"}, errors.New("boom"),
			"failed", "i6                                    failed         -       boom"},
	}
	for _, tt := range tests {
		r := newImageResult(tt.ctx, tt.res, tt.err, 1500*time.Microsecond)
		if r.Outcome != tt.outcome || r.DurationMS != 1 || r.Problems == nil {
			t.Errorf("%s: %+v", tt.name, r)
		}
		if got := imageLine(r); got != tt.line {
			t.Errorf("%s:\n got %q\nwant %q", tt.name, got, tt.line)
		}
	}
	b, err := marshalLine(newImageResult(context.Background(), tests[2].res, nil, time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	checkFields(t, string(b), "bytes_read", "duration_ms", "format", "image_id", "mode", "outcome", "problems", "reason")
	if !strings.Contains(string(b), `"format":null`) || !strings.Contains(string(b), `"problems":[]`) {
		t.Errorf("skipped image: %s", b)
	}
}

func TestRunSummary(t *testing.T) {
	tests := []struct {
		name     string
		outcomes map[string]int
		status   int
		table    string
	}{
		{"all good", map[string]int{"inspected": 3, "skipped": 1}, exitOK,
			"\nOUTCOME        IMAGES\ninspected           3\nskipped             1\ntotal               4\n128.0 KiB read in 2s, 2.0 images/s\n"},
		{"dry run", map[string]int{"would_inspect": 2, "skipped": 2}, exitOK,
			"\nOUTCOME        IMAGES\nwould_inspect       2\nskipped             2\ntotal               4\n128.0 KiB read in 2s, 2.0 images/s\n"},
		{"unsafe", map[string]int{"inspected": 3, "unsafe": 1}, exitFinding,
			"\nOUTCOME        IMAGES\ninspected           3\nunsafe              1\ntotal               4\n128.0 KiB read in 2s, 2.0 images/s\n"},
		{"interrupted", map[string]int{"inspected": 1, "cancelled": 1, "not_started": 2}, exitFinding,
			"\nOUTCOME        IMAGES\ninspected           1\ncancelled           1\nnot_started         2\ntotal               4\n128.0 KiB read in 2s, 1.0 images/s\n"},
		{"failed", map[string]int{"failed": 4}, exitFinding,
			"\nOUTCOME        IMAGES\nfailed              4\ntotal               4\n128.0 KiB read in 2s, 2.0 images/s\n"},
	}
	for _, tt := range tests {
		s := newRunSummary(4)
		s.BytesRead, s.DurationMS = 131072, 2000
		for o, n := range tt.outcomes {
			s.Outcomes[o] = n
		}
		if got := s.exitStatus(); got != tt.status {
			t.Errorf("%s: exit status %d, want %d", tt.name, got, tt.status)
		}
		var b bytes.Buffer
		if err := writeRunSummary(&b, s); err != nil {
			t.Fatal(err)
		}
		if b.String() != tt.table {
			t.Errorf("%s: table\n%s\nwant\n%s", tt.name, b.String(), tt.table)
		}
	}
}

func TestWriteCensus(t *testing.T) {
	c := worker.NewCensus()
	for _, f := range []worker.Findings{
		{ImageID: "a", Outcome: worker.OutcomeInspected, Format: "qcow2", Problems: []string{}},
		{ImageID: "b", Owner: "p1", Name: "web", DiskFormat: "raw", Outcome: worker.OutcomeUnsafe, Format: "qcow2", Problems: []string{"backing_file", "format_mismatch"}},
		{ImageID: "c", Owner: "p2", DiskFormat: "qcow2", Outcome: worker.OutcomeUnsafe, Format: "qcow2", Problems: []string{"backing_file"}},
		{ImageID: "d", Outcome: worker.NotChecked, Format: worker.NotChecked, Problems: []string{}},
	} {
		c.Add(f)
	}
	var b bytes.Buffer
	if err := writeCensus(&b, c); err != nil {
		t.Fatal(err)
	}
	want := `IMAGES  4

OUTCOME    IMAGES
unsafe     2
inspected  1
unchecked  1

FORMAT     IMAGES
qcow2      3
unchecked  1

PROBLEM          IMAGES
backing_file     2
format_mismatch  1

UNSAFE IMAGE  OWNER  DECLARED  FORMAT  NAME  PROBLEMS
b             p1     raw       qcow2   web   backing_file,format_mismatch
c             p2     qcow2     qcow2         backing_file
`
	if b.String() != want {
		t.Errorf("report\n%s\nwant\n%s", b.String(), want)
	}
}

// checkFields checks that a JSON line has exactly the fields named.
func checkFields(t *testing.T, line string, want ...string) {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatalf("not JSON: %v: %s", err, line)
	}
	got := slices.Sorted(maps.Keys(m))
	if !slices.Equal(got, want) {
		t.Errorf("fields %v, want %v", got, want)
	}
}
