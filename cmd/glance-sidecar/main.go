// Command glance-sidecar runs beside OpenStack Glance and tells what every uploaded image really
// is. Its subcommands are thin: the work lives in the packages inspect, glanceclient, consumer,
// worker and convert. Start reading at newApp.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/urfave/cli/v2"
)

// version is set at build time with -ldflags "-X main.version=..."; otherwise the module
// version or VCS revision recorded in the binary is used.
var version = ""

// Exit statuses shared by the subcommands.
const (
	exitOK      = 0
	exitFinding = 1 // the command worked and found something wrong (an unsafe image)
	exitUsage   = 2 // bad arguments, or input that could not be read
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs the command line args and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := newApp(stdout, stderr)
	err := app.RunContext(ctx, args)
	var ec cli.ExitCoder
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ec):
		if msg := err.Error(); msg != "" {
			fmt.Fprintln(stderr, "glance-sidecar:", msg)
		}
		return ec.ExitCode()
	default:
		fmt.Fprintln(stderr, "glance-sidecar:", err)
		return exitUsage
	}
}

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:      "glance-sidecar",
		Usage:     "introspect, check and convert the images of an OpenStack Glance",
		Version:   buildVersion(),
		Writer:    stdout,
		ErrWriter: stderr,
		// Errors are printed and turned into exit statuses by run, never by os.Exit in cli.
		ExitErrHandler: func(*cli.Context, error) {},
		Commands: []*cli.Command{
			serveCommand(),
			reprocessCommand(),
			reportCommand(),
			inspectCommand(),
			convertCommand(),
			configCommand(),
			versionCommand(),
		},
	}
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version",
		Action: func(c *cli.Context) error {
			_, err := fmt.Fprintln(c.App.Writer, buildVersion())
			return err
		},
	}
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			return v
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return "dev-" + s.Value[:min(12, len(s.Value))]
			}
		}
	}
	return "dev"
}
