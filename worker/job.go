package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/glance-sidecar/glance-sidecar/glanceclient"
	"github.com/glance-sidecar/glance-sidecar/inspect"
)

// Outcomes of a job that are not written to the image.
const (
	// OutcomeSkipped is a job that decided the image is not its to look at, or already looked at.
	OutcomeSkipped Outcome = "skipped"
	// OutcomeWouldInspect is a dry run's answer for an image a job would inspect.
	OutcomeWouldInspect Outcome = "would_inspect"
)

// JobOptions configure Job.
type JobOptions struct {
	// Properties say how findings are written.
	Properties PropertyOptions
	// Wait bounds the wait for the image to become active.
	Wait glanceclient.WaitOptions
	// Range tunes the ranged reads.
	Range glanceclient.RangeOptions
	// VerifyChecksum reads the whole image once more to check it against os_hash_value
	// when the inspection itself read only ranges.
	VerifyChecksum bool
	// DeactivateUnsafe deactivates an image found unsafe, as well as marking it.
	DeactivateUnsafe bool
	// Owners, Visibilities and DiskFormats restrict the images looked at (empty: all).
	Owners, Visibilities, DiskFormats []string
	// Force looks at an image even when its outcome is current.
	Force bool
	// Convert turns on conversion of safe images into a target format (zero: off).
	Convert ConvertOptions
	// DryRun decides and stops there: the job reads the image once (it does not wait for an
	// upload to finish), skips it for the reason a real job would, or answers
	// OutcomeWouldInspect; it reads no data and writes nothing.
	DryRun bool
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger gets one line per job (default slog.Default()).
	Logger *slog.Logger
	// Metrics records jobs, stage durations and bytes read (nil: none).
	Metrics *Metrics
}

// Result is what one job did.
type Result struct {
	ImageID string
	Outcome Outcome
	// Reason says why a job was skipped or failed.
	Reason string
	// Report is the inspection, when there was one.
	Report *inspect.Report
	// Mode is how the data was read: "range" or "stream".
	Mode string
	// BytesRead is the image data read from Glance.
	BytesRead int64
	// Deactivated is set when the job deactivated the image.
	Deactivated bool
	// Converted is the id of the image converted from this one.
	Converted string
}

// hashKey is the property that says which data the recorded outcome is about.
const hashKey = "checked_hash"

// Job looks at one image: it waits until the image is active, skips what is not ours (not
// bare, filtered out, an outcome already current for this data), inspects the data (by ranges,
// or by one streaming pass when the store refuses ranges), writes the findings back in one
// PATCH and, if configured, deactivates an unsafe image. An error means the job should be
// tried again later; images that are gone or will not become active are skipped, not errors.
func Job(ctx context.Context, c *glanceclient.Client, imageID string, opts JobOptions) (Result, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	start := opts.Now()
	res, err := job(ctx, c, imageID, opts)
	opts.Metrics.done(res, err)
	attrs := []any{"image_id", imageID, "outcome", res.Outcome, "duration", time.Since(start).Round(time.Millisecond)}
	if res.Reason != "" {
		attrs = append(attrs, "reason", res.Reason)
	}
	if res.Mode != "" {
		attrs = append(attrs, "mode", res.Mode, "bytes_read", res.BytesRead)
	}
	if err != nil {
		opts.Logger.Warn("job failed", append(attrs, "error", err)...)
	} else {
		opts.Logger.Info("job done", attrs...)
	}
	return res, err
}

