package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/glance-sidecar/glance-sidecar/convert"
	"github.com/glance-sidecar/glance-sidecar/inspect"
)

func convertCommand() *cli.Command {
	return &cli.Command{
		Name:      "convert",
		Usage:     "convert a local image file among raw, qcow2, vdi, vmdk and vhd, if it is safe",
		ArgsUsage: "SRC DST --to FMT",
		Description: "Inspects SRC first and refuses, before qemu-img runs, an unsafe image, one whose content is not\n" +
			"--from, an ISO, or a format other than raw, qcow2, vdi, vmdk and vhd. qemu-img then runs with -f and\n" +
			"-O under resource limits; its output is inspected again and renamed to DST only when it is the\n" +
			"target format, safe, and as large as SRC. Flags may come before or after SRC DST.\n" +
			"Exit status: 0 converted, 1 refused because unsafe, 2 anything else (usage, unreadable or\n" +
			"unsupported input, DST exists, qemu-img failing or hitting its limits).",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "to", Usage: "target format: raw, qcow2, vdi, vmdk or vhd (also vpc); required"},
			&cli.StringFlag{Name: "from", Usage: "the format SRC must have (default: whatever it is found to be)"},
			&cli.StringFlag{Name: "adapter-type", Value: convert.DefaultAdapterType, Usage: "VMDK adapter type for a vmdk target: ide, buslogic, lsilogic, legacyESX (Nova's lsiLogicsas and paraVirtual become lsilogic)"},
			&cli.BoolFlag{Name: "force-size", Usage: "vhd target: keep the exact virtual size instead of rounding it up to a CHS geometry"},
			&cli.BoolFlag{Name: "force", Usage: "replace DST if it exists"},
			&cli.StringFlag{Name: "address-space", Value: "2GiB", Usage: "qemu-img's address-space limit: `BYTES`, or with a K, M, G or T suffix (binary)"},
			&cli.DurationFlag{Name: "cpu-time", Usage: "qemu-img's CPU-time limit (0: none)"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table or json (one object)"},
		},
		Action: runConvert,
	}
}

// convertResult is the object `convert --output json` prints.
type convertResult struct {
	Source      string          `json:"source"`
	Destination string          `json:"destination"`
	From        *inspect.Format `json:"from"` // the format found in SRC; null when it could not be read
	To          inspect.Format  `json:"to"`
	Converted   bool            `json:"converted"`
	VirtualSize *int64          `json:"virtual_size"` // of the output
	Size        *int64          `json:"size"`         // bytes of the output file
	Seconds     float64         `json:"duration_seconds"`
	// Problems are those of the image refused: the source, or the output when that was
	// rejected. Always a list.
	Problems []inspect.Problem `json:"problems"`
	Error    string            `json:"error,omitempty"`
}

func runConvert(c *cli.Context) error {
	args, err := interspersedFlags(c)
	if err != nil {
		return cli.Exit(err.Error(), exitUsage)
	}
	out := c.String("output")
	if out != "table" && out != "json" {
		return cli.Exit(fmt.Sprintf("--output must be table or json, not %q", out), exitUsage)
	}
	if len(args) != 2 {
		return cli.Exit(fmt.Sprintf("convert needs SRC and DST, got %d argument(s)", len(args)), exitUsage)
	}
	opts, err := convertOptions(c)
	if err != nil {
		return cli.Exit(err.Error(), exitUsage)
	}
	src, dst := args[0], args[1]

	var bar *progressBar
	if isTerminal(c.App.ErrWriter) {
		bar = &progressBar{w: c.App.ErrWriter, start: time.Now()}
		opts.Progress = bar.update
	}
	res, err := convert.File(c.Context, src, dst, opts)
	if bar != nil {
		bar.finish()
	}

	r := convertResult{Source: src, Destination: dst, To: opts.To, Converted: err == nil, Problems: []inspect.Problem{}}
	if res != nil {
		if res.Source != nil {
			r.From = &res.Source.Format
			r.Problems = append(r.Problems, res.Source.Problems...)
		}
		if res.Output != nil {
			if errors.Is(err, convert.ErrOutputRejected) {
				r.Problems = append(r.Problems, res.Output.Problems...)
			}
			if err == nil {
				r.VirtualSize, r.Size = &res.Output.VirtualSize, &res.Output.Size
			}
		}
		r.Seconds = res.Duration.Seconds()
	}
	if err != nil {
		r.Error = err.Error()
	}
	if out == "json" {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetEscapeHTML(false)
		if werr := enc.Encode(r); werr != nil {
			return cli.Exit(fmt.Sprintf("writing output: %v", werr), exitUsage)
		}
	} else if err == nil {
		fmt.Fprintf(c.App.Writer, "%s (%s) -> %s (%s, virtual size %s, file size %s) in %s\n", src, *r.From, dst, r.To,
			humanBytes(*r.VirtualSize), humanBytes(*r.Size), res.Duration.Round(time.Millisecond))
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, convert.ErrUnsafe):
		var codes []string
		for _, p := range r.Problems {
			codes = append(codes, string(p.Code))
		}
		return cli.Exit(fmt.Sprintf("refused %s: unsafe (%s): %v", src, strings.Join(codes, ", "), err), exitFinding)
	default:
		return cli.Exit(err.Error(), exitUsage)
	}
}

