package consumer

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Headers that authenticate a webhook request. See [Webhook] for how they are computed.
const (
	// SignatureHeader carries "sha256=" and the hex HMAC-SHA256 of the signed message.
	SignatureHeader = "X-Signature"
	// TimestampHeader carries the time of signing in Unix seconds (decimal digits only).
	TimestampHeader = "X-Signature-Timestamp"
)

// Defaults that [WebhookOptions.Validate] fills in.
const (
	// DefaultWebhookWindow is how far a request's timestamp may lie from the clock.
	DefaultWebhookWindow = 5 * time.Minute
	// DefaultWebhookMaxBody is the largest body accepted: 1 MiB.
	DefaultWebhookMaxBody = 1 << 20
	// DefaultReplayCacheSize lets 65536 requests be remembered at once: enough for a steady
	// 218 requests a second with the default window before entries are evicted early.
	DefaultReplayCacheSize = 1 << 16
	// MinSecretLen is the shortest secret, in bytes after trimming, that the webhook accepts.
	MinSecretLen = 16
)

// retryAfter is the Retry-After answer, in seconds, when the handler fails transiently.
const retryAfter = "10"

// maxErrorText bounds the part of a decoding error that is echoed back to the client.
const maxErrorText = 256

// WebhookOptions configures a [Webhook]. The zero value of every field but SecretFile
// means its default.
type WebhookOptions struct {
	// SecretFile names the file holding the shared secret. Surrounding whitespace is
	// trimmed; at least MinSecretLen bytes must remain. Required.
	SecretFile string
	// Window is how far the signed timestamp may lie from the server's clock, in either
	// direction, in whole seconds (default DefaultWebhookWindow).
	Window time.Duration
	// MaxBody is the largest body accepted, in bytes (default DefaultWebhookMaxBody).
	MaxBody int64
	// ReplayCacheSize bounds how many signatures seen inside the window are remembered
	// (default DefaultReplayCacheSize). When it is full the oldest is forgotten early.
	ReplayCacheSize int
	// Logger receives the webhook's logs (default slog.Default()).
	Logger *slog.Logger
	// Now is the clock (default time.Now); tests replace it.
	Now func() time.Time
	// Registerer, if not nil, receives the webhook's metrics:
	// glance_sidecar_webhook_requests_total{code},
	// glance_sidecar_webhook_auth_failures_total{reason} and
	// glance_sidecar_webhook_replay_cache_evictions_total.
	Registerer prometheus.Registerer
}

