// Package qemutest runs qemu-img, qemu-io and the other fixture-making tools for tests: with
// LC_ALL=C, failing the test with the command's output, and again when qemu-img fails only
// because a loaded machine kept it from timing a LUKS key derivation. Start with Run.
package qemutest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TimingFlake is what qemu-img says when the thread's CPU clock did not move while it timed a
// LUKS key derivation (iter-time): it happens on a loaded machine, and says nothing of the image.
const TimingFlake = "Unable to get accurate CPU usage"

// Run runs name with args and returns its combined output, failing the test if it fails (a
// missing tool included). A failure that is only TimingFlake is retried, up to ten times.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s is needed to make the test's fixtures (scripts/install-deps installs it): %v", name, err)
	}
	for try := 1; ; try++ {
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C")
		out, err := cmd.CombinedOutput()
		if err == nil {
			return string(out)
		}
		if try == 10 || !strings.Contains(string(out), TimingFlake) {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
	}
}
