//go:build integration

package consumer

// Integration tests against a real rabbitmq-server of their own, started on loopback by
// scripts/integration (test/cloud/up.sh in its RabbitMQ-only mode, state directory
// GSC_RABBIT_DIR, default /tmp/glance-sidecar-rabbitmq). Each test uses queues of its own.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/glance-sidecar/glance-sidecar/internal/testcloud"
)

func rabbitEnv(t testing.TB) map[string]string {
	t.Helper()
	return testcloud.Env(t, testcloud.RabbitDir())
}

// testQueue is a fresh queue name; its three queues are deleted when the test ends.
func testQueue(t testing.TB) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	q := fmt.Sprintf("gsc-test-%x", b)
	t.Cleanup(func() { testcloud.DeleteQueues(rabbitEnv(t)["GSC_AMQP_URL"], q) })
	return q
}

func sourceOptions(t testing.TB, queue string) AMQPOptions {
	return AMQPOptions{
		TransportURL: rabbitEnv(t)["GSC_TRANSPORT_URL"], Queue: queue, RoutingKeys: []string{queue + ".key"},
		ReconnectMin: 100 * time.Millisecond, ReconnectMax: time.Second, ShutdownTimeout: 2 * time.Second,
		RetryDelay: 100 * time.Millisecond, Logger: slog.New(slog.DiscardHandler),
	}
}

// startSource runs a source until the test ends (or stop is called) and waits until it consumes.
func startSource(t *testing.T, opts AMQPOptions, h Handler) (stop func()) {
	stop, _ = startSourceRef(t, opts, h)
	return stop
}

// startSourceRef is startSource that also returns the source.
func startSourceRef(t *testing.T, opts AMQPOptions, h Handler) (stop func(), src *AMQPSource) {
	t.Helper()
	src, err := NewAMQPSource(opts, h)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	waitFor(t, 20*time.Second, "the source to consume", func() bool { return src.Ready() == nil })
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop, src
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// publisher publishes persistent messages to the glance exchange with a test's routing key.
type publisher struct {
	t   testing.TB
	ch  *amqp.Channel
	key string
}

func newPublisher(t testing.TB, key string) *publisher {
	t.Helper()
	conn, err := amqp.Dial(rabbitEnv(t)["GSC_AMQP_URL"])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclare("glance", "topic", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	return &publisher{t: t, ch: ch, key: key}
}

func (p *publisher) publish(body []byte) error {
	conf, err := p.ch.PublishWithDeferredConfirmWithContext(context.Background(), "glance", p.key, false, false,
		amqp.Publishing{ContentType: "application/json", ContentEncoding: "utf-8", DeliveryMode: amqp.Persistent, Body: body})
	if err != nil {
		return err
	}
	if !conf.Wait() {
		return errors.New("nacked")
	}
	return nil
}

func (p *publisher) mustPublish(body []byte) {
	p.t.Helper()
	if err := p.publish(body); err != nil {
		p.t.Fatal(err)
	}
}

func uploadBody(id string) []byte {
	return []byte(fmt.Sprintf(`{"event_type":"image.upload","priority":"INFO","message_id":"m-%s","payload":{"id":%q,"status":"active"}}`, id, id))
}

// queueDepth returns ready and unacknowledged message counts of a queue.
func queueDepth(t testing.TB, queue string) (ready, unacked int) {
	t.Helper()
	env := rabbitEnv(t)
	out, err := exec.Command(env["GSC_RABBITMQCTL"], "list_queues", "-q", "-p", env["GSC_RABBIT_VHOST"], "name", "messages_ready", "messages_unacknowledged").Output()
	if err != nil {
		t.Fatalf("rabbitmqctl list_queues: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == queue {
			fmt.Sscan(f[1], &ready)
			fmt.Sscan(f[2], &unacked)
			return ready, unacked
		}
	}
	t.Fatalf("queue %s not listed:\n%s", queue, out)
	return 0, 0
}

// getDead takes one message from the dead-letter queue.
func getDead(t testing.TB, queue string) (amqp.Delivery, bool) {
	t.Helper()
	conn, err := amqp.Dial(rabbitEnv(t)["GSC_AMQP_URL"])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	d, ok, err := ch.Get(queue+".dead", true)
	if err != nil {
		t.Fatal(err)
	}
	return d, ok
}

// eventLog is a Handler that records what it sees.
type eventLog struct {
	mu     sync.Mutex
	events []Event
	fail   func(Event) error
}

func (r *eventLog) Handle(ctx context.Context, ev Event) error {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
	if r.fail != nil {
		return r.fail(ev)
	}
	return nil
}

func (r *eventLog) seen() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...)
}

