// Command convertbench measures the conversion of a qcow2 image to raw against the test cloud;
// test/bench/convert-bench.sh drives it. Each run uploads the qcow2 FILE as a new original, then
// times, in the same run:
//
//   - the sidecar's job (worker.Job with a raw target, in-process): ranged inspection, then
//     download, qemu-img and upload overlapped through NBD;
//   - the sequential baseline: download the image to disk, qemu-img convert to a raw file, upload
//     that file as a new image; each stage timed, and the upload alone is the target's yardstick.
//
// Each timed phase starts after a sync, so that none pays for the writeback of the one before.
// Per run it also prints the job's stages (from its metrics) and the CPU seconds every process
// spent in the job and in the upload alone: Glance's, the sidecar's, qemu-img's, the kernel's.
// -cpuprofile writes a Go CPU profile of the first job.
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
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/glance-sidecar/glance-sidecar/glanceclient"
	"github.com/glance-sidecar/glance-sidecar/inspect"
	"github.com/glance-sidecar/glance-sidecar/worker"
	"github.com/prometheus/client_golang/prometheus"
)

func main() {
	cloud := flag.String("cloud", "sidecar", "clouds.yaml cloud")
	cloudsFile := flag.String("clouds-file", "", "clouds.yaml path")
	runs := flag.Int("runs", 3, "repetitions")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the first job to this file")
	flag.Parse()
	if err := run(context.Background(), *cloud, *cloudsFile, *runs, flag.Arg(0), *cpuProfile); err != nil {
		fmt.Fprintln(os.Stderr, "convertbench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cloud, cloudsFile string, runs int, path, cpuProfile string) error {
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
		reg := prometheus.NewRegistry()
		metrics, err := worker.NewMetrics(reg)
		if err != nil {
			return err
		}
		// The job's own lines, with what its source window spilled and fetched by range.
		logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelDebug}))
		opts := worker.JobOptions{Properties: worker.PropertyOptions{Version: "bench"}, Logger: logger, Metrics: metrics,
			Convert: worker.ConvertOptions{Target: inspect.Raw, Workspace: ws}}
		if err := opts.Convert.Validate(); err != nil {
			return err
		}
		// Each timed phase starts with no dirty pages, so that none pays for the writeback
		// of what came before it.
		syscall.Sync()
		start, cpu0, procs0 := time.Now(), readCPU(), readProcs()
		stopProfile := func() error { return nil }
		if i == 0 && cpuProfile != "" {
			if stopProfile, err = startProfile(cpuProfile); err != nil {
				return err
			}
		}
		res, err := worker.Job(ctx, c, orig, opts)
		if perr := stopProfile(); perr != nil {
			return perr
		}
		jobBusy = append(jobBusy, cpu0.busySince())
		fmt.Printf("run %d: job CPU seconds: %s\n", i+1, procs0.since())
		if err != nil {
			return err
		}
		job = append(job, time.Since(start))
		fmt.Printf("run %d: job stages: %s\n", i+1, stages(reg, job[i]))
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
		syscall.Sync()
		cpu0, procs0 = readCPU(), readProcs()
		_, d, err := upload(fmt.Sprintf("convertbench-%d-baseline", i), "raw", dst)
		if err != nil {
			return err
		}
		fmt.Printf("run %d: upload alone CPU seconds: %s\n", i+1, procs0.since())
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

// procTimes are the CPU seconds of every process by pid, with its name (comm, a kernel worker's
// without the work it is doing now); this process's waited children (qemu-img) count apart.
type procTimes map[string]procTime

type procTime struct {
	name string
	cpu  float64
}

func readProcs() procTimes {
	t := procTimes{}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	self := fmt.Sprintf("/proc/%d/stat", os.Getpid())
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		s := string(b)
		lp, rp := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if lp < 0 || rp < lp {
			continue
		}
		name, f := s[lp+1:rp], strings.Fields(s[rp+1:])
		if len(f) < 15 {
			continue
		}
		ticks := func(i int) float64 { n, _ := strconv.ParseFloat(f[i], 64); return n / 100 } // USER_HZ
		if strings.HasPrefix(name, "kworker/") {
			name = "kworker"
		}
		if path == self {
			t["children"] = procTime{"qemu-img (children)", ticks(13) + ticks(14)}
			name = "sidecar (bench process)"
		}
		t[path] = procTime{name, ticks(11) + ticks(12)}
	}
	return t
}

// since sums by name the CPU seconds spent since t, for the names above 0.05 s.
func (t procTimes) since() string {
	by := map[string]float64{}
	for k, now := range readProcs() {
		by[now.name] += now.cpu - t[k].cpu
	}
	var out []string
	for name, d := range by {
		if d >= 0.05 {
			out = append(out, fmt.Sprintf("%s %.2f", name, d))
		}
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

// stages lists the job's stage times from its metrics, and the rest of total: creating the new
// image, verifying and linking it.
func stages(reg *prometheus.Registry, total time.Duration) string {
	mfs, err := reg.Gather()
	if err != nil {
		return err.Error()
	}
	var out []string
	rest := total
	for _, mf := range mfs {
		if mf.GetName() != "glance_sidecar_job_stage_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			d := time.Duration(m.GetHistogram().GetSampleSum() * float64(time.Second))
			rest -= d
			out = append(out, fmt.Sprintf("%s %v", m.GetLabel()[0].GetValue(), d.Round(time.Millisecond)))
		}
	}
	return strings.Join(append(out, fmt.Sprintf("other (create, verify, link) %v", rest.Round(time.Millisecond))), ", ")
}

// startProfile starts a CPU profile into a new file at path; stop ends it and closes the file.
func startProfile(path string) (stop func() error, err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() error { pprof.StopCPUProfile(); return f.Close() }, nil
}
