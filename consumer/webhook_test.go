package consumer

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const testSecret = "0123456789abcdef-test-secret"

// testNow is the fixed clock of the webhook tests.
var testNow = time.Date(2026, 11, 22, 5, 0, 0, 0, time.UTC)

// recorder is a Handler that records the events it gets and returns errs[i] on call i.
type recorder struct {
	mu     sync.Mutex
	events []Event
	errs   []error
}

func (r *recorder) Handle(ctx context.Context, ev Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
	if i := len(r.events) - 1; i < len(r.errs) {
		return r.errs[i]
	}
	return nil
}

func (r *recorder) calls() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...)
}

func writeSecret(tb testing.TB, content string) string {
	tb.Helper()
	name := filepath.Join(tb.TempDir(), "secret")
	if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
		tb.Fatal(err)
	}
	return name
}

// startServer serves NewServer's handler, timeouts included, on a loopback httptest server.
func startServer(tb testing.TB, hook *Webhook, ready func() error, reg prometheus.Gatherer) *httptest.Server {
	tb.Helper()
	ts := httptest.NewUnstartedServer(nil)
	ts.Config = NewServer("", hook, ready, reg)
	ts.Start()
	tb.Cleanup(ts.Close)
	return ts
}

// newTestWebhook returns a webhook with the test secret and clock, and a server for it.
func newTestWebhook(t *testing.T, h Handler) (*Webhook, *httptest.Server, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	hook, err := NewWebhook(WebhookOptions{
		SecretFile: writeSecret(t, testSecret+"\n"),
		Logger:     slog.New(slog.DiscardHandler),
		Now:        func() time.Time { return testNow },
		Registerer: reg,
	}, h)
	if err != nil {
		t.Fatal(err)
	}
	return hook, startServer(t, hook, nil, reg), reg
}

// signedRequest returns a POST of body to /v1/events signed with secret at time at.
func signedRequest(t *testing.T, url, secret string, at time.Time, body []byte) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+"/v1/events", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	ts := strconv.FormatInt(at.Unix(), 10)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(TimestampHeader, ts)
	req.Header.Set(SignatureHeader, SignWebhook([]byte(secret), ts, body))
	return req
}

// answer is a webhook response body.
type answer struct {
	Status    string `json:"status"`
	ImageID   string `json:"image_id"`
	EventType string `json:"event_type"`
	Error     string `json:"error"`
}

// do sends req and returns the status code, the decoded JSON body, and the headers.
func do(t *testing.T, req *http.Request) (int, answer, http.Header) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), testSecret) {
		t.Fatalf("answer %s contains the secret", raw)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q of %s", ct, raw)
	}
	var a answer
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		t.Fatalf("answer %s: %v", raw, err)
	}
	if (a.Error == "") == (a.Status == "") {
		t.Fatalf("answer %s has neither or both of status and error", raw)
	}
	return resp.StatusCode, a, resp.Header
}

func readNotification(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(notifications, file))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// innerMessage returns the oslo.message of an envelope: a bare notification.
func innerMessage(t *testing.T, envelope []byte) []byte {
	t.Helper()
	var env struct {
		Message string `json:"oslo.message"`
	}
	if err := json.Unmarshal(envelope, &env); err != nil {
		t.Fatal(err)
	}
	return []byte(env.Message)
}

// onlyReader hides bytes.Reader's type so that the client sends the body chunked.
type onlyReader struct{ io.Reader }

