package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/glance-sidecar/glance-sidecar/glanceclient"
	"github.com/glance-sidecar/glance-sidecar/inspect"
	"github.com/glance-sidecar/glance-sidecar/worker"
)

func reprocessCommand() *cli.Command {
	return &cli.Command{
		Name:      "reprocess",
		Usage:     "run serve's job on images Glance already has: the ones named, or --all that match filters",
		ArgsUsage: "IMAGE_ID... | --all [--owner PROJECT] [--status STATUS] [--disk-format FMT] [--since WHEN]",
		Description: "Runs the same job as serve, in this process, on existing images: the catalog that was there\n" +
			"before the sidecar, and images whose events never arrived. Images whose outcome is current are\n" +
			"skipped unless --force. It reads the same configuration as serve (--config-file, flags, variables).\n" +
			"Exit status: 0 every image inspected safe or skipped, 1 any unsafe, failed or not done\n" +
			"(interrupted), 2 usage or configuration errors.",
		Flags: append([]cli.Flag{
			&cli.BoolFlag{Name: "all", Usage: "every image that matches the filters, instead of IMAGE_IDs"},
			&cli.StringFlag{Name: "owner", Usage: "with --all: only the images of this project (id)"},
			&cli.StringFlag{Name: "status", Value: "active", Usage: "with --all: only images with this status"},
			&cli.StringFlag{Name: "disk-format", Usage: "with --all: only images declared with this disk_format"},
			&cli.StringFlag{Name: "since", Usage: "with --all: only images updated since then: an RFC 3339 time, or a duration back from now (24h)"},
			&cli.BoolFlag{Name: "force", Usage: "redo images whose outcome is current"},
			&cli.BoolFlag{Name: "dry-run", Usage: "say what would happen to each image (inspect, or skip and why) and change nothing"},
			&cli.IntFlag{Name: "concurrency", Aliases: []string{"j"}, Usage: "jobs at once (default: max_workers)"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table, or json: one object per image and line, then a summary line"},
		}, flags()...),
		Action: runReprocess,
	}
}

// reprocessArgs are reprocess's own arguments, checked.
type reprocessArgs struct {
	ids         []string                  // the images named, without repeats
	list        *glanceclient.ListOptions // --all: the listing
	json        bool
	concurrency int // 0: max_workers
}

// parseReprocessArgs checks the arguments; every error is a usage error.
func parseReprocessArgs(c *cli.Context, now time.Time) (reprocessArgs, error) {
	var a reprocessArgs
	var err error
	if a.json, err = jsonOutput(c); err != nil {
		return a, err
	}
	if a.concurrency = c.Int("concurrency"); a.concurrency < 0 {
		return a, fmt.Errorf("--concurrency %d: at least 1", a.concurrency)
	}
	filters := []string{"owner", "disk-format", "since"}
	if c.IsSet("status") {
		filters = append(filters, "status")
	}
	if !c.Bool("all") {
		for _, f := range filters {
			if c.IsSet(f) {
				return a, fmt.Errorf("--%s filters --all; it does not apply to IMAGE_IDs", f)
			}
		}
		if c.NArg() == 0 {
			return a, errors.New("reprocess needs IMAGE_IDs or --all")
		}
		for _, id := range c.Args().Slice() {
			if !slices.Contains(a.ids, id) {
				a.ids = append(a.ids, id)
			}
		}
		return a, nil
	}
	if c.NArg() > 0 {
		return a, fmt.Errorf("--all takes no IMAGE_IDs (got %q)", c.Args().First())
	}
	a.list = &glanceclient.ListOptions{Status: c.String("status"), Owner: c.String("owner"), DiskFormat: c.String("disk-format")}
	if s := c.String("since"); s != "" {
		t, err := parseSince(s, now)
		if err != nil {
			return a, err
		}
		a.list.UpdatedAfter = t
	}
	return a, nil
}

// jsonOutput reads --output: table (false) or json (true).
func jsonOutput(c *cli.Context) (bool, error) {
	switch out := c.String("output"); out {
	case "table", "json":
		return out == "json", nil
	default:
		return false, fmt.Errorf("--output must be table or json, not %q", out)
	}
}

// parseSince reads --since: an RFC 3339 time, or a positive duration back from now.
func parseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return time.Time{}, fmt.Errorf("--since %q: not an RFC 3339 time (2026-11-01T00:00:00Z) or a positive duration (24h)", s)
	}
	return now.Add(-d), nil
}

