// Command glancebench measures glance-sidecar's Glance data paths against a real Glance: the
// inspection of an image through HTTP Range requests, and the full download with hash
// verification, each repeated, reporting medians. test/bench/glance-bench.sh drives it and
// measures curl and sha512sum on the same image in the same run as the baseline.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"time"

	"github.com/glance-sidecar/glance-sidecar/glanceclient"
	"github.com/glance-sidecar/glance-sidecar/inspect"
)

func main() {
	cloud := flag.String("cloud", "sidecar", "clouds.yaml cloud")
	cloudsFile := flag.String("clouds-file", "", "clouds.yaml path")
	id := flag.String("image", "", "image id")
	runs := flag.Int("runs", 5, "repetitions")
	flag.Parse()
	if err := run(context.Background(), *cloud, *cloudsFile, *id, *runs); err != nil {
		fmt.Fprintln(os.Stderr, "glancebench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cloud, cloudsFile, id string, runs int) error {
	c, err := glanceclient.New(ctx, glanceclient.Options{Cloud: cloud, CloudsFile: cloudsFile, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	img, err := c.Get(ctx, id)
	if err != nil {
		return err
	}
	var inspectTimes, downloadTimes []time.Duration
	var reqs, fetched int64
	var rep *inspect.Report
	for range runs {
		start := time.Now()
		rr, err := c.OpenRange(ctx, img, glanceclient.RangeOptions{})
		if err != nil {
			return err
		}
		rep, err = inspect.InspectAt(ctx, rr, rr.Size(), inspect.Options{Declared: img.DiskFormat})
		if err != nil {
			return err
		}
		inspectTimes = append(inspectTimes, time.Since(start))
		reqs, fetched = rr.Stats()

		start = time.Now()
		if _, err := c.Download(ctx, img, io.Discard); err != nil {
			return err
		}
		downloadTimes = append(downloadTimes, time.Since(start))
	}
	size := *img.Size
	mi, md := median(inspectTimes), median(downloadTimes)
	fmt.Printf("image %s: %d bytes, %s, virtual size %d, safe %v\n", id, size, rep.Format, rep.VirtualSize, rep.Safe())
	fmt.Printf("inspect via ranges: median %v over %d runs, %d requests, %d bytes transferred (%.5f%% of the image)\n",
		mi, runs, reqs, fetched, 100*float64(fetched)/float64(size))
	fmt.Printf("full download + sha512 verify: median %v, %.0f MB/s\n", md, float64(size)/md.Seconds()/1e6)
	fmt.Printf("inspect/download time ratio: %.5f\n", mi.Seconds()/md.Seconds())
	fmt.Printf("DOWNLOAD_MBPS=%.1f\n", float64(size)/md.Seconds()/1e6)
	return nil
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
