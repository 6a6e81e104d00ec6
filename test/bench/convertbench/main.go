// Command convertbench measures the conversion of a qcow2 image to raw against the test cloud;
// test/bench/convert-bench.sh drives it. Each run uploads the qcow2 FILE as a new original, then
// times, in the same run:
//
//   - the sidecar's job (worker.Job with a raw target, in-process): ranged inspection, then
//     download, qemu-img and upload overlapped through NBD;
//   - the sequential baseline: download the image to disk, qemu-img convert to a raw file, upload
//     that file as a new image; each stage timed, and the upload alone is the target's yardstick.
//
// It prints the medians and the ratios: job / upload alone (target ≤ 1.2) and job / sequential sum.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/glance-sidecar/glance-sidecar/glanceclient"
	"github.com/glance-sidecar/glance-sidecar/inspect"
	"github.com/glance-sidecar/glance-sidecar/worker"
)

func main() {
	cloud := flag.String("cloud", "sidecar", "clouds.yaml cloud")
	cloudsFile := flag.String("clouds-file", "", "clouds.yaml path")
	runs := flag.Int("runs", 3, "repetitions")
	flag.Parse()
	if err := run(context.Background(), *cloud, *cloudsFile, *runs, flag.Arg(0)); err != nil {
		fmt.Fprintln(os.Stderr, "convertbench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cloud, cloudsFile string, runs int, path string) error {
	c, err := glanceclient.New(ctx, glanceclient.Options{Cloud: cloud, CloudsFile: cloudsFile, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp(filepath.Dir(path), "convertbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	ws, err := worker.OpenWorkspace(worker.WorkspaceOptions{Dir: filepath.Join(work, "ws"), MaxBytes: 64 << 30})
	if err != nil {
		return err
	}
	defer ws.Close()
	var created []string
	defer func() {
		for _, id := range created {
			_ = c.Delete(context.WithoutCancel(ctx), id)
		}
	}()
	upload := func(name, diskFormat, file string) (string, time.Duration, error) {
		img, err := c.Create(ctx, glanceclient.CreateOptions{Name: name, DiskFormat: diskFormat, ContainerFormat: "bare"})
		if err != nil {
			return "", 0, err
		}
		created = append(created, img.ID)
		start := time.Now()
		_, err = c.UploadFile(ctx, img.ID, file)
		return img.ID, time.Since(start), err
	}

	var job, dl, conv, up, sum []time.Duration
	var jobBusy, upBusy []float64
	for i := range runs {
		orig, _, err := upload(fmt.Sprintf("convertbench-%d", i), "qcow2", path)
		if err != nil {
			return err
		}
		opts := worker.JobOptions{Properties: worker.PropertyOptions{Version: "bench"}, Logger: slog.New(slog.DiscardHandler),
			Convert: worker.ConvertOptions{Target: inspect.Raw, Workspace: ws}}
		if err := opts.Convert.Validate(); err != nil {
			return err
		}
		start, cpu0 := time.Now(), readCPU()
		res, err := worker.Job(ctx, c, orig, opts)
		jobBusy = append(jobBusy, cpu0.busySince())
		if err != nil {
			return err
		}
		job = append(job, time.Since(start))
		if res.Outcome != worker.OutcomeConverted {
			return fmt.Errorf("job outcome %s (%s)", res.Outcome, res.Reason)
		}
		created = append(created, res.Converted)

		// The baseline, stage by stage.
		img, err := c.Get(ctx, orig)
		if err != nil {
			return err
		}
		src, dst := filepath.Join(work, "src.qcow2"), filepath.Join(work, "dst.raw")
		start = time.Now()
		f, err := os.Create(src)
		if err != nil {
			return err
		}
		_, err = c.Download(ctx, img, f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		dl = append(dl, time.Since(start))
		start = time.Now()
		if out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", src, dst).CombinedOutput(); err != nil {
			return fmt.Errorf("qemu-img convert: %v: %s", err, out)
		}
		conv = append(conv, time.Since(start))
		cpu0 = readCPU()
		_, d, err := upload(fmt.Sprintf("convertbench-%d-baseline", i), "raw", dst)
		if err != nil {
			return err
		}
		upBusy = append(upBusy, cpu0.busySince())
		up = append(up, d)
		sum = append(sum, dl[i]+conv[i]+up[i])
		fmt.Printf("run %d: job %v; sequential %v = download %v + convert %v + upload %v\n", i+1,
			job[i].Round(time.Millisecond), sum[i].Round(time.Millisecond), dl[i].Round(time.Millisecond),
			conv[i].Round(time.Millisecond), up[i].Round(time.Millisecond))
		_ = os.Remove(src)
		_ = os.Remove(dst)
	}
	m := func(d []time.Duration) time.Duration {
		s := slices.Clone(d)
		slices.Sort(s)
		return s[len(s)/2]
	}
	fmt.Printf("median of %d: job %v; download %v, convert %v, upload %v, sequential sum %v\n", runs,
		m(job).Round(time.Millisecond), m(dl).Round(time.Millisecond), m(conv).Round(time.Millisecond),
		m(up).Round(time.Millisecond), m(sum).Round(time.Millisecond))
	fmt.Printf("job / upload alone = %.2f (target <= 1.2); job / sequential sum = %.2f\n",
		float64(m(job))/float64(m(up)), float64(m(job))/float64(m(sum)))
	mf := func(f []float64) float64 { s := slices.Clone(f); slices.Sort(s); return s[len(s)/2] }
	fmt.Printf("CPU busy (all %d CPUs of the machine, median): %.0f%% during the job, %.0f%% during the upload alone\n",
		runtime.NumCPU(), 100*mf(jobBusy), 100*mf(upBusy))
	return nil
}

// cpuTimes are the machine's CPU counters from /proc/stat: all, and idle (with iowait).
type cpuTimes struct{ total, idle uint64 }

func readCPU() cpuTimes {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	var t cpuTimes
	for i, f := range strings.Fields(line)[1:] {
		n, _ := strconv.ParseUint(f, 10, 64)
		t.total += n
		if i == 3 || i == 4 { // idle, iowait
			t.idle += n
		}
	}
	return t
}

// busySince is the fraction of the machine's CPU time spent busy since t was read.
func (t cpuTimes) busySince() float64 {
	now := readCPU()
	if now.total == t.total {
		return 0
	}
	return 1 - float64(now.idle-t.idle)/float64(now.total-t.total)
}
