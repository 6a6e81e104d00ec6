package consumer

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Timeouts and limits of the server that NewServer builds.
const (
	// ServerReadHeaderTimeout bounds reading a request's headers.
	ServerReadHeaderTimeout = 5 * time.Second
	// ServerReadTimeout bounds reading a whole request, body included.
	ServerReadTimeout = 30 * time.Second
	// ServerWriteTimeout bounds a request from the end of its headers to the end of the
	// answer, including the Handler's work on a webhook event.
	ServerWriteTimeout = 60 * time.Second
	// ServerIdleTimeout is how long a keep-alive connection may wait for its next request.
	ServerIdleTimeout = 120 * time.Second
	// ServerMaxHeader bounds the size of a request's headers.
	ServerMaxHeader = 64 << 10
)

// NewServer returns the sidecar's HTTP server, listening on addr once started, with
//
//	POST /v1/events  hook, when not nil (other methods are answered 405 by hook)
//	GET  /healthz    200 "ok" while the process runs
//	GET  /readyz     200 "ok" when ready returns nil (or ready is nil), else 503 with its error
//	GET  /metrics    the metrics gathered from reg in the Prometheus text format (not served
//	                 if reg is nil)
//
// and the Server* timeouts and limits. Anyone who can reach /readyz reads ready's error, so
// it must not hold credentials (such as a broker URL with a password). The server's own
// errors (such as TLS handshake or malformed-request errors) are logged at level Warn to
// hook's Logger. A nil hook serves health and metrics only.
func NewServer(addr string, hook *Webhook, ready func() error, reg prometheus.Gatherer) *http.Server {
	mux := http.NewServeMux()
	logger := slog.Default()
	if hook != nil {
		logger = hook.opts.Logger
		mux.Handle("/v1/events", hook)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeText(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if ready != nil {
			if err := ready(); err != nil {
				writeText(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
				return
			}
		}
		writeText(w, http.StatusOK, "ok")
	})
	if reg != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	}
	return &http.Server{
		Addr:              addr,
		Handler:           mux,
		ReadHeaderTimeout: ServerReadHeaderTimeout,
		ReadTimeout:       ServerReadTimeout,
		WriteTimeout:      ServerWriteTimeout,
		IdleTimeout:       ServerIdleTimeout,
		MaxHeaderBytes:    ServerMaxHeader,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}

func writeText(w http.ResponseWriter, code int, s string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	w.Write([]byte(s + "\n"))
}
