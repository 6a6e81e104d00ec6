// Command servebench measures serve end to end against the test cloud; test/bench/serve-bench.sh
// drives it.
//
//	servebench latency -metrics URL FILE...   for each qcow2 FILE, RUNS times: upload it, then
//	    time from the upload finished to sidecar_status visible on the image; in the same run the
//	    baseline: download the whole image to disk, then `qemu-img info`. Medians, the ratio, and
//	    the image bytes serve read per image (from its /metrics).
//	servebench burst -n 100 FILE               upload FILE n times, a few at a time, and time until
//	    every image carries an outcome.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/glance-sidecar/glance-sidecar/glanceclient"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: servebench latency|burst [flags] FILE...")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	cloud := fs.String("cloud", "sidecar", "clouds.yaml cloud")
	cloudsFile := fs.String("clouds-file", "", "clouds.yaml path")
	metrics := fs.String("metrics", "", "serve's /metrics URL")
	runs := fs.Int("runs", 5, "repetitions per file (latency)")
	n := fs.Int("n", 100, "images (burst)")
	owner := fs.String("owner", "", "project owning the uploaded images (serve filters on it)")
	_ = fs.Parse(os.Args[2:])
	benchOwner = *owner
	ctx := context.Background()
	c, err := glanceclient.New(ctx, glanceclient.Options{Cloud: *cloud, CloudsFile: *cloudsFile, Logger: slog.New(slog.DiscardHandler)})
	if err == nil {
		switch os.Args[1] {
		case "latency":
			err = latency(ctx, c, *metrics, *runs, fs.Args())
		case "burst":
			err = burst(ctx, c, *n, fs.Arg(0))
		default:
			err = fmt.Errorf("unknown mode %q", os.Args[1])
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "servebench:", err)
		os.Exit(1)
	}
}

// benchOwner owns the images uploaded, so that a serve filtered on it sees only them.
var benchOwner string

// upload creates a qcow2 image and uploads path into it; it returns the id and when the upload
// call returned.
func upload(ctx context.Context, c *glanceclient.Client, path string) (string, time.Time, error) {
	img, err := c.Create(ctx, glanceclient.CreateOptions{Name: "servebench-" + filepath.Base(path), DiskFormat: "qcow2", ContainerFormat: "bare", Owner: benchOwner})
	if err != nil {
		return "", time.Time{}, err
	}
	if _, err := c.UploadFile(ctx, img.ID, path); err != nil {
		_ = c.Delete(ctx, img.ID)
		return "", time.Time{}, err
	}
	return img.ID, time.Now(), nil
}

// waitOutcome polls the image every 10 ms until it carries sidecar_status.
func waitOutcome(ctx context.Context, c *glanceclient.Client, id string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		img, err := c.Get(ctx, id)
		if err != nil {
			return "", err
		}
		if s := img.Properties["sidecar_status"]; s != "" {
			return s, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("image %s: no outcome after %v", id, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// scrape reads one sample from a Prometheus text page.
func scrape(url, name string) (float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, errors.Join(sc.Err(), fmt.Errorf("%s: no sample %s", url, name))
}

func latency(ctx context.Context, c *glanceclient.Client, metrics string, runs int, files []string) error {
	fmt.Printf("%-28s %12s %14s %16s %8s %14s\n", "image", "file MiB", "serve median", "download+info", "ratio", "read/image")
	for _, path := range files {
		st, err := os.Stat(path)
		if err != nil {
			return err
		}
		before, err := scrape(metrics, `glance_sidecar_image_bytes_read_total{mode="range"}`)
		if err != nil {
			return err
		}
		var serve, base []time.Duration
		for range runs {
			id, done, err := upload(ctx, c, path)
			if err != nil {
				return err
			}
			if _, err := waitOutcome(ctx, c, id, 5*time.Minute); err != nil {
				return err
			}
			serve = append(serve, time.Since(done))
			d, err := downloadAndInfo(ctx, c, id, filepath.Dir(path))
			if err != nil {
				return err
			}
			base = append(base, d)
			if err := c.Delete(ctx, id); err != nil {
				return err
			}
		}
		after, err := scrape(metrics, `glance_sidecar_image_bytes_read_total{mode="range"}`)
		if err != nil {
			return err
		}
		ms, mb := median(serve), median(base)
		fmt.Printf("%-28s %12.0f %14v %16v %8.1f %11.1f KiB\n", filepath.Base(path), float64(st.Size())/(1<<20),
			ms.Round(time.Millisecond), mb.Round(time.Millisecond), float64(mb)/float64(ms), (after-before)/float64(runs)/1024)
	}
	return nil
}

// downloadAndInfo is the baseline: the whole image to disk, then qemu-img info.
func downloadAndInfo(ctx context.Context, c *glanceclient.Client, id, dir string) (time.Duration, error) {
	img, err := c.Get(ctx, id)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	f, err := os.CreateTemp(dir, "download-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	_, err = c.Download(ctx, img, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	if out, err := exec.CommandContext(ctx, "qemu-img", "info", "-f", "qcow2", "--output=json", f.Name()).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("qemu-img info: %v: %s", err, out)
	}
	return time.Since(start), nil
}

func burst(ctx context.Context, c *glanceclient.Client, n int, path string) error {
	var (
		mu  sync.Mutex
		ids []string
	)
	defer func() {
		for _, id := range ids {
			_ = c.Delete(context.WithoutCancel(ctx), id)
		}
	}()
	start := time.Now()
	var g errgroup.Group
	g.SetLimit(8)
	for range n {
		g.Go(func() error {
			id, _, err := upload(ctx, c, path)
			if err != nil {
				return err
			}
			mu.Lock()
			ids = append(ids, id)
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	uploaded := time.Since(start)
	outcomes := map[string]int{}
	for _, id := range ids {
		s, err := waitOutcome(ctx, c, id, 5*time.Minute)
		if err != nil {
			return err
		}
		outcomes[s]++
	}
	fmt.Printf("burst: %d uploads in %v, every outcome after %v: %v\n", n, uploaded.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), outcomes)
	return nil
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
