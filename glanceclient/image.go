package glanceclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"
)

// Image is a Glance image as GET /v2/images/{id} returns it.
type Image struct {
	ID              string
	Name            string
	Status          string
	DiskFormat      string
	ContainerFormat string
	Owner           string
	Visibility      string
	Protected       bool
	Hidden          bool
	MinDisk, MinRAM int
	Tags            []string
	// Size and VirtualSize are nil when Glance has no value (null), which is not the same as 0.
	Size        *int64
	VirtualSize *int64
	// Checksum is the MD5 (hex); HashAlgo and HashValue the multihash (sha512 by default).
	Checksum  string
	HashAlgo  string
	HashValue string
	CreatedAt time.Time
	UpdatedAt time.Time
	// Properties are the extra properties. Glance keeps them as strings; anything else found
	// there is kept as its JSON text.
	Properties map[string]string
}

// baseAttributes are the keys of the image representation that are not extra properties.
// PatchProperties refuses to touch them.
var baseAttributes = map[string]bool{
	"id": true, "name": true, "status": true, "visibility": true, "protected": true, "os_hidden": true,
	"checksum": true, "os_hash_algo": true, "os_hash_value": true, "owner": true, "size": true,
	"virtual_size": true, "container_format": true, "disk_format": true, "created_at": true,
	"updated_at": true, "tags": true, "min_ram": true, "min_disk": true, "self": true, "file": true,
	"schema": true, "locations": true, "direct_url": true, "stores": true, "location": true,
	"deleted": true, "deleted_at": true,
}

func (img *Image) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	*img = Image{Properties: map[string]string{}}
	str := func(k string) string {
		var s string
		_ = json.Unmarshal(raw[k], &s)
		return s
	}
	num := func(k string) *int64 {
		var n *int64
		if v, ok := raw[k]; ok {
			_ = json.Unmarshal(v, &n)
		}
		return n
	}
	flag := func(k string) bool {
		var v bool
		_ = json.Unmarshal(raw[k], &v)
		return v
	}
	img.ID, img.Name, img.Status = str("id"), str("name"), str("status")
	img.DiskFormat, img.ContainerFormat = str("disk_format"), str("container_format")
	img.Owner, img.Visibility = str("owner"), str("visibility")
	img.Protected, img.Hidden = flag("protected"), flag("os_hidden")
	img.Checksum, img.HashAlgo, img.HashValue = str("checksum"), str("os_hash_algo"), str("os_hash_value")
	img.Size, img.VirtualSize = num("size"), num("virtual_size")
	if n := num("min_disk"); n != nil {
		img.MinDisk = int(*n)
	}
	if n := num("min_ram"); n != nil {
		img.MinRAM = int(*n)
	}
	_ = json.Unmarshal(raw["tags"], &img.Tags)
	img.CreatedAt, _ = time.Parse(time.RFC3339, str("created_at"))
	img.UpdatedAt, _ = time.Parse(time.RFC3339, str("updated_at"))
	for k, v := range raw {
		if baseAttributes[k] {
			continue
		}
		var s string
		if json.Unmarshal(v, &s) == nil {
			img.Properties[k] = s
		} else {
			img.Properties[k] = string(v)
		}
	}
	if img.ID == "" {
		return errors.New("image without an id")
	}
	return nil
}

func (c *Client) imageURL(id string, more ...string) string {
	return c.sc.ServiceURL(append([]string{"images", url.PathEscape(id)}, more...)...)
}

// Get returns the image.
func (c *Client) Get(ctx context.Context, id string) (*Image, error) {
	var img Image
	err := c.retry(ctx, "get image", func() error {
		_, err := c.sc.Get(ctx, c.imageURL(id), &img, nil)
		return err
	})
	if err != nil {
		return nil, classify(err, "getting image %s", id)
	}
	return &img, nil
}

