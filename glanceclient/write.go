package glanceclient

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"

	"github.com/gophercloud/gophercloud/v2"
)

// CreateOptions describe a new image.
type CreateOptions struct {
	// ID is the id to give the image. Optional; a caller-chosen id (a UUIDv5 of what the image is
	// derived from) makes creating idempotent: a second Create fails with ErrConflict.
	ID              string
	Name            string
	DiskFormat      string
	ContainerFormat string
	// Visibility is public, community, shared or private (Glance's default: shared).
	Visibility string
	// Owner is the owning project; another project than the caller's needs admin.
	Owner     string
	Protected bool
	Hidden    bool
	MinDisk   int
	MinRAM    int
	Tags      []string
	// Properties are extra properties; their keys are checked as PatchProperties checks them.
	Properties map[string]string
}

// Create creates an image record (status queued) and returns it.
func (c *Client) Create(ctx context.Context, opts CreateOptions) (*Image, error) {
	body := map[string]any{}
	for k, v := range opts.Properties {
		if err := CheckPropertyKey(k); err != nil {
			return nil, err
		}
		body[k] = v
	}
	set := func(k, v string) {
		if v != "" {
			body[k] = v
		}
	}
	set("id", opts.ID)
	set("name", opts.Name)
	set("disk_format", opts.DiskFormat)
	set("container_format", opts.ContainerFormat)
	set("visibility", opts.Visibility)
	set("owner", opts.Owner)
	if opts.Protected {
		body["protected"] = true
	}
	if opts.Hidden {
		body["os_hidden"] = true
	}
	if opts.MinDisk > 0 {
		body["min_disk"] = opts.MinDisk
	}
	if opts.MinRAM > 0 {
		body["min_ram"] = opts.MinRAM
	}
	if len(opts.Tags) > 0 {
		body["tags"] = opts.Tags
	}
	var img Image
	err := c.retry(ctx, "create image", func() error {
		_, err := c.sc.Post(ctx, c.sc.ServiceURL("images"), body, &img, &gophercloud.RequestOpts{OkCodes: []int{http.StatusCreated}})
		return err
	})
	if err != nil {
		return nil, classify(err, "creating image %q", opts.Name)
	}
	return &img, nil
}

// Upload sends size bytes of data as the image's data (PUT /file; the image must be queued).
// data is read through a fresh section reader on every try, so the retry after a 401 (token
// expired, re-authenticated) and after a 5xx sends the whole image again.
func (c *Client) Upload(ctx context.Context, id string, data io.ReaderAt, size int64) error {
	reauthed := false
	err := c.retry(ctx, "upload", func() error {
		err := c.putData(ctx, id, io.NewSectionReader(data, 0, size), size)
		if statusOf(err) == http.StatusUnauthorized && !reauthed {
			// The token expired: renew it, and send the data again whole.
			reauthed = true
			if rerr := c.sc.ProviderClient.Reauthenticate(ctx, c.sc.ProviderClient.Token()); rerr != nil {
				return errors.Join(err, rerr)
			}
			return c.putData(ctx, id, io.NewSectionReader(data, 0, size), size)
		}
		return err
	})
	return classify(err, "uploading %d bytes to image %s", size, id)
}

// putData sends one PUT of an image's data. It does not go through Gophercloud's request path,
// which after re-authenticating sends the request again with the same body, possibly while the
// first request still reads it; and it says the Content-Length, which Gophercloud cannot
// (Glance's eventlet server reads chunked bodies at half the speed).
func (c *Client) putData(ctx context.Context, id string, body io.Reader, size int64) error {
	pc := c.sc.ProviderClient
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, c.imageURL(id, "file"), io.LimitReader(body, size))
	if err != nil {
		return err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("x-openstack-image-size", strconv.FormatInt(size, 10))
	req.Header.Set("User-Agent", pc.UserAgent.Join())
	for k, v := range pc.AuthenticatedHeaders() {
		req.Header.Set(k, v)
	}
	resp, err := pc.HTTPClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusNoContent {
		return gophercloud.ErrUnexpectedResponseCode{Method: req.Method, URL: req.URL.String(), Expected: []int{http.StatusNoContent},
			Actual: resp.StatusCode, Body: msg, ResponseHeader: resp.Header}
	}
	return nil
}

