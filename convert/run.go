package convert

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/glance-sidecar/glance-sidecar/inspect"
)

// Check tells whether a source with the inspection report src may be converted with opts: nil,
// or an error wrapping ErrUnsafe (problems, or a format other than opts.From), ErrUnsupported
// (an ISO, a format outside Formats, an unknown virtual size, an unsupported target) or
// ErrSameFormat. File and Run apply it before qemu-img runs; a caller can apply it earlier, for
// instance to a ranged inspection before downloading anything.
func Check(src *inspect.Report, opts Options) error {
	if src == nil {
		return errors.New("no inspection report of the source")
	}
	to, err := inspect.ParseDeclared(string(opts.To))
	if err != nil || !Supported(to) {
		return fmt.Errorf("%w: target format %q (convert writes %s)", ErrUnsupported, opts.To, formatList())
	}
	if opts.From != "" {
		from, err := inspect.ParseDeclared(string(opts.From))
		if err != nil {
			return fmt.Errorf("source format: %w", err)
		}
		if src.Format != from {
			return fmt.Errorf("%w: %s: the content is %s, not %s as stated", ErrUnsafe, inspect.CodeFormatMismatch, src.Format, from)
		}
	}
	if !src.Safe() {
		return fmt.Errorf("%w: %s", ErrUnsafe, problemList(src))
	}
	switch {
	case src.Format == inspect.ISO:
		return fmt.Errorf("%w: ISO images are never converted", ErrUnsupported)
	case !Supported(src.Format):
		return fmt.Errorf("%w: %s source (qemu's %s): convert reads only %s", ErrUnsupported, src.Format, src.Format.QemuName(), formatList())
	case src.VirtualSize == inspect.SizeUnknown:
		return fmt.Errorf("%w: the source's virtual size is unknown", ErrUnsupported)
	case src.Format == to:
		return fmt.Errorf("%w: %s", ErrSameFormat, to)
	}
	return nil
}

// Run converts src into dst with qemu-img, for a source already inspected: source is its report
// (from inspect.InspectAt over whatever holds its bytes), and Check must pass it. It does what
// File does around qemu-img, without the file-specific steps (no inspection of its own, no
// temporary file, no re-inspection of the output, no rename).
//
// src and dst are absolute paths or NBD URIs ("nbd+unix:///?socket=/run/x.sock",
// "nbd://127.0.0.1:10809/export", "nbd:unix:/run/x.sock"); anything else, which qemu could read
// as a protocol or a JSON specification of its own, is refused with ErrUnsupported. When dst is an
// NBD URI or an existing device, it cannot be created, only written: Run passes -n, and no target
// options (-o) then apply. Any other dst is created by qemu-img, replacing a file of that name:
// keeping what exists is File's job. extraArgs are qemu-img convert options from a short
// allow-list that tune how, not what, qemu-img reads and writes: -t CACHE, -T CACHE, -m N,
// -S SIZE, -W, -c, -C, -U and --target-is-zero.
//
// qemu-img runs with -f and -O always, LC_ALL=C and LANG=C in a minimal environment, under
// opts.AddressSpace and opts.CPUTime (util-linux prlimit, which sets the limits and then execs
// qemu-img in the same process), in a process group of its own, with SIGKILL as its parent-death
// signal so that a sidecar that dies does not leave it running. When ctx is done the whole
// process group is killed and Run returns an error wrapping ctx.Err(). The last 4 KiB of
// qemu-img's standard error are in the error it returns.
func Run(ctx context.Context, src, dst string, source *inspect.Report, opts Options, extraArgs ...string) error {
	if err := opts.Validate(); err != nil {
		return err
	}
	if err := Check(source, opts); err != nil {
		return err
	}
	for _, loc := range []string{src, dst} {
		if err := checkLocation(loc); err != nil {
			return err
		}
	}
	if err := checkExtraArgs(extraArgs); err != nil {
		return err
	}
	return run(ctx, src, dst, source, opts, nil, extraArgs...)
}

// checkLocation accepts an absolute path or an NBD URI.
func checkLocation(loc string) error {
	if strings.HasPrefix(loc, "/") || isNBD(loc) {
		return nil
	}
	return fmt.Errorf("%w: %q is neither an absolute path nor an NBD URI", ErrUnsupported, loc)
}

