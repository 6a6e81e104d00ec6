package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
)

// WorkspaceOptions configure a Workspace.
type WorkspaceOptions struct {
	// Dir is the workspace directory; it is created (0700) if missing.
	Dir string
	// MaxBytes bounds the disk the jobs may reserve at once.
	MaxBytes int64
	// MaxJobs bounds the jobs holding a lease at once (default 2).
	MaxJobs int
}

// Validate fills defaults and checks the options.
func (o *WorkspaceOptions) Validate() error {
	var errs []error
	if o.Dir == "" {
		errs = append(errs, errors.New("workspace dir is empty"))
	}
	if o.MaxBytes <= 0 {
		errs = append(errs, fmt.Errorf("workspace max_bytes %d is not positive", o.MaxBytes))
	}
	if o.MaxJobs == 0 {
		o.MaxJobs = 2
	}
	if o.MaxJobs < 0 {
		errs = append(errs, fmt.Errorf("workspace max_jobs %d is negative", o.MaxJobs))
	}
	return errors.Join(errs...)
}

// Workspace is the directory where jobs that need disk (a conversion) keep their files. A job
// reserves what it will write before it writes it, through two weighted semaphores: bytes of
// disk (MaxBytes) and leases held at once (MaxJobs). Jobs that only read ranges or stream need
// no lease.
//
// A lock file stops two processes from sharing a directory: each removes the other's files at
// start. Every lease lives in its own job-* subdirectory, removed when the lease is released,
// and any job-* left by a process that died is removed when the workspace is opened.
type Workspace struct {
	opts  WorkspaceOptions
	tag   string // names this workspace's socket directories
	bytes *semaphore.Weighted
	jobs  *semaphore.Weighted
	lock  *os.File
	inUse atomic.Int64
}

// Errors of the workspace.
var (
	// ErrWorkspaceLocked: another process holds the workspace.
	ErrWorkspaceLocked = errors.New("workspace is in use by another process")
	// ErrTooLarge: a job needs more than the whole workspace; it can never run.
	ErrTooLarge = errors.New("job needs more disk than the workspace has")
)

const (
	lockName  = ".lock"
	jobPrefix = "job-"
)

// OpenWorkspace creates or opens the directory, takes its lock and removes the job directories
// a previous process left behind.
func OpenWorkspace(opts WorkspaceOptions) (*Workspace, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the workspace: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(opts.Dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening the workspace lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", opts.Dir, ErrWorkspaceLocked)
		}
		return nil, fmt.Errorf("locking the workspace %s: %w", opts.Dir, err)
	}
	abs, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(abs))
	w := &Workspace{opts: opts, tag: hex.EncodeToString(sum[:4]), bytes: semaphore.NewWeighted(opts.MaxBytes), jobs: semaphore.NewWeighted(int64(opts.MaxJobs)), lock: f}
	if err := w.sweep(); err != nil {
		w.Close()
		return nil, err
	}
	return w, nil
}

