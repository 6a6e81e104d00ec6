package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/glance-sidecar/glance-sidecar/inspect"
)

func inspectCommand() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "tell what local image files really are, and whether they are safe",
		ArgsUsage: "FILE... (- reads standard input)",
		Description: "Detects the format from content, the virtual size as qemu-img computes it, format details,\n" +
			"and safety problems. Exit status: 0 all safe, 1 any unsafe, 2 usage or I/O errors.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "declared", Usage: "the disk_format the images claim to have (raw, qcow2, vmdk, vhd, vhdx, vdi, iso, ploop, ...)"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table or json (one object per file and line)"},
		},
		Action: runInspect,
	}
}

// inspectResult is one line of `inspect --output json`.
type inspectResult struct {
	File        string            `json:"file"`
	Format      *inspect.Format   `json:"format"` // null when the file could not be read
	VirtualSize *int64            `json:"virtual_size"`
	Safe        bool              `json:"safe"`
	Problems    []inspect.Problem `json:"problems"`
	Details     any               `json:"details"`
	Error       string            `json:"error,omitempty"`
}

func runInspect(c *cli.Context) error {
	out := c.String("output")
	if out != "table" && out != "json" {
		return cli.Exit(fmt.Sprintf("--output must be table or json, not %q", out), exitUsage)
	}
	opts := inspect.Options{Declared: c.String("declared")}
	if opts.Declared != "" {
		if _, err := inspect.ParseDeclared(opts.Declared); err != nil {
			return cli.Exit(fmt.Sprintf("--declared: %v", err), exitUsage)
		}
	}
	files := c.Args().Slice()
	if len(files) == 0 {
		return cli.Exit("inspect needs at least one FILE", exitUsage)
	}
	results := make([]inspectResult, 0, len(files))
	status := exitOK
	for _, name := range files {
		res := inspectOne(c, name, opts)
		switch {
		case res.Error != "":
			status = exitUsage
		case !res.Safe && status == exitOK:
			status = exitFinding
		}
		results = append(results, res)
		if out == "json" {
			enc := json.NewEncoder(c.App.Writer)
			enc.SetEscapeHTML(false)
			if err := enc.Encode(res); err != nil {
				return cli.Exit(fmt.Sprintf("writing output: %v", err), exitUsage)
			}
		}
	}
	if out == "table" {
		if err := writeTable(c.App.Writer, results); err != nil {
			return cli.Exit(fmt.Sprintf("writing output: %v", err), exitUsage)
		}
	}
	if status != exitOK {
		return cli.Exit("", status)
	}
	return nil
}

func inspectOne(c *cli.Context, name string, opts inspect.Options) inspectResult {
	res := inspectResult{File: name, Problems: []inspect.Problem{}}
	var rep *inspect.Report
	var err error
	if name == "-" {
		rep, err = inspect.Inspect(c.Context, os.Stdin, opts)
	} else {
		rep, err = inspectFile(c, name, opts)
	}
	if err != nil {
		res.Error = err.Error()
		return res
	}
	res.Format = &rep.Format
	if rep.VirtualSize != inspect.SizeUnknown {
		res.VirtualSize = &rep.VirtualSize
	}
	res.Safe = rep.Safe()
	res.Problems = append(res.Problems, rep.Problems...)
	res.Details = rep.Details
	return res
}

func inspectFile(c *cli.Context, name string, opts inspect.Options) (*inspect.Report, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		// Pipes and devices are read once, front to back.
		return inspect.Inspect(c.Context, f, opts)
	}
	return inspect.InspectAt(c.Context, f, st.Size(), opts)
}

func writeTable(w io.Writer, results []inspectResult) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FILE\tFORMAT\tVIRTUAL SIZE\tSAFE\tDETAILS")
	for _, r := range results {
		if r.Error != "" {
			fmt.Fprintf(tw, "%s\t-\t-\t-\terror: %s\n", r.File, r.Error)
			continue
		}
		size := "unknown"
		if r.VirtualSize != nil {
			size = humanBytes(*r.VirtualSize)
		}
		safe := "yes"
		if !r.Safe {
			safe = "NO"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.File, *r.Format, size, safe, summary(r.Details))
		for _, p := range r.Problems {
			fmt.Fprintf(tw, "\t\t\t\t  %s: %s\n", p.Code, p.Detail)
		}
	}
	return tw.Flush()
}

// summary renders the details a person looks for first, as key=value pairs.
func summary(details any) string {
	b, err := json.Marshal(details)
	if err != nil {
		return ""
	}
	var m map[string]any
	if json.Unmarshal(b, &m) != nil {
		return ""
	}
	var parts []string
	for _, k := range []string{"version", "create_type", "adapter_type", "hw_version", "cluster_size",
		"compression_type", "encrypted", "backing_file", "data_file", "disk_type", "subformat", "image_type", "volume_id"} {
		v, ok := m[k]
		if !ok || v == "" || v == false || v == nil {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s=%v", k, v))
	}
	if pt, ok := m["partition_table"].(map[string]any); ok {
		parts = append(parts, fmt.Sprintf("partition_table=%v", pt["scheme"]))
	}
	return strings.Join(parts, " ")
}

// humanBytes prints a byte count exactly, with a binary-prefixed approximation.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%d (%.1f %ciB)", n, float64(n)/float64(div), "KMGTPE"[exp])
}
