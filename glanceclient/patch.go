package glanceclient

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
)

const patchContentType = "application/openstack-images-v2.1-json-patch"

// maxKeyLen is the longest property key Glance stores (a VARCHAR(255) column).
const maxKeyLen = 255

type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// CheckPropertyKey says whether Glance would accept key as an extra property name: at most
// 255 characters, not empty, not a base attribute, not reserved (os_glance_*).
func CheckPropertyKey(key string) error {
	switch {
	case key == "" || strings.TrimSpace(key) != key:
		return fmt.Errorf("%w: key %q is empty or has surrounding spaces", ErrInvalidProperty, key)
	case len(key) > maxKeyLen:
		return fmt.Errorf("%w: key %.40q… is %d characters, more than %d", ErrInvalidProperty, key, len(key), maxKeyLen)
	case strings.HasPrefix(key, "os_glance"):
		return fmt.Errorf("%w: key %q is reserved by Glance", ErrInvalidProperty, key)
	case baseAttributes[key]:
		return fmt.Errorf("%w: %q is an image attribute, not a property", ErrInvalidProperty, key)
	}
	return nil
}

// PatchProperties sets and removes extra properties in one JSON-patch request. For each key,
// add or replace is chosen from the image's current properties, and a removal of a property
// that is not there is left out, so no 409 arises from them; a read-back then confirms that
// every change stuck (ErrNotPersisted otherwise: a concurrent update replaced the properties).
// It returns the image as read back.
func (c *Client) PatchProperties(ctx context.Context, id string, set map[string]string, remove []string) (*Image, error) {
	for k := range set {
		if err := CheckPropertyKey(k); err != nil {
			return nil, err
		}
	}
	for _, k := range remove {
		if err := CheckPropertyKey(k); err != nil {
			return nil, err
		}
		if _, ok := set[k]; ok {
			return nil, fmt.Errorf("%w: key %q is both set and removed", ErrInvalidProperty, k)
		}
	}
	cur, err := c.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	ops := patchOps(cur, set, remove)
	if len(ops) > 0 {
		err = c.retry(ctx, "patch image", func() error {
			_, err := c.sc.Patch(ctx, c.imageURL(id), ops, nil, &gophercloud.RequestOpts{
				MoreHeaders: map[string]string{"Content-Type": patchContentType},
				OkCodes:     []int{200},
			})
			return err
		})
		if err != nil {
			return nil, classify(err, "patching image %s (%d changes)", id, len(ops))
		}
	}
	got, err := c.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	for k, v := range set {
		if have, ok := got.Properties[k]; !ok || have != v {
			return got, fmt.Errorf("image %s: property %q reads back as %q: %w", id, k, have, ErrNotPersisted)
		}
	}
	for _, k := range remove {
		if _, ok := got.Properties[k]; ok {
			return got, fmt.Errorf("image %s: property %q is still there: %w", id, k, ErrNotPersisted)
		}
	}
	return got, nil
}

// patchOps builds the operations that take cur to the wanted properties, in a stable order.
func patchOps(cur *Image, set map[string]string, remove []string) []patchOp {
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var ops []patchOp
	for _, k := range keys {
		v := set[k]
		have, exists := cur.Properties[k]
		switch {
		case exists && have == v:
		case exists:
			ops = append(ops, patchOp{"replace", pointer(k), v})
		default:
			ops = append(ops, patchOp{"add", pointer(k), v})
		}
	}
	for _, k := range remove {
		if _, exists := cur.Properties[k]; exists {
			ops = append(ops, patchOp{Op: "remove", Path: pointer(k)})
		}
	}
	return ops
}

// pointer is the JSON pointer of a top-level key (RFC 6901: ~ is ~0, / is ~1).
func pointer(key string) string {
	return "/" + strings.NewReplacer("~", "~0", "/", "~1").Replace(key)
}
