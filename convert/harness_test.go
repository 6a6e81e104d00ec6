package convert_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/glance-sidecar/glance-sidecar/inspect"
	"github.com/glance-sidecar/glance-sidecar/internal/qemutest"
)

// This file holds what the tests share: the tools they need, images made by the real qemu-img
// and qemu-io, and fake qemu-img scripts.

// tools are the programs the tests run, with the Debian package that has each.
var tools = map[string]string{
	"qemu-img":    "qemu-utils",
	"qemu-io":     "qemu-utils",
	"qemu-nbd":    "qemu-utils",
	"prlimit":     "util-linux",
	"genisoimage": "genisoimage",
	"mount":       "mount",
	"umount":      "mount",
}

// need fails the test, saying how to install it, when a program is missing: a missing tool is
// a failure, never a skip.
func need(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("this test needs %s (Debian package %s; scripts/install-deps installs it): %v", name, tools[name], err)
	}
}

// run runs a command with LC_ALL=C and fails the test if it fails; it returns the output.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	need(t, name)
	return qemutest.Run(t, name, args...)
}

// createOpts are the qemu-img create options of each source format.
var createOpts = map[inspect.Format]string{
	inspect.VHD:  "subformat=dynamic",
	inspect.VMDK: "subformat=monolithicSparse,adapter_type=lsilogic",
}

// patterned makes an image of format f and virtual size size in dir with `qemu-img create`, and
// writes three patterned regions into it with qemu-io (the start, the middle, the last 64 KiB),
// so that conversions move real data and leave holes between.
func patterned(t testing.TB, dir string, f inspect.Format, size int64) string {
	t.Helper()
	path := filepath.Join(dir, "src."+f.QemuName())
	args := []string{"create", "-q", "-f", f.QemuName()}
	if o := createOpts[f]; o != "" {
		args = append(args, "-o", o)
	}
	run(t, "qemu-img", append(args, path, fmt.Sprint(size))...)
	run(t, "qemu-io", "-f", f.QemuName(),
		"-c", "write -P 0x11 0 1M",
		"-c", fmt.Sprintf("write -P 0x5a %d 3M", size/2/65536*65536),
		"-c", fmt.Sprintf("write -P 0xe7 %d 64k", size-65536),
		path)
	return path
}

// create makes an image with `qemu-img create -q ARGS... PATH SIZE` in dir.
func create(t testing.TB, dir, name string, size int64, args ...string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	run(t, "qemu-img", append(append([]string{"create", "-q"}, args...), path, fmt.Sprint(size))...)
	return path
}

// compare fails the test unless `qemu-img compare -f A -F B` finds the same guest data.
func compare(t testing.TB, a string, af inspect.Format, b string, bf inspect.Format) {
	t.Helper()
	cmd := exec.Command("qemu-img", "compare", "-f", af.QemuName(), "-F", bf.QemuName(), a, b)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("qemu-img compare %s %s: %v\n%s", a, b, err, out)
	}
}

// inspectPath inspects a file by random access.
func inspectPath(t testing.TB, path string) *inspect.Report {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	rep, err := inspect.InspectAt(context.Background(), f, st.Size(), inspect.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// listDir returns the names in dir, sorted.
func listDir(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	return names
}

// script writes an executable shell script into a directory of its own and returns its path.
func script(t testing.TB, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fake-qemu-img")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// recorder is a fake qemu-img that records being called in a file and fails; calledBy tells
// whether it was.
func recorder(t testing.TB) (path string, called func() bool) {
	t.Helper()
	mark := filepath.Join(t.TempDir(), "called")
	path = script(t, fmt.Sprintf("echo \"$@\" >> '%s'\nexit 1", mark))
	return path, func() bool {
		_, err := os.Stat(mark)
		return err == nil
	}
}

// writePattern writes size bytes of a compressible pattern that never repeats within 251 bytes
// and is never zero (qemu-img must copy all of it).
func writePattern(t testing.TB, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	const chunk = 1 << 20
	pattern := make([]byte, chunk+251)
	for i := range pattern {
		pattern[i] = byte(i%251) + 1
	}
	for off := int64(0); off < size; off += chunk {
		start := off % 251
		if _, err := f.Write(pattern[start : start+min(chunk, size-off)]); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}
