package convert_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/glance-sidecar/glance-sidecar/convert"
	"github.com/glance-sidecar/glance-sidecar/inspect"
)

// TestFileCancel cancels a conversion that runs for seconds (512 MiB of patterned data deflated
// into a streamOptimized VMDK: 1.7 s here) as soon as qemu-img reports progress, and lets another one run
// into its deadline: the error wraps the context's, nothing is left in the directory, and
// qemu-img's whole process group is gone.
func TestFileCancel(t *testing.T) {
	src := filepath.Join(memDir(t), "big.raw")
	writePattern(t, src, 512<<20)
	// A stand-in for qemu-img that leaves a child in its process group: cancelling must kill
	// the group, not only the process it started.
	forking := script(t, "sleep 60 &\nexec sleep 60")
	deadline := func(t *testing.T) (context.Context, func(float64)) {
		// Well after qemu-img starts, well before it could finish (1.7 s on an idle machine).
		ctx, cancel := context.WithTimeout(t.Context(), 800*time.Millisecond)
		t.Cleanup(cancel)
		return ctx, nil
	}
	tests := []struct {
		name    string
		want    error
		qemuImg string
		ctx     func(t *testing.T) (context.Context, func(float64))
	}{
		{"cancel at first progress", context.Canceled, "", func(t *testing.T) (context.Context, func(float64)) {
			ctx, cancel := context.WithCancel(t.Context())
			t.Cleanup(cancel)
			return ctx, func(float64) { cancel() }
		}},
		{"deadline", context.DeadlineExceeded, "", deadline},
		{"deadline, child processes", context.DeadlineExceeded, forking, deadline},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pgid int
			defer convert.SetStartedHook(func(pid int) { pgid = pid })()
			ctx, progress := tt.ctx(t)
			dir := t.TempDir()
			_, err := convert.File(ctx, src, filepath.Join(dir, "out.vmdk"), convert.Options{To: inspect.VMDK, Progress: progress, QemuImg: tt.qemuImg})
			if !errors.Is(err, tt.want) {
				t.Fatalf("error %v, want %v", err, tt.want)
			}
			if pgid == 0 {
				t.Fatal("qemu-img never started")
			}
			if live := groupMembers(t, pgid); len(live) != 0 {
				t.Errorf("process group %d still has live processes: %v", pgid, live)
			}
			// Killed processes whose parent died too are zombies until init reaps them.
			for i := 0; ; i++ {
				err := syscall.Kill(-pgid, 0)
				if errors.Is(err, syscall.ESRCH) {
					break
				}
				if i == 500 {
					t.Fatalf("process group %d: kill 0: %v after 5 s, want ESRCH", pgid, err)
				}
				time.Sleep(10 * time.Millisecond)
			}
			if names := listDir(t, dir); len(names) != 0 {
				t.Errorf("left behind: %v", names)
			}
		})
	}
}

