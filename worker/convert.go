package worker

import (
	"context"
	"crypto/sha1"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/glance-sidecar/glance-sidecar/convert"
	"github.com/glance-sidecar/glance-sidecar/glanceclient"
	"github.com/glance-sidecar/glance-sidecar/inspect"
)

// OutcomeConverted: the image was introspected, found safe, and converted; <prefix>converted_to
// names the new image.
const OutcomeConverted Outcome = "converted"

// What a conversion does with the original image.
const (
	OriginalKeep       = "keep"
	OriginalHide       = "hide"
	OriginalDeactivate = "deactivate"
	OriginalDelete     = "delete"
)

// ConvertOptions turn on conversion: every safe image of a source format is converted to the
// target format and uploaded as a new image linked to the original.
type ConvertOptions struct {
	// Target is the disk format images are converted to; "" turns conversion off.
	Target inspect.Format
	// Sources are the formats (as detected) that are converted; empty means every format
	// convert reads.
	Sources []inspect.Format
	// MinSize and MaxSize bound the virtual size of the images converted; MaxSize 0 leaves the
	// bound to the workspace.
	MinSize, MaxSize int64
	// Original is what happens to the original after a conversion: OriginalKeep (default),
	// OriginalHide (os_hidden), OriginalDeactivate or OriginalDelete.
	Original string
	// Qemu are qemu-img's options (limits, VMDK adapter type, force_size); From, To and
	// Progress are set per image.
	Qemu convert.Options
	// Timeout bounds one conversion: download, qemu-img and upload (default 1 h).
	Timeout time.Duration
	// Workspace holds the files of conversions; required when Target is set.
	Workspace *Workspace
}

// Validate fills the defaults and checks the options.
func (o *ConvertOptions) Validate() error {
	if o.Target == "" {
		return nil
	}
	var errs []error
	if t, err := inspect.ParseDeclared(string(o.Target)); err != nil || !convert.Supported(t) {
		errs = append(errs, fmt.Errorf("convert target %q: one of %v", o.Target, convert.Formats))
	} else {
		o.Target = t
	}
	if len(o.Sources) == 0 {
		o.Sources = slices.Clone(convert.Formats)
	}
	for i, s := range o.Sources {
		f, err := inspect.ParseDeclared(string(s))
		if err != nil || !convert.Supported(f) {
			errs = append(errs, fmt.Errorf("convert source format %q: one of %v", s, convert.Formats))
			continue
		}
		o.Sources[i] = f
	}
	switch o.Original {
	case "":
		o.Original = OriginalKeep
	case OriginalKeep, OriginalHide, OriginalDeactivate, OriginalDelete:
	default:
		errs = append(errs, fmt.Errorf("convert original %q: keep, hide, deactivate or delete", o.Original))
	}
	if o.MinSize < 0 || o.MaxSize < 0 {
		errs = append(errs, errors.New("convert size bounds may not be negative"))
	}
	if o.Timeout == 0 {
		o.Timeout = time.Hour
	}
	if o.Workspace == nil {
		errs = append(errs, errors.New("conversion needs a workspace"))
	}
	return errors.Join(errs...)
}

// convertReason says why an image found safe is not converted, or "" when it is. It needs only
// what the image record says (the format and virtual size the sidecar recorded), so that the
// decision whether an outcome is current costs no download.
func (o *ConvertOptions) convertReason(img *glanceclient.Image, format inspect.Format, virtualSize int64, prefix string) string {
	switch {
	case o.Target == "":
		return "conversion is off"
	case img.Properties[prefix+"converted_from"] != "":
		return "image is itself a conversion"
	case format == o.Target:
		return "image is already " + string(o.Target)
	case !slices.Contains(o.Sources, format):
		return "format " + string(format) + " is not converted"
	case virtualSize < o.MinSize:
		return fmt.Sprintf("virtual size %d is below min_size %d", virtualSize, o.MinSize)
	case o.MaxSize > 0 && virtualSize > o.MaxSize:
		return fmt.Sprintf("virtual size %d is above max_size %d", virtualSize, o.MaxSize)
	}
	return ""
}

// wantsConversion tells, from the properties an inspection wrote, whether an image still owes a
// conversion: a safe image whose recorded format is converted, and that is not yet converted.
func (o *ConvertOptions) wantsConversion(img *glanceclient.Image, prefix string) bool {
	if o.Target == "" || Outcome(img.Properties[prefix+"status"]) != OutcomeInspected {
		return false
	}
	vsize, err := strconv.ParseInt(img.Properties[prefix+"virtual_size"], 10, 64)
	if err != nil {
		return false
	}
	return o.convertReason(img, inspect.Format(img.Properties[prefix+"format"]), vsize, prefix) == ""
}