// Validate checks o and fills in the defaults of its zero fields.
func (o *WebhookOptions) Validate() error {
	if o.SecretFile == "" {
		return errors.New("webhook: no secret file")
	}
	if o.Window < 0 {
		return fmt.Errorf("webhook: negative window %v", o.Window)
	}
	if o.Window == 0 {
		o.Window = DefaultWebhookWindow
	}
	if o.Window < time.Second {
		return fmt.Errorf("webhook: window %v is shorter than the timestamp's resolution of 1s", o.Window)
	}
	if o.MaxBody < 0 {
		return fmt.Errorf("webhook: negative body limit %d", o.MaxBody)
	}
	if o.MaxBody == 0 {
		o.MaxBody = DefaultWebhookMaxBody
	}
	if o.ReplayCacheSize < 0 {
		return fmt.Errorf("webhook: negative replay cache size %d", o.ReplayCacheSize)
	}
	if o.ReplayCacheSize == 0 {
		o.ReplayCacheSize = DefaultReplayCacheSize
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return nil
}

// Webhook is the http.Handler of POST /v1/events. It authenticates a request, decodes its
// body with [Decode] (the oslo 2.0 envelope, a bare notification, or the short form
// {"image_id": "...", "event_type": "..."}) and passes the event to a [Handler] with Source
// "webhook" and Attempt 1, answering once the handler has returned.
//
// # Authentication
//
// The sender signs each request with the shared secret:
//
//	X-Signature-Timestamp: <Unix seconds>
//	X-Signature: sha256=<hex(HMAC-SHA256(secret, "<X-Signature-Timestamp>." + body))>
//
// The MAC covers the timestamp as well as the raw body, so a captured request cannot be
// given a fresh timestamp: it stays valid only while its own timestamp lies within the
// window (default 5 minutes either way) of the server's clock. Inside the window a bounded
// cache of the signatures already accepted rejects an exact replay. A request answered 503
// is forgotten again, so the sender may resend it unchanged; any other answer is final,
// and a resent request needs a fresh timestamp. [SignWebhook] computes the signature.
// Signatures are compared in constant time.
//
// # Answers
//
// Every answer has a small JSON body: {"status": ...} on success, {"error": "..."} on
// failure, which never includes the secret or the handler's error.
//
//	202 {"status":"accepted","image_id":...,"event_type":...}  the handler returned nil
//	202 {"status":"ignored"}  a well-formed event the sidecar does not act on (ErrIgnored);
//	    the handler is not called
//	400 the body is not JSON or lacks an event type or image id (ErrMalformed)
//	401 a missing, malformed or wrong signature or timestamp, a timestamp outside the
//	    window, or a replay
//	405 a method other than POST
//	413 a body larger than MaxBody
//	415 a Content-Type other than application/json
//	422 the handler returned a Permanent error
//	503 the handler returned another error; with Retry-After
//
// Checks run in that order: method, content type, the headers, the body's size, the
// signature, the replay cache, the body's content.
type Webhook struct {
	opts    WebhookOptions
	handler Handler
	key     atomic.Pointer[macKey]
	replay  *replayCache
	metrics webhookMetrics
	// evictWarned records that the full replay cache was logged once.
	evictWarned atomic.Bool
}

// NewWebhook returns a Webhook that passes events to h. It reads the secret from
// opts.SecretFile and registers its metrics with opts.Registerer.
func NewWebhook(opts WebhookOptions, h Handler) (*Webhook, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if h == nil {
		return nil, errors.New("webhook: nil handler")
	}
	k, err := readSecret(opts.SecretFile)
	if err != nil {
		return nil, err
	}
	wh := &Webhook{
		opts:    opts,
		handler: h,
		replay:  newReplayCache(opts.ReplayCacheSize),
		metrics: newWebhookMetrics(),
	}
	wh.key.Store(k)
	wh.replay.evictions = func() {
		wh.metrics.evictions.Inc()
		if wh.evictWarned.CompareAndSwap(false, true) {
			opts.Logger.Warn("webhook replay cache is full: signatures are forgotten before they leave the window; raise ReplayCacheSize",
				slog.Int("size", opts.ReplayCacheSize))
		}
	}
	if opts.Registerer != nil {
		if err := wh.metrics.register(opts.Registerer); err != nil {
			return nil, fmt.Errorf("webhook: registering metrics: %w", err)
		}
	}
	return wh, nil
}

// Reload re-reads the secret file. On error the previous secret stays in use. Requests
// being verified when the secret changes may be checked against either secret.
func (wh *Webhook) Reload() error {
	k, err := readSecret(wh.opts.SecretFile)
	if err != nil {
		return err
	}
	wh.key.Store(k)
	wh.opts.Logger.Info("webhook secret reloaded", slog.String("file", wh.opts.SecretFile))
	return nil
}

// SignWebhook returns the X-Signature value for body sent with the X-Signature-Timestamp
// value timestamp (Unix seconds in decimal): "sha256=" and the hex HMAC-SHA256 under secret
// of timestamp, ".", and body.
func SignWebhook(secret []byte, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	io.WriteString(m, timestamp)
	m.Write([]byte{'.'})
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// macKey is one secret, ready for use: a pool of HMAC states keyed with it.
type macKey struct{ pool sync.Pool }

func readSecret(name string) (*macKey, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("webhook: reading secret: %w", err)
	}
	secret := bytes.TrimSpace(b)
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("webhook: secret in %s is %d bytes, fewer than %d", name, len(secret), MinSecretLen)
	}
	secret = bytes.Clone(secret)
	clear(b)
	return &macKey{pool: sync.Pool{New: func() any { return hmac.New(sha256.New, secret) }}}, nil
}