func isNBD(loc string) bool {
	for _, p := range []string{"nbd:", "nbd+unix:", "nbd+tcp:"} {
		if strings.HasPrefix(loc, p) {
			return true
		}
	}
	return false
}

// extraArgs allowed by Run: the options that take a value, with its check, and the flags.
var (
	valueArgs = map[string]func(string) bool{
		"-t": isCacheMode,
		"-T": isCacheMode,
		"-m": func(v string) bool { n, err := strconv.Atoi(v); return err == nil && n >= 1 && n <= 16 },
		"-S": func(v string) bool {
			v = strings.TrimRight(v, "kKMG")
			_, err := strconv.ParseUint(v, 10, 32)
			return err == nil
		},
	}
	flagArgs = map[string]bool{"-W": true, "-c": true, "-C": true, "-U": true, "--target-is-zero": true}
)

func isCacheMode(v string) bool {
	switch v {
	case "none", "writeback", "writethrough", "directsync", "unsafe":
		return true
	}
	return false
}

func checkExtraArgs(args []string) error {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if flagArgs[a] {
			continue
		}
		ok, takes := valueArgs[a]
		if !takes {
			return fmt.Errorf("%w: qemu-img option %q is not allowed", ErrUnsupported, a)
		}
		if i+1 == len(args) || !ok(args[i+1]) {
			return fmt.Errorf("%w: qemu-img option %s needs a valid value", ErrUnsupported, a)
		}
		i++
	}
	return nil
}

// run is the one place qemu-img is executed, for File and Run. opts must be validated and Check
// must have passed. files become the child's descriptors 3, 4, ….
func run(ctx context.Context, src, dst string, source *inspect.Report, opts Options, files []*os.File, extraArgs ...string) error {
	args := convertArgs(src, dst, source, opts, targetExists(dst), extraArgs)
	what := "qemu-img convert -f " + source.Format.QemuName() + " -O " + opts.To.QemuName()
	return execute(ctx, opts, what, args, files)
}

// targetExists tells whether dst can only be written, not created: an NBD export or a device.
func targetExists(dst string) bool {
	if isNBD(dst) {
		return true
	}
	st, err := os.Stat(dst)
	return err == nil && st.Mode()&(os.ModeDevice|os.ModeCharDevice) != 0
}

// convertArgs builds qemu-img's arguments.
func convertArgs(src, dst string, source *inspect.Report, opts Options, exists bool, extra []string) []string {
	args := []string{"convert", "-f", source.Format.QemuName(), "-O", opts.To.QemuName()}
	if opts.Progress != nil {
		args = append(args, "-p")
	} else {
		args = append(args, "-q")
	}
	if exists {
		args = append(args, "-n")
	} else if o := targetOptions(source, opts); o != "" {
		args = append(args, "-o", o)
	}
	args = append(args, extra...)
	return append(args, src, dst)
}

// targetOptions are the -o options for the target format.
func targetOptions(source *inspect.Report, opts Options) string {
	switch opts.To {
	case inspect.QCOW2:
		return "compat=1.1"
	case inspect.VMDK:
		adapter := opts.AdapterType
		if d, ok := source.Details.(*inspect.VMDKDetails); ok && d != nil {
			if a, ok := AdapterType(d.AdapterType); ok {
				adapter = a
			}
		}
		return "subformat=streamOptimized,adapter_type=" + adapter
	case inspect.VHD:
		if opts.ForceSize {
			return "subformat=dynamic,force_size=on"
		}
		return "subformat=dynamic"
	}
	return ""
}

// stderrTail is how much of qemu-img's standard error is kept for the error message.
const stderrTail = 4 << 10

// waitDelay bounds how long Wait waits for qemu-img's output pipes after killing it.
const waitDelay = 2 * time.Second