func TestIntegrationCapturedMessages(t *testing.T) {
	q := testQueue(t)
	rec := &eventLog{}
	startSource(t, sourceOptions(t, q), rec)
	pub := newPublisher(t, q+".key")
	files, _ := filepath.Glob("testdata/notifications/*.json")
	if len(files) < 9 {
		t.Fatalf("captured messages: %v", files)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		pub.mustPublish(b)
	}
	// upload, activate, update (active) and delete are handed over; the rest is acked unseen.
	waitFor(t, 10*time.Second, "four events", func() bool { return len(rec.seen()) == 4 })
	types := map[string]bool{}
	for _, ev := range rec.seen() {
		types[ev.Type] = true
		if ev.Source != "amqp" || ev.Attempt != 1 || ev.ImageID == "" {
			t.Errorf("event %+v", ev)
		}
	}
	if len(types) != 4 {
		t.Errorf("event types %v", types)
	}
	waitFor(t, 5*time.Second, "an empty queue", func() bool { r, u := queueDepth(t, q); return r == 0 && u == 0 })
}

func TestIntegrationRedeliveryAfterConsumerDies(t *testing.T) {
	q := testQueue(t)
	release := make(chan struct{})
	var calls atomic.Int32
	opts := sourceOptions(t, q)
	opts.ShutdownTimeout = 200 * time.Millisecond
	stop := startSource(t, opts, HandlerFunc(func(ctx context.Context, ev Event) error {
		calls.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return ctx.Err()
	}))
	newPublisher(t, q+".key").mustPublish(uploadBody("redeliver-me"))
	waitFor(t, 5*time.Second, "the handler to start", func() bool { return calls.Load() == 1 })
	stop() // the consumer goes away with the message unacknowledged
	if r, u := queueDepth(t, q); r != 1 || u != 0 {
		t.Fatalf("after the consumer died: %d ready, %d unacked; want 1, 0", r, u)
	}
	close(release)
	rec := &eventLog{}
	startSource(t, sourceOptions(t, q), rec)
	waitFor(t, 5*time.Second, "redelivery", func() bool { return len(rec.seen()) == 1 })
	if ev := rec.seen()[0]; ev.ImageID != "redeliver-me" {
		t.Fatalf("redelivered %+v", ev)
	}
}

func TestIntegrationPoisonMessageDeadLettered(t *testing.T) {
	q := testQueue(t)
	rec := &eventLog{}
	startSource(t, sourceOptions(t, q), rec)
	newPublisher(t, q+".key").mustPublish([]byte("this is not JSON"))
	var d amqp.Delivery
	waitFor(t, 5*time.Second, "the dead letter", func() bool {
		var ok bool
		d, ok = getDead(t, q)
		return ok
	})
	if string(d.Body) != "this is not JSON" || !strings.Contains(fmt.Sprint(d.Headers[HeaderReason]), "malformed") {
		t.Fatalf("dead letter %q headers %v", d.Body, d.Headers)
	}
	if len(rec.seen()) != 0 {
		t.Fatalf("the handler saw a poison message")
	}
}

func TestIntegrationTransientFailuresThenDeadLetter(t *testing.T) {
	q := testQueue(t)
	rec := &eventLog{fail: func(Event) error { return errors.New("glance is down") }}
	opts := sourceOptions(t, q)
	opts.MaxAttempts = 3
	startSource(t, opts, rec)
	newPublisher(t, q+".key").mustPublish(uploadBody("flaky"))
	var d amqp.Delivery
	waitFor(t, 10*time.Second, "the dead letter", func() bool {
		var ok bool
		d, ok = getDead(t, q)
		return ok
	})
	seen := rec.seen()
	if len(seen) != 3 || seen[0].Attempt != 1 || seen[2].Attempt != 3 {
		t.Fatalf("handler saw %+v", seen)
	}
	if reason := fmt.Sprint(d.Headers[HeaderReason]); !strings.Contains(reason, "gave up after 3 attempts: glance is down") {
		t.Fatalf("reason %q", reason)
	}
	// A permanent failure goes straight to the dead-letter queue.
	rec2 := &eventLog{fail: func(Event) error { return Permanent(errors.New("image is gone")) }}
	q2 := testQueue(t)
	startSource(t, sourceOptions(t, q2), rec2)
	newPublisher(t, q2+".key").mustPublish(uploadBody("gone"))
	waitFor(t, 5*time.Second, "the dead letter", func() bool { _, ok := getDead(t, q2); return ok })
	if n := len(rec2.seen()); n != 1 {
		t.Fatalf("permanent failure handled %d times", n)
	}
}