// sweep removes every job directory: with the lock held, none of them belongs to a live job.
func (w *Workspace) sweep() error {
	entries, err := os.ReadDir(w.opts.Dir)
	if err != nil {
		return fmt.Errorf("reading the workspace: %w", err)
	}
	var stale []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), jobPrefix) {
			stale = append(stale, filepath.Join(w.opts.Dir, e.Name()))
		}
	}
	sockets, err := filepath.Glob(filepath.Join(os.TempDir(), w.socketPrefix()+"*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range append(stale, sockets...) {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, fmt.Errorf("removing stale %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// Dir is the workspace directory.
func (w *Workspace) Dir() string { return w.opts.Dir }

// MaxBytes is the disk the workspace may hand out.
func (w *Workspace) MaxBytes() int64 { return w.opts.MaxBytes }

// InUse is the disk reserved by the leases held now.
func (w *Workspace) InUse() int64 { return w.inUse.Load() }

// Close releases the lock. Leases still held keep their directories until released.
func (w *Workspace) Close() error {
	return w.lock.Close()
}

// socketPrefix starts the names of this workspace's socket directories in os.TempDir().
func (w *Workspace) socketPrefix() string { return "gsc-sock-" + w.tag + "-" }

// Lease is a reservation of disk in the workspace and the directory to use it in.
type Lease struct {
	w        *Workspace
	dir      string
	sockets  string // the lease's socket directory, once made
	n        int64
	released atomic.Bool
}

// Reserve waits until n bytes and one job slot are free, and returns a lease on a new,
// empty directory. A job needing more than MaxBytes fails at once with ErrTooLarge instead of
// waiting forever. name (the image id, say) is part of the directory name, for people.
func (w *Workspace) Reserve(ctx context.Context, name string, n int64) (*Lease, error) {
	if n < 0 {
		return nil, fmt.Errorf("reserving %d bytes: negative size", n)
	}
	if n > w.opts.MaxBytes {
		return nil, fmt.Errorf("reserving %d bytes in a workspace of %d: %w", n, w.opts.MaxBytes, ErrTooLarge)
	}
	if err := w.jobs.Acquire(ctx, 1); err != nil {
		return nil, fmt.Errorf("waiting for a workspace slot: %w", err)
	}
	if err := w.bytes.Acquire(ctx, n); err != nil {
		w.jobs.Release(1)
		return nil, fmt.Errorf("waiting for %d bytes of workspace: %w", n, err)
	}
	dir, err := os.MkdirTemp(w.opts.Dir, jobPrefix+safeName(name)+"-")
	if err != nil {
		w.bytes.Release(n)
		w.jobs.Release(1)
		return nil, fmt.Errorf("creating a job directory: %w", err)
	}
	w.inUse.Add(n)
	return &Lease{w: w, dir: dir, n: n}, nil
}

// safeName keeps the characters of an image id that are safe in a file name.
func safeName(s string) string {
	b := []byte(s)
	if len(b) > 64 {
		b = b[:64]
	}
	for i, c := range b {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			b[i] = '_'
		}
	}
	return string(b)
}

// Dir is the lease's own directory.
func (l *Lease) Dir() string { return l.dir }

// Path is a file name inside the lease's directory.
func (l *Lease) Path(name string) string { return filepath.Join(l.dir, filepath.Base(name)) }

// SocketDir returns a directory for the lease's unix sockets, made on first use in the system's
// temporary directory: a socket's path must fit in 108 bytes, a workspace's need not. It goes
// with the lease, and a crashed process's are swept when the workspace is opened again.
func (l *Lease) SocketDir() (string, error) {
	if l.sockets == "" {
		d, err := os.MkdirTemp("", l.w.socketPrefix())
		if err != nil {
			return "", fmt.Errorf("creating a socket directory: %w", err)
		}
		l.sockets = d
	}
	return l.sockets, nil
}

// Bytes is the disk the lease reserved.
func (l *Lease) Bytes() int64 { return l.n }

// Release removes the lease's directory and everything in it, and gives its reservation back.
// It is safe to call more than once.
func (l *Lease) Release() error {
	if !l.released.CompareAndSwap(false, true) {
		return nil
	}
	err := os.RemoveAll(l.dir)
	if l.sockets != "" {
		err = errors.Join(err, os.RemoveAll(l.sockets))
	}
	l.w.inUse.Add(-l.n)
	l.w.bytes.Release(l.n)
	l.w.jobs.Release(1)
	if err != nil {
		return fmt.Errorf("removing the job directory: %w", err)
	}
	return nil
}

// RegisterMetrics exports the bytes in use and the limit.
func (w *Workspace) RegisterMetrics(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "glance_sidecar_workspace_bytes_in_use", Help: "Disk reserved in the workspace by running jobs.",
		}, func() float64 { return float64(w.InUse()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "glance_sidecar_workspace_bytes_limit", Help: "Disk the workspace may hand out (max_bytes).",
		}, func() float64 { return float64(w.opts.MaxBytes) }),
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