func TestWebhookStatus(t *testing.T) {
	upload := readNotification(t, "image.upload.json")
	short := []byte(`{"image_id":"i-1","event_type":"image.upload"}`)
	window := DefaultWebhookWindow
	set := func(k, v string) func(http.Header) { return func(h http.Header) { h.Set(k, v) } }
	del := func(k string) func(http.Header) { return func(h http.Header) { h.Del(k) } }
	// resign signs again with the given timestamp header, so that only its format is wrong.
	resign := func(ts string) func(http.Header) {
		return func(h http.Header) {
			h.Set(TimestampHeader, ts)
			h.Set(SignatureHeader, SignWebhook([]byte(testSecret), ts, short))
		}
	}
	validSig := SignWebhook([]byte(testSecret), strconv.FormatInt(testNow.Unix(), 10), short)
	tests := []struct {
		name    string
		method  string        // default POST
		body    []byte        // default short
		at      time.Duration // signing time relative to testNow
		edit    func(http.Header)
		chunked bool
		errs    []error // the handler's answers, call by call
		want    []int   // the status codes of successive sends of the same request
		answer  string  // "accepted", "ignored", or a part of the error
		calls   int     // handler calls
	}{
		{name: "accepted envelope", body: upload, want: []int{202}, answer: "accepted", calls: 1},
		{name: "accepted activate", body: readNotification(t, "image.activate.json"), want: []int{202}, answer: "accepted", calls: 1},
		{name: "accepted update to active", body: readNotification(t, "image.update.json"), want: []int{202}, answer: "accepted", calls: 1},
		{name: "accepted delete", body: readNotification(t, "image.delete.json"), want: []int{202}, answer: "accepted", calls: 1},
		{name: "accepted inner message", body: innerMessage(t, upload), want: []int{202}, answer: "accepted", calls: 1},
		{name: "accepted short form", want: []int{202}, answer: "accepted", calls: 1},
		{name: "accepted charset utf-8", edit: set("Content-Type", "application/json; charset=UTF-8"), want: []int{202}, answer: "accepted", calls: 1},
		{name: "accepted at the window's past edge", at: -window, want: []int{202}, answer: "accepted", calls: 1},
		{name: "accepted at the window's future edge", at: window, want: []int{202}, answer: "accepted", calls: 1},
		{name: "accepted uppercase hex", edit: set(SignatureHeader, "sha256="+strings.ToUpper(strings.TrimPrefix(validSig, "sha256="))), want: []int{202}, answer: "accepted", calls: 1},
		{name: "ignored create", body: readNotification(t, "image.create.json"), want: []int{202}, answer: "ignored"},
		{name: "ignored update to deactivated", body: readNotification(t, "image.update.deactivated.json"), want: []int{202}, answer: "ignored"},
		{name: "ignored error notification", body: readNotification(t, "image.upload.error.json"), want: []int{202}, answer: "ignored"},
		{name: "ignored prepare", body: readNotification(t, "image.prepare.json"), want: []int{202}, answer: "ignored"},
		{name: "ignored send", body: readNotification(t, "image.send.json"), want: []int{202}, answer: "ignored"},
		{name: "bad JSON", body: []byte(`{"image_id":`), want: []int{400}, answer: "malformed"},
		{name: "JSON array", body: []byte(`[1]`), want: []int{400}, answer: "malformed"},
		{name: "missing image id", body: []byte(`{"event_type":"image.upload"}`), want: []int{400}, answer: "without an image id"},
		{name: "missing signature", edit: del(SignatureHeader), want: []int{401}, answer: "missing X-Signature"},
		{name: "bad signature", edit: set(SignatureHeader, SignWebhook([]byte("another-secret-of-16+"), strconv.FormatInt(testNow.Unix(), 10), short)), want: []int{401}, answer: "does not match"},
		{name: "signature of another body", edit: set(SignatureHeader, SignWebhook([]byte(testSecret), strconv.FormatInt(testNow.Unix(), 10), upload)), want: []int{401}, answer: "does not match"},
		{name: "timestamp changed after signing", edit: set(TimestampHeader, strconv.FormatInt(testNow.Unix()+1, 10)), want: []int{401}, answer: "does not match"},
		{name: "signature without prefix", edit: set(SignatureHeader, strings.TrimPrefix(validSig, "sha256=")), want: []int{401}, answer: "malformed X-Signature"},
		{name: "signature of another hash", edit: set(SignatureHeader, "sha1="+strings.TrimPrefix(validSig, "sha256=")), want: []int{401}, answer: "malformed X-Signature"},
		{name: "signature too short", edit: set(SignatureHeader, validSig[:len(validSig)-2]), want: []int{401}, answer: "malformed X-Signature"},
		{name: "signature not hex", edit: set(SignatureHeader, validSig[:len(validSig)-1]+"g"), want: []int{401}, answer: "malformed X-Signature"},
		{name: "signature twice", edit: func(h http.Header) { h.Add(SignatureHeader, validSig) }, want: []int{401}, answer: "malformed X-Signature"},
		{name: "missing timestamp", edit: del(TimestampHeader), want: []int{401}, answer: "missing X-Signature-Timestamp"},
		{name: "timestamp not a number", edit: resign("yesterday"), want: []int{401}, answer: "malformed X-Signature-Timestamp"},
		{name: "timestamp RFC 3339", edit: resign(testNow.Format(time.RFC3339)), want: []int{401}, answer: "malformed X-Signature-Timestamp"},
		{name: "timestamp with a sign", edit: resign("+" + strconv.FormatInt(testNow.Unix(), 10)), want: []int{401}, answer: "malformed X-Signature-Timestamp"},
		{name: "timestamp with a fraction", edit: resign(strconv.FormatInt(testNow.Unix(), 10) + ".5"), want: []int{401}, answer: "malformed X-Signature-Timestamp"},
		{name: "timestamp in milliseconds", edit: resign(strconv.FormatInt(testNow.UnixMilli(), 10)), want: []int{401}, answer: "outside"},
		{name: "timestamp too long", edit: resign(strings.Repeat("9", 40)), want: []int{401}, answer: "malformed X-Signature-Timestamp"},
		{name: "timestamp twice", edit: func(h http.Header) { h.Add(TimestampHeader, h.Get(TimestampHeader)) }, want: []int{401}, answer: "malformed X-Signature-Timestamp"},
		{name: "timestamp before the window", at: -window - time.Second, want: []int{401}, answer: "outside"},
		{name: "timestamp after the window", at: window + time.Second, want: []int{401}, answer: "outside"},
		{name: "exact replay", want: []int{202, 401}, answer: "already seen", calls: 1},
		{name: "replay of an ignored event", body: readNotification(t, "image.create.json"), want: []int{202, 401}, answer: "already seen"},
		{name: "replay of a permanent failure", errs: []error{Permanent(errors.New("no such image"))}, want: []int{422, 401}, answer: "already seen", calls: 1},
		{name: "resend after 503", errs: []error{errors.New("glance down")}, want: []int{503, 202, 401}, answer: "already seen", calls: 2},
		{name: "GET", method: http.MethodGet, want: []int{405}, answer: "not allowed"},
		{name: "PUT", method: http.MethodPut, want: []int{405}, answer: "not allowed"},
		{name: "body over 1 MiB", body: append(append([]byte(`{"image_id":"i-1","event_type":"image.upload","x":"`), bytes.Repeat([]byte("x"), 1<<20)...), `"}`...), want: []int{413}, answer: "body larger"},
		{name: "chunked body over 1 MiB", chunked: true, body: append(append([]byte(`{"image_id":"i-1","event_type":"image.upload","x":"`), bytes.Repeat([]byte("x"), 1<<20)...), `"}`...), want: []int{413}, answer: "body larger"},
		{name: "chunked body", chunked: true, want: []int{202}, answer: "accepted", calls: 1},
		{name: "text/plain", edit: set("Content-Type", "text/plain"), want: []int{415}, answer: "Content-Type"},
		{name: "no content type", edit: del("Content-Type"), want: []int{415}, answer: "Content-Type"},
		{name: "JSON in latin-1", edit: set("Content-Type", "application/json; charset=iso-8859-1"), want: []int{415}, answer: "Content-Type"},
		{name: "content type garbled", edit: set("Content-Type", "application/json; ;"), want: []int{415}, answer: "Content-Type"},
		{name: "permanent handler error", errs: []error{fmt.Errorf("image gone: %w", Permanent(errors.New("404")))}, want: []int{422}, answer: "cannot be processed", calls: 1},
		{name: "transient handler error", errs: []error{errors.New("glance down")}, want: []int{503}, answer: "retry later", calls: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &recorder{errs: tt.errs}
			_, srv, _ := newTestWebhook(t, h)
			body := tt.body
			if body == nil {
				body = short
			}
			var code int
			var a answer
			for i, want := range tt.want {
				req := signedRequest(t, srv.URL, testSecret, testNow.Add(tt.at), body)
				if tt.method != "" {
					req.Method = tt.method
				}
				if tt.chunked {
					req.Body, req.ContentLength = io.NopCloser(onlyReader{bytes.NewReader(body)}), -1
				}
				if tt.edit != nil {
					tt.edit(req.Header)
				}
				var hdr http.Header
				code, a, hdr = do(t, req)
				if code != want {
					t.Fatalf("send %d: status %d %+v, want %d", i+1, code, a, want)
				}
				if got := hdr.Get("Retry-After"); (code == 503) != (got != "") {
					t.Fatalf("status %d with Retry-After %q", code, got)
				}
				if got := hdr.Get("Allow"); (code == 405) != (got == "POST") {
					t.Fatalf("status %d with Allow %q", code, got)
				}
			}
			switch tt.answer {
			case "accepted", "ignored":
				if a.Status != tt.answer {
					t.Fatalf("answer %+v, want status %q", a, tt.answer)
				}
			default:
				if !strings.Contains(a.Error, tt.answer) {
					t.Fatalf("answer %+v, want an error with %q", a, tt.answer)
				}
			}
			calls := h.calls()
			if len(calls) != tt.calls {
				t.Fatalf("handler called %d times, want %d", len(calls), tt.calls)
			}
			if tt.calls == 0 {
				return
			}
			// The handler gets exactly what Decode makes of the body.
			want, err := Decode(body)
			if err != nil {
				t.Fatal(err)
			}
			want.Source, want.Attempt = "webhook", 1
			for _, got := range calls {
				if got != want {
					t.Fatalf("handler got %+v, want %+v", got, want)
				}
			}
			if a.Status == "accepted" && (a.ImageID != want.ImageID || a.EventType != want.Type) {
				t.Fatalf("answer %+v for event %+v", a, want)
			}
		})
	}
}