// WaitOptions bound WaitActive.
type WaitOptions struct {
	// Timeout is how long to wait at most (default 2 minutes; the context may end it sooner).
	Timeout time.Duration
	// Interval is the first pause between polls (default 100 ms), doubled up to MaxInterval
	// (default 5 s).
	Interval, MaxInterval time.Duration
}

// WaitActive polls the image until it is active with no import in progress. Glance sends
// image.upload and image.activate before it commits the active status, so a GET right after the
// notification may still say saving. It fails with ErrNotActive when the image reaches a status
// it will not leave for active, or when the timeout passes, and with ErrNotFound when the image
// is deleted.
func (c *Client) WaitActive(ctx context.Context, id string, opts WaitOptions) (*Image, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Minute
	}
	if opts.Interval <= 0 {
		opts.Interval = 100 * time.Millisecond
	}
	if opts.MaxInterval <= 0 {
		opts.MaxInterval = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	delay := opts.Interval
	for {
		img, err := c.Get(ctx, id)
		if err != nil {
			if ctx.Err() != nil && !errors.Is(err, ErrNotFound) {
				return nil, fmt.Errorf("waiting for image %s to become active: %w: %w", id, ErrNotActive, err)
			}
			return nil, err
		}
		switch img.Status {
		case "active":
			if _, importing := img.Properties["os_glance_import_task"]; !importing {
				return img, nil
			}
		case "deactivated", "killed", "deleted", "pending_delete":
			return img, fmt.Errorf("image %s is %s: %w", id, img.Status, ErrNotActive)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return img, fmt.Errorf("image %s still %s after %s: %w", id, img.Status, opts.Timeout, ErrNotActive)
		case <-t.C:
		}
		delay = min(delay*2, opts.MaxInterval)
	}
}

// ListOptions filter List.
type ListOptions struct {
	// Status, Owner, Visibility and DiskFormat filter on equality when set.
	Status, Owner, Visibility, DiskFormat string
	// UpdatedAfter keeps images updated strictly later than it, when it is not zero.
	UpdatedAfter time.Time
	// Hidden lists the hidden images (os_hidden) instead of the visible ones.
	Hidden bool
	// PageSize is the number of images per request (default 200).
	PageSize int
}

// List calls fn for every image that matches, page by page, oldest id order as Glance pages.
// It stops at the first error fn returns.
func (c *Client) List(ctx context.Context, opts ListOptions, fn func(*Image) error) error {
	q := url.Values{}
	for k, v := range map[string]string{"status": opts.Status, "owner": opts.Owner, "visibility": opts.Visibility, "disk_format": opts.DiskFormat} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if !opts.UpdatedAfter.IsZero() {
		q.Set("updated_at", "gt:"+opts.UpdatedAfter.UTC().Format("2006-01-02T15:04:05Z"))
	}
	if opts.Hidden {
		q.Set("os_hidden", "true")
	}
	if opts.PageSize <= 0 {
		opts.PageSize = 200
	}
	q.Set("limit", strconv.Itoa(opts.PageSize))
	q.Set("sort", "created_at:asc,id:asc")
	next := c.sc.ServiceURL("images") + "?" + q.Encode()
	for pages := 0; next != ""; pages++ {
		var page struct {
			Images []Image `json:"images"`
			Next   string  `json:"next"`
		}
		err := c.retry(ctx, "list images", func() error {
			_, err := c.sc.Get(ctx, next, &page, nil)
			return err
		})
		if err != nil {
			return classify(err, "listing images (page %d)", pages+1)
		}
		for i := range page.Images {
			if err := fn(&page.Images[i]); err != nil {
				return err
			}
		}
		next = ""
		if page.Next != "" && len(page.Images) > 0 {
			// next is a path such as /v2/images?marker=...&limit=..., which leaves out any
			// prefix the endpoint has (devstack serves Glance at /image): keep only its query.
			ref, err := url.Parse(page.Next)
			if err != nil {
				return fmt.Errorf("listing images: bad next link %q: %w", page.Next, err)
			}
			next = c.sc.ServiceURL("images") + "?" + ref.RawQuery
		}
	}
	return nil
}
