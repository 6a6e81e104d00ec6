package convert

// SetStartedHook makes the package call fn with qemu-img's pid (its process group id) once it
// has started, for the tests that check the whole group is gone; it returns a func restoring
// the previous hook. Tests using it must not run in parallel with each other.
func SetStartedHook(fn func(pid int)) (restore func()) {
	old := startedHook
	startedHook = fn
	return func() { startedHook = old }
}