// TestWebhookEvent spells out the event of a captured notification, field by field.
func TestWebhookEvent(t *testing.T) {
	h := &recorder{}
	_, srv, _ := newTestWebhook(t, h)
	code, a, _ := do(t, signedRequest(t, srv.URL, testSecret, testNow, readNotification(t, "image.upload.json")))
	want := Event{
		Type:      "image.upload",
		ImageID:   "c7efe274-62cf-4d9e-8984-ebfdda3caf57",
		Status:    "active",
		Checksum:  "3f4804fd363ec05060e3fbd072741dde",
		MessageID: "8a126619-c52c-421d-b966-0dc72d702152",
		Timestamp: time.Date(2026, 11, 22, 4, 58, 55, 586049000, time.UTC),
		Source:    "webhook",
		Attempt:   1,
	}
	if code != http.StatusAccepted || a != (answer{Status: "accepted", ImageID: want.ImageID, EventType: want.Type}) {
		t.Fatalf("status %d, answer %+v", code, a)
	}
	if calls := h.calls(); len(calls) != 1 || calls[0] != want {
		t.Fatalf("handler got %+v, want %+v", calls, want)
	}
}

func TestSignWebhook(t *testing.T) {
	// The documented construction, by hand.
	m := hmac.New(sha256.New, []byte(testSecret))
	m.Write([]byte("1795323600.{}"))
	want := "sha256=" + hex.EncodeToString(m.Sum(nil))
	if got := SignWebhook([]byte(testSecret), "1795323600", []byte("{}")); got != want {
		t.Fatalf("SignWebhook = %s, want %s", got, want)
	}
}

