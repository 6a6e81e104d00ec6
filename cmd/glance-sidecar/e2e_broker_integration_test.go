//go:build integration

package main

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/glance-sidecar/glance-sidecar/internal/testcloud"
)

// TestIntegrationServeBrokerDown: RabbitMQ stopped for 10 s mid-burst loses nothing. Glance
// retries its notifications (retry = -1) and serve reconnects. Glance's exchange is not
// durable (oslo's default), so the restarted broker has neither it nor the sidecar's binding
// until one of them declares it again: what Glance publishes between its reconnect and the
// sidecar's rebinding is routed nowhere. Reconcile finds those images.
func TestIntegrationServeBrokerDown(t *testing.T) {
	cl := newCloud(t)
	addr := freeAddr(t)
	flags := slices.Clone(cl.flags)
	flags[slices.Index(flags, "--reconcile-interval")+1] = "5s"
	startServe(t, addr, append(flags, "--log-level", "error", "--amqp-transport-url", cl.env["GSC_TRANSPORT_URL"],
		"--amqp-queue", cl.queue(t), "--webhook-listen", addr)...)
	rabbit := func(cmd string) error {
		c := exec.Command("../../test/cloud/rabbitmq.sh", cmd)
		c.Env = append(os.Environ(), "GSC_CLOUD_DIR="+testcloud.Dir())
		if out, err := c.CombinedOutput(); err != nil {
			return fmt.Errorf("rabbitmq.sh %s: %v\n%s", cmd, err, out)
		}
		return nil
	}
	t.Cleanup(func() {
		if err := rabbit("start"); err != nil {
			t.Error(err)
		}
	})
	var once sync.Once
	stopped := make(chan error, 1)
	var ids []string
	var burstErr error
	uploaded := make(chan struct{})
	go func() {
		defer close(uploaded)
		ids, burstErr = cl.burst(t, 60, func(i int) error {
			if i >= 20 {
				once.Do(func() { stopped <- rabbit("stop") })
			}
			return nil
		})
	}()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-uploaded:
		t.Fatalf("the burst ended before the broker was stopped: %v", burstErr)
	}
	time.Sleep(10 * time.Second)
	if err := rabbit("start"); err != nil {
		t.Fatal(err)
	}
	<-uploaded
	if burstErr != nil {
		t.Fatal(burstErr)
	}
	cl.checkBurst(t, ids, time.Minute)
	// serve reconnects by itself, within its backoff's cap (amqp ReconnectMax, 30 s): reconcile
	// may have finished the burst before it did.
	var connected float64
	for deadline := time.Now().Add(45 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if connected = scrape(t, addr, "glance_sidecar_broker_connected"); connected == 1 {
			break
		}
	}
	if connected != 1 {
		t.Errorf("broker_connected = %v 45 s after the broker came back", connected)
	}
}