// sum returns the MAC of "<ts>.<body>".
func (k *macKey) sum(ts string, body []byte) (mac [sha256.Size]byte) {
	m := k.pool.Get().(hash.Hash)
	m.Reset()
	io.WriteString(m, ts)
	m.Write([]byte{'.'})
	m.Write(body)
	m.Sum(mac[:0])
	k.pool.Put(m)
	return mac
}

// ServeHTTP handles POST /v1/events.
func (wh *Webhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	code := wh.serve(w, r)
	wh.metrics.request(code)
}

// authError is a 401 with the reason counted in the metrics and the text sent back.
type authError struct{ reason, msg string }

var (
	errNoSignature        = authError{"missing_signature", "missing " + SignatureHeader}
	errMalformedSignature = authError{"malformed_signature", "malformed " + SignatureHeader + ": want sha256=<64 hex digits>"}
	errBadSignature       = authError{"bad_signature", "signature does not match"}
	errNoTimestamp        = authError{"missing_timestamp", "missing " + TimestampHeader}
	errMalformedTimestamp = authError{"malformed_timestamp", "malformed " + TimestampHeader + ": want Unix seconds"}
	errStale              = authError{"outside_window", TimestampHeader + " is outside the accepted window"}
	errReplay             = authError{"replay", "request already seen"}
)

// serve answers r and returns the status code it sent.
func (wh *Webhook) serve(w http.ResponseWriter, r *http.Request) int {
	log := wh.opts.Logger
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed; use POST")
	}
	if !isJSON(r.Header.Get("Content-Type")) {
		return writeError(w, http.StatusUnsupportedMediaType, "Content-Type must be application/json")
	}
	ts, sec, sig, aerr := wh.checkHeaders(r.Header)
	if aerr != nil {
		return wh.unauthorized(w, r, aerr)
	}
	if r.ContentLength > wh.opts.MaxBody {
		return writeError(w, http.StatusRequestEntityTooLarge, "body larger than "+strconv.FormatInt(wh.opts.MaxBody, 10)+" bytes")
	}
	body, err := readBody(w, r, wh.opts.MaxBody)
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return writeError(w, http.StatusRequestEntityTooLarge, "body larger than "+strconv.FormatInt(wh.opts.MaxBody, 10)+" bytes")
		}
		log.LogAttrs(r.Context(), slog.LevelInfo, "webhook: reading body", slog.String("remote", r.RemoteAddr), slog.Any("error", err))
		return writeError(w, http.StatusBadRequest, "reading body failed")
	}
	mac := wh.key.Load().sum(ts, body)
	if !hmac.Equal(mac[:], sig[:]) {
		return wh.unauthorized(w, r, &errBadSignature)
	}
	if wh.replay.seen(mac, sec+int64(wh.opts.Window/time.Second), wh.opts.Now().Unix()) {
		return wh.unauthorized(w, r, &errReplay)
	}

	ev, err := Decode(body)
	switch {
	case errors.Is(err, ErrIgnored):
		log.LogAttrs(r.Context(), slog.LevelDebug, "webhook event ignored", slog.String("event_type", ev.Type), slog.String("image_id", ev.ImageID))
		return writeJSON(w, http.StatusAccepted, statusBody{Status: "ignored"})
	case err != nil:
		log.LogAttrs(r.Context(), slog.LevelInfo, "webhook: undecodable event", slog.String("remote", r.RemoteAddr), slog.Any("error", err))
		return writeError(w, http.StatusBadRequest, truncate(err.Error(), maxErrorText))
	}
	ev.Source, ev.Attempt = "webhook", 1
	if err := wh.handler.Handle(r.Context(), ev); err != nil {
		attrs := []slog.Attr{slog.String("event_type", ev.Type), slog.String("image_id", ev.ImageID), slog.Any("error", err)}
		if IsPermanent(err) {
			log.LogAttrs(r.Context(), slog.LevelWarn, "webhook event failed permanently", attrs...)
			return writeError(w, http.StatusUnprocessableEntity, "event cannot be processed")
		}
		// Let the sender retry this very request.
		wh.replay.forget(mac)
		log.LogAttrs(r.Context(), slog.LevelWarn, "webhook event failed; the sender may retry", attrs...)
		w.Header().Set("Retry-After", retryAfter)
		return writeError(w, http.StatusServiceUnavailable, "event not processed; retry later")
	}
	log.LogAttrs(r.Context(), slog.LevelDebug, "webhook event accepted", slog.String("event_type", ev.Type), slog.String("image_id", ev.ImageID))
	return writeJSON(w, http.StatusAccepted, statusBody{Status: "accepted", ImageID: ev.ImageID, EventType: ev.Type})
}