func TestWebhookOptions(t *testing.T) {
	good := writeSecret(t, testSecret)
	tests := []struct {
		name    string
		content *string // the secret file's content; nil for no file
		opts    WebhookOptions
		h       Handler
		wantErr string
	}{
		{name: "defaults", content: ptr(testSecret), h: &recorder{}},
		{name: "16 bytes inside whitespace", content: ptr(" \t0123456789abcdef\r\n\n"), h: &recorder{}},
		{name: "15 bytes", content: ptr("0123456789abcde\n"), h: &recorder{}, wantErr: "fewer than 16"},
		{name: "15 bytes padded to 20", content: ptr("  0123456789abcde   "), h: &recorder{}, wantErr: "fewer than 16"},
		{name: "empty file", content: ptr(""), h: &recorder{}, wantErr: "fewer than 16"},
		{name: "no such file", h: &recorder{}, opts: WebhookOptions{SecretFile: filepath.Join(t.TempDir(), "nope")}, wantErr: "no such file"},
		{name: "no secret file", h: &recorder{}, opts: WebhookOptions{}, wantErr: "no secret file"},
		{name: "nil handler", opts: WebhookOptions{SecretFile: good}, wantErr: "nil handler"},
		{name: "negative window", h: &recorder{}, opts: WebhookOptions{SecretFile: good, Window: -time.Second}, wantErr: "negative window"},
		{name: "window under a second", h: &recorder{}, opts: WebhookOptions{SecretFile: good, Window: time.Millisecond}, wantErr: "shorter than"},
		{name: "negative body limit", h: &recorder{}, opts: WebhookOptions{SecretFile: good, MaxBody: -1}, wantErr: "negative body limit"},
		{name: "negative replay cache", h: &recorder{}, opts: WebhookOptions{SecretFile: good, ReplayCacheSize: -1}, wantErr: "negative replay cache"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.opts
			if tt.content != nil {
				opts.SecretFile = writeSecret(t, *tt.content)
			}
			hook, err := NewWebhook(opts, tt.h)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one with %q", err, tt.wantErr)
				}
				if tt.content != nil && *tt.content != "" && strings.Contains(err.Error(), strings.TrimSpace(*tt.content)) {
					t.Fatalf("error %q shows the secret", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			o := hook.opts
			if o.Window != DefaultWebhookWindow || o.MaxBody != DefaultWebhookMaxBody || o.ReplayCacheSize != DefaultReplayCacheSize || o.Logger == nil || o.Now == nil {
				t.Fatalf("defaults not filled in: %+v", o)
			}
		})
	}
	_, err := NewWebhook(WebhookOptions{SecretFile: filepath.Join(t.TempDir(), "nope")}, &recorder{})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("err %v does not wrap fs.ErrNotExist", err)
	}
}

