package glanceclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/gophercloud/gophercloud/v2"
)

// Errors callers act on. Errors returned by Client wrap one of these where it applies, and the
// underlying Gophercloud error too.
var (
	// ErrNotFound: the image does not exist or was deleted (404, 410).
	ErrNotFound = errors.New("image not found")
	// ErrForbidden: policy or a protected, read-only or reserved attribute refused the call (403).
	ErrForbidden = errors.New("forbidden")
	// ErrConflict: the image's state does not allow the call, or the id already exists (409).
	ErrConflict = errors.New("conflict")
	// ErrQuota: a property, tag or image quota would be exceeded (413).
	ErrQuota = errors.New("quota exceeded")
	// ErrRangeUnsupported: the store refuses ranged reads (400 or 416 to a Range request, or a
	// 200 without a range); read the image as a stream instead.
	ErrRangeUnsupported = errors.New("the image store does not serve byte ranges")
	// ErrChecksumMismatch: downloaded data does not hash to the image's checksum.
	ErrChecksumMismatch = errors.New("checksum mismatch")
	// ErrNoData: the image has no data yet (204).
	ErrNoData = errors.New("image has no data")
	// ErrNotActive: WaitActive saw the image reach a state it will not leave for active
	// (deactivated, killed, deleted), or gave up at its deadline.
	ErrNotActive = errors.New("image is not active")
	// ErrInvalidProperty: a property key or value Glance would refuse.
	ErrInvalidProperty = errors.New("invalid property")
	// ErrNotPersisted: a PATCH was accepted, but reading the image back does not show it (a
	// concurrent update replaced the properties).
	ErrNotPersisted = errors.New("property update did not persist")
)

// statusOf returns the HTTP status in a Gophercloud error, or 0.
func statusOf(err error) int {
	var e gophercloud.ErrUnexpectedResponseCode
	if errors.As(err, &e) {
		return e.Actual
	}
	return 0
}

// classify wraps err with the sentinel for its HTTP status and what was being done.
func classify(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	what := fmt.Sprintf(format, args...)
	var sentinel error
	switch statusOf(err) {
	case http.StatusNotFound, http.StatusGone:
		sentinel = ErrNotFound
	case http.StatusForbidden:
		sentinel = ErrForbidden
	case http.StatusConflict:
		sentinel = ErrConflict
	case http.StatusRequestEntityTooLarge:
		sentinel = ErrQuota
	}
	if sentinel != nil {
		return fmt.Errorf("%s: %w: %w", what, sentinel, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// retryable says whether trying again may help: connection failures and 5xx, never other 4xx.
func retryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if s := statusOf(err); s != 0 {
		return s >= 500
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// retry runs call until it succeeds, fails in a way retrying cannot fix, the context ends, or
// the tries run out, sleeping a capped exponential backoff with full jitter between tries.
func (c *Client) retry(ctx context.Context, what string, call func() error) error {
	delay := c.opts.RetryBase
	for attempt := 0; ; attempt++ {
		err := call()
		if err == nil || !retryable(err) || attempt >= c.opts.Retries {
			return err
		}
		sleep := time.Duration(rand.Int64N(int64(delay) + 1))
		c.log.LogAttrs(ctx, slog.LevelWarn, "glance call failed, retrying",
			slog.String("call", what), slog.Int("attempt", attempt+1), slog.Duration("backoff", sleep), slog.Any("error", err))
		t := time.NewTimer(sleep)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(err, ctx.Err())
		case <-t.C:
		}
		delay = min(delay*2, c.opts.RetryMax)
	}
}