// memDir is a temporary directory in /dev/shm, removed at the end of the test: a large source
// there costs memory for a moment instead of a disk write on a shared machine.
func memDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "convert-test-")
	if err != nil {
		t.Fatalf("a temporary directory in /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestFileLimits: qemu-img under an address space too small to run in, or a CPU-time limit it
// exceeds, fails with ErrLimits and leaves nothing.
func TestFileLimits(t *testing.T) {
	src := patterned(t, t.TempDir(), inspect.QCOW2, 16<<20)
	// A stand-in for qemu-img that burns CPU time until the limit kills it.
	spin := script(t, "while :; do :; done")
	tests := []struct {
		name   string
		opts   convert.Options
		detail string
	}{
		{"address space 16 MiB", convert.Options{To: inspect.Raw, AddressSpace: 16 << 20}, "address space 16777216 bytes"},
		{"address space 4 MiB", convert.Options{To: inspect.Raw, AddressSpace: 4 << 20}, "failed to map segment"},
		{"cpu time", convert.Options{To: inspect.Raw, CPUTime: 500 * time.Millisecond, QemuImg: spin}, "killed by SIGKILL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			_, err := convert.File(t.Context(), src, filepath.Join(dir, "out.raw"), tt.opts)
			if !errors.Is(err, convert.ErrLimits) || !strings.Contains(err.Error(), "qemu-img aborted by resource limits") ||
				!strings.Contains(err.Error(), tt.detail) {
				t.Fatalf("error %v, want ErrLimits with %q", err, tt.detail)
			}
			if names := listDir(t, dir); len(names) != 0 {
				t.Errorf("left behind: %v", names)
			}
		})
	}
}

// TestRunLimitApplied checks the limits and the environment qemu-img really gets, through a
// script that prints what it runs with.
func TestRunLimitApplied(t *testing.T) {
	src := patterned(t, t.TempDir(), inspect.QCOW2, 8<<20)
	dir := t.TempDir()
	report := filepath.Join(dir, "report")
	fake := script(t, `{ ulimit -v; ulimit -t; env | sort; echo "args: $*"; ps -o pgid= -p $$; } > '`+report+`'; exit 3`)
	err := convert.Run(t.Context(), src, filepath.Join(dir, "out"), inspectPath(t, src), convert.Options{
		To: inspect.VDI, QemuImg: fake, AddressSpace: 1 << 30, CPUTime: 1500 * time.Millisecond,
	})
	if err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("error %v", err)
	}
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	// ulimit -v is in KiB; the CPU limit is rounded up to whole seconds.
	want := []string{"1048576", "2", "LANG=C", "LC_ALL=C", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PWD=/"}
	if len(lines) < len(want)+2 || !slices.Equal(lines[:len(want)], want) {
		t.Fatalf("qemu-img ran with:\n%s", b)
	}
	args := lines[len(want)]
	if args != "args: convert -f qcow2 -O vdi -q "+src+" "+filepath.Join(dir, "out") {
		t.Errorf("%s", args)
	}
	if pgid := strings.TrimSpace(lines[len(want)+1]); pgid == strconv.Itoa(syscall.Getpgrp()) {
		t.Errorf("qemu-img ran in the test's process group %s", pgid)
	}
}

// TestRunRefusals: Run applies Check, and accepts only absolute paths, NBD URIs and its
// allow-listed options, before running anything.
func TestRunRefusals(t *testing.T) {
	dir := t.TempDir()
	qcow2 := create(t, dir, "a.qcow2", 8<<20, "-f", "qcow2")
	backed := create(t, dir, "b.qcow2", 8<<20, "-f", "qcow2", "-b", qcow2, "-F", "qcow2")
	out := filepath.Join(dir, "out")
	tests := []struct {
		name     string
		src, dst string
		report   *inspect.Report
		extra    []string
		want     error
		detail   string
	}{
		{"unsafe report", backed, out, inspectPath(t, backed), nil, convert.ErrUnsafe, "backing_file"},
		{"no report", qcow2, out, nil, nil, nil, "no inspection report"},
		{"relative source", "a.qcow2", out, inspectPath(t, qcow2), nil, convert.ErrUnsupported, "absolute path"},
		{"json source", `json:{"driver":"qcow2","file":{"driver":"file","filename":"/etc/passwd"}}`, out, inspectPath(t, qcow2), nil, convert.ErrUnsupported, "absolute path"},
		{"http target", qcow2, "http://127.0.0.1/x", inspectPath(t, qcow2), nil, convert.ErrUnsupported, "NBD URI"},
		{"backing option", qcow2, out, inspectPath(t, qcow2), []string{"-B", "/etc/passwd"}, convert.ErrUnsupported, `"-B"`},
		{"format option", qcow2, out, inspectPath(t, qcow2), []string{"-f", "raw"}, convert.ErrUnsupported, `"-f"`},
		{"target options", qcow2, out, inspectPath(t, qcow2), []string{"-o", "preallocation=full"}, convert.ErrUnsupported, `"-o"`},
		{"image-opts", qcow2, out, inspectPath(t, qcow2), []string{"--image-opts"}, convert.ErrUnsupported, `"--image-opts"`},
		{"bad cache mode", qcow2, out, inspectPath(t, qcow2), []string{"-t", "none,x=y"}, convert.ErrUnsupported, "valid value"},
		{"missing value", qcow2, out, inspectPath(t, qcow2), []string{"-m"}, convert.ErrUnsupported, "valid value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			qemuImg, called := recorder(t)
			err := convert.Run(t.Context(), tt.src, tt.dst, tt.report, convert.Options{To: inspect.Raw, QemuImg: qemuImg}, tt.extra...)
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) || !strings.Contains(err.Error(), tt.detail) {
				t.Fatalf("error %v, want %v with %q", err, tt.want, tt.detail)
			}
			if called() {
				t.Fatal("qemu-img was run")
			}
		})
	}
}

