// Package convert converts disk images among raw, qcow2, vdi, vmdk and vhd (qemu's vpc) with
// qemu-img, and only images that package inspect found safe.
//
// Start with [File]: it inspects a local source file itself, refuses anything unsafe, of another
// format than the caller stated, an ISO or a format outside the five (before qemu-img ever runs),
// converts into a temporary file beside the destination, inspects the output again and renames it
// into place. [Run] converts for callers whose source or target is not a local file (an NBD URI).
// Both run qemu-img through one code path (run.go): always with explicit -f and -O, with LC_ALL=C
// and a minimal environment, under an address-space limit and an optional CPU-time limit
// (util-linux prlimit), in its own process group that a cancelled context kills whole, with
// progress parsed from `qemu-img convert -p`. [Check] is the gate both apply to an inspection
// report, and [ExpectedSize] the disk space an output may need.
//
// Outcomes a caller acts on are sentinel errors, always wrapped with context: [ErrUnsafe],
// [ErrUnsupported], [ErrSameFormat], [ErrOutputRejected] and [ErrLimits]; a cancelled or expired
// context is reported as an error wrapping context.Canceled or context.DeadlineExceeded.
package convert

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/glance-sidecar/glance-sidecar/inspect"
)

// Sentinel errors. Every error returned by this package that stands for one of these outcomes
// wraps it, with what was being converted and why.
var (
	// ErrUnsafe: inspection found problems in the source (a backing or data file, an external
	// VMDK extent, content of another format than the stated one, …). qemu-img was not run.
	ErrUnsafe = errors.New("image is unsafe")
	// ErrUnsupported: the source or target format is not one of raw, qcow2, vdi, vmdk and vhd,
	// the source is an ISO (never converted), or a source or target is of a kind Run does not
	// accept. qemu-img was not run.
	ErrUnsupported = errors.New("unsupported conversion")
	// ErrSameFormat: the source already has the target format; there is nothing to convert.
	// qemu-img was not run, and the caller may use the source as it is.
	ErrSameFormat = errors.New("source already has the target format")
	// ErrOutputRejected: qemu-img succeeded but its output is not the target format, is not
	// safe, or is smaller than the source. The output was removed.
	ErrOutputRejected = errors.New("converted image rejected")
	// ErrLimits: qemu-img was killed or failed for lack of memory or CPU time under the limits
	// it runs with (Options.AddressSpace, Options.CPUTime).
	ErrLimits = errors.New("qemu-img aborted by resource limits")
)

// DefaultAddressSpace is the address-space limit (RLIMIT_AS) qemu-img runs under when
// Options.AddressSpace is zero: Nova's images_address_space_limit.
const DefaultAddressSpace int64 = 2 << 30

// DefaultAdapterType is the VMDK adapter type written when the source does not say otherwise.
const DefaultAdapterType = "ide"

// Formats are the formats convert reads and writes, in Glance's names (inspect.VHD is qemu's vpc).
var Formats = []inspect.Format{inspect.Raw, inspect.QCOW2, inspect.VDI, inspect.VMDK, inspect.VHD}

// Supported reports whether f is one of Formats.
func Supported(f inspect.Format) bool {
	for _, s := range Formats {
		if f == s {
			return true
		}
	}
	return false
}

// Options control a conversion. To is required; everything else has a default, filled in by
// Validate.
type Options struct {
	// From is the format the caller states the source has (Glance's disk_format). Optional:
	// when set, a source detected as anything else is refused as unsafe (format_mismatch);
	// when empty, the detected format is used. The worker always sets it; the CLI sets it
	// only when --from is given.
	From inspect.Format
	// To is the target format, one of Formats. Required.
	To inspect.Format
	// AdapterType is the VMDK adapter type written when converting to vmdk from a source that
	// is not a VMDK with an adapter type of its own (a VMDK source's ddb.adapterType wins).
	// Any name AdapterType accepts; default DefaultAdapterType. Ignored for other targets.
	AdapterType string
	// ForceSize writes a vhd whose virtual size is exactly the source's (qemu's
	// force_size=on) instead of rounding it up to a CHS geometry, as Azure requires.
	// Ignored for other targets.
	ForceSize bool
	// Overwrite lets File replace an existing destination. Without it File refuses to start
	// when the destination exists, and never replaces one created meanwhile. Not used by Run.
	Overwrite bool
	// QemuImg is the qemu-img executable: a path, or a name looked up in PATH. Default
	// "qemu-img".
	QemuImg string
	// AddressSpace is qemu-img's address-space limit (RLIMIT_AS) in bytes. Default
	// DefaultAddressSpace; it may not be negative.
	AddressSpace int64
	// CPUTime is qemu-img's CPU-time limit (RLIMIT_CPU), rounded up to whole seconds. Optional:
	// zero means none. Wall-clock time is limited by the context instead.
	CPUTime time.Duration
	// Progress, when set, is called with the percentage done (0 to 100, increasing) as
	// qemu-img reports it. It is called from one goroutine at a time, and must not block.
	Progress func(percent float64)
	// Logger receives debug lines (the command run, its outcome). Default: discard.
	Logger *slog.Logger

	// qemuImgPath and prlimitPath are the executables resolved by Validate.
	qemuImgPath, prlimitPath string
}