// checkHeaders reads the timestamp and signature headers and checks the timestamp against
// the window. ts is the header's exact text, as signed, and sec its value.
func (wh *Webhook) checkHeaders(h http.Header) (ts string, sec int64, sig [sha256.Size]byte, aerr *authError) {
	tsv := h.Values(TimestampHeader)
	if len(tsv) == 0 {
		return "", 0, sig, &errNoTimestamp
	}
	ts = tsv[0]
	sec, ok := parseUnix(ts)
	if !ok || len(tsv) > 1 {
		return "", 0, sig, &errMalformedTimestamp
	}
	sigv := h.Values(SignatureHeader)
	if len(sigv) == 0 {
		return "", 0, sig, &errNoSignature
	}
	hexSig, ok := strings.CutPrefix(sigv[0], "sha256=")
	if !ok || len(sigv) > 1 || len(hexSig) != 2*sha256.Size {
		return "", 0, sig, &errMalformedSignature
	}
	if _, err := hex.Decode(sig[:], []byte(hexSig)); err != nil {
		return "", 0, sig, &errMalformedSignature
	}
	// Compare in whole seconds: sec has at most 18 digits, so nothing overflows.
	skew := wh.opts.Now().Unix() - sec
	if w := int64(wh.opts.Window / time.Second); skew > w || skew < -w {
		return "", 0, sig, &errStale
	}
	return ts, sec, sig, nil
}

