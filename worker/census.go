package worker

import (
	"cmp"
	"context"
	"strings"

	"github.com/glance-sidecar/glance-sidecar/glanceclient"
)

// EachImage calls fn for every image that matches opts, the hidden ones (os_hidden) included:
// Glance lists either the visible images or, with os_hidden=true, only the hidden ones, so it
// lists twice. opts.Hidden is ignored.
func EachImage(ctx context.Context, c *glanceclient.Client, opts glanceclient.ListOptions, fn func(*glanceclient.Image) error) error {
	for _, hidden := range []bool{false, true} {
		opts.Hidden = hidden
		if err := c.List(ctx, opts, fn); err != nil {
			return err
		}
	}
	return nil
}

// NotChecked stands for the outcome, and the format, of an image the sidecar has recorded
// nothing about.
const NotChecked = "unchecked"

// Findings are what the sidecar recorded on one image, read back from its properties.
type Findings struct {
	ImageID    string `json:"image_id"`
	Name       string `json:"name"`
	Owner      string `json:"owner"`
	Status     string `json:"status"`
	DiskFormat string `json:"disk_format"`
	Hidden     bool   `json:"hidden"`
	// Outcome is <prefix>status, or NotChecked.
	Outcome Outcome `json:"outcome"`
	// Format is the format found in the data (<prefix>format), or NotChecked.
	Format string `json:"format"`
	// Problems are the problem codes (<prefix>problems), never nil.
	Problems []string `json:"problems"`
	// Error is why the last attempt failed (<prefix>error).
	Error string `json:"error,omitempty"`
	// CheckedAt is when the outcome was recorded (<prefix>checked_at, RFC 3339).
	CheckedAt string `json:"checked_at,omitempty"`
}

// ReadFindings reads what the sidecar recorded on img, under the prefix of opts.
func ReadFindings(img *glanceclient.Image, opts PropertyOptions) Findings {
	p := opts.prefix()
	f := Findings{
		ImageID: img.ID, Name: img.Name, Owner: img.Owner, Status: img.Status, DiskFormat: img.DiskFormat, Hidden: img.Hidden,
		Outcome: Outcome(cmp.Or(img.Properties[p+"status"], NotChecked)), Format: cmp.Or(img.Properties[p+"format"], NotChecked),
		Problems: []string{}, Error: img.Properties[p+"error"], CheckedAt: img.Properties[p+"checked_at"],
	}
	for code := range strings.SplitSeq(img.Properties[p+"problems"], ",") {
		if code = strings.TrimSpace(code); code != "" {
			f.Problems = append(f.Problems, code)
		}
	}
	return f
}

// Census counts what the sidecar recorded over a set of images.
type Census struct {
	// Images is the number of images counted.
	Images int `json:"images"`
	// Outcomes, Formats and Problems count the images by outcome, by the format found in the
	// data, and by problem code (an image with two problems counts under both).
	Outcomes map[Outcome]int `json:"outcomes"`
	Formats  map[string]int  `json:"formats"`
	Problems map[string]int  `json:"problems"`
	// Unsafe lists the unsafe images, in the order they were added.
	Unsafe []Findings `json:"unsafe"`
}

// NewCensus returns an empty census.
func NewCensus() *Census {
	return &Census{Outcomes: map[Outcome]int{}, Formats: map[string]int{}, Problems: map[string]int{}, Unsafe: []Findings{}}
}

// Add counts one image's findings.
func (c *Census) Add(f Findings) {
	c.Images++
	c.Outcomes[f.Outcome]++
	c.Formats[f.Format]++
	for _, p := range f.Problems {
		c.Problems[p]++
	}
	if f.Outcome == OutcomeUnsafe {
		c.Unsafe = append(c.Unsafe, f)
	}
}
