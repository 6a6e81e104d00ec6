package worker

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/glance-sidecar/glance-sidecar/convert"
	"github.com/glance-sidecar/glance-sidecar/glanceclient"
	"github.com/glance-sidecar/glance-sidecar/inspect"
	"github.com/glance-sidecar/glance-sidecar/internal/nbd"
)

// A conversion to raw overlaps its three stages: qemu-img reads the source over NBD from the
// download in progress (nbd.Window, which keeps the last few MiB of it in memory) and writes raw,
// in order, over NBD into the upload (nbd.SequentialWriter). Two guards keep it as safe as
// converting a file:
//
//   - qemu-img reads only bytes that are the bytes inspected. The ranged inspection's reads are
//     recorded (regions); the download is compared against them as it arrives, and so is any
//     chunk the window fetches by range. The download's checksum covers the rest, and a chunk
//     fetched by range must match the download's bytes there (a GMAC under a key of the
//     window's own).
//   - the upload cannot finish before everything is checked. The last bytes of the output are
//     held back until qemu-img has succeeded, the download's checksum matched, and inspecting
//     the output stream found raw and safe; a failure cuts the upload short instead, and Glance
//     puts the image back to queued.
//
// qemu-img reads a few tables far ahead first (a qcow2's second L2 table, 512 MiB in), which
// the window fetches by range. The download reaches the disk only where qemu-img waits for
// bytes past the window while its oldest chunk is not read through (a qcow2's refcount block,
// which it never reads): the window spills that chunk into the workspace, which reserves the
// image's size for the worst case.

// regions records what an inspection read through an io.ReaderAt: at most the inspection's read
// budget, which package inspect bounds.
type regions struct {
	r    io.ReaderAt
	mu   sync.Mutex
	list []region
}

type region struct {
	off  int64
	data []byte
}

func (g *regions) ReadAt(p []byte, off int64) (int, error) {
	n, err := g.r.ReadAt(p, off)
	if n > 0 {
		g.mu.Lock()
		g.list = append(g.list, region{off, bytes.Clone(p[:n])})
		g.mu.Unlock()
	}
	return n, err
}

// sorted returns the regions by offset.
func (g *regions) sorted() []region {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := append([]region(nil), g.list...)
	sort.Slice(out, func(i, j int) bool { return out[i].off < out[j].off })
	return out
}

// errInconsistent is a download whose bytes differ from what the ranged reads returned.
var errInconsistent = errors.New("the download differs from the bytes inspected")

// checkRegions fails if p, the bytes at off, differ from what the inspection read there.
func checkRegions(rs []region, p []byte, off int64) error {
	for _, r := range rs {
		lo, hi := max(r.off, off), min(r.off+int64(len(r.data)), off+int64(len(p)))
		if lo < hi && !bytes.Equal(p[lo-off:hi-off], r.data[lo-r.off:hi-r.off]) {
			return fmt.Errorf("%w at byte %d", errInconsistent, lo)
		}
	}
	return nil
}

// checkedWriter passes the download on to the window, comparing it with the inspected regions
// first.
type checkedWriter struct {
	w       *nbd.Window
	regions []region
	off     int64
}

func (w *checkedWriter) Write(p []byte) (int, error) {
	if err := checkRegions(w.regions, p, w.off); err != nil {
		w.w.Fail(err)
		return 0, err
	}
	n, err := w.w.Write(p)
	w.off += int64(n)
	return n, err
}

// holdback passes writes through to w except the last hold bytes of total, which it keeps until
// commit; abort closes w with an error instead.
type holdback struct {
	w     *io.PipeWriter
	total int64
	hold  int64
	off   int64
	kept  []byte
}

func (h *holdback) Write(p []byte) (int, error) {
	n := len(p)
	if pass := min(int64(len(p)), max(h.total-h.hold-h.off, 0)); pass > 0 {
		if _, err := h.w.Write(p[:pass]); err != nil {
			return 0, err
		}
		h.off += pass
		p = p[pass:]
	}
	if len(p) > 0 {
		if h.off+int64(len(h.kept)+len(p)) > h.total {
			return 0, fmt.Errorf("output longer than %d bytes", h.total)
		}
		h.kept = append(h.kept, p...)
	}
	return n, nil
}

func (h *holdback) commit() error {
	if h.off+int64(len(h.kept)) != h.total {
		err := fmt.Errorf("output is %d bytes, want %d", h.off+int64(len(h.kept)), h.total)
		h.w.CloseWithError(err)
		return err
	}
	if _, err := h.w.Write(h.kept); err != nil {
		return err
	}
	return h.w.Close()
}

// pipelineHold is how much of the output is held back: enough that Glance cannot have the image
// before the checks end.
const pipelineHold = 1 << 20

// sourceWindow is the shape of the window a conversion reads its source through: 32 chunks of
// 1 MiB. Tests make it smaller.
var sourceWindow = nbd.WindowOptions{ChunkSize: 1 << 20, Chunks: 32}

