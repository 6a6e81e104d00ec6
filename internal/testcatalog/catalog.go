// Package testcatalog seeds a Glance with a catalog of small images of known kinds, made by the
// real qemu-img, for the integration tests and benchmarks of reprocess, reconcile and report.
// Start with Seed.
package testcatalog

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/glance-sidecar/glance-sidecar/glanceclient"
)

// Kind is what an image of the catalog is, and so what the sidecar must find in it.
type Kind string

// Kinds of image.
const (
	// Clean is a qcow2 declared qcow2: inspected, format qcow2, no problems.
	Clean Kind = "clean"
	// Backed is a qcow2 with a backing file: unsafe, backing_file.
	Backed Kind = "backed"
	// Mismatched is a qcow2 declared raw: unsafe, format_mismatch.
	Mismatched Kind = "mismatched"
)

// KindOf is the kind of the i-th image of a catalog: half clean, a quarter each backed and
// mismatched.
func KindOf(i int) Kind {
	switch i % 4 {
	case 2:
		return Backed
	case 3:
		return Mismatched
	}
	return Clean
}

// Image is one image of a seeded catalog.
type Image struct {
	ID   string
	Kind Kind
}

// NewProjectID returns a random project id (32 hex digits, as Keystone makes them), to own a
// catalog that nothing else in a shared cloud owns.
func NewProjectID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x", b)
}

// Seed creates n active images owned by owner (c must be an admin's to set another owner),
// parallel at a time, of the kinds KindOf says, from files qemu-img makes in dir (1 MiB virtual,
// about 200 KiB each). An image that fails is deleted and made again, up to 3 times, 5 and 10 s later. It returns the images it created, in order, also when it fails part way:
// the caller deletes them.
func Seed(ctx context.Context, c *glanceclient.Client, dir, owner string, n, parallel int) ([]Image, error) {
	files, err := makeFiles(ctx, dir)
	if err != nil {
		return nil, err
	}
	images := make([]Image, n)
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(parallel, 1))
	for i := range n {
		g.Go(func() error {
			kind := KindOf(i)
			name := fmt.Sprintf("gsc-catalog-%s-%03d", kind, i)
			for attempt := 1; ; attempt++ {
				id, err := upload(gctx, c, files[kind], name, kind, owner)
				if err == nil {
					mu.Lock()
					images[i] = Image{ID: id, Kind: kind}
					mu.Unlock()
					return nil
				}
				if id != "" {
					_ = c.Delete(context.WithoutCancel(gctx), id)
				}
				if attempt == attempts {
					return err
				}
				// Glance may be restarting (the test cloud is shared): give it time.
				select {
				case <-gctx.Done():
					return err
				case <-time.After(time.Duration(attempt) * 5 * time.Second):
				}
			}
		})
	}
	err = g.Wait()
	created := images[:0]
	for _, img := range images {
		if img.ID != "" {
			created = append(created, img)
		}
	}
	return created, err
}

// attempts is how many times an image is created and uploaded before Seed gives up.
const attempts = 3

// makeFiles makes the file of each kind with qemu-img.
func makeFiles(ctx context.Context, dir string) (map[Kind]string, error) {
	base := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(base, make([]byte, 512), 0o644); err != nil {
		return nil, err
	}
	files := map[Kind]string{}
	for kind, args := range map[Kind][]string{
		Clean:  {"-f", "qcow2"},
		Backed: {"-f", "qcow2", "-b", base, "-F", "raw"},
	} {
		path := filepath.Join(dir, string(kind)+".qcow2")
		cmd := exec.CommandContext(ctx, "qemu-img", append(append([]string{"create", "-q"}, args...), path, "1M")...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("qemu-img create %s: %w\n%s", kind, err, out)
		}
		files[kind] = path
	}
	files[Mismatched] = files[Clean] // the same bytes, declared raw
	return files, nil
}

// upload creates and uploads one image and waits until it is active. It returns the image's id
// once it is created, even when a later step fails.
func upload(ctx context.Context, c *glanceclient.Client, path, name string, kind Kind, owner string) (string, error) {
	declared := "qcow2"
	if kind == Mismatched {
		declared = "raw"
	}
	img, err := c.Create(ctx, glanceclient.CreateOptions{Name: name, DiskFormat: declared, ContainerFormat: "bare", Owner: owner})
	if err != nil {
		return "", fmt.Errorf("creating %s: %w", name, err)
	}
	_, uerr := c.UploadFile(ctx, img.ID, path)
	// An upload retried after a 5xx (Glance on SQLite answers "database is locked" under load)
	// may find the first try went through: 409, "saving to saving". Active is active.
	if _, err := c.WaitActive(ctx, img.ID, glanceclient.WaitOptions{Timeout: time.Minute}); err != nil {
		return img.ID, fmt.Errorf("uploading %s: %w", name, errors.Join(uerr, err))
	}
	return img.ID, nil
}

// Delete deletes the images, parallel at a time, trying each up to 3 times (2 and 4 s apart),
// and returns the failures.
func Delete(ctx context.Context, c *glanceclient.Client, ids []string, parallel int) error {
	var g errgroup.Group
	g.SetLimit(max(parallel, 1))
	var mu sync.Mutex
	var errs []error
	for _, id := range ids {
		g.Go(func() error {
			for attempt := 1; ; attempt++ {
				err := c.Delete(ctx, id)
				if err == nil || gone(ctx, c, id) {
					return nil
				}
				if attempt == attempts || ctx.Err() != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return nil
				}
				time.Sleep(time.Duration(attempt) * 2 * time.Second)
			}
		})
	}
	_ = g.Wait()
	return errors.Join(errs...)
}

// DeleteOwned deletes every image of owner, hidden ones included, as Delete does. The images of
// a project made up for a test are all the test's, including those that a sidecar another test
// runs made from them (a converted copy keeps its original's owner).
func DeleteOwned(ctx context.Context, c *glanceclient.Client, owner string, parallel int) error {
	if owner == "" {
		return errors.New("no owner: that would be every image")
	}
	var ids []string
	for _, hidden := range []bool{false, true} {
		err := c.List(ctx, glanceclient.ListOptions{Owner: owner, Hidden: hidden}, func(img *glanceclient.Image) error {
			if img.Status != "deleted" {
				ids = append(ids, img.ID)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return Delete(ctx, c, ids, parallel)
}

// gone says whether an image whose deletion failed is gone after all: a DELETE that Glance
// on SQLite answered 500 ("database is locked") may have been carried out, and the retry is
// then refused with 400 ("deleted to deleted").
func gone(ctx context.Context, c *glanceclient.Client, id string) bool {
	img, err := c.Get(ctx, id)
	return errors.Is(err, glanceclient.ErrNotFound) || err == nil && img.Status == "deleted"
}