func job(ctx context.Context, c *glanceclient.Client, id string, opts JobOptions) (Result, error) {
	res := Result{ImageID: id}
	skip := func(reason string) (Result, error) {
		res.Outcome, res.Reason = OutcomeSkipped, reason
		return res, nil
	}
	t := time.Now()
	img, err := activeImage(ctx, c, id, opts)
	opts.Metrics.stage("wait", t)
	switch {
	case errors.Is(err, glanceclient.ErrNotFound):
		return skip("image is gone")
	case errors.Is(err, glanceclient.ErrNotActive) && img != nil && img.Status != "active":
		return skip("image is " + img.Status)
	case err != nil:
		return res, err
	}
	if reason := skipReason(img, opts); reason != "" {
		return skip(reason)
	}
	if opts.DryRun {
		res.Outcome = OutcomeWouldInspect
		return res, nil
	}

	t = time.Now()
	rep, mode, n, rs, err := inspectImage(ctx, c, img, opts)
	opts.Metrics.stage("inspect", t)
	res.Report, res.Mode, res.BytesRead = rep, mode, n
	if err != nil {
		return res, err
	}
	now := opts.Now()
	set, remove := Properties(rep, img.Properties, now, opts.Properties)
	set[opts.Properties.prefix()+hashKey] = dataHash(img)
	remove = slices.DeleteFunc(remove, func(k string) bool { _, ok := set[k]; return ok })
	t = time.Now()
	_, err = c.PatchProperties(ctx, id, set, remove)
	opts.Metrics.stage("write", t)
	if err != nil {
		return res, fmt.Errorf("writing findings: %w", err)
	}
	res.Outcome = Outcome(set[opts.Properties.prefix()+"status"])
	if res.Outcome == OutcomeInspected {
		if reason := opts.Convert.convertReason(img, rep.Format, rep.VirtualSize, opts.Properties.prefix()); reason == "" {
			return convertJob(ctx, c, img, rep, rs, res, opts)
		}
	}
	if res.Outcome == OutcomeUnsafe && opts.DeactivateUnsafe {
		if err := c.Deactivate(ctx, id); err != nil {
			return res, fmt.Errorf("deactivating the unsafe image: %w", err)
		}
		res.Deactivated = true
	}
	return res, nil
}

// convertJob converts an image found safe, links both images and applies the original policy.
// A failure no retry can change (too large for the workspace, an output qemu-img made that
// inspection rejects, limits) is recorded at once, with the data hash, so that the outcome is
// current and no event or reconcile pass converts the image again.
func convertJob(ctx context.Context, c *glanceclient.Client, img *glanceclient.Image, rep *inspect.Report, rs []region, res Result, opts JobOptions) (Result, error) {
	newID, err := convertImage(ctx, c, img, rep, rs, opts)
	if err == nil {
		err = finishConversion(ctx, c, img, newID, opts)
	}
	switch {
	case err == nil:
		res.Outcome, res.Converted = OutcomeConverted, newID
		return res, nil
	case isPermanent(err) && ctx.Err() == nil:
		set, _ := FailedProperties("conversion: "+err.Error(), img.Properties, opts.Now(), opts.Properties)
		set[opts.Properties.prefix()+hashKey] = dataHash(img)
		if _, perr := c.PatchProperties(ctx, img.ID, set, nil); perr != nil {
			return res, fmt.Errorf("recording the failed conversion (%v): %w", err, perr)
		}
		res.Outcome, res.Reason = OutcomeFailed, "conversion: "+err.Error()
		return res, nil
	}
	return res, fmt.Errorf("conversion: %w", err)
}

// activeImage waits until the image is active; a dry run, which must not block on an upload in
// progress, looks once instead.
func activeImage(ctx context.Context, c *glanceclient.Client, id string, opts JobOptions) (*glanceclient.Image, error) {
	if !opts.DryRun {
		return c.WaitActive(ctx, id, opts.Wait)
	}
	img, err := c.Get(ctx, id)
	if err == nil && img.Status != "active" {
		err = fmt.Errorf("image %s is %s: %w", id, img.Status, glanceclient.ErrNotActive)
	}
	return img, err
}

