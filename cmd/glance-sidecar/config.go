package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"gopkg.in/ini.v1"
)

// option is one setting of serve: a key in a section of the INI file, a command-line flag
// (section-key, or key in [DEFAULT]) and an environment variable GLANCE_SIDECAR_<FLAG>. This
// table is the single source of the flags, the INI keys, `config sample` and
// etc/glance-sidecar.conf.sample. Precedence: flag, then environment, then file, then default.
type option struct {
	section, key string
	def          any // string, int, bool, time.Duration, byteSize or []string
	help         string
	secret       bool // may also be given as <key>_file, read from that file
}

// defaultConfigFile is read by serve when --config-file is not given and it exists.
const defaultConfigFile = "/etc/glance-sidecar/glance-sidecar.conf"

var options = []option{
	{"DEFAULT", "max_workers", 4, "Jobs run at once.", false},
	{"DEFAULT", "log_level", "info", "debug, info, warn or error.", false},
	{"DEFAULT", "property_prefix", "sidecar_", "Prefix of the image properties the sidecar owns.", false},
	{"DEFAULT", "overwrite", false, "Let Nova's own properties (vmware_disktype, vmware_adaptertype) replace what a person set.", false},
	{"DEFAULT", "deactivate_unsafe", false, "Deactivate an image found unsafe, as well as marking it.", false},
	{"DEFAULT", "verify_checksum", false, "Read every image whole once to check it against os_hash_value.", false},

	{"glance", "cloud", "", "clouds.yaml cloud to use (else OS_CLOUD, else the OS_* variables, unless auth_url is set).", false},
	{"glance", "clouds_file", "", "clouds.yaml path (default: the standard locations).", false},
	{"glance", "auth_url", "", "Keystone URL for explicit credentials.", false},
	{"glance", "username", "", "User name for explicit credentials.", false},
	{"glance", "password", "", "Password for explicit credentials.", true},
	{"glance", "user_domain_name", "Default", "Domain of the user.", false},
	{"glance", "project_name", "", "Project to scope the token to.", false},
	{"glance", "project_domain_name", "Default", "Domain of the project.", false},
	{"glance", "application_credential_id", "", "Application credential id (instead of a password).", false},
	{"glance", "application_credential_secret", "", "Application credential secret.", true},
	{"glance", "region", "", "Region of the image endpoint.", false},
	{"glance", "interface", "", "Endpoint interface: public, internal or admin.", false},
	{"glance", "ca_file", "", "CA bundle for TLS to Keystone and Glance.", false},
	{"glance", "wait_timeout", 2 * time.Minute, "How long to wait for an image to become active.", false},

	{"amqp", "transport_url", "", "oslo.messaging transport URL of the bus Glance notifies on (empty: no bus).", true},
	{"amqp", "exchange", "glance", "Exchange Glance publishes to.", false},
	{"amqp", "exchange_durable", false, "Declare the exchange durable (as oslo does with amqp_durable_queues or quorum queues).", false},
	{"amqp", "queue", "glance-sidecar", "The sidecar's own durable queue (.retry and .dead are beside it).", false},
	{"amqp", "quorum_queues", false, "Declare the queues as quorum queues.", false},
	{"amqp", "routing_keys", []string{"notifications.info"}, "Routing keys to bind the queue with.", false},
	{"amqp", "prefetch", 8, "Messages handled at once.", false},
	{"amqp", "max_attempts", 5, "Attempts before a failing job is recorded as failed.", false},
	{"amqp", "retry_delay", 30 * time.Second, "How long a failed message waits before the next attempt.", false},
	{"amqp", "ssl_ca_file", "", "CA bundle for TLS to the broker (also ?ssl_ca_file= in the URL).", false},

	{"webhook", "listen", "127.0.0.1:9494", "Address of the HTTP server: webhook, /healthz, /readyz, /metrics (empty: none).", false},
	{"webhook", "secret_file", "", "File holding the webhook's HMAC secret (empty: no webhook, health and metrics only).", false},
	{"webhook", "window", 5 * time.Minute, "How far a request's timestamp may be from now.", false},

	{"DEFAULT", "reconcile_interval", 10 * time.Minute, "How often serve lists recently updated images that lack a current outcome and queues them (0: never).", false},

	{"workspace", "dir", "/var/lib/glance-sidecar/workspace", "Directory for the files of jobs that need disk (conversions); locked by one process, swept at start.", false},
	{"workspace", "max_bytes", byteSize(20 << 30), "Disk the jobs may reserve at once (bytes, or with a K, M, G or T suffix).", false},
	{"workspace", "max_jobs", 2, "Jobs holding workspace disk at once.", false},

	{"inspect", "owners", []string{}, "Only look at images of these owners (empty: all).", false},
	{"inspect", "visibilities", []string{}, "Only look at images with these visibilities (empty: all).", false},
	{"inspect", "disk_formats", []string{}, "Only look at images declared with these disk formats (empty: all).", false},

	{"convert", "target_format", "", "Convert every image to this disk format: raw, qcow2, vdi, vmdk or vhd (empty: never convert).", false},
	{"convert", "source_formats", []string{"qcow2", "vmdk", "vdi", "vhd", "raw"}, "Formats (as detected) that are converted; others are only inspected.", false},
	{"convert", "min_size", byteSize(0), "Convert only images whose virtual size is at least this.", false},
	{"convert", "max_size", byteSize(0), "Convert only images whose virtual size is at most this (0: up to what the workspace holds).", false},
	{"convert", "original", "keep", "What happens to the original after a conversion: keep, hide (os_hidden), deactivate or delete.", false},
	{"convert", "address_space", byteSize(2 << 30), "Address-space limit of qemu-img (RLIMIT_AS).", false},
	{"convert", "cpu_time", time.Duration(0), "CPU-time limit of qemu-img (0: none; the job's timeout still applies).", false},
	{"convert", "adapter_type", "ide", "VMDK adapter type written when the source says none (its vmware_adaptertype property wins): ide, busLogic, lsiLogic, legacyESX.", false},
	{"convert", "force_size", false, "Write vhd targets with exactly the source's virtual size (qemu's force_size, as Azure needs) instead of rounding to CHS geometry.", false},
	{"convert", "timeout", time.Hour, "Wall-clock limit of one conversion, download and upload included.", false},

	{"DEFAULT", "shutdown_timeout", 30 * time.Second, "How long SIGTERM waits for jobs in flight.", false},
}

