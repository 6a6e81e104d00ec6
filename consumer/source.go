package consumer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// AMQPOptions configure the RabbitMQ source. Only TransportURL is required.
type AMQPOptions struct {
	// TransportURL is oslo.messaging's transport_url, e.g. rabbit://user:pass@h1,h2/vhost.
	TransportURL string
	// Exchange is the exchange Glance publishes to (default "glance"): a topic exchange, not
	// durable unless ExchangeDurable says so, which must match how oslo.messaging declared it
	// (durable when amqp_durable_queues or rabbit_quorum_queue is set).
	Exchange        string
	ExchangeDurable bool
	// Queue is the sidecar's own durable queue (default "glance-sidecar"); Queue+".retry" delays
	// retries and Queue+".dead" keeps what was given up.
	Queue string
	// QuorumQueues declares the three queues as quorum queues.
	QuorumQueues bool
	// RoutingKeys bind Queue to Exchange (default notifications.info).
	RoutingKeys []string
	// Prefetch is how many unacknowledged messages are handled at once (default 8).
	Prefetch int
	// MaxAttempts is how often a message is handled before a transient failure dead-letters
	// it (default 5).
	MaxAttempts int
	// RetryDelay is how long a failed message waits in the retry queue (default 30 s).
	RetryDelay time.Duration
	// ReconnectMin and ReconnectMax bound the backoff between connection attempts (defaults
	// 500 ms and 30 s).
	ReconnectMin, ReconnectMax time.Duration
	// ShutdownTimeout is how long Run waits for handlers in flight when its context ends
	// (default 30 s); what is unfinished then is left unacknowledged for redelivery.
	ShutdownTimeout time.Duration
	// Heartbeat is the AMQP heartbeat interval (default 10 s).
	Heartbeat time.Duration
	// CAFile, CertFile and KeyFile override the URL's ssl_ca_file, ssl_cert_file, ssl_key_file.
	CAFile, CertFile, KeyFile string
	// Logger receives connection changes and dead-lettered messages (default slog.Default()).
	Logger *slog.Logger
}

