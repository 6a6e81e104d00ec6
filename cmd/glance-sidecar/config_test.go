package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
)

// TestConfigSampleInSync keeps etc/glance-sidecar.conf.sample equal to `config sample`.
func TestConfigSampleInSync(t *testing.T) {
	var b bytes.Buffer
	if err := writeSample(&b); err != nil {
		t.Fatal(err)
	}
	file, err := os.ReadFile("../../etc/glance-sidecar.conf.sample")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Bytes(), file) {
		t.Fatal("etc/glance-sidecar.conf.sample is stale: go run ./cmd/glance-sidecar config sample > etc/glance-sidecar.conf.sample")
	}
	for _, o := range options {
		if !strings.Contains(b.String(), "#"+o.key+" = ") {
			t.Errorf("sample lacks %s", o.key)
		}
	}
}

// loadWith runs loadConfig in an app with the serve flags and returns the context's values.
func loadWith(t *testing.T, env map[string]string, args ...string) (*cli.Context, error) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	var got *cli.Context
	var loadErr error
	app := &cli.App{Flags: flags(), Action: func(c *cli.Context) error {
		got, loadErr = c, loadConfig(c)
		return nil
	}}
	if err := app.Run(append([]string{"x"}, args...)); err != nil {
		t.Fatal(err)
	}
	return got, loadErr
}

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "url")
	if err := os.WriteFile(secret, []byte("rabbit://u:p@h/\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "c.conf")
	if err := os.WriteFile(conf, []byte("[DEFAULT]\nmax_workers = 7\nlog_level = debug\n[amqp]\nprefetch = 3\nretry_delay = 2s\ntransport_url_file = "+secret+
		"\n[inspect]\ndisk_formats = raw,qcow2\n[webhook]\nlisten = 127.0.0.1:1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := loadWith(t, map[string]string{"GLANCE_SIDECAR_AMQP_PREFETCH": "5"}, "--config-file", conf, "--log-level", "warn")
	if err != nil {
		t.Fatal(err)
	}
	checks := map[string]any{
		"max-workers": 7, "log-level": "warn", "amqp-prefetch": 5, "amqp-retry-delay": 2 * time.Second,
		"amqp-transport-url": "rabbit://u:p@h/", "webhook-listen": "127.0.0.1:1", "amqp-queue": "glance-sidecar",
	}
	for flag, want := range checks {
		var got any
		switch want.(type) {
		case int:
			got = c.Int(flag)
		case string:
			got = c.String(flag)
		case time.Duration:
			got = c.Duration(flag)
		}
		if got != want {
			t.Errorf("%s = %v, want %v", flag, got, want)
		}
	}
	if f := c.StringSlice("inspect-disk-formats"); strings.Join(f, ",") != "raw,qcow2" {
		t.Errorf("disk formats %v", f)
	}
}

func TestConfigReportsEveryError(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "c.conf")
	if err := os.WriteFile(conf, []byte("[DEFAULT]\nmax_workers = many\nfrobnicate = 1\n[amqp]\nprefetch = x\ntransport_url_file = /nonexistent\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := loadWith(t, nil, "--config-file", conf)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"max_workers", "frobnicate", "prefetch", "transport_url_file"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  bool
	}{
		{"0", 0, false}, {"123", 123, false}, {"512K", 512 << 10, false}, {"20G", 20 << 30, false},
		{"1TiB", 1 << 40, false}, {"10 MiB", 10 << 20, false}, {"3g", 3 << 30, false}, {"7B", 7, false},
		{"", 0, true}, {"-1", 0, true}, {"1.5G", 0, true}, {"12Q", 0, true}, {"G", 0, true},
		{"9999999999T", 0, true},
	} {
		got, err := parseSize(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
	for _, b := range []byteSize{0, 1, 1023, 1024, 3 << 20, 20 << 30, 5 << 40, 1<<30 + 1} {
		if got, err := parseSize(b.String()); err != nil || got != int64(b) {
			t.Errorf("parseSize(%q) = %d, %v; want %d", b.String(), got, err, int64(b))
		}
	}
}

func TestSettingsReportEveryError(t *testing.T) {
	app := &cli.App{Flags: flags(), Writer: io.Discard, ErrWriter: io.Discard, Action: func(c *cli.Context) error {
		_, err := loadSettings(c)
		return err
	}}
	err := app.Run([]string{"x", "--log-level", "loud", "--workspace-max-bytes", "lots", "--workspace-dir", "",
		"--max-workers", "0", "--convert-original", "shred", "--convert-target-format", "iso",
		"--convert-source-formats", "qcow2,ploop", "--property-prefix", "os_glance_", "--inspect-visibilities", "hidden",
		"--convert-max-size", "-3"})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"log_level", "workspace-max-bytes", "workspace dir", "max_workers", "shred", "iso", "ploop", "os_glance_", "hidden", "convert-max-size"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

// TestReadmeOptionsInSync keeps the README's configuration table equal to `config table`.
func TestReadmeOptionsInSync(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok1 := strings.Cut(string(readme), "<!-- options:begin -->\n")
	got, _, ok2 := strings.Cut(after, "<!-- options:end -->")
	if !ok1 || !ok2 {
		t.Fatal("README.md lacks the <!-- options:begin --> … <!-- options:end --> markers")
	}
	var want bytes.Buffer
	if err := writeOptionsTable(&want); err != nil {
		t.Fatal(err)
	}
	if got != want.String() {
		t.Fatal("README.md's configuration table is stale: replace it with `go run ./cmd/glance-sidecar config table`")
	}
}

// TestReadmeMetrics checks that the README names every metric the code registers.
func TestReadmeMetrics(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	name := regexp.MustCompile(`Name:\s*"(glance_sidecar_[a-z_]+)"`)
	files, err := filepath.Glob("../../*/*.go")
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob("../../*/*/*.go")
	found := 0
	for _, f := range append(files, more...) {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range name.FindAllStringSubmatch(string(src), -1) {
			found++
			if !strings.Contains(string(readme), "`"+m[1]+"`") && !strings.Contains(string(readme), "`"+m[1]+"{") {
				t.Errorf("%s registers %s, which README.md does not list", f, m[1])
			}
		}
	}
	if found < 10 {
		t.Fatalf("found only %d metric names in the sources: is the pattern stale?", found)
	}
}