// byteSize is an option counted in bytes, written with an optional binary suffix.
type byteSize int64

// String formats the size with the largest binary suffix that divides it.
func (b byteSize) String() string {
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}} {
		if b != 0 && b%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d%s", b>>u.shift, u.suffix)
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

// parseSize reads "123", "512K", "20G", "1TiB", "10 MiB" (binary units).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	num := strings.TrimRight(t, "KMGTiBkmgtb ")
	unit := strings.ToUpper(strings.TrimSpace(t[len(num):]))
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size in bytes", s)
	}
	shift := map[string]uint{"": 0, "B": 0, "K": 10, "KIB": 10, "M": 20, "MIB": 20, "G": 30, "GIB": 30, "T": 40, "TIB": 40}
	sh, ok := shift[unit]
	if !ok {
		return 0, fmt.Errorf("%q: unknown unit %q (use K, M, G or T)", s, unit)
	}
	if n > math.MaxInt64>>sh {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n << sh, nil
}

func (o option) flag() string {
	name := strings.ReplaceAll(o.key, "_", "-")
	if o.section != "DEFAULT" {
		name = o.section + "-" + name
	}
	return name
}

func (o option) env() string {
	return "GLANCE_SIDECAR_" + strings.ToUpper(strings.ReplaceAll(o.flag(), "-", "_"))
}

// flags builds the cli flags of every option, plus --config-file.
func flags() []cli.Flag {
	out := []cli.Flag{&cli.StringFlag{Name: "config-file", EnvVars: []string{"GLANCE_SIDECAR_CONFIG_FILE"},
		Usage: "INI configuration file (default " + defaultConfigFile + " when it exists)"}}
	for _, o := range options {
		env := []string{o.env()}
		switch d := o.def.(type) {
		case string:
			out = append(out, &cli.StringFlag{Name: o.flag(), Value: d, EnvVars: env, Usage: o.help})
		case int:
			out = append(out, &cli.IntFlag{Name: o.flag(), Value: d, EnvVars: env, Usage: o.help})
		case bool:
			out = append(out, &cli.BoolFlag{Name: o.flag(), Value: d, EnvVars: env, Usage: o.help})
		case time.Duration:
			out = append(out, &cli.DurationFlag{Name: o.flag(), Value: d, EnvVars: env, Usage: o.help})
		case byteSize:
			out = append(out, &cli.StringFlag{Name: o.flag(), Value: d.String(), EnvVars: env, Usage: o.help})
		case []string:
			out = append(out, &cli.StringSliceFlag{Name: o.flag(), Value: cli.NewStringSlice(d...), EnvVars: env, Usage: o.help + " Comma-separated."})
		}
		if o.secret {
			out = append(out, &cli.StringFlag{Name: o.flag() + "-file", EnvVars: []string{o.env() + "_FILE"}, Usage: "file holding " + o.key})
		}
	}
	return out
}