// Validate fills in defaults and checks the options.
func (o *AMQPOptions) Validate() error {
	if o.TransportURL == "" {
		return errors.New("transport URL is required")
	}
	set := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	set(&o.Exchange, "glance")
	set(&o.Queue, "glance-sidecar")
	if len(o.RoutingKeys) == 0 {
		o.RoutingKeys = []string{"notifications.info"}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.RetryDelay, 30*time.Second)
	def(&o.ReconnectMin, 500*time.Millisecond)
	def(&o.ReconnectMax, 30*time.Second)
	def(&o.ShutdownTimeout, 30*time.Second)
	def(&o.Heartbeat, 10*time.Second)
	if o.Prefetch <= 0 {
		o.Prefetch = 8
	}
	if o.Prefetch > 65535 {
		return fmt.Errorf("prefetch %d is more than 65535", o.Prefetch)
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 5
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// Headers the source sets on messages it republishes.
const (
	// HeaderAttempt is the delivery attempt a retried message is on (from 2).
	HeaderAttempt = "x-sidecar-attempt"
	// HeaderReason says why a message was dead-lettered.
	HeaderReason = "x-sidecar-reason"
)

// AMQPSource consumes Glance's notifications from RabbitMQ and hands their events to a Handler.
// It declares its own durable queue bound to Glance's exchange, consumes with manual acks and
// a prefetch, and acknowledges a message only once its outcome is settled: handled, moved to
// the retry queue, or moved to the dead-letter queue (each move confirmed by the broker before
// the ack). It reconnects by itself, trying the URL's hosts in turn.
type AMQPSource struct {
	opts AMQPOptions
	url  TransportURL
	tls  *tls.Config
	h    Handler
	tag  string

	mu    sync.Mutex
	state error

	// inflight counts handlers running, across sessions: a lost connection does not wait
	// for them (their messages come back anyway), shutdown does.
	inflight sync.WaitGroup
}

// NewAMQPSource checks the options and returns a source; Run starts it.
func NewAMQPSource(opts AMQPOptions, h Handler) (*AMQPSource, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("amqp options: %w", err)
	}
	u, err := ParseTransportURL(opts.TransportURL)
	if err != nil {
		return nil, err
	}
	s := &AMQPSource{opts: opts, url: u, h: h, state: errors.New("not connected yet")}
	if u.TLS() {
		if s.tls, err = s.tlsConfig(); err != nil {
			return nil, err
		}
	}
	host, _ := os.Hostname()
	s.tag = fmt.Sprintf("glance-sidecar-%s-%d-%d", host, os.Getpid(), rand.Uint32())
	return s, nil
}

func (s *AMQPSource) tlsConfig() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	ca := firstNonEmpty(s.opts.CAFile, s.url.Options.Get("ssl_ca_file"))
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("reading CA file: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", ca)
		}
	}
	cert := firstNonEmpty(s.opts.CertFile, s.url.Options.Get("ssl_cert_file"))
	key := firstNonEmpty(s.opts.KeyFile, s.url.Options.Get("ssl_key_file"))
	if cert != "" || key != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("loading client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// Ready returns nil while the source is consuming, and why not otherwise: for /readyz.
func (s *AMQPSource) Ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

func (s *AMQPSource) setState(err error) {
	s.mu.Lock()
	s.state = err
	s.mu.Unlock()
}

// Run consumes until ctx ends, reconnecting with backoff and jitter after any failure. When
// ctx ends it stops consuming, waits up to ShutdownTimeout for the handlers in flight, and
// returns nil; messages not settled by then stay unacknowledged and the broker redelivers them.
func (s *AMQPSource) Run(ctx context.Context) error {
	delay := s.opts.ReconnectMin
	for attempt := 0; ; attempt++ {
		host := s.url.Hosts[attempt%len(s.url.Hosts)]
		start := time.Now()
		err := s.session(ctx, host)
		if ctx.Err() != nil {
			s.setState(errors.New("stopped"))
			return nil
		}
		s.setState(fmt.Errorf("rabbitmq %s: %w", host.Addr(), err))
		if time.Since(start) > s.opts.ReconnectMax {
			delay = s.opts.ReconnectMin // the session was healthy for a while
		}
		sleep := delay/2 + rand.N(delay/2+1)
		s.opts.Logger.Warn("rabbitmq connection lost, reconnecting", "host", host.Addr(), "error", err, "backoff", sleep)
		t := time.NewTimer(sleep)
		select {
		case <-ctx.Done():
			t.Stop()
			s.setState(errors.New("stopped"))
			return nil
		case <-t.C:
		}
		delay = min(delay*2, s.opts.ReconnectMax)
	}
}

// session runs one connection: dial, declare, consume, until it fails or ctx ends.
func (s *AMQPSource) session(ctx context.Context, host TransportHost) error {
	scheme := "amqp"
	if s.tls != nil {
		scheme = "amqps"
	}
	cfg := amqp.Config{
		SASL:       []amqp.Authentication{&amqp.PlainAuth{Username: host.Username, Password: host.Password}},
		Vhost:      s.url.VirtualHost,
		Heartbeat:  s.opts.Heartbeat,
		Properties: amqp.Table{"connection_name": s.tag},
	}
	if s.tls != nil {
		cfg.TLSClientConfig = s.tls.Clone()
		cfg.TLSClientConfig.ServerName = host.Host
	}
	conn, err := amqp.DialConfig(scheme+"://"+host.Addr()+"/", cfg)
	if err != nil {
		return fmt.Errorf("connecting: %w", err)
	}
	defer conn.Close()
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))

	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("opening the consuming channel: %w", err)
	}
	pub, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("opening the publishing channel: %w", err)
	}
	if err := pub.Confirm(false); err != nil {
		return fmt.Errorf("enabling publisher confirms: %w", err)
	}
	if err := s.declare(ch); err != nil {
		return err
	}
	if err := ch.Qos(s.opts.Prefetch, 0, false); err != nil {
		return fmt.Errorf("setting prefetch %d: %w", s.opts.Prefetch, err)
	}
	deliveries, err := ch.Consume(s.opts.Queue, s.tag, false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consuming from %s: %w", s.opts.Queue, err)
	}
	s.setState(nil)
	s.opts.Logger.Info("consuming", "host", host.Addr(), "vhost", s.url.VirtualHost, "queue", s.opts.Queue, "prefetch", s.opts.Prefetch)

	// Handlers get a context that outlives ctx by the shutdown timeout, and ends at once when
	// the connection is lost: their messages will be redelivered, so their work is moot.
	hctx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()
	lost := func(err error) error {
		s.setState(fmt.Errorf("rabbitmq %s: %w", host.Addr(), err))
		return err
	}
	for {
		select {
		case <-ctx.Done():
			_ = ch.Cancel(s.tag, false)
			done := make(chan struct{})
			go func() { s.inflight.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(s.opts.ShutdownTimeout):
				s.opts.Logger.Warn("handlers still running at shutdown; their messages will be redelivered")
				cancelHandlers()
				<-done
			}
			return nil
		case e := <-closed:
			if e == nil {
				return lost(errors.New("connection closed"))
			}
			return lost(e)
		case d, ok := <-deliveries:
			if !ok {
				return lost(errors.New("the broker closed the consumer"))
			}
			s.inflight.Add(1)
			go func() {
				defer s.inflight.Done()
				s.deliver(hctx, pub, d)
			}()
		}
	}
}

