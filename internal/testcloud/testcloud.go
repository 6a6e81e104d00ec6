// Package testcloud finds the project's test cloud (test/cloud/up.sh) for integration tests:
// its state directories and the KEY=VALUE env files that up.sh writes there. Start with Env.
package testcloud

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Dir is the full test cloud's state directory: GSC_CLOUD_DIR, default /tmp/glance-sidecar-cloud.
func Dir() string {
	return dirFrom("GSC_CLOUD_DIR", "/tmp/glance-sidecar-cloud")
}

// RabbitDir is the consumer tests' own broker's state directory (up.sh in its RabbitMQ-only
// mode): GSC_RABBIT_DIR, default /tmp/glance-sidecar-rabbitmq.
func RabbitDir() string {
	return dirFrom("GSC_RABBIT_DIR", "/tmp/glance-sidecar-rabbitmq")
}

func dirFrom(env, def string) string {
	if d := os.Getenv(env); d != "" {
		return d
	}
	return def
}

// Env reads the env file in dir, failing the test when it is missing: the cloud is not up.
func Env(t testing.TB, dir string) map[string]string {
	t.Helper()
	env, err := ReadEnv(dir)
	if err != nil {
		t.Fatalf("%v (bring the test cloud up: scripts/integration, or test/cloud/up.sh)", err)
	}
	return env
}

// ReadEnv reads the KEY=VALUE lines of dir/env.
func ReadEnv(dir string) (map[string]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "env"))
	if err != nil {
		return nil, fmt.Errorf("test cloud env file: %w", err)
	}
	env := map[string]string{}
	for line := range strings.SplitSeq(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = v
		}
	}
	return env, nil
}

// DeleteQueues removes a consumer queue and its .retry and .dead queues from the broker at
// amqpURL, for test cleanup: failures are ignored.
func DeleteQueues(amqpURL, queue string) {
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	for _, q := range []string{queue, queue + ".retry", queue + ".dead"} {
		_, _ = ch.QueueDelete(q, false, false, false)
	}
}