// convertedNamespace is the UUIDv5 namespace of converted images' ids.
var convertedNamespace = [16]byte{0x6b, 0x1e, 0x2d, 0x53, 0x8e, 0x0c, 0x4c, 0x1d, 0x9a, 0x4f, 0x2b, 0x73, 0x61, 0x64, 0x65, 0x63}

// ConvertedID is the id of the image converted from original into target: a UUIDv5 (RFC 9562)
// of both, so that a job retried after a crash finds the image it created instead of making a
// second one.
func ConvertedID(original string, target inspect.Format) string {
	h := sha1.New()
	h.Write(convertedNamespace[:])
	h.Write([]byte(original + "/" + string(target)))
	var u [16]byte
	copy(u[:], h.Sum(nil))
	u[6] = u[6]&0x0f | 0x50 // version 5
	u[8] = u[8]&0x3f | 0x80 // RFC 9562 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// errPermanent marks a conversion failure that no retry can change: the job records it at once.
type errPermanent struct{ error }

func (e errPermanent) Unwrap() error { return e.error }

func permanent(err error) error {
	if err == nil {
		return nil
	}
	return errPermanent{err}
}

// isPermanent reports whether err is a failure to record rather than to retry.
func isPermanent(err error) bool {
	var p errPermanent
	return errors.As(err, &p) || errors.Is(err, ErrTooLarge) || errors.Is(err, convert.ErrUnsafe) ||
		errors.Is(err, convert.ErrUnsupported) || errors.Is(err, convert.ErrOutputRejected) || errors.Is(err, convert.ErrLimits)
}

// copyProperties are the original's properties the converted image carries: not Glance's own
// (os_glance_*), not the sidecar's findings, not the VMDK-only vmware_disktype (the new image's
// own inspection writes what it is).
func copyProperties(props map[string]string, prefix string) map[string]string {
	out := map[string]string{}
	for k, v := range props {
		if strings.HasPrefix(k, "os_glance_") || strings.HasPrefix(k, prefix) || k == "vmware_disktype" {
			continue
		}
		out[k] = v
	}
	return out
}

// convertImage converts the image (found safe by rep) into the target format and uploads the
// result as a new image with a derived id. It returns the new image's id.
func convertImage(ctx context.Context, c *glanceclient.Client, img *glanceclient.Image, rep *inspect.Report, rs []region, opts JobOptions) (string, error) {
	co := opts.Convert
	p := opts.Properties.prefix()
	ctx, cancel := context.WithTimeout(ctx, co.Timeout)
	defer cancel()
	qopts := co.Qemu
	qopts.From, qopts.To = rep.Format, co.Target
	// A VMDK made from another format gets the adapter type Nova was told to use, if any.
	if v := img.Properties["vmware_adaptertype"]; v != "" {
		if _, ok := convert.AdapterType(v); ok {
			qopts.AdapterType = v
		}
	}
	if err := convert.Check(rep, qopts); err != nil {
		return "", err
	}
	id := ConvertedID(img.ID, co.Target)

	// The image may exist from an earlier attempt: finished (active), or waiting for its data.
	dst, err := c.Get(ctx, id)
	if errors.Is(err, glanceclient.ErrNotFound) {
		props := copyProperties(img.Properties, p)
		props[p+"converted_from"] = img.ID
		dst, err = c.Create(ctx, glanceclient.CreateOptions{
			ID: id, Name: img.Name, DiskFormat: string(co.Target), ContainerFormat: "bare",
			Visibility: img.Visibility, Owner: img.Owner, MinDisk: img.MinDisk, MinRAM: img.MinRAM,
			Tags: img.Tags, Properties: props,
		})
		if errors.Is(err, glanceclient.ErrConflict) {
			// Created meanwhile (a retried create whose answer was lost, another sidecar),
			// or used before and deleted: Glance never gives a deleted id out again.
			dst, err = c.Get(ctx, id)
			if errors.Is(err, glanceclient.ErrNotFound) {
				return "", permanent(fmt.Errorf("the converted image's id %s was used before and deleted", id))
			}
		}
	}
	if err != nil {
		return "", fmt.Errorf("finding or creating the converted image %s: %w", id, err)
	}
	switch dst.Status {
	case "active":
		return id, verifyConverted(ctx, c, id, co.Target, rep)
	case "queued":
	case "saving", "uploading", "importing":
		// An upload in flight, or one whose Glance process died: Glance never resets those.
		if stale := co.Timeout + 10*time.Minute; !dst.UpdatedAt.IsZero() && time.Since(dst.UpdatedAt) > stale {
			return "", permanent(fmt.Errorf("converted image %s has been %s since %s", id, dst.Status, dst.UpdatedAt.Format(time.RFC3339)))
		}
		return "", fmt.Errorf("converted image %s is %s (an earlier upload in flight)", id, dst.Status)
	default:
		return "", permanent(fmt.Errorf("converted image %s is %s", id, dst.Status))
	}

	size := *img.Size
	if co.Target == inspect.Raw && rs != nil {
		// The stages overlap and the output goes straight into the upload: the workspace
		// holds only the download.
		lease, err := co.Workspace.Reserve(ctx, img.ID, size)
		if err != nil {
			return "", err
		}
		defer lease.Release()
		t := time.Now()
		st, err := convertPipelined(ctx, c, img, rep, rs, id, lease, qopts)
		opts.Logger.Debug("source window", "image", img.ID, "dropped_bytes", st.Dropped, "spilled_bytes", st.Spilled,
			"fetched_bytes", st.Fetched, "fetches", st.Fetches)
		if err != nil {
			return "", fmt.Errorf("converting %s to raw: %w", rep.Format, err)
		}
		opts.Metrics.stage("convert", t)
		return id, verifyConverted(ctx, c, id, co.Target, rep)
	}
	need := size + convert.ExpectedSize(rep, co.Target)
	lease, err := co.Workspace.Reserve(ctx, img.ID, need)
	if err != nil {
		return "", err
	}
	defer lease.Release()

	t := time.Now()
	src, err := os.OpenFile(lease.Path("source"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	_, err = c.Download(ctx, img, src)
	if cerr := src.Close(); err == nil {
		err = cerr
	}
	opts.Metrics.stage("download", t)
	if err != nil {
		return "", fmt.Errorf("downloading for conversion: %w", err)
	}

	t = time.Now()
	out := lease.Path("output")
	if _, err := convert.File(ctx, lease.Path("source"), out, qopts); err != nil {
		return "", fmt.Errorf("converting %s to %s: %w", rep.Format, co.Target, err)
	}
	opts.Metrics.stage("convert", t)
	if err := os.Remove(lease.Path("source")); err != nil {
		return "", err
	}

	t = time.Now()
	if _, err := c.UploadFile(ctx, id, out); err != nil {
		return "", fmt.Errorf("uploading the converted image %s: %w", id, err)
	}
	opts.Metrics.stage("upload", t)
	return id, verifyConverted(ctx, c, id, co.Target, rep)
}

// verifyConverted inspects the converted image as Glance has it, through a few ranged reads:
// it must be active, of the target format, safe, and not smaller than the source (a raw image
// exactly its virtual size). Whatever an earlier attempt left active is checked the same way
// before the original is linked to it. A mismatch is permanent: nothing the job can redo fixes
// an active image.
func verifyConverted(ctx context.Context, c *glanceclient.Client, id string, target inspect.Format, src *inspect.Report) error {
	img, err := c.Get(ctx, id)
	if err != nil {
		return fmt.Errorf("reading back the converted image: %w", err)
	}
	if img.Status != "active" || img.Size == nil {
		return fmt.Errorf("converted image %s is %s", id, img.Status)
	}
	// The job's own inspection: ranges, or one stream where the store refuses them.
	rep, _, _, _, err := inspectImage(ctx, c, img, JobOptions{})
	if err != nil {
		return fmt.Errorf("inspecting the converted image %s: %w", id, err)
	}
	switch {
	case rep.Format != target || !rep.Safe():
		return permanent(fmt.Errorf("%w: converted image %s reads as %s with problems %v", convert.ErrOutputRejected, id, rep.Format, rep.Codes()))
	case rep.VirtualSize < src.VirtualSize, target == inspect.Raw && *img.Size != src.VirtualSize:
		return permanent(fmt.Errorf("%w: converted image %s holds %d bytes (virtual %d), the source %d", convert.ErrOutputRejected, id, *img.Size, rep.VirtualSize, src.VirtualSize))
	}
	return nil
}

// finishConversion applies the original policy and links the original to its conversion.
// The link, with status converted, is written last (before a delete, which leaves nothing to
// write to): an image marked converted is done.
func finishConversion(ctx context.Context, c *glanceclient.Client, img *glanceclient.Image, newID string, opts JobOptions) error {
	p := opts.Properties.prefix()
	link := func() error {
		set := map[string]string{p + "converted_to": newID, p + "status": string(OutcomeConverted)}
		if _, err := c.PatchProperties(ctx, img.ID, set, nil); err != nil {
			return fmt.Errorf("linking the original to its conversion: %w", err)
		}
		return nil
	}
	var err error
	switch opts.Convert.Original {
	case OriginalHide:
		err = c.SetHidden(ctx, img.ID, true)
	case OriginalDeactivate:
		err = c.Deactivate(ctx, img.ID)
	case OriginalDelete:
		if err := link(); err != nil {
			return err
		}
		if err := c.Delete(ctx, img.ID); err != nil && !errors.Is(err, glanceclient.ErrNotFound) {
			return fmt.Errorf("original policy delete: %w", err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("original policy %s: %w", opts.Convert.Original, err)
	}
	return link()
}