// loadConfig applies the INI file to every flag that neither the command line nor the
// environment set, reads *_file secrets, and reports every problem at once.
func loadConfig(c *cli.Context) error {
	path := c.String("config-file")
	if path == "" {
		if _, err := os.Stat(defaultConfigFile); err == nil {
			path = defaultConfigFile
		}
	}
	var errs []error
	if path != "" {
		f, err := ini.LoadSources(ini.LoadOptions{Insensitive: false}, path)
		if err != nil {
			return fmt.Errorf("reading %s: %w", path, err)
		}
		known := map[string]bool{}
		for _, o := range options {
			known[o.section+"."+o.key] = true
			if o.secret {
				known[o.section+"."+o.key+"_file"] = true
			}
		}
		for _, sec := range f.Sections() {
			for _, k := range sec.Keys() {
				if !known[sec.Name()+"."+k.Name()] {
					errs = append(errs, fmt.Errorf("%s: unknown option [%s] %s", path, sec.Name(), k.Name()))
				}
			}
		}
		for _, o := range options {
			names := []string{o.key}
			if o.secret {
				names = append(names, o.key+"_file")
			}
			for _, key := range names {
				flag := o.flag()
				if key != o.key {
					flag += "-file"
				}
				k, err := f.Section(o.section).GetKey(key)
				if err != nil || c.IsSet(flag) {
					continue
				}
				if err := c.Set(flag, k.String()); err != nil {
					errs = append(errs, fmt.Errorf("%s: [%s] %s = %q: %w", path, o.section, key, k.String(), err))
				}
			}
		}
	}
	for _, o := range options {
		if !o.secret || c.String(o.flag()+"-file") == "" {
			continue
		}
		b, err := os.ReadFile(c.String(o.flag() + "-file"))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", o.key+"_file", err))
			continue
		}
		if err := c.Set(o.flag(), strings.TrimSpace(string(b))); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// writeSample writes every option with its default and help, commented out, as an INI file.
func writeSample(w io.Writer) error {
	var b strings.Builder
	b.WriteString("# glance-sidecar configuration. Every option is shown with its default; flags\n" +
		"# (--section-key) and environment variables (GLANCE_SIDECAR_SECTION_KEY) override this file.\n" +
		"# Options marked secret may instead be read from a file named by <key>_file.\n")
	section := ""
	for _, sec := range sampleSections {
		for _, o := range options {
			if o.section != sec {
				continue
			}
			if section != sec {
				fmt.Fprintf(&b, "\n[%s]\n", sec)
				section = sec
			}
			help := o.help
			if o.secret {
				help += " (secret)"
			}
			fmt.Fprintf(&b, "# %s\n#%s = %s\n", help, o.key, sampleValue(o.def))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeOptionsTable writes every option as a Markdown table, section by section: the README's
// configuration reference (a test keeps it equal to this).
func writeOptionsTable(w io.Writer) error {
	var b strings.Builder
	b.WriteString("| section | option | default | flag (`GLANCE_SIDECAR_…` variable) | meaning |\n| --- | --- | --- | --- | --- |\n")
	for _, sec := range sampleSections {
		for _, o := range options {
			if o.section != sec {
				continue
			}
			def := sampleValue(o.def)
			if def == "" {
				def = "(empty)"
			}
			help := o.help
			if o.secret {
				help += " Secret: may be read from the file named by `" + o.key + "_file`."
			}
			fmt.Fprintf(&b, "| `[%s]` | `%s` | `%s` | `--%s` | %s |\n", sec, o.key, def, o.flag(), strings.ReplaceAll(help, "|", "\\|"))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// sampleSections orders the sections in the sample file and the table.
var sampleSections = []string{"DEFAULT", "glance", "amqp", "webhook", "workspace", "inspect", "convert"}

func sampleValue(v any) string {
	switch v := v.(type) {
	case []string:
		return strings.Join(v, ",")
	case time.Duration:
		return v.String()
	}
	return fmt.Sprint(v)
}

func configCommand() *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "configuration helpers",
		Subcommands: []*cli.Command{{
			Name:  "table",
			Usage: "print every option as a Markdown table (the README's configuration reference)",
			Action: func(c *cli.Context) error {
				return writeOptionsTable(c.App.Writer)
			},
		}, {
			Name:  "sample",
			Usage: "print every option with its default and help, as an INI file",
			Action: func(c *cli.Context) error {
				return writeSample(c.App.Writer)
			},
		}},
	}
}
