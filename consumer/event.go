// Package consumer turns the outside world into Events for glance-sidecar: Glance's
// notifications from RabbitMQ (the oslo.messaging envelope, the sidecar's own durable queue,
// manual acks, retries through a delay queue, a dead-letter queue) and the same events from an
// authenticated HTTP webhook.
//
// Start with [Event], [Handler] and [Decode]; then [AMQPSource] (source.go) and [Webhook]
// (webhook.go). A Handler's answer decides a message's fate: nil acks it, a [Permanent] error
// dead-letters it at once, any other error retries it later, and after the last attempt
// dead-letters it with the reason. Nothing is acknowledged before the handler returns.
package consumer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Event is one thing that happened to an image that the sidecar may act on.
type Event struct {
	// Type is the notification's event_type: image.upload, image.activate, image.update or
	// image.delete.
	Type string
	// ImageID is the image the event is about.
	ImageID string
	// Status is the image status the payload carried ("" when the event had no payload).
	Status string
	// Checksum is the payload's checksum, to tell a new upload from a repeated event.
	Checksum string
	// MessageID is oslo's message_id ("" for a webhook event without one).
	MessageID string
	// Timestamp is when Glance sent the notification (zero when unknown).
	Timestamp time.Time
	// Source says where the event came from: "amqp" or "webhook".
	Source string
	// Attempt is the delivery attempt, from 1.
	Attempt int
}

// Handler acts on events. Handle must be safe for concurrent use. Its error decides what
// happens to the message: nil means done (acknowledged); an error wrapped with Permanent
// means it can never succeed (dead-lettered at once); any other error is transient (retried
// later, then dead-lettered when the attempts run out).
type Handler interface {
	Handle(ctx context.Context, ev Event) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, ev Event) error

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, ev Event) error { return f(ctx, ev) }

type permanentError struct{ err error }

func (e permanentError) Error() string { return "permanent: " + e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as one that retrying cannot fix.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

// ErrIgnored is returned by Decode for a well-formed message the sidecar does not act on (an
// event type it does not handle, an image.update that is not an activation, an ERROR payload).
var ErrIgnored = errors.New("not an event the sidecar acts on")

// ErrMalformed is wrapped by the error Decode returns for a message that cannot be decoded.
var ErrMalformed = errors.New("malformed message")

// relevant are the event types the sidecar acts on.
var relevant = map[string]bool{"image.upload": true, "image.activate": true, "image.update": true, "image.delete": true}

// Decode reads a message body: the oslo.messaging 2.0 envelope ({"oslo.version": "2.0",
// "oslo.message": "<JSON text>"}), a bare 1.0 notification ({"event_type", "payload", ...}), or
// the webhook's short form {"image_id": "...", "event_type": "..."}. It returns ErrIgnored
// for messages that are fine but not for the sidecar, and an error wrapping ErrMalformed for
// anything it cannot read.
func Decode(body []byte) (Event, error) {
	var outer map[string]json.RawMessage
	if err := json.Unmarshal(body, &outer); err != nil {
		return Event{}, fmt.Errorf("%w: not a JSON object: %v", ErrMalformed, err)
	}
	if raw, ok := outer["oslo.message"]; ok {
		var ver string
		if err := json.Unmarshal(outer["oslo.version"], &ver); err != nil || !strings.HasPrefix(ver, "2.") {
			return Event{}, fmt.Errorf("%w: oslo.version %s is not 2.x", ErrMalformed, outer["oslo.version"])
		}
		var inner string
		if err := json.Unmarshal(raw, &inner); err != nil {
			return Event{}, fmt.Errorf("%w: oslo.message is not a JSON string: %v", ErrMalformed, err)
		}
		outer = nil
		if err := json.Unmarshal([]byte(inner), &outer); err != nil {
			return Event{}, fmt.Errorf("%w: oslo.message holds no JSON object: %v", ErrMalformed, err)
		}
	}
	var n struct {
		EventType string          `json:"event_type"`
		MessageID string          `json:"message_id"`
		Priority  string          `json:"priority"`
		Timestamp string          `json:"timestamp"`
		Payload   json.RawMessage `json:"payload"`
		ImageID   string          `json:"image_id"`
	}
	if err := remarshal(outer, &n); err != nil {
		return Event{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if n.EventType == "" {
		return Event{}, fmt.Errorf("%w: no event_type", ErrMalformed)
	}
	ev := Event{Type: n.EventType, MessageID: n.MessageID, ImageID: n.ImageID}
	ev.Timestamp, _ = parseTimestamp(n.Timestamp)
	if !relevant[n.EventType] {
		return ev, ErrIgnored
	}
	if p := bytes.TrimSpace(n.Payload); len(p) > 0 && p[0] == '{' {
		var payload struct {
			ID       string `json:"id"`
			Status   string `json:"status"`
			Checksum string `json:"checksum"`
		}
		if err := json.Unmarshal(p, &payload); err != nil {
			return ev, fmt.Errorf("%w: payload: %v", ErrMalformed, err)
		}
		ev.ImageID = firstNonEmpty(payload.ID, ev.ImageID)
		ev.Status, ev.Checksum = payload.Status, payload.Checksum
	} else if len(p) > 0 && string(p) != "null" {
		// Glance's ERROR notifications carry a plain string: nothing to act on.
		return ev, ErrIgnored
	}
	if strings.EqualFold(n.Priority, "ERROR") {
		return ev, ErrIgnored
	}
	if ev.ImageID == "" {
		return ev, fmt.Errorf("%w: %s without an image id", ErrMalformed, ev.Type)
	}
	if ev.Type == "image.update" && ev.Status != "active" {
		// Only an update to active matters: images activated by adding a location send no
		// image.upload. Property updates (including the sidecar's own) are ignored.
		return ev, ErrIgnored
	}
	return ev, nil
}

func remarshal(m map[string]json.RawMessage, v any) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// parseTimestamp reads oslo's "2006-01-02 15:04:05.999999" (UTC), or RFC 3339.
func parseTimestamp(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, errors.New("no timestamp")
	}
	if t, err := time.Parse("2006-01-02 15:04:05.999999999", s); err == nil {
		return t.UTC(), nil
	}
	return time.Parse(time.RFC3339Nano, s)
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