func TestIntegrationPrefetchRespected(t *testing.T) {
	q := testQueue(t)
	const prefetch = 4
	var running, peak atomic.Int32
	release := make(chan struct{})
	opts := sourceOptions(t, q)
	opts.Prefetch = prefetch
	startSource(t, opts, HandlerFunc(func(ctx context.Context, ev Event) error {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-release
		running.Add(-1)
		return nil
	}))
	pub := newPublisher(t, q+".key")
	for i := range 20 {
		pub.mustPublish(uploadBody(fmt.Sprint("p", i)))
	}
	waitFor(t, 5*time.Second, "the handlers to fill up", func() bool { return running.Load() == prefetch })
	time.Sleep(300 * time.Millisecond) // give a broken prefetch the chance to show
	if r, u := queueDepth(t, q); peak.Load() != prefetch || u != prefetch || r != 20-prefetch {
		t.Fatalf("peak %d handlers, %d unacked, %d ready; want %d, %d, %d", peak.Load(), u, r, prefetch, prefetch, 20-prefetch)
	}
	close(release)
	waitFor(t, 5*time.Second, "an empty queue", func() bool { r, u := queueDepth(t, q); return r == 0 && u == 0 })
}

func TestIntegrationCompetingConsumers(t *testing.T) {
	q := testQueue(t)
	a, b := &eventLog{}, &eventLog{}
	startSource(t, sourceOptions(t, q), a)
	startSource(t, sourceOptions(t, q), b)
	pub := newPublisher(t, q+".key")
	const n = 200
	for i := range n {
		pub.mustPublish(uploadBody(fmt.Sprint("c", i)))
	}
	waitFor(t, 10*time.Second, "every message", func() bool { return len(a.seen())+len(b.seen()) >= n })
	time.Sleep(200 * time.Millisecond)
	seen := map[string]int{}
	for _, ev := range append(a.seen(), b.seen()...) {
		seen[ev.ImageID]++
	}
	if len(seen) != n || len(a.seen())+len(b.seen()) != n || len(a.seen()) == 0 || len(b.seen()) == 0 {
		t.Fatalf("%d distinct of %d; a got %d, b got %d", len(seen), n, len(a.seen()), len(b.seen()))
	}
}