// convertOptions builds convert.Options from the flags and validates them.
func convertOptions(c *cli.Context) (convert.Options, error) {
	opts := convert.Options{
		From:        inspect.Format(c.String("from")),
		To:          inspect.Format(c.String("to")),
		AdapterType: c.String("adapter-type"),
		ForceSize:   c.Bool("force-size"),
		Overwrite:   c.Bool("force"),
		CPUTime:     c.Duration("cpu-time"),
	}
	if opts.To == "" {
		return opts, errors.New("convert needs --to FMT (raw, qcow2, vdi, vmdk or vhd)")
	}
	as, err := parseBytes(c.String("address-space"))
	if err != nil || as <= 0 {
		return opts, fmt.Errorf("--address-space: %q is not a positive size in bytes", c.String("address-space"))
	}
	opts.AddressSpace = as
	if err := opts.Validate(); err != nil {
		return opts, err
	}
	return opts, nil
}

// parseBytes parses a byte count, with an optional binary K, M, G or T suffix (also KiB, KB, …).
func parseBytes(s string) (int64, error) {
	s = strings.TrimSpace(s)
	upper := strings.ToUpper(s)
	upper = strings.TrimSuffix(strings.TrimSuffix(upper, "B"), "I")
	shift := 0
	if upper != "" {
		switch upper[len(upper)-1] {
		case 'K':
			shift = 10
		case 'M':
			shift = 20
		case 'G':
			shift = 30
		case 'T':
			shift = 40
		}
	}
	if shift > 0 {
		upper = upper[:len(upper)-1]
	}
	n, err := strconv.ParseInt(upper, 10, 64)
	if err != nil {
		return 0, err
	}
	if n < 0 || n > (1<<62)>>shift {
		return 0, fmt.Errorf("%s out of range", s)
	}
	return n << shift, nil
}

// interspersedFlags parses the flags that follow SRC or DST (urfave/cli v2 stops at the first
// argument) into the command's flags and returns the arguments. Everything after "--" is an
// argument.
func interspersedFlags(c *cli.Context) ([]string, error) {
	var args []string
	rest := c.Args().Slice()
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if a == "--" {
			return append(args, rest[i+1:]...), nil
		}
		if len(a) < 2 || a[0] != '-' {
			args = append(args, a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		f := lookupFlag(c.Command, name)
		if f == nil {
			return nil, fmt.Errorf("flag provided but not defined: -%s", name)
		}
		if _, isBool := f.(*cli.BoolFlag); isBool {
			if !hasValue {
				value = "true"
			}
		} else if !hasValue {
			if i+1 == len(rest) {
				return nil, fmt.Errorf("flag needs an argument: %s", a)
			}
			i++
			value = rest[i]
		}
		if err := c.Set(f.Names()[0], value); err != nil {
			return nil, fmt.Errorf("invalid value %q for flag %s: %v", value, a, err)
		}
	}
	return args, nil
}

func lookupFlag(cmd *cli.Command, name string) cli.Flag {
	for _, f := range cmd.Flags {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	return nil
}

// progressBar draws the conversion's progress on one terminal line: a bar, the percentage and
// the time elapsed, at most ten times a second.
type progressBar struct {
	w       io.Writer
	start   time.Time
	last    time.Time
	printed bool
}

const progressWidth = 30

func (p *progressBar) update(pct float64) {
	now := time.Now()
	if pct < 100 && p.printed && now.Sub(p.last) < 100*time.Millisecond {
		return
	}
	p.last, p.printed = now, true
	fmt.Fprint(p.w, renderProgress(pct, now.Sub(p.start)))
}

func (p *progressBar) finish() {
	if p.printed {
		fmt.Fprintln(p.w)
	}
}

// renderProgress is one redraw of the progress line.
func renderProgress(pct float64, elapsed time.Duration) string {
	filled := min(max(int(pct/100*progressWidth), 0), progressWidth)
	secs := int(elapsed.Seconds())
	return fmt.Sprintf("\r[%s%s] %6.2f%%  %d:%02d", strings.Repeat("#", filled), strings.Repeat(".", progressWidth-filled),
		pct, secs/60, secs%60)
}