// skipReason says why the job leaves an active image alone, or "".
func skipReason(img *glanceclient.Image, opts JobOptions) string {
	p := opts.Properties.prefix()
	switch {
	case img.ContainerFormat != "bare":
		return "container format " + img.ContainerFormat + " is not bare"
	case len(opts.Owners) > 0 && !slices.Contains(opts.Owners, img.Owner):
		return "owner " + img.Owner + " is filtered out"
	case len(opts.Visibilities) > 0 && !slices.Contains(opts.Visibilities, img.Visibility):
		return "visibility " + img.Visibility + " is filtered out"
	case len(opts.DiskFormats) > 0 && !slices.Contains(opts.DiskFormats, img.DiskFormat):
		return "disk format " + img.DiskFormat + " is filtered out"
	case img.Size == nil:
		return "image has no data"
	}
	if opts.Force {
		return ""
	}
	// A failure is current only when recorded with the data hash: a conversion that can never
	// work. Failures given up on after retries carry no hash and are tried again.
	switch Outcome(img.Properties[p+"status"]) {
	case OutcomeInspected, OutcomeUnsafe, OutcomeConverted, OutcomeFailed:
		if img.Properties[p+hashKey] == dataHash(img) && img.Properties[p+"version"] == opts.Properties.Version &&
			!opts.Convert.wantsConversion(img, p) {
			return "outcome is current"
		}
	}
	return ""
}

// dataHash names the image data an outcome is about: the multihash, else the MD5.
func dataHash(img *glanceclient.Image) string {
	if img.HashValue != "" {
		return img.HashAlgo + ":" + img.HashValue
	}
	return "md5:" + img.Checksum
}

// inspectImage inspects by ranges, falling back to one streaming pass (which also verifies the
// checksum) when the store refuses ranges. After ranges it also returns the regions read, for a
// conversion to check its download against.
func inspectImage(ctx context.Context, c *glanceclient.Client, img *glanceclient.Image, opts JobOptions) (*inspect.Report, string, int64, []region, error) {
	iopts := inspect.Options{}
	if _, err := inspect.ParseDeclared(img.DiskFormat); err == nil {
		iopts.Declared = img.DiskFormat
	}
	rr, err := c.OpenRange(ctx, img, opts.Range)
	if err != nil {
		return nil, "", 0, nil, err
	}
	rec := &regions{r: rr}
	rep, err := inspect.InspectAt(ctx, rec, rr.Size(), iopts)
	_, fetched := rr.Stats()
	switch {
	case err == nil && !opts.VerifyChecksum:
		return rep, "range", fetched, rec.sorted(), nil
	case err == nil:
		res, err := c.Download(ctx, img, io.Discard)
		if err != nil {
			return nil, "range", fetched + res.Bytes, nil, fmt.Errorf("verifying the checksum: %w", err)
		}
		return rep, "range", fetched + res.Bytes, rec.sorted(), nil
	case !errors.Is(err, glanceclient.ErrRangeUnsupported):
		return nil, "range", fetched, nil, fmt.Errorf("inspecting by ranges: %w", err)
	}
	s, err := inspect.NewStream(iopts)
	if err != nil {
		return nil, "stream", 0, nil, err
	}
	res, err := c.Download(ctx, img, s)
	if err != nil {
		return nil, "stream", res.Bytes, nil, fmt.Errorf("inspecting by streaming: %w", err)
	}
	rep, err = s.Close()
	return rep, "stream", res.Bytes, nil, err
}

// RecordFailure writes the failed outcome on an image, for a job given up on.
func RecordFailure(ctx context.Context, c *glanceclient.Client, imageID string, cause error, opts JobOptions) error {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	img, err := c.Get(ctx, imageID)
	if err != nil {
		return err
	}
	set, remove := FailedProperties(cause.Error(), img.Properties, opts.Now(), opts.Properties)
	// Without the data hash the failure is not current: reconcile and later events try again.
	if k := opts.Properties.prefix() + hashKey; img.Properties[k] != "" {
		remove = append(remove, k)
	}
	_, err = c.PatchProperties(ctx, imageID, set, remove)
	return err
}