// TestIntegrationBrokerRestart restarts the broker while the source consumes, with messages
// still queued: the source reconnects, declares its topology again (Glance's exchange is not
// durable, so the broker forgets it and its bindings), and every message is handled: those
// queued before the restart (persistent, in the durable queue) and those published after.
func TestIntegrationBrokerRestart(t *testing.T) {
	q := testQueue(t)
	release := make(chan struct{})
	rec := &eventLog{fail: func(ev Event) error {
		if strings.HasPrefix(ev.ImageID, "b") {
			<-release // hold the first messages until the broker has gone
		}
		return nil
	}}
	opts := sourceOptions(t, q)
	opts.Prefetch = 4
	if testing.Verbose() {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	_, src := startSourceRef(t, opts, rec)
	pub := newPublisher(t, q+".key")
	const before, after = 50, 50
	for i := range before {
		pub.mustPublish(uploadBody(fmt.Sprint("b", i)))
	}
	waitFor(t, 10*time.Second, "the first handlers", func() bool { return len(rec.seen()) >= opts.Prefetch })
	restartBroker(t)
	close(release)
	waitFor(t, 60*time.Second, "the source to consume again", func() bool { return src.Ready() == nil })
	pub = newPublisher(t, q+".key")
	for i := range after {
		pub.mustPublish(uploadBody(fmt.Sprint("a", i)))
	}
	distinct := func() int {
		ids := map[string]bool{}
		for _, ev := range rec.seen() {
			ids[ev.ImageID] = true
		}
		return len(ids)
	}
	deadline := time.Now().Add(60 * time.Second)
	for distinct() < before+after {
		if time.Now().After(deadline) {
			r, u := queueDepth(t, q)
			t.Fatalf("%d of %d messages handled (%d deliveries); queue: %d ready, %d unacked; source: %v", distinct(), before+after, len(rec.seen()), r, u, src.Ready())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// restartBroker stops and starts the test broker with its data kept (test/cloud/rabbitmq.sh).
func restartBroker(t testing.TB) {
	t.Helper()
	cmd := exec.Command("../test/cloud/rabbitmq.sh", "restart")
	cmd.Env = append(os.Environ(), "GSC_CLOUD_DIR="+testcloud.RabbitDir())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("restarting the broker: %v\n%s", err, out)
	}
}

// BenchmarkAMQPSource measures messages per second from a filled queue through the source
// into a no-op handler. Run it with a fixed count, e.g.
// go test -tags integration -run '^$' -bench AMQPSource -benchtime 20000x -count 5 ./consumer
func BenchmarkAMQPSource(b *testing.B) {
	for _, prefetch := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("prefetch=%d", prefetch), func(b *testing.B) {
			q := testQueue(b)
			opts := sourceOptions(b, q)
			opts.Prefetch = prefetch
			// Declare the queues and bindings first, so the messages land in them.
			var handled atomic.Int64
			src, err := NewAMQPSource(opts, HandlerFunc(func(context.Context, Event) error { handled.Add(1); return nil }))
			if err != nil {
				b.Fatal(err)
			}
			conn, err := amqp.Dial(rabbitEnv(b)["GSC_AMQP_URL"])
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			ch, err := conn.Channel()
			if err != nil {
				b.Fatal(err)
			}
			if err := src.declare(ch); err != nil {
				b.Fatal(err)
			}
			body := uploadBody("bench")
			for range b.N {
				if err := ch.PublishWithContext(context.Background(), "glance", q+".key", false, false,
					amqp.Publishing{ContentType: "application/json", DeliveryMode: amqp.Persistent, Body: body}); err != nil {
					b.Fatal(err)
				}
			}
			waitFor(b, time.Minute, "the queue to fill", func() bool { r, _ := queueDepth(b, q); return r == b.N })
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			b.ResetTimer()
			go func() { done <- src.Run(ctx) }()
			for handled.Load() < int64(b.N) {
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			cancel()
			<-done
		})
	}
}

func TestIntegrationQuorumQueues(t *testing.T) {
	q := testQueue(t)
	rec := &eventLog{}
	opts := sourceOptions(t, q)
	opts.QuorumQueues = true
	startSource(t, opts, rec)
	newPublisher(t, q+".key").mustPublish(uploadBody("quorum"))
	waitFor(t, 5*time.Second, "the event", func() bool { return len(rec.seen()) == 1 })
	env := rabbitEnv(t)
	out, err := exec.Command(env["GSC_RABBITMQCTL"], "list_queues", "-q", "-p", env["GSC_RABBIT_VHOST"], "name", "type").Output()
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			types[f[0]] = f[1]
		}
	}
	for _, name := range []string{q, q + ".retry", q + ".dead"} {
		if types[name] != "quorum" {
			t.Errorf("queue %s is %q, want quorum", name, types[name])
		}
	}
}

// TestIntegrationHostFailover gives the source a transport URL whose first host refuses
// connections: it must move on to the second.
func TestIntegrationHostFailover(t *testing.T) {
	env := rabbitEnv(t)
	u, err := ParseTransportURL(env["GSC_TRANSPORT_URL"])
	if err != nil {
		t.Fatal(err)
	}
	h := u.Hosts[0]
	dead := fmt.Sprintf("%s:%s@127.0.0.1:1", h.Username, h.Password)
	live := fmt.Sprintf("%s:%s@%s", h.Username, h.Password, h.Addr())
	q := testQueue(t)
	opts := sourceOptions(t, q)
	opts.TransportURL = fmt.Sprintf("rabbit://%s,%s/%s", dead, live, u.VirtualHost)
	rec := &eventLog{}
	startSource(t, opts, rec)
	newPublisher(t, q+".key").mustPublish(uploadBody("failover"))
	waitFor(t, 5*time.Second, "the event", func() bool { return len(rec.seen()) == 1 })
}
