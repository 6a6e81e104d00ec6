package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"

	"github.com/glance-sidecar/glance-sidecar/convert"
	"github.com/glance-sidecar/glance-sidecar/glanceclient"
	"github.com/glance-sidecar/glance-sidecar/inspect"
	"github.com/glance-sidecar/glance-sidecar/worker"
)

// settings are the validated options of the commands that run jobs (serve, reprocess): the
// configuration turned into each package's Options.
type settings struct {
	log       *slog.Logger
	job       worker.JobOptions
	workspace worker.WorkspaceOptions
}

// loadSettings loads the configuration (file, environment, flags) and validates it, reporting
// every problem at once. The logger writes JSON lines to the app's error writer.
func loadSettings(c *cli.Context) (*settings, error) {
	if err := loadConfig(c); err != nil {
		return nil, err
	}
	var errs []error
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		errs = append(errs, fmt.Errorf("log_level: %w", err))
	}
	s := &settings{log: slog.New(slog.NewJSONHandler(c.App.ErrWriter, &slog.HandlerOptions{Level: level}))}
	size := func(flag string) int64 {
		n, err := parseSize(c.String(flag))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", flag, err))
		}
		return n
	}
	s.workspace = worker.WorkspaceOptions{Dir: c.String("workspace-dir"), MaxBytes: size("workspace-max-bytes"), MaxJobs: c.Int("workspace-max-jobs")}
	if err := s.workspace.Validate(); err != nil {
		errs = append(errs, err)
	}
	if n := c.Int("max-workers"); n < 1 {
		errs = append(errs, fmt.Errorf("max_workers %d: at least 1", n))
	}
	if d := c.Duration("reconcile-interval"); d < 0 {
		errs = append(errs, fmt.Errorf("reconcile_interval %v is negative", d))
	}
	if p := c.String("property-prefix"); p == "" || p == "os_" || p == "os_glance_" {
		errs = append(errs, fmt.Errorf("property_prefix %q: must be non-empty and not one of Glance's own", p))
	}
	for _, f := range c.StringSlice("inspect-visibilities") {
		if !slices.Contains([]string{"public", "private", "shared", "community"}, f) {
			errs = append(errs, fmt.Errorf("inspect visibilities: unknown visibility %q", f))
		}
	}
	if a := c.String("convert-adapter-type"); a != "" {
		if _, ok := convert.AdapterType(a); !ok {
			errs = append(errs, fmt.Errorf("convert adapter_type %q: ide, busLogic, lsiLogic or legacyESX", a))
		}
	}
	if o := c.String("convert-original"); !slices.Contains([]string{"keep", "hide", "deactivate", "delete"}, o) {
		errs = append(errs, fmt.Errorf("convert original %q: keep, hide, deactivate or delete", o))
	}
	if t := c.String("convert-target-format"); t != "" && !slices.Contains(convertFormats, t) {
		errs = append(errs, fmt.Errorf("convert target_format %q: one of %v", t, convertFormats))
	}
	for _, f := range c.StringSlice("convert-source-formats") {
		if !slices.Contains(convertFormats, f) {
			errs = append(errs, fmt.Errorf("convert source_formats: %q is not one of %v", f, convertFormats))
		}
	}

	s.job = worker.JobOptions{
		Properties:       worker.PropertyOptions{Prefix: c.String("property-prefix"), Overwrite: c.Bool("overwrite"), Version: buildVersion()},
		Wait:             glanceclient.WaitOptions{Timeout: c.Duration("glance-wait-timeout")},
		VerifyChecksum:   c.Bool("verify-checksum"),
		DeactivateUnsafe: c.Bool("deactivate-unsafe"),
		Owners:           c.StringSlice("inspect-owners"),
		Visibilities:     c.StringSlice("inspect-visibilities"),
		DiskFormats:      c.StringSlice("inspect-disk-formats"),
		Logger:           s.log,
	}
	minSize, maxSize, addrSpace := size("convert-min-size"), size("convert-max-size"), size("convert-address-space")
	if t := c.String("convert-target-format"); t != "" {
		var sources []inspect.Format
		for _, f := range c.StringSlice("convert-source-formats") {
			sources = append(sources, inspect.Format(f))
		}
		s.job.Convert = worker.ConvertOptions{
			Target: inspect.Format(t), Sources: sources,
			MinSize: minSize, MaxSize: maxSize,
			Original: c.String("convert-original"), Timeout: c.Duration("convert-timeout"),
			Qemu: convert.Options{AddressSpace: addrSpace, CPUTime: c.Duration("convert-cpu-time"),
				AdapterType: c.String("convert-adapter-type"), ForceSize: c.Bool("convert-force-size")},
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return s, nil
}

// convertFormats are the disk formats a conversion can produce or start from.
var convertFormats = []string{"raw", "qcow2", "vdi", "vmdk", "vhd", "vpc"}

// newGlanceClient authenticates against Keystone and finds Glance, as the [glance] options say.
func newGlanceClient(ctx context.Context, c *cli.Context, log *slog.Logger, reg prometheus.Registerer) (*glanceclient.Client, error) {
	return glanceclient.New(ctx, glanceclient.Options{
		Cloud: c.String("glance-cloud"), CloudsFile: c.String("glance-clouds-file"),
		AuthURL: c.String("glance-auth-url"), Username: c.String("glance-username"), Password: c.String("glance-password"),
		UserDomainName: c.String("glance-user-domain-name"), ProjectName: c.String("glance-project-name"),
		ProjectDomainName:       c.String("glance-project-domain-name"),
		ApplicationCredentialID: c.String("glance-application-credential-id"), ApplicationCredentialSecret: c.String("glance-application-credential-secret"),
		Region: c.String("glance-region"), Interface: c.String("glance-interface"), CAFile: c.String("glance-ca-file"),
		UserAgent: "glance-sidecar/" + buildVersion(), Logger: log, Registerer: reg,
	})
}

// openWorkspace opens (locks and sweeps) the workspace at dir with the configured limits and,
// when conversion is on, hands it to the job and validates the conversion options.
func (s *settings) openWorkspace(dir string) (*worker.Workspace, error) {
	opts := s.workspace
	opts.Dir = dir
	ws, err := worker.OpenWorkspace(opts)
	if err != nil {
		return nil, fmt.Errorf("workspace: %w", err)
	}
	if s.job.Convert.Target != "" {
		s.job.Convert.Workspace = ws
		if err := s.job.Convert.Validate(); err != nil {
			ws.Close()
			return nil, fmt.Errorf("configuration: %w", err)
		}
	}
	return ws, nil
}