// parseUnix reads 1 to 18 decimal digits (no sign, no spaces).
func parseUnix(s string) (int64, bool) {
	if len(s) == 0 || len(s) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func (wh *Webhook) unauthorized(w http.ResponseWriter, r *http.Request, e *authError) int {
	wh.metrics.authFailure(e.reason)
	wh.opts.Logger.LogAttrs(r.Context(), slog.LevelWarn, "webhook request not authenticated",
		slog.String("reason", e.reason), slog.String("remote", r.RemoteAddr))
	return writeError(w, http.StatusUnauthorized, e.msg)
}

// isJSON reports whether the Content-Type is application/json, with no charset or UTF-8.
func isJSON(ct string) bool {
	if ct == "application/json" {
		return true
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return false
	}
	cs, ok := params["charset"]
	return !ok || strings.EqualFold(cs, "utf-8")
}

// readBody reads r's body, failing with an *http.MaxBytesError beyond max bytes.
func readBody(w http.ResponseWriter, r *http.Request, max int64) ([]byte, error) {
	body := http.MaxBytesReader(w, r.Body, max)
	if r.ContentLength > 0 {
		// The length is known and at most max (the server enforces it): one allocation.
		b := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(body, b); err != nil {
			return nil, err
		}
		return b, nil
	}
	return io.ReadAll(body)
}

type statusBody struct {
	Status    string `json:"status"`
	ImageID   string `json:"image_id,omitempty"`
	EventType string `json:"event_type,omitempty"`
}

type errorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, msg string) int {
	return writeJSON(w, code, errorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) int {
	b, err := json.Marshal(v)
	if err != nil {
		// Only strings are marshaled; this cannot happen.
		b, code = []byte(`{"error":"internal error"}`), http.StatusInternalServerError
	}
	b = append(b, '\n')
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	w.Write(b)
	return code
}

// truncate cuts s to at most n bytes of valid UTF-8, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

// replayCache remembers the MACs of accepted requests until their timestamps leave the
// window, at most max of them; when full it forgets the oldest.
type replayCache struct {
	mu        sync.Mutex
	max       int
	seq       uint64
	entries   map[[sha256.Size]byte]uint64 // MAC → the seq of its queue entry
	queue     []replayEntry                // a ring, oldest at head
	head, n   int
	evictions func() // called for each entry forgotten while still live
}

type replayEntry struct {
	mac [sha256.Size]byte
	exp int64 // Unix seconds after which the timestamp check rejects the MAC anyway
	seq uint64
}

func newReplayCache(max int) *replayCache {
	return &replayCache{max: max, entries: make(map[[sha256.Size]byte]uint64), evictions: func() {}}
}

// seen reports whether mac is in the cache, and adds it (live until exp) if not.
func (c *replayCache) seen(mac [sha256.Size]byte, exp, now int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.n > 0 && c.queue[c.head].exp < now {
		c.pop()
	}
	if _, ok := c.entries[mac]; ok {
		return true
	}
	if c.n == c.max && c.pop() {
		c.evictions()
	}
	if c.n == len(c.queue) {
		c.grow()
	}
	c.seq++
	c.queue[(c.head+c.n)%len(c.queue)] = replayEntry{mac: mac, exp: exp, seq: c.seq}
	c.n++
	c.entries[mac] = c.seq
	return false
}

// forget removes mac, so that it is accepted again.
func (c *replayCache) forget(mac [sha256.Size]byte) {
	c.mu.Lock()
	delete(c.entries, mac)
	c.mu.Unlock()
}

// pop removes the oldest queue entry and reports whether it was still in the cache (not
// forgotten, nor added again since).
func (c *replayCache) pop() bool {
	e := c.queue[c.head]
	c.head = (c.head + 1) % len(c.queue)
	c.n--
	if seq, ok := c.entries[e.mac]; ok && seq == e.seq {
		delete(c.entries, e.mac)
		return true
	}
	return false
}

// grow doubles the ring, up to max entries.
func (c *replayCache) grow() {
	size := min(max(2*len(c.queue), 64), c.max)
	q := make([]replayEntry, size)
	for i := range c.n {
		q[i] = c.queue[(c.head+i)%len(c.queue)]
	}
	c.queue, c.head = q, 0
}

// webhookMetrics are the webhook's Prometheus metrics.
type webhookMetrics struct {
	requests     *prometheus.CounterVec
	byCode       map[int]prometheus.Counter // the codes serve sends, resolved once
	authFailures *prometheus.CounterVec
	evictions    prometheus.Counter
}

func newWebhookMetrics() webhookMetrics {
	m := webhookMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "glance_sidecar_webhook_requests_total",
			Help: "Webhook requests by HTTP status code.",
		}, []string{"code"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "glance_sidecar_webhook_auth_failures_total",
			Help: "Webhook requests answered 401, by reason.",
		}, []string{"reason"}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "glance_sidecar_webhook_replay_cache_evictions_total",
			Help: "Signatures forgotten by the full replay cache while still inside the window.",
		}),
		byCode: make(map[int]prometheus.Counter),
	}
	for _, code := range []int{202, 400, 401, 405, 413, 415, 422, 500, 503} {
		m.byCode[code] = m.requests.WithLabelValues(strconv.Itoa(code))
	}
	for _, e := range []*authError{&errNoSignature, &errMalformedSignature, &errBadSignature, &errNoTimestamp, &errMalformedTimestamp, &errStale, &errReplay} {
		m.authFailures.WithLabelValues(e.reason)
	}
	return m
}

func (m webhookMetrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.requests, m.authFailures, m.evictions} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func (m webhookMetrics) request(code int) {
	if c, ok := m.byCode[code]; ok {
		c.Inc()
		return
	}
	m.requests.WithLabelValues(strconv.Itoa(code)).Inc()
}

func (m webhookMetrics) authFailure(reason string) { m.authFailures.WithLabelValues(reason).Inc() }
