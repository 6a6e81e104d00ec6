package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/glance-sidecar/glance-sidecar/glanceclient"
	"github.com/glance-sidecar/glance-sidecar/worker"
)

func reportCommand() *cli.Command {
	return &cli.Command{
		Name:  "report",
		Usage: "count what the sidecar recorded on Glance's images: outcomes, formats, problems, and the unsafe images",
		Description: "Reads the properties the sidecar wrote (under property_prefix) back from every image, hidden\n" +
			"ones included, and counts them. It reads the same configuration as serve.\n" +
			"Exit status: 0 no image is unsafe, 1 some are, 2 usage, configuration or Glance errors.",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "owner", Usage: "only the images of this project (id)"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table or json (one object)"},
		}, flags()...),
		Action: runReport,
	}
}

func runReport(c *cli.Context) error {
	asJSON, err := jsonOutput(c)
	if err != nil {
		return cli.Exit(err.Error(), exitUsage)
	}
	if c.NArg() > 0 {
		return cli.Exit(fmt.Sprintf("report takes no arguments (got %q)", c.Args().First()), exitUsage)
	}
	set, err := loadSettings(c)
	if err != nil {
		return cli.Exit(fmt.Sprintf("configuration: %v", err), exitUsage)
	}
	gc, err := newGlanceClient(c.Context, c, set.log, nil)
	if err != nil {
		return cli.Exit(fmt.Sprintf("glance: %v", err), exitUsage)
	}
	census := worker.NewCensus()
	err = worker.EachImage(c.Context, gc, glanceclient.ListOptions{Owner: c.String("owner")}, func(img *glanceclient.Image) error {
		census.Add(worker.ReadFindings(img, set.job.Properties))
		return nil
	})
	if err != nil {
		return cli.Exit(fmt.Sprintf("listing images: %v", err), exitUsage)
	}
	if asJSON {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetEscapeHTML(false)
		err = enc.Encode(census)
	} else {
		err = writeCensus(c.App.Writer, census)
	}
	if err != nil {
		return cli.Exit(fmt.Sprintf("writing output: %v", err), exitUsage)
	}
	if len(census.Unsafe) > 0 {
		return cli.Exit("", exitFinding)
	}
	return nil
}

// writeCensus prints the counts (largest first) and the unsafe images as tables.
func writeCensus(w io.Writer, c *worker.Census) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "IMAGES\t%d\n", c.Images)
	outcomes := map[string]int{}
	for o, n := range c.Outcomes {
		outcomes[string(o)] = n
	}
	for _, t := range []struct {
		head   string
		counts map[string]int
	}{{"OUTCOME", outcomes}, {"FORMAT", c.Formats}, {"PROBLEM", c.Problems}} {
		if len(t.counts) == 0 {
			continue
		}
		fmt.Fprintf(tw, "\n%s\tIMAGES\n", t.head)
		keys := slices.SortedFunc(maps.Keys(t.counts), func(a, b string) int {
			return cmp.Or(cmp.Compare(t.counts[b], t.counts[a]), cmp.Compare(a, b))
		})
		for _, k := range keys {
			fmt.Fprintf(tw, "%s\t%d\n", k, t.counts[k])
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(c.Unsafe) == 0 {
		return nil
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nUNSAFE IMAGE\tOWNER\tDECLARED\tFORMAT\tNAME\tPROBLEMS")
	for _, f := range c.Unsafe {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", f.ImageID, f.Owner, f.DiskFormat, f.Format, f.Name, strings.Join(f.Problems, ","))
	}
	return tw.Flush()
}