func runReprocess(c *cli.Context) error {
	start := time.Now()
	args, err := parseReprocessArgs(c, start)
	if err != nil {
		return cli.Exit(err.Error(), exitUsage)
	}
	set, err := loadSettings(c)
	if err != nil {
		return cli.Exit(fmt.Sprintf("configuration: %v", err), exitUsage)
	}
	bar := newProgress(c.App.ErrWriter, isTerminal(c.App.ErrWriter), time.Now)
	defer bar.end()
	log := reprocessLogger(c.String("log-level"), bar)
	set.job.Logger, set.job.Force, set.job.DryRun = log, c.Bool("force"), c.Bool("dry-run")
	if set.job.Convert.Target != "" && !set.job.DryRun {
		// serve holds the workspace's lock: reprocess converts in a directory of its own
		// inside it (serve's sweep leaves it alone), with the same limits.
		ws, err := set.openWorkspace(filepath.Join(set.workspace.Dir, "reprocess"))
		if err != nil {
			return cli.Exit(err.Error(), exitUsage)
		}
		defer ws.Close()
	}
	ctx := c.Context
	gc, err := newGlanceClient(ctx, c, log, nil)
	if err != nil {
		return cli.Exit(fmt.Sprintf("glance: %v", err), exitUsage)
	}

	ids := args.ids
	if args.list != nil {
		if ids, err = listImages(ctx, gc, *args.list, bar); err != nil {
			return cli.Exit(fmt.Sprintf("listing images: %v", err), exitFinding)
		}
	}
	out := &reprocessOutput{w: c.App.Writer, json: args.json, bar: bar, sum: newRunSummary(len(ids))}
	if !args.json {
		if err := bar.println(out.w, imageLineHeader); err != nil {
			return cli.Exit(fmt.Sprintf("writing output: %v", err), exitUsage)
		}
	}
	bar.begin(len(ids))
	stopTicks := ticker(time.Second, bar.tick)
	pool := worker.NewPool(gc, cmp.Or(args.concurrency, c.Int("max-workers")), set.job)
	batch := worker.Batch{EventType: "reprocess", Grace: c.Duration("shutdown-timeout"), Attempts: reprocessAttempts, RetryDelay: time.Second}
	started := pool.ProcessAll(ctx, ids, batch, func(res worker.Result, err error, took time.Duration) {
		out.image(newImageResult(ctx, res, err, took))
	})
	stopTicks()
	bar.end()

	if n := len(ids) - started; n > 0 {
		out.sum.Outcomes[outcomeNotStarted] = n
	}
	out.sum.Interrupted = ctx.Err() != nil
	out.sum.DurationMS = time.Since(start).Milliseconds()
	if err := out.summary(); err != nil {
		return cli.Exit(fmt.Sprintf("writing output: %v", err), exitUsage)
	}
	if out.err != nil {
		return cli.Exit(fmt.Sprintf("writing output: %v", out.err), exitUsage)
	}
	switch status := out.sum.exitStatus(); {
	case out.sum.Interrupted:
		return cli.Exit(fmt.Sprintf("interrupted: %d of %d images not started", len(ids)-started, len(ids)), status)
	case status != exitOK:
		return cli.Exit("", status)
	}
	return nil
}

// reprocessAttempts is how many times reprocess tries a job that fails (1 s, then 2 s apart):
// what fails a job is transient (Glance restarting, 5xx beyond the client's own retries, a
// PATCH replaced by a concurrent one, from serve say), and an image left failed needs a rerun.
const reprocessAttempts = 3

// reprocessLogger logs JSON lines above the progress bar. The per-image results are the
// command's output, so the job's one line per image (info) would say them twice: the level is
// at least warn, unless debug was asked for.
func reprocessLogger(level string, bar *progress) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level)) // loadSettings checked it
	if l > slog.LevelDebug {
		l = max(l, slog.LevelWarn)
	}
	return slog.New(slog.NewJSONHandler(bar, &slog.HandlerOptions{Level: l}))
}

// listImages lists the images to reprocess, hidden ones included, showing the count as it grows.
func listImages(ctx context.Context, gc *glanceclient.Client, opts glanceclient.ListOptions, bar *progress) ([]string, error) {
	var ids []string
	err := worker.EachImage(ctx, gc, opts, func(img *glanceclient.Image) error {
		ids = append(ids, img.ID)
		bar.listing(len(ids))
		return nil
	})
	return ids, err
}

// ticker calls fn every d until the returned stop is called.
func ticker(d time.Duration, fn func()) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fn()
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// Outcomes of reprocess beyond the job's own.
const (
	outcomeFailed     = string(worker.OutcomeFailed) // the job returned an error
	outcomeCancelled  = "cancelled"                  // cut short by Ctrl-C after the grace
	outcomeNotStarted = "not_started"                // never started: interrupted first
)

// imageResult is one image's line of `reprocess --output json`.
type imageResult struct {
	ImageID    string            `json:"image_id"`
	Outcome    string            `json:"outcome"`
	Reason     string            `json:"reason"`
	Format     *inspect.Format   `json:"format"` // null when the data was not inspected
	Problems   []inspect.Problem `json:"problems"`
	Mode       string            `json:"mode"`
	BytesRead  int64             `json:"bytes_read"`
	DurationMS int64             `json:"duration_ms"`
}

func newImageResult(ctx context.Context, res worker.Result, err error, took time.Duration) imageResult {
	r := imageResult{ImageID: res.ImageID, Outcome: string(res.Outcome), Reason: res.Reason, Problems: []inspect.Problem{},
		Mode: res.Mode, BytesRead: res.BytesRead, DurationMS: took.Milliseconds()}
	if res.Report != nil {
		r.Format = &res.Report.Format
		r.Problems = append(r.Problems, res.Report.Problems...)
	}
	if err != nil {
		r.Outcome, r.Reason = outcomeFailed, err.Error()
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			r.Outcome = outcomeCancelled
		}
	}
	return r
}

