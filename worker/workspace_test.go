package worker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func openWorkspace(t *testing.T, dir string, maxBytes int64, maxJobs int) *Workspace {
	t.Helper()
	w, err := OpenWorkspace(WorkspaceOptions{Dir: dir, MaxBytes: maxBytes, MaxJobs: maxJobs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

func TestWorkspaceOptions(t *testing.T) {
	for _, tc := range []struct {
		opts WorkspaceOptions
		errs []string
	}{
		{WorkspaceOptions{Dir: "/x", MaxBytes: 1}, nil},
		{WorkspaceOptions{}, []string{"dir is empty", "max_bytes 0"}},
		{WorkspaceOptions{Dir: "/x", MaxBytes: -1, MaxJobs: -2}, []string{"max_bytes -1", "max_jobs -2"}},
	} {
		err := tc.opts.Validate()
		if len(tc.errs) == 0 {
			if err != nil {
				t.Errorf("%+v: %v", tc.opts, err)
			}
			if tc.opts.MaxJobs != 2 {
				t.Errorf("default MaxJobs = %d", tc.opts.MaxJobs)
			}
			continue
		}
		for _, want := range tc.errs {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%+v: error %v, want it to say %q", tc.opts, err, want)
			}
		}
	}
}

func TestWorkspaceLockAndSweep(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "job-abc-123")
	if err := os.MkdirAll(filepath.Join(stale, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stale, "sub", "image.part"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "notes.txt") // not ours: left alone
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A crashed process's socket directory (what SocketDir makes for this workspace).
	probe := openWorkspace(t, dir, 1, 1)
	lease, err := probe.Reserve(t.Context(), "x", 0)
	if err != nil {
		t.Fatal(err)
	}
	staleSockets, err := lease.SocketDir()
	if err != nil {
		t.Fatal(err)
	}
	probe.Close() // the lease is never released: as if the process died
	w := openWorkspace(t, dir, 1<<20, 1)
	if _, err := os.Stat(staleSockets); !os.IsNotExist(err) {
		t.Errorf("stale socket directory survived the sweep: %v", err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale job directory survived the sweep: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("the sweep removed a file that is not a job's: %v", err)
	}
	if _, err := OpenWorkspace(WorkspaceOptions{Dir: dir, MaxBytes: 1}); !errors.Is(err, ErrWorkspaceLocked) {
		t.Errorf("second open: %v, want ErrWorkspaceLocked", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	w2, err := OpenWorkspace(WorkspaceOptions{Dir: dir, MaxBytes: 1})
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	w2.Close()
}

func TestWorkspaceReserve(t *testing.T) {
	dir := t.TempDir()
	w := openWorkspace(t, dir, 100, 2)
	reg := prometheus.NewRegistry()
	if err := w.RegisterMetrics(reg); err != nil {
		t.Fatal(err)
	}

	if _, err := w.Reserve(t.Context(), "big", 101); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("reserving more than the workspace: %v, want ErrTooLarge", err)
	}
	a, err := w.Reserve(t.Context(), "../../etc/passwd", 60)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(a.Dir()) != dir || !strings.HasPrefix(filepath.Base(a.Dir()), "job-______etc_passwd-") {
		t.Errorf("lease dir %q is not a job directory of %q", a.Dir(), dir)
	}
	if got := a.Path("../x"); got != filepath.Join(a.Dir(), "x") {
		t.Errorf("Path escapes the lease: %q", got)
	}
	if err := os.WriteFile(a.Path("image"), []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := gauge(t, reg, "glance_sidecar_workspace_bytes_in_use"); got != 60 {
		t.Errorf("bytes in use = %v, want 60", got)
	}

	// 60 + 50 > 100: the second reservation waits for the first to be released.
	got := make(chan *Lease)
	go func() {
		l, err := w.Reserve(context.Background(), "second", 50)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	select {
	case <-got:
		t.Fatal("a reservation beyond max_bytes did not wait")
	case <-time.After(50 * time.Millisecond):
	}
	// A waiter whose context ends gives up with the context's error.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Millisecond)
	defer cancel()
	if _, err := w.Reserve(ctx, "third", 50); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("cancelled wait: %v", err)
	}
	sockets, err := a.SocketDir()
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := a.SocketDir(); again != sockets || len(sockets) > 60 {
		t.Errorf("socket dirs %q then %q: want one short directory", sockets, again)
	}
	if err := a.Release(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sockets); !os.IsNotExist(err) {
		t.Errorf("released lease's socket directory still exists: %v", err)
	}
	if err := a.Release(); err != nil { // twice is harmless and gives nothing back twice
		t.Fatal(err)
	}
	if _, err := os.Stat(a.Dir()); !os.IsNotExist(err) {
		t.Errorf("released lease directory still exists: %v", err)
	}
	b := <-got
	if w.InUse() != 50 {
		t.Errorf("in use = %d, want 50", w.InUse())
	}
	b.Release()
	if w.InUse() != 0 {
		t.Errorf("in use after all releases = %d", w.InUse())
	}
	if got := gauge(t, reg, "glance_sidecar_workspace_bytes_limit"); got != 100 {
		t.Errorf("limit = %v", got)
	}
}

func TestWorkspaceMaxJobs(t *testing.T) {
	w := openWorkspace(t, t.TempDir(), 100, 1)
	a, err := w.Reserve(t.Context(), "a", 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if _, err := w.Reserve(ctx, "b", 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a second lease with max_jobs 1: %v, want it to wait", err)
	}
	a.Release()
	b, err := w.Reserve(t.Context(), "b", 0)
	if err != nil {
		t.Fatal(err)
	}
	b.Release()
}

// gauge reads a registered gauge's value.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}
