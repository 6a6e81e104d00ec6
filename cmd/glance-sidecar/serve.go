package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/urfave/cli/v2"

	"github.com/glance-sidecar/glance-sidecar/consumer"
	"github.com/glance-sidecar/glance-sidecar/worker"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:   "serve",
		Usage:  "consume Glance's notifications (RabbitMQ and webhook) and introspect every new image",
		Flags:  flags(),
		Action: runServe,
	}
}

func runServe(c *cli.Context) error {
	set, err := loadSettings(c)
	if err != nil {
		return cli.Exit(fmt.Sprintf("configuration: %v", err), exitUsage)
	}
	log := set.log
	ctx := c.Context

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	jobMetrics, err := worker.NewMetrics(reg)
	if err != nil {
		return cli.Exit(fmt.Sprintf("metrics: %v", err), 1)
	}
	set.job.Metrics = jobMetrics
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "glance_sidecar_events_total", Help: "Events handled, by source (amqp, webhook), type and result (done, retry, failed).",
	}, []string{"source", "type", "result"})
	reg.MustRegister(events)

	ws, err := set.openWorkspace(set.workspace.Dir)
	if err != nil {
		return cli.Exit(err.Error(), exitUsage)
	}
	defer ws.Close()
	if err := ws.RegisterMetrics(reg); err != nil {
		return cli.Exit(fmt.Sprintf("metrics: %v", err), 1)
	}

	gc, err := newGlanceClient(ctx, c, log, reg)
	if err != nil {
		return cli.Exit(fmt.Sprintf("glance: %v", err), exitUsage)
	}
	pool := worker.NewPool(gc, c.Int("max-workers"), set.job)
	maxAttempts := c.Int("amqp-max-attempts")
	handle := func(ctx context.Context, ev consumer.Event) error {
		_, err := pool.Process(ctx, ev.ImageID, ev.Type)
		result := "done"
		switch {
		case err == nil, errors.Is(err, worker.ErrCancelled):
			err = nil
		case ev.Attempt >= maxAttempts && ctx.Err() == nil:
			// Out of attempts: record the failure on the image, so the event has an outcome.
			result = "failed"
			if rerr := pool.RecordFailure(ctx, ev.ImageID, err); rerr != nil {
				err = fmt.Errorf("%w (and recording the failure: %v)", err, rerr)
			} else {
				err = nil
			}
		default:
			result = "retry"
		}
		events.WithLabelValues(ev.Source, ev.Type, result).Inc()
		return err
	}

	var (
		wg     sync.WaitGroup
		jobs   sync.WaitGroup // webhook events in flight
		source *consumer.AMQPSource
		errs   = make(chan error, 2)
	)
	jobsCtx, cancelJobs := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelJobs()
	if url := c.String("amqp-transport-url"); url != "" {
		source, err = consumer.NewAMQPSource(consumer.AMQPOptions{
			TransportURL: url, Exchange: c.String("amqp-exchange"), ExchangeDurable: c.Bool("amqp-exchange-durable"),
			Queue: c.String("amqp-queue"), QuorumQueues: c.Bool("amqp-quorum-queues"), RoutingKeys: c.StringSlice("amqp-routing-keys"),
			Prefetch: c.Int("amqp-prefetch"), MaxAttempts: maxAttempts, RetryDelay: c.Duration("amqp-retry-delay"),
			ShutdownTimeout: c.Duration("shutdown-timeout"), CAFile: c.String("amqp-ssl-ca-file"), Logger: log,
		}, consumer.HandlerFunc(handle))
		if err != nil {
			return cli.Exit(fmt.Sprintf("amqp: %v", err), exitUsage)
		}
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "glance_sidecar_broker_connected", Help: "1 while the RabbitMQ source is consuming.",
		}, func() float64 {
			if source.Ready() == nil {
				return 1
			}
			return 0
		}))
		wg.Go(func() { errs <- source.Run(ctx) })
	}

	var srv *http.Server
	if addr := c.String("webhook-listen"); addr != "" {
		// Webhook events are answered 202 at once and handled in the background: a job can
		// take longer than an HTTP request should.
		async := consumer.HandlerFunc(func(_ context.Context, ev consumer.Event) error {
			jobs.Go(func() {
				if err := handle(jobsCtx, ev); err != nil {
					log.Warn("webhook event failed", "image_id", ev.ImageID, "error", err)
				}
			})
			return nil
		})
		ready := func() error {
			if source != nil {
				return source.Ready()
			}
			return nil
		}
		var hook *consumer.Webhook
		if secret := c.String("webhook-secret-file"); secret != "" {
			hook, err = consumer.NewWebhook(consumer.WebhookOptions{SecretFile: secret, Window: c.Duration("webhook-window"), Logger: log, Registerer: reg}, async)
			if err != nil {
				return cli.Exit(fmt.Sprintf("webhook: %v", err), exitUsage)
			}
		}
		srv = consumer.NewServer(addr, hook, ready, reg)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return cli.Exit(fmt.Sprintf("webhook: %v", err), exitUsage)
		}
		log.Info("serving HTTP", "addr", ln.Addr().String(), "webhook", hook != nil)
		wg.Go(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errs <- err
			}
		})
	}
	if source == nil && srv == nil {
		return cli.Exit("nothing to serve: set [amqp] transport_url or [webhook] listen", exitUsage)
	}
	if d := c.Duration("reconcile-interval"); d > 0 {
		rec, err := worker.NewReconciler(pool, worker.ReconcileOptions{Interval: d, Logger: log, Registerer: reg})
		if err != nil {
			return cli.Exit(fmt.Sprintf("reconcile: %v", err), 1)
		}
		wg.Go(func() { rec.Run(ctx) })
	}
	log.Info("glance-sidecar serving", "version", buildVersion(), "pid", os.Getpid())

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errs:
	}
	log.Info("shutting down")
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		_ = srv.Shutdown(sctx)
		cancel()
	}
	wg.Wait()
	done := make(chan struct{})
	go func() { jobs.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(c.Duration("shutdown-timeout")):
		log.Warn("webhook jobs still running at shutdown; cancelling them")
		cancelJobs()
		<-done
	}
	if runErr != nil {
		return cli.Exit(runErr.Error(), 1)
	}
	return nil
}