// minimalEnv is qemu-img's whole environment: nothing of the sidecar's (credentials) leaks in,
// and messages are in English for the error classification.
var minimalEnv = []string{"LC_ALL=C", "LANG=C", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// startedHook, when set (by tests), is called with qemu-img's pid, which is also its process
// group id, once it has started.
var startedHook func(pid int)

// execute runs qemu-img with args under prlimit and classifies how it ended.
//
// The limits are set by util-linux prlimit, which sets them on itself and execs qemu-img (same
// pid, same process group, parent-death signal kept), so qemu-img never runs a moment without
// them. The alternatives are worse: os/exec has no hook between fork and exec to set a child's
// rlimits; prlimit(2) on the child after it started leaves a window; setting them on the sidecar
// itself around the fork would limit every goroutine; and re-executing the sidecar's own binary
// as a launcher needs every program embedding this package, tests included, to cooperate.
func execute(ctx context.Context, opts Options, what string, args []string, files []*os.File) error {
	argv := []string{"--as=" + strconv.FormatInt(opts.AddressSpace, 10)}
	if opts.CPUTime > 0 {
		secs := (opts.CPUTime + time.Second - 1) / time.Second
		argv = append(argv, "--cpu="+strconv.FormatInt(int64(secs), 10))
	}
	argv = append(argv, "--", opts.qemuImgPath)
	argv = append(argv, args...)

	cmd := exec.CommandContext(ctx, opts.prlimitPath, argv...)
	cmd.Env = minimalEnv
	cmd.Dir = "/"
	cmd.ExtraFiles = files
	var progress io.Writer = io.Discard
	if opts.Progress != nil {
		progress = &progressWriter{fn: opts.Progress}
	}
	cmd.Stdout = progress
	tail := &tailBuffer{max: stderrTail}
	cmd.Stderr = tail
	// Pdeathsig fires when the thread that started qemu-img ends; Go ends a thread only when a
	// goroutine locked to it exits without unlocking, which nothing here does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error {
		// prlimit execs qemu-img, so the pid is qemu-img's and its process group's id.
		err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if errors.Is(err, syscall.ESRCH) {
			return os.ErrProcessDone
		}
		return err
	}
	cmd.WaitDelay = waitDelay

	opts.Logger.Debug("running qemu-img", "args", strings.Join(args, " "),
		"address_space", opts.AddressSpace, "cpu_time", opts.CPUTime)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", what, err)
	}
	if startedHook != nil {
		startedHook(cmd.Process.Pid)
	}
	err := cmd.Wait()
	opts.Logger.Debug("qemu-img done", "duration", time.Since(start), "error", err)
	if err == nil {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%s: killed: %w", what, cerr)
	}
	return classify(what, err, tail.String(), opts)
}

// memoryMessages are what qemu-img, the C library and the dynamic loader say when the
// address-space limit leaves them short.
var memoryMessages = []string{
	"cannot allocate memory",
	"failed to allocate",
	"out of memory",
	"failed to map segment",
	"qemu_thread_create",
}

// classify turns qemu-img's failure into an error: ErrLimits when the limits explain it (killed
// by SIGKILL or SIGXCPU, the CPU limit's and the OOM killer's signals; an abort or a segfault
// with nothing said or a message about memory, which is how an allocation beyond RLIMIT_AS
// ends), else the exit status and standard error.
func classify(what string, err error, stderr string, opts Options) error {
	stderr = strings.TrimSpace(stderr)
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return fmt.Errorf("%s: %w", what, err)
	}
	lower := strings.ToLower(stderr)
	memory := false
	for _, m := range memoryMessages {
		if strings.Contains(lower, m) {
			memory = true
		}
	}
	limits := fmt.Sprintf("address space %d bytes", opts.AddressSpace)
	if opts.CPUTime > 0 {
		limits += fmt.Sprintf(", CPU time %s", opts.CPUTime)
	}
	ws, _ := ee.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		sig := ws.Signal()
		switch {
		case sig == syscall.SIGKILL || sig == syscall.SIGXCPU,
			(sig == syscall.SIGABRT || sig == syscall.SIGSEGV) && (memory || stderr == ""):
			return fmt.Errorf("%s: %w (%s): killed by %s: %s", what, ErrLimits, limits, unix.SignalName(sig), stderr)
		}
		return fmt.Errorf("%s: killed by %s: %s", what, unix.SignalName(sig), stderr)
	}
	if memory {
		return fmt.Errorf("%s: %w (%s): exit status %d: %s", what, ErrLimits, limits, ws.ExitStatus(), stderr)
	}
	return fmt.Errorf("%s: exit status %d: %s", what, ws.ExitStatus(), stderr)
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	buf []byte
	cut bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) >= t.max {
		t.buf = append(t.buf[:0], p[len(p)-t.max:]...)
		t.cut = true
		return n, nil
	}
	if over := len(t.buf) + len(p) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
		t.cut = true
	}
	t.buf = append(t.buf, p...)
	return n, nil
}

func (t *tailBuffer) String() string {
	if t.cut {
		return "…" + string(t.buf)
	}
	return string(t.buf)
}