// TestRunNBD converts from a source served over NBD and into a raw target served over NBD, as the
// sidecar does with an image still downloading and an upload in progress; qemu-nbd stands in
// for the sidecar's own NBD server.
func TestRunNBD(t *testing.T) {
	dir := t.TempDir()
	src := patterned(t, dir, inspect.QCOW2, 32<<20)
	rep := inspectPath(t, src)

	t.Run("source", func(t *testing.T) {
		uri := serveNBD(t, src, true)
		out := filepath.Join(t.TempDir(), "out.raw")
		var last float64
		err := convert.Run(t.Context(), uri, out, rep, convert.Options{From: inspect.QCOW2, To: inspect.Raw, Progress: func(p float64) { last = p }}, "-m", "2", "-W")
		if err != nil {
			t.Fatal(err)
		}
		if last != 100 {
			t.Errorf("last progress %v", last)
		}
		compare(t, src, inspect.QCOW2, out, inspect.Raw)
	})
	t.Run("target", func(t *testing.T) {
		target := filepath.Join(t.TempDir(), "target.raw")
		if err := os.WriteFile(target, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(target, rep.VirtualSize); err != nil {
			t.Fatal(err)
		}
		uri := serveNBD(t, target, false)
		if err := convert.Run(t.Context(), src, uri, rep, convert.Options{To: inspect.Raw}, "--target-is-zero"); err != nil {
			t.Fatal(err)
		}
		compare(t, src, inspect.QCOW2, target, inspect.Raw)
	})
}

// serveNBD exports path as raw bytes with qemu-nbd on a unix socket until the test ends, and
// returns its URI. qemu-nbd is stopped by its pid.
func serveNBD(t *testing.T, path string, readOnly bool) string {
	t.Helper()
	need(t, "qemu-nbd")
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	args := []string{"--persistent", "--socket=" + sock, "--format=raw"}
	if readOnly {
		args = append(args, "--read-only")
	}
	cmd := exec.Command("qemu-nbd", append(args, path)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i == 500 {
			t.Fatal("qemu-nbd did not create its socket in 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return "nbd+unix:///?socket=" + sock
}

// TestParentDeath: when the process running a conversion dies outright (SIGKILL, no chance to
// cancel anything), qemu-img is killed too, by its parent-death signal. The test runs itself
// as that process (TestParentDeathHelper), with a qemu-img that records its pid and sleeps.
func TestParentDeath(t *testing.T) {
	dir := t.TempDir()
	src := patterned(t, dir, inspect.QCOW2, 8<<20)
	pidFile := filepath.Join(dir, "qemu-img.pid")
	sleeper := script(t, "echo $$ > '"+pidFile+"'.tmp && mv '"+pidFile+"'.tmp '"+pidFile+"'\nexec sleep 60")
	helper := exec.Command(os.Args[0], "-test.run=^TestParentDeathHelper$")
	helper.Env = append(os.Environ(), "CONVERT_TEST_HELPER="+strings.Join([]string{src, filepath.Join(dir, "out.raw"), sleeper}, "\n"))
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	var pid int
	for i := 0; pid == 0; i++ {
		if b, err := os.ReadFile(pidFile); err == nil {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		} else if i == 1000 {
			helper.Process.Kill()
			helper.Wait()
			t.Fatal("the fake qemu-img did not start in 10 s")
		} else {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if err := helper.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	helper.Wait()
	for i := 0; alive(pid); i++ {
		if i == 500 {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("qemu-img (pid %d) still runs 5 s after its parent died", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// groupMembers returns the pids of the processes of group pgid that are not zombies.
func groupMembers(t *testing.T, pgid int) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		// "pid (comm) state ppid pgrp ...": comm may hold anything but ends at the last ')'.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) >= 3 && f[0] != "Z" && f[2] == strconv.Itoa(pgid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// alive tells whether pid runs (a zombie waiting to be reaped does not count).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses: "pid (comm) S ...".
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// TestParentDeathHelper is the process TestParentDeath kills: it converts with the fake
// qemu-img it is given. It does nothing in a normal run.
func TestParentDeathHelper(t *testing.T) {
	env := os.Getenv("CONVERT_TEST_HELPER")
	if env == "" {
		return
	}
	a := strings.Split(env, "\n")
	_, err := convert.File(context.Background(), a[0], a[1], convert.Options{To: inspect.Raw, QemuImg: a[2]})
	t.Fatalf("the conversion ended: %v", err)
}