// imageLineHeader heads the table of imageLine.
const imageLineHeader = "IMAGE                                 OUTCOME        FORMAT  DETAIL"

// imageLine is one image's line of the table output.
func imageLine(r imageResult) string {
	format := "-"
	if r.Format != nil {
		format = string(*r.Format)
	}
	detail := r.Reason
	switch {
	case len(r.Problems) > 0:
		codes := make([]string, len(r.Problems))
		for i, p := range r.Problems {
			codes[i] = string(p.Code)
		}
		detail = strings.Join(codes, ", ")
	case detail == "" && r.Mode != "":
		detail = fmt.Sprintf("read %s by %s", humanSize(r.BytesRead), r.Mode)
	}
	return strings.TrimRight(fmt.Sprintf("%-36s  %-13s  %-6s  %s", r.ImageID, r.Outcome, format, detail), " ")
}

// reprocessOutput prints each image's result as it comes, and counts it.
type reprocessOutput struct {
	w    io.Writer
	json bool
	bar  *progress

	mu  sync.Mutex
	sum runSummary
	err error // the first error writing w
}

func (o *reprocessOutput) image(r imageResult) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.sum.add(r)
	line := imageLine(r)
	if o.json {
		b, err := marshalLine(r)
		if err != nil && o.err == nil {
			o.err = err
		}
		line = string(b)
	}
	if err := o.bar.step(o.w, line); err != nil && o.err == nil {
		o.err = err
	}
}

func (o *reprocessOutput) summary() error {
	if o.json {
		b, err := marshalLine(struct {
			Summary runSummary `json:"summary"`
		}{o.sum})
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(o.w, string(b))
		return err
	}
	return writeRunSummary(o.w, o.sum)
}

func marshalLine(v any) ([]byte, error) {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return []byte(strings.TrimSuffix(b.String(), "\n")), nil
}

// runSummary counts a reprocess run's results: the last line of --output json.
type runSummary struct {
	// Total is the number of images named or listed.
	Total int `json:"total"`
	// Outcomes counts them by outcome.
	Outcomes  map[string]int `json:"outcomes"`
	BytesRead int64          `json:"bytes_read"`
	// DurationMS is the whole run's, listing included.
	DurationMS  int64 `json:"duration_ms"`
	Interrupted bool  `json:"interrupted"`
}

func newRunSummary(total int) runSummary {
	return runSummary{Total: total, Outcomes: map[string]int{}}
}

func (s *runSummary) add(r imageResult) {
	s.Outcomes[r.Outcome]++
	s.BytesRead += r.BytesRead
}

// exitStatus is 0 when every image was inspected safe, skipped or (dry run) would be
// inspected, and 1 when any is unsafe, failed, cancelled or not started.
func (s runSummary) exitStatus() int {
	for o, n := range s.Outcomes {
		switch worker.Outcome(o) {
		case worker.OutcomeInspected, worker.OutcomeConverted, worker.OutcomeSkipped, worker.OutcomeWouldInspect:
		default:
			if n > 0 {
				return exitFinding
			}
		}
	}
	return exitOK
}

// summaryOrder is the order of the outcomes in the summary table; others follow by name.
var summaryOrder = []string{string(worker.OutcomeInspected), string(worker.OutcomeConverted), string(worker.OutcomeUnsafe), string(worker.OutcomeWouldInspect),
	string(worker.OutcomeSkipped), outcomeFailed, outcomeCancelled, outcomeNotStarted}

// writeRunSummary prints the counts by outcome (those that are not zero) and the totals.
func writeRunSummary(w io.Writer, s runSummary) error {
	var names []string
	for o, n := range s.Outcomes {
		if n > 0 && !slices.Contains(summaryOrder, o) {
			names = append(names, o)
		}
	}
	slices.Sort(names)
	var b strings.Builder
	b.WriteString("\nOUTCOME        IMAGES\n")
	for _, o := range append(slices.Clone(summaryOrder), names...) {
		if n := s.Outcomes[o]; n > 0 {
			fmt.Fprintf(&b, "%-13s  %6d\n", o, n)
		}
	}
	fmt.Fprintf(&b, "%-13s  %6d\n", "total", s.Total)
	d := time.Duration(s.DurationMS) * time.Millisecond
	rate := ""
	if d > 0 {
		rate = fmt.Sprintf(", %.1f images/s", float64(s.Total-s.Outcomes[outcomeNotStarted])/d.Seconds())
	}
	fmt.Fprintf(&b, "%s read in %s%s\n", humanSize(s.BytesRead), d.Round(100*time.Millisecond), rate)
	_, err := io.WriteString(w, b.String())
	return err
}

// humanSize prints a byte count with a binary prefix.
func humanSize(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	f, unit := float64(n)/1024, 0
	for f >= 1024 && unit < 4 {
		f /= 1024
		unit++
	}
	return fmt.Sprintf("%.1f %ciB", f, "KMGTP"[unit])
}