// UploadFile uploads the file at path as the image's data, as Upload does, and returns its size.
func (c *Client) UploadFile(ctx context.Context, id, path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), c.Upload(ctx, id, f, st.Size())
}

// UploadStream sends size bytes read from r as the image's data, in one request: for data that
// exists only as a stream (a conversion's output). It cannot retry, since r is read once: a GET
// of the image just before lets Gophercloud renew an expired token then (Keystone checks a token
// when a request starts). On any failure, an r that ends early or fails included, Glance puts
// the image back to queued and the caller starts again whole.
func (c *Client) UploadStream(ctx context.Context, id string, r io.Reader, size int64) error {
	if _, err := c.Get(ctx, id); err != nil {
		return err
	}
	return classify(c.putData(ctx, id, r, size), "uploading %d bytes to image %s as a stream", size, id)
}

// Deactivate makes an active image's data unavailable to non-admins (idempotent).
func (c *Client) Deactivate(ctx context.Context, id string) error {
	return c.action(ctx, id, "deactivate")
}

// Reactivate makes a deactivated image active again (idempotent).
func (c *Client) Reactivate(ctx context.Context, id string) error {
	return c.action(ctx, id, "reactivate")
}

func (c *Client) action(ctx context.Context, id, action string) error {
	err := c.retry(ctx, action, func() error {
		_, err := c.sc.Post(ctx, c.imageURL(id, "actions", action), nil, nil, &gophercloud.RequestOpts{OkCodes: []int{http.StatusNoContent}})
		return err
	})
	return classify(err, "%s image %s", action, id)
}

// SetHidden sets os_hidden: hidden images are left out of image lists.
func (c *Client) SetHidden(ctx context.Context, id string, hidden bool) error {
	ops := []patchOp{{Op: "replace", Path: "/os_hidden", Value: hidden}}
	err := c.retry(ctx, "set hidden", func() error {
		_, err := c.sc.Patch(ctx, c.imageURL(id), ops, nil, &gophercloud.RequestOpts{
			MoreHeaders: map[string]string{"Content-Type": patchContentType},
			OkCodes:     []int{http.StatusOK},
		})
		return err
	})
	return classify(err, "setting os_hidden=%v on image %s", hidden, id)
}

// AddTag adds a tag (idempotent).
func (c *Client) AddTag(ctx context.Context, id, tag string) error {
	err := c.retry(ctx, "add tag", func() error {
		_, err := c.sc.Put(ctx, c.imageURL(id, "tags", url.PathEscape(tag)), nil, nil, &gophercloud.RequestOpts{OkCodes: []int{http.StatusNoContent}})
		return err
	})
	return classify(err, "tagging image %s with %q", id, tag)
}

// RemoveTag removes a tag; removing a tag the image does not have is ErrNotFound.
func (c *Client) RemoveTag(ctx context.Context, id, tag string) error {
	err := c.retry(ctx, "remove tag", func() error {
		_, err := c.sc.Delete(ctx, c.imageURL(id, "tags", url.PathEscape(tag)), &gophercloud.RequestOpts{OkCodes: []int{http.StatusNoContent}})
		return err
	})
	return classify(err, "removing tag %q from image %s", tag, id)
}

// Delete deletes the image. Deleting one that is already gone is ErrNotFound.
func (c *Client) Delete(ctx context.Context, id string) error {
	err := c.retry(ctx, "delete image", func() error {
		_, err := c.sc.Delete(ctx, c.imageURL(id), &gophercloud.RequestOpts{OkCodes: []int{http.StatusNoContent}})
		return err
	})
	if err != nil {
		return classify(err, "deleting image %s", id)
	}
	return nil
}
