package consumer

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// notifications are real message bodies captured from Glance 25.1.0 on RabbitMQ (copied from
// shared/reference/notifications).
const notifications = "testdata/notifications"

func TestDecodeCapturedNotifications(t *testing.T) {
	tests := []struct {
		file   string
		typ    string
		status string
		err    error
	}{
		{"image.upload.json", "image.upload", "active", nil},
		{"image.activate.json", "image.activate", "active", nil},
		{"image.update.json", "image.update", "active", nil},
		{"image.delete.json", "image.delete", "deleted", nil},
		{"image.update.deactivated.json", "image.update", "deactivated", ErrIgnored},
		{"image.create.json", "image.create", "", ErrIgnored},
		{"image.prepare.json", "image.prepare", "", ErrIgnored},
		{"image.send.json", "image.send", "", ErrIgnored},
		{"image.upload.error.json", "image.upload", "", ErrIgnored},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			body, err := os.ReadFile(filepath.Join(notifications, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			ev, err := Decode(body)
			if !errors.Is(err, tt.err) || (tt.err == nil && err != nil) {
				t.Fatalf("err %v, want %v", err, tt.err)
			}
			if ev.Type != tt.typ || ev.Status != tt.status {
				t.Fatalf("event %+v", ev)
			}
			if tt.err == nil && (ev.ImageID == "" || ev.MessageID == "" || ev.Timestamp.IsZero()) {
				t.Fatalf("event %+v lacks id, message id or time", ev)
			}
		})
	}
}

func TestDecodeForms(t *testing.T) {
	tests := []struct {
		name string
		body string
		id   string
		err  error
	}{
		{"bare 1.0 notification", `{"event_type":"image.upload","message_id":"m","priority":"INFO","timestamp":"2026-11-22 04:58:55.586049","payload":{"id":"i1","status":"active","checksum":"c"}}`, "i1", nil},
		{"webhook short form", `{"image_id":"i2","event_type":"image.upload"}`, "i2", nil},
		{"envelope of another version", `{"oslo.version":"3.0","oslo.message":"{}"}`, "", ErrMalformed},
		{"oslo.message an object", `{"oslo.version":"2.0","oslo.message":{"event_type":"image.upload"}}`, "", ErrMalformed},
		{"oslo.message not JSON", `{"oslo.version":"2.0","oslo.message":"{"}`, "", ErrMalformed},
		{"not JSON", `hello`, "", ErrMalformed},
		{"a JSON array", `[1,2]`, "", ErrMalformed},
		{"no event type", `{"image_id":"i"}`, "", ErrMalformed},
		{"no image id", `{"event_type":"image.upload","payload":{"status":"active"}}`, "", ErrMalformed},
		{"payload not an object", `{"event_type":"image.upload","payload":[1]}`, "", ErrIgnored},
		{"payload with a bad id", `{"event_type":"image.upload","payload":{"id":5}}`, "", ErrMalformed},
		{"update to saving", `{"event_type":"image.update","payload":{"id":"i","status":"saving"}}`, "i", ErrIgnored},
		{"error priority", `{"event_type":"image.upload","priority":"ERROR","payload":{"id":"i"}}`, "i", ErrIgnored},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := Decode([]byte(tt.body))
			if !errors.Is(err, tt.err) || (tt.err == nil && err != nil) {
				t.Fatalf("err %v, want %v", err, tt.err)
			}
			if tt.err == nil && ev.ImageID != tt.id {
				t.Fatalf("image id %q, want %q", ev.ImageID, tt.id)
			}
		})
	}
	ev, _ := Decode([]byte(tests[0].body))
	if want := time.Date(2026, 11, 22, 4, 58, 55, 586049000, time.UTC); !ev.Timestamp.Equal(want) {
		t.Fatalf("timestamp %v", ev.Timestamp)
	}
}

func FuzzDecode(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(notifications, "*.json"))
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(`{"image_id":"i2","event_type":"image.upload"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := Decode(body)
		if err == nil && (ev.ImageID == "" || !relevant[ev.Type]) {
			t.Fatalf("accepted %+v", ev)
		}
	})
}

func TestPermanent(t *testing.T) {
	base := errors.New("boom")
	if !IsPermanent(Permanent(base)) || IsPermanent(base) || !errors.Is(Permanent(base), base) || Permanent(nil) != nil {
		t.Fatal("Permanent does not mark or unwrap")
	}
}
