// Command reprocessbench seeds a Glance with the catalog that test/bench/reprocess-bench.sh
// reprocesses (the one the integration tests use: internal/testcatalog), and deletes it again.
//
//	reprocessbench [-cloud admin] [-clouds-file F] seed -n 200 -ids FILE   # prints the owner
//	reprocessbench [-cloud admin] [-clouds-file F] delete -ids FILE [-owner ID]  # and all the owner's images
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/glance-sidecar/glance-sidecar/glanceclient"
	"github.com/glance-sidecar/glance-sidecar/internal/testcatalog"
)

func main() {
	cloud := flag.String("cloud", "admin", "clouds.yaml cloud (an admin: the images are owned by a new project)")
	cloudsFile := flag.String("clouds-file", "", "clouds.yaml path")
	flag.Parse()
	sub := flag.NewFlagSet(flag.Arg(0), flag.ExitOnError)
	n := sub.Int("n", 200, "images to seed")
	parallel := sub.Int("parallel", 8, "uploads or deletions at once")
	ids := sub.String("ids", "", "file of the seeded image ids (written by seed, read by delete)")
	owner := sub.String("owner", "", "delete: every image of this owner too (what other sidecars made from the catalog)")
	if flag.NArg() == 0 || sub.Parse(flag.Args()[1:]) != nil || *ids == "" {
		fmt.Fprintln(os.Stderr, "usage: reprocessbench [-cloud C] [-clouds-file F] seed|delete [-n N] [-parallel P] [-owner ID] -ids FILE")
		os.Exit(2)
	}
	if err := run(context.Background(), *cloud, *cloudsFile, flag.Arg(0), *n, *parallel, *ids, *owner); err != nil {
		fmt.Fprintln(os.Stderr, "reprocessbench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cloud, cloudsFile, cmd string, n, parallel int, idsFile, owner string) error {
	c, err := glanceclient.New(ctx, glanceclient.Options{Cloud: cloud, CloudsFile: cloudsFile, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	switch cmd {
	case "seed":
		dir, err := os.MkdirTemp("", "reprocessbench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		owner := testcatalog.NewProjectID()
		images, err := testcatalog.Seed(ctx, c, dir, owner, n, parallel)
		var b strings.Builder
		for _, img := range images {
			b.WriteString(img.ID + "\n")
		}
		if werr := os.WriteFile(idsFile, []byte(b.String()), 0o644); werr != nil {
			return errors.Join(err, werr)
		}
		if err != nil {
			return fmt.Errorf("seeding (delete what was made with: delete -ids %s): %w", idsFile, err)
		}
		fmt.Println(owner)
		return nil
	case "delete":
		b, err := os.ReadFile(idsFile)
		if err != nil {
			return err
		}
		err = testcatalog.Delete(ctx, c, strings.Fields(string(b)), parallel)
		if owner != "" {
			err = errors.Join(err, testcatalog.DeleteOwned(ctx, c, owner, parallel))
		}
		return err
	}
	return fmt.Errorf("unknown command %q: seed or delete", cmd)
}