// declare makes the exchange, the three queues and the bindings.
func (s *AMQPSource) declare(ch *amqp.Channel) error {
	o := s.opts
	if err := ch.ExchangeDeclare(o.Exchange, "topic", o.ExchangeDurable, false, false, false, nil); err != nil {
		return fmt.Errorf("declaring exchange %s (durable=%v; it must match how Glance declared it): %w", o.Exchange, o.ExchangeDurable, err)
	}
	args := func(extra amqp.Table) amqp.Table {
		t := amqp.Table{}
		if o.QuorumQueues {
			t["x-queue-type"] = "quorum"
		}
		for k, v := range extra {
			t[k] = v
		}
		return t
	}
	queues := []struct {
		name string
		args amqp.Table
	}{
		{o.Queue, args(nil)},
		{o.Queue + ".retry", args(amqp.Table{
			"x-message-ttl":             o.RetryDelay.Milliseconds(),
			"x-dead-letter-exchange":    "",
			"x-dead-letter-routing-key": o.Queue,
		})},
		{o.Queue + ".dead", args(nil)},
	}
	for _, q := range queues {
		if _, err := ch.QueueDeclare(q.name, true, false, false, false, q.args); err != nil {
			return fmt.Errorf("declaring queue %s: %w", q.name, err)
		}
	}
	for _, key := range o.RoutingKeys {
		if err := ch.QueueBind(o.Queue, key, o.Exchange, false, nil); err != nil {
			return fmt.Errorf("binding %s to %s with %s: %w", o.Queue, o.Exchange, key, err)
		}
	}
	return nil
}

// deliver settles one message.
func (s *AMQPSource) deliver(ctx context.Context, pub *amqp.Channel, d amqp.Delivery) {
	attempt := attemptOf(d.Headers)
	ev, err := Decode(d.Body)
	switch {
	case errors.Is(err, ErrIgnored):
		s.ack(d)
		return
	case err != nil:
		s.deadLetter(ctx, pub, d, attempt, err.Error())
		return
	}
	ev.Source, ev.Attempt = "amqp", attempt
	herr := s.h.Handle(ctx, ev)
	switch {
	case herr == nil:
		s.ack(d)
	case ctx.Err() != nil:
		// Shutdown or a lost connection cut the handler short: leave the message to the broker.
		_ = d.Nack(false, true)
	case IsPermanent(herr):
		s.deadLetter(ctx, pub, d, attempt, herr.Error())
	case attempt >= s.opts.MaxAttempts:
		s.deadLetter(ctx, pub, d, attempt, fmt.Sprintf("gave up after %d attempts: %v", attempt, herr))
	default:
		s.republish(ctx, pub, d, s.opts.Queue+".retry", amqp.Table{HeaderAttempt: int32(attempt + 1)}, "retry")
	}
}

func (s *AMQPSource) ack(d amqp.Delivery) {
	if err := d.Ack(false); err != nil {
		s.opts.Logger.Warn("ack failed; the message will be redelivered", "error", err)
	}
}

func (s *AMQPSource) deadLetter(ctx context.Context, pub *amqp.Channel, d amqp.Delivery, attempt int, reason string) {
	s.opts.Logger.Warn("dead-lettering message", "queue", s.opts.Queue+".dead", "message_id", d.MessageId, "attempt", attempt, "reason", reason)
	s.republish(ctx, pub, d, s.opts.Queue+".dead", amqp.Table{HeaderAttempt: int32(attempt), HeaderReason: truncate(reason, 1024)}, "dead-letter")
}

// republish copies d to queue (through the default exchange) with extra headers, waits for
// the broker's confirm, and only then acks d. If anything fails d is requeued instead, so the
// message is never lost.
func (s *AMQPSource) republish(ctx context.Context, pub *amqp.Channel, d amqp.Delivery, queue string, extra amqp.Table, what string) {
	headers := amqp.Table{}
	for k, v := range d.Headers {
		headers[k] = v
	}
	for k, v := range extra {
		headers[k] = v
	}
	msg := amqp.Publishing{
		Headers:         headers,
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		DeliveryMode:    amqp.Persistent,
		MessageId:       d.MessageId,
		Timestamp:       d.Timestamp,
		Body:            d.Body,
	}
	conf, err := pub.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, msg)
	if err == nil {
		var acked bool
		acked, err = conf.WaitContext(ctx)
		if err == nil && !acked {
			err = errors.New("the broker refused the message")
		}
	}
	if err != nil {
		s.opts.Logger.Warn(what+" failed; requeueing the message", "queue", queue, "error", err)
		_ = d.Nack(false, true)
		return
	}
	s.ack(d)
}

// attemptOf reads HeaderAttempt (1 when absent).
func attemptOf(h amqp.Table) int {
	switch v := h[HeaderAttempt].(type) {
	case int32:
		return max(int(v), 1)
	case int64:
		return max(int(v), 1)
	case int:
		return max(v, 1)
	case string:
		if n, err := strconv.Atoi(v); err == nil {
			return max(n, 1)
		}
	}
	return 1
}