// convertPipelined converts img to raw and uploads it into the queued image id, the stages
// overlapping. rs are the regions the ranged inspection read. It returns what became of the
// source window's chunks.
func convertPipelined(ctx context.Context, c *glanceclient.Client, img *glanceclient.Image, rep *inspect.Report, rs []region,
	id string, lease *Lease, qopts convert.Options) (stats nbd.WindowStats, err error) {
	size, vsize := *img.Size, rep.VirtualSize
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The NBD servers, and the window's ranged fetches, stop with serveCtx, cancelled once
	// qemu-img is done; the download goes on to its end and its checksum.
	serveCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()

	f, err := os.OpenFile(lease.Path("source"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return stats, err
	}
	defer f.Close()
	wopts := sourceWindow
	rr, err := c.OpenRange(serveCtx, img, glanceclient.RangeOptions{BlockSize: wopts.ChunkSize, CacheBlocks: 2})
	if err != nil {
		return stats, err
	}
	wopts.Size, wopts.Spill = size, f
	wopts.Fetch = func(_ context.Context, p []byte, off int64) error {
		n, err := rr.ReadAt(p, off)
		if n < len(p) {
			return fmt.Errorf("ranged read of %d bytes at %d: %w", len(p), off, cmp.Or(err, io.ErrUnexpectedEOF))
		}
		return checkRegions(rs, p, off)
	}
	src, err := nbd.NewWindow(wopts)
	if err != nil {
		return stats, err
	}
	defer func() { stats = src.Stats() }()
	sockets, err := lease.SocketDir()
	if err != nil {
		return stats, err
	}
	srcLn, err := nbd.Listen(sockets)
	if err != nil {
		return stats, err
	}
	defer srcLn.Close()

	stream, err := inspect.NewStream(inspect.Options{})
	if err != nil {
		return stats, err
	}
	pr, pw := io.Pipe()
	hold := &holdback{w: pw, total: vsize, hold: min(pipelineHold, vsize)}
	dst := nbd.NewSequentialWriter(io.MultiWriter(stream, hold), vsize)
	dstLn, err := nbd.Listen(sockets)
	if err != nil {
		return stats, err
	}
	defer dstLn.Close()

	var wg sync.WaitGroup
	downloaded := make(chan error, 1)
	wg.Go(func() {
		_, err := c.Download(ctx, img, &checkedWriter{w: src, regions: rs})
		if err != nil {
			src.Fail(err)
		}
		downloaded <- err
	})
	srcDone, dstDone := make(chan error, 1), make(chan error, 1)
	wg.Go(func() { srcDone <- nbd.Serve(serveCtx, srcLn, src) })
	wg.Go(func() { dstDone <- nbd.Serve(serveCtx, dstLn, dst) })
	uploaded := make(chan error, 1)
	wg.Go(func() {
		err := c.UploadStream(ctx, id, pr, vsize)
		cause := err
		if cause == nil {
			cause = errors.New("the upload is complete")
		}
		pr.CloseWithError(fmt.Errorf("upload ended: %w", cause)) // qemu-img's writes now fail
		uploaded <- err
	})
	defer func() {
		if err != nil {
			pw.CloseWithError(err) // the upload fails short: Glance puts the image back to queued
			src.Fail(err)          // and the download stops
			cancel()
		}
		stopServing()
		wg.Wait()
	}()

	runErr := convert.Run(ctx, srcLn.URI(), dstLn.URI(), rep, qopts)
	if runErr != nil {
		// A server blocked writing into a stalled upload lets go, and both stop now.
		pw.CloseWithError(runErr)
		src.Fail(runErr)
		stopServing()
	} else {
		src.Drain() // the download goes on to its end and its checksum
	}
	// qemu-img has exited; after a clean end it has closed both sessions itself, and what its
	// servers say is the better explanation of a failure.
	var dstErr, srcErr error
	grace := time.NewTimer(5 * time.Second)
	defer grace.Stop()
	for ended := 0; ended < 2; {
		select {
		case dstErr = <-dstDone:
			ended++
		case srcErr = <-srcDone:
			ended++
		case <-grace.C:
			stopServing() // a session qemu-img did not close: both servers return now
		}
	}
	if runErr != nil {
		return stats, errors.Join(runErr, ignoreCancel(dstErr), ignoreCancel(srcErr))
	}
	if dstErr != nil {
		return stats, fmt.Errorf("writing the output: %w", dstErr)
	}
	if err := ignoreCancel(srcErr); err != nil { // a read qemu-img was told failed, yet it went on
		return stats, fmt.Errorf("reading the source: %w", err)
	}
	select {
	case err := <-uploaded: // ended before its last bytes were given to it: failed
		return stats, fmt.Errorf("uploading the converted image %s: %w", id, cmp.Or(err, errors.New("ended early")))
	default:
	}
	if err := <-downloaded; err != nil {
		return stats, fmt.Errorf("downloading for conversion: %w", err)
	}
	out, err := stream.Close()
	if err != nil {
		return stats, fmt.Errorf("inspecting the output: %w", err)
	}
	if out.Format != inspect.Raw || !out.Safe() || out.VirtualSize < rep.VirtualSize {
		return stats, fmt.Errorf("%w: the output is %s (%d bytes, problems %v), want raw, safe, at least %d bytes",
			convert.ErrOutputRejected, out.Format, out.VirtualSize, out.Codes(), rep.VirtualSize)
	}
	if err := hold.commit(); err != nil {
		return stats, fmt.Errorf("uploading the converted image: %w", err)
	}
	if err := <-uploaded; err != nil {
		return stats, fmt.Errorf("uploading the converted image %s: %w", id, err)
	}
	return stats, nil
}

func ignoreCancel(err error) error {
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