// Validate checks the options and fills in the defaults, including resolving QemuImg and prlimit
// to absolute paths. File and Run call it on their own copy; callers may call it to find
// mistakes early.
func (o *Options) Validate() error {
	var errs []error
	// Glance's and qemu's names are both accepted (vpc is vhd, parallels is ploop, ami is raw).
	if o.From != "" {
		if f, err := inspect.ParseDeclared(string(o.From)); err != nil {
			errs = append(errs, fmt.Errorf("source format: %w", err))
		} else {
			o.From = f
		}
	}
	if o.To == "" {
		errs = append(errs, errors.New("no target format"))
	} else if f, err := inspect.ParseDeclared(string(o.To)); err != nil {
		errs = append(errs, fmt.Errorf("target format: %w", err))
	} else if o.To = f; !Supported(f) {
		errs = append(errs, fmt.Errorf("%w: target format %s (convert writes %s)", ErrUnsupported, f, formatList()))
	}
	if o.AdapterType == "" {
		o.AdapterType = DefaultAdapterType
	}
	if a, ok := AdapterType(o.AdapterType); ok {
		o.AdapterType = a
	} else {
		errs = append(errs, fmt.Errorf("unknown VMDK adapter type %q", o.AdapterType))
	}
	switch {
	case o.AddressSpace == 0:
		o.AddressSpace = DefaultAddressSpace
	case o.AddressSpace < 0:
		errs = append(errs, fmt.Errorf("negative address-space limit %d", o.AddressSpace))
	}
	if o.CPUTime < 0 {
		errs = append(errs, fmt.Errorf("negative CPU-time limit %s", o.CPUTime))
	}
	if o.QemuImg == "" {
		o.QemuImg = "qemu-img"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if p, err := lookPath(o.QemuImg); err != nil {
		errs = append(errs, fmt.Errorf("qemu-img: %w", err))
	} else {
		o.qemuImgPath = p
	}
	// prlimit is util-linux's, present on every Debian system; /usr/bin is tried when PATH
	// (as in a minimal service environment) does not have it.
	if p, err := lookPath("prlimit"); err == nil {
		o.prlimitPath = p
	} else if p, err2 := lookPath("/usr/bin/prlimit"); err2 == nil {
		o.prlimitPath = p
	} else {
		errs = append(errs, fmt.Errorf("prlimit (util-linux) is needed to limit qemu-img: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid convert options: %w", err)
	}
	return nil
}

func lookPath(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", err
	}
	return filepath.Abs(p)
}

func formatList() string {
	names := make([]string, len(Formats))
	for i, f := range Formats {
		names[i] = string(f)
	}
	return strings.Join(names, ", ")
}

// AdapterType maps a VMDK adapter type, as a descriptor's ddb.adapterType or Nova's
// vmware_adaptertype names it (any case), to the adapter_type qemu-img accepts: ide, buslogic,
// lsilogic or legacyESX. qemu has no lsilogicsas or pvscsi (Nova's paraVirtual) adapter: both
// become lsilogic, the SCSI controller every guest that has those drivers also drives. ok is
// false for a name that is none of these.
func AdapterType(name string) (qemu string, ok bool) {
	switch strings.ToLower(strings.TrimSpace(name)) {
	case "ide":
		return "ide", true
	case "buslogic":
		return "buslogic", true
	case "lsilogic", "lsilogicsas", "pvscsi", "paravirtual":
		return "lsilogic", true
	case "legacyesx":
		return "legacyESX", true
	}
	return "", false
}

// Result is what a conversion did.
type Result struct {
	// Source is the inspection report of the source.
	Source *inspect.Report
	// Output is the inspection report of the output (nil when there is none).
	Output *inspect.Report
	// Duration is how long the whole conversion took, inspections included.
	Duration time.Duration
}

// File converts the local file src into dst with qemu-img.
//
// It opens src and inspects it (inspect.InspectAt, with opts.From as the declared format) and
// refuses, before qemu-img runs, what Check refuses. qemu-img reads the file File opened and
// inspected (as /dev/fd/3), not whatever the path names by then. The output is written to a new
// file beside dst (dst + ".part-" + random, created exclusively, mode 0600), inspected again (it
// must be opts.To, safe, and at least as large as the source), synced, and renamed to dst; the
// directory is synced too. dst is never replaced unless opts.Overwrite is set. On every failure
// (refusal, qemu-img error, cancellation, limits, rejected output, a full disk) no file is left
// behind; only a process killed outright can leave a *.part-* file, for the workspace sweep.
//
// The Result is returned whenever the source could be inspected, also with an error, so that a
// caller can tell why a source was refused; it is nil otherwise.
func File(ctx context.Context, src, dst string, opts Options) (*Result, error) {
	start := time.Now()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	f, err := os.Open(src)
	if err != nil {
		return nil, fmt.Errorf("opening conversion source: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("opening conversion source: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("converting %s: %w: not a regular file", src, ErrUnsupported)
	}
	rep, err := inspect.InspectAt(ctx, f, st.Size(), inspect.Options{Declared: string(opts.From)})
	if err != nil {
		return nil, fmt.Errorf("inspecting %s: %w", src, err)
	}
	res := &Result{Source: rep}
	if err := Check(rep, opts); err != nil {
		return res, fmt.Errorf("converting %s: %w", src, err)
	}
	if !opts.Overwrite {
		if _, err := os.Lstat(dst); err == nil {
			return res, fmt.Errorf("converting %s: %s: %w", src, dst, fs.ErrExist)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return res, fmt.Errorf("converting %s: %w", src, err)
		}
	}
	// An absolute path cannot be taken by qemu for a protocol prefix ("nbd:", "json:").
	dir, err := filepath.Abs(filepath.Dir(dst))
	if err != nil {
		return res, fmt.Errorf("converting %s: %w", src, err)
	}
	tmp, err := os.CreateTemp(dir, filepath.Base(dst)+".part-*")
	if err != nil {
		return res, fmt.Errorf("converting %s: creating the output: %w", src, err)
	}
	part := tmp.Name()
	done := false
	defer func() {
		if !done {
			os.Remove(part)
		}
	}()
	if err := tmp.Close(); err != nil {
		return res, fmt.Errorf("converting %s: creating the output: %w", src, err)
	}
	if err := run(ctx, "/dev/fd/3", part, rep, opts, []*os.File{f}); err != nil {
		return res, fmt.Errorf("converting %s to %s: %w", src, opts.To, err)
	}
	out, err := checkOutput(ctx, part, rep, opts.To)
	res.Output = out
	if err != nil {
		return res, fmt.Errorf("converting %s to %s: %w", src, opts.To, err)
	}
	if err := place(part, dst, opts.Overwrite); err != nil {
		return res, fmt.Errorf("converting %s to %s: %w", src, opts.To, err)
	}
	done = true
	res.Duration = time.Since(start)
	opts.Logger.Debug("converted", "src", src, "dst", dst, "from", rep.Format, "to", opts.To,
		"virtual_size", out.VirtualSize, "size", out.Size, "duration", res.Duration)
	return res, nil
}

// checkOutput inspects the output at path, syncs it, and requires it to be of format to, safe
// and at least as large (virtually) as the source.
func checkOutput(ctx context.Context, path string, src *inspect.Report, to inspect.Format) (*inspect.Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening the output: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("opening the output: %w", err)
	}
	out, err := inspect.InspectAt(ctx, f, st.Size(), inspect.Options{Declared: string(to)})
	if err != nil {
		return nil, fmt.Errorf("inspecting the output: %w", err)
	}
	switch {
	case out.Format != to:
		return out, fmt.Errorf("%w: qemu-img wrote %s, not %s", ErrOutputRejected, out.Format, to)
	case !out.Safe():
		return out, fmt.Errorf("%w: the output is unsafe: %s", ErrOutputRejected, problemList(out))
	case out.VirtualSize == inspect.SizeUnknown || out.VirtualSize < src.VirtualSize:
		return out, fmt.Errorf("%w: virtual size %d is smaller than the source's %d", ErrOutputRejected, out.VirtualSize, src.VirtualSize)
	}
	if err := f.Sync(); err != nil {
		return out, fmt.Errorf("syncing the output: %w", err)
	}
	return out, nil
}

// place renames part to dst, without replacing an existing dst unless overwrite, and syncs the
// directory.
func place(part, dst string, overwrite bool) error {
	if overwrite {
		if err := os.Rename(part, dst); err != nil {
			return fmt.Errorf("renaming the output into place: %w", err)
		}
	} else if err := renameNoReplace(part, dst); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(dst))
	if err != nil {
		return fmt.Errorf("syncing the output's directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing the output's directory: %w", err)
	}
	return nil
}

// renameNoReplace renames old to new unless new exists, atomically: renameat2(RENAME_NOREPLACE),
// or link and unlink on file systems without it.
func renameNoReplace(old, new string) error {
	err := unix.Renameat2(unix.AT_FDCWD, old, unix.AT_FDCWD, new, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		if err = os.Link(old, new); err == nil {
			return os.Remove(old)
		}
	}
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s was created meanwhile: %w", new, fs.ErrExist)
	}
	if err != nil {
		return fmt.Errorf("renaming the output into place: %w", &os.LinkError{Op: "rename", Old: old, New: new, Err: err})
	}
	return nil
}

func problemList(r *inspect.Report) string {
	var parts []string
	for _, p := range r.Problems {
		parts = append(parts, p.String())
	}
	return strings.Join(parts, "; ")
}