func ptr[T any](v T) *T { return &v }

func TestWebhookReload(t *testing.T) {
	const (
		oldSecret = testSecret
		newSecret = "a-brand-new-secret-0001"
	)
	name := writeSecret(t, oldSecret)
	hook, err := NewWebhook(WebhookOptions{SecretFile: name, Logger: slog.New(slog.DiscardHandler)}, &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, hook, nil, nil)
	n := 0
	send := func(secret string) int {
		n++ // a new body each time, so that the replay cache does not interfere
		body := fmt.Appendf(nil, `{"image_id":"i-%d","event_type":"image.upload"}`, n)
		resp, err := http.DefaultClient.Do(signedRequest(t, srv.URL, secret, time.Now(), body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	steps := []struct {
		name      string
		write     string // new content of the secret file, if not ""
		reloadErr bool
		old, new  int // status of a request signed with the old and the new secret
	}{
		{name: "before", old: 202, new: 401},
		{name: "file changed, not reloaded", write: newSecret, old: 202, new: 401},
		{name: "reloaded", old: 401, new: 202},
		{name: "too short a secret", write: "short\n", reloadErr: true, old: 401, new: 202},
		{name: "back to the old one", write: "\n" + oldSecret + "\n", old: 202, new: 401},
	}
	for i, st := range steps {
		if st.write != "" {
			if err := os.WriteFile(name, []byte(st.write), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if i == 2 || i == 3 || i == 4 {
			if err := hook.Reload(); (err != nil) != st.reloadErr {
				t.Fatalf("%s: Reload: %v", st.name, err)
			}
		}
		if got := send(oldSecret); got != st.old {
			t.Fatalf("%s: old secret: %d, want %d", st.name, got, st.old)
		}
		if got := send(newSecret); got != st.new {
			t.Fatalf("%s: new secret: %d, want %d", st.name, got, st.new)
		}
	}
	if err := os.Remove(name); err != nil {
		t.Fatal(err)
	}
	if err := hook.Reload(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Reload of a removed file: %v", err)
	}
}

func TestReplayCache(t *testing.T) {
	mac := func(b byte) [sha256.Size]byte { return [sha256.Size]byte{b} }
	type op struct {
		forget   bool
		mac      byte
		exp, now int64
		seen     bool // the answer of seen
	}
	tests := []struct {
		name      string
		max       int
		ops       []op
		evictions int
	}{
		{name: "remembers", max: 4, ops: []op{
			{mac: 1, exp: 10, now: 0}, {mac: 2, exp: 10, now: 0}, {mac: 1, exp: 10, now: 5, seen: true}, {mac: 2, exp: 10, now: 10, seen: true},
		}},
		{name: "forgets the expired", max: 4, ops: []op{
			{mac: 1, exp: 10, now: 0}, {mac: 2, exp: 20, now: 0}, {mac: 1, exp: 10, now: 11}, {mac: 2, exp: 20, now: 11, seen: true},
		}},
		{name: "evicts the oldest when full", max: 2, evictions: 2, ops: []op{
			{mac: 1, exp: 10}, {mac: 2, exp: 10}, {mac: 3, exp: 10}, {mac: 2, exp: 10, seen: true}, {mac: 1, exp: 10}, {mac: 3, exp: 10, seen: true}, {mac: 1, exp: 10, seen: true},
		}},
		{name: "forget", max: 4, ops: []op{
			{mac: 1, exp: 10}, {forget: true, mac: 1}, {mac: 1, exp: 10}, {mac: 1, exp: 10, seen: true},
		}},
		// The first entry of 1 leaving the queue must not take its second entry along.
		{name: "forget and re-add", max: 2, ops: []op{
			{mac: 1, exp: 10}, {forget: true, mac: 1}, {mac: 1, exp: 10}, {mac: 2, exp: 10}, {mac: 1, exp: 10, seen: true},
		}},
		{name: "grows past its first ring", max: 1000, ops: func() []op {
			var ops []op
			for i := range 200 {
				ops = append(ops, op{mac: byte(i), exp: 10})
			}
			for i := range 200 {
				ops = append(ops, op{mac: byte(i), exp: 10, seen: true})
			}
			return ops
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newReplayCache(tt.max)
			evictions := 0
			c.evictions = func() { evictions++ }
			for i, o := range tt.ops {
				if o.forget {
					c.forget(mac(o.mac))
					continue
				}
				if got := c.seen(mac(o.mac), o.exp, o.now); got != o.seen {
					t.Fatalf("op %d %+v: seen %v", i, o, got)
				}
				if c.n > tt.max || len(c.entries) > tt.max {
					t.Fatalf("op %d: %d queued, %d entries, more than %d", i, c.n, len(c.entries), tt.max)
				}
			}
			if evictions != tt.evictions {
				t.Fatalf("%d evictions, want %d", evictions, tt.evictions)
			}
		})
	}
}

func TestServerEndpoints(t *testing.T) {
	var notReady atomic.Pointer[error]
	ready := func() error {
		if p := notReady.Load(); p != nil {
			return *p
		}
		return nil
	}
	reg := prometheus.NewRegistry()
	hook, err := NewWebhook(WebhookOptions{
		SecretFile: writeSecret(t, testSecret),
		Logger:     slog.New(slog.DiscardHandler),
		Registerer: reg,
	}, &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, hook, ready, reg)
	if srv.Config.ReadHeaderTimeout == 0 || srv.Config.ReadTimeout == 0 || srv.Config.WriteTimeout == 0 || srv.Config.IdleTimeout == 0 || srv.Config.MaxHeaderBytes == 0 {
		t.Fatalf("server without timeouts: %+v", srv.Config)
	}
	// Some traffic for the metrics.
	for _, body := range []string{`{"image_id":"i-1","event_type":"image.upload"}`, `{"image_id":"i-2","event_type":"image.upload"}`} {
		resp, err := http.DefaultClient.Do(signedRequest(t, srv.URL, testSecret, time.Now(), []byte(body)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	resp, err := http.DefaultClient.Do(signedRequest(t, srv.URL, "not-the-secret-at-all", time.Now(), []byte(`{}`)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	tests := []struct {
		name     string
		method   string
		path     string
		notReady error
		code     int
		contains []string
	}{
		{name: "healthz", method: "GET", path: "/healthz", code: 200, contains: []string{"ok"}},
		{name: "healthz while not ready", method: "GET", path: "/healthz", notReady: errors.New("no AMQP"), code: 200, contains: []string{"ok"}},
		{name: "healthz by POST", method: "POST", path: "/healthz", code: 405},
		{name: "readyz ready", method: "GET", path: "/readyz", code: 200, contains: []string{"ok"}},
		{name: "readyz not ready", method: "GET", path: "/readyz", notReady: errors.New("AMQP connection lost"), code: 503, contains: []string{"not ready: AMQP connection lost"}},
		{name: "metrics", method: "GET", path: "/metrics", code: 200, contains: []string{
			`glance_sidecar_webhook_requests_total{code="202"} 2`,
			`glance_sidecar_webhook_requests_total{code="401"} 1`,
			`glance_sidecar_webhook_auth_failures_total{reason="bad_signature"} 1`,
			`glance_sidecar_webhook_auth_failures_total{reason="replay"} 0`,
			`glance_sidecar_webhook_replay_cache_evictions_total 0`,
		}},
		{name: "unknown path", method: "GET", path: "/v2/events", code: 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.notReady != nil {
				notReady.Store(&tt.notReady)
				defer notReady.Store(nil)
			}
			req, err := http.NewRequest(tt.method, srv.URL+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.code {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.code, body)
			}
			for _, s := range tt.contains {
				if !strings.Contains(string(body), s) {
					t.Fatalf("body lacks %q:\n%s", s, body)
				}
			}
		})
	}
}

func TestWebhookRegistersOnce(t *testing.T) {
	reg := prometheus.NewRegistry()
	opts := WebhookOptions{SecretFile: writeSecret(t, testSecret), Registerer: reg}
	if _, err := NewWebhook(opts, &recorder{}); err != nil {
		t.Fatal(err)
	}
	if _, err := NewWebhook(opts, &recorder{}); err == nil {
		t.Fatal("a second webhook registered the same metrics")
	}
}

// BenchmarkWebhook measures signed requests over loopback HTTP, with keep-alive clients and a
// handler that does nothing.
func BenchmarkWebhook(b *testing.B) {
	secret := []byte(testSecret)
	hook, err := NewWebhook(WebhookOptions{
		SecretFile: writeSecret(b, testSecret),
		Logger:     slog.New(slog.DiscardHandler),
		Registerer: prometheus.NewRegistry(),
	}, HandlerFunc(func(context.Context, Event) error { return nil }))
	if err != nil {
		b.Fatal(err)
	}
	srv := startServer(b, hook, nil, nil)
	tr := &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	url := srv.URL + "/v1/events"
	var worker atomic.Int64
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		id := worker.Add(1)
		mac := hmac.New(sha256.New, secret)
		var sig []byte
		for i := 0; pb.Next(); i++ {
			// A new body each time: the transport may read it after Do returns.
			body := fmt.Appendf(nil, `{"image_id":"bench-%d-%d","event_type":"image.upload"}`, id, i)
			ts := strconv.FormatInt(time.Now().Unix(), 10)
			mac.Reset()
			io.WriteString(mac, ts)
			mac.Write([]byte{'.'})
			mac.Write(body)
			sig = hex.AppendEncode(append(sig[:0], "sha256="...), mac.Sum(nil))
			req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
			if err != nil {
				b.Error(err)
				return
			}
			req.Header["Content-Type"] = []string{"application/json"}
			req.Header[TimestampHeader] = []string{ts}
			req.Header[SignatureHeader] = []string{string(sig)}
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

// FuzzWebhook feeds arbitrary headers and bodies to the webhook: it must never panic, and it
// must accept (202 accepted) only a body signed with the secret.
func FuzzWebhook(f *testing.F) {
	upload, _ := os.ReadFile("testdata/notifications/image.upload.json")
	ts := strconv.FormatInt(testNow.Unix(), 10)
	f.Add(ts, SignWebhook([]byte(testSecret), ts, upload), "application/json", upload)
	f.Add(ts, "sha256=00", "application/json; charset=utf-8", []byte(`{"image_id":"i","event_type":"image.upload"}`))
	f.Add("-1", "sha1=zz", "text/plain", []byte("x"))
	var calls atomic.Int64
	hook, err := NewWebhook(WebhookOptions{
		SecretFile: writeSecret(f, testSecret),
		Logger:     slog.New(slog.DiscardHandler),
		Now:        func() time.Time { return testNow },
	}, HandlerFunc(func(context.Context, Event) error { calls.Add(1); return nil }))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, ts, sig, ct string, body []byte) {
		req := httptest.NewRequest(http.MethodPost, "/v1/events", bytes.NewReader(body))
		req.Header.Set("Content-Type", ct)
		req.Header.Set(TimestampHeader, ts)
		req.Header.Set(SignatureHeader, sig)
		rec := httptest.NewRecorder()
		before := calls.Load()
		hook.ServeHTTP(rec, req)
		called := calls.Load() > before
		if called && sig != SignWebhook([]byte(testSecret), ts, body) {
			t.Fatalf("handler called for a body not signed with the secret: ts %q sig %q", ts, sig)
		}
		if rec.Code == http.StatusAccepted && strings.Contains(rec.Body.String(), `"accepted"`) && !called {
			t.Fatalf("accepted without calling the handler: %s", rec.Body)
		}
	})
}
