package glanceclient

import (
	"context"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/gophercloud/gophercloud/v2"
)

// RangeOptions tune a RangeReader.
type RangeOptions struct {
	// BlockSize is the alignment and minimum size of each Range request (default 64 KiB):
	// one request for the head of an image serves every format's header.
	BlockSize int64
	// CacheBlocks is how many blocks are kept (default 64, so 4 MiB at the default size).
	CacheBlocks int
}

// RangeReader reads an image's data with HTTP Range requests: an io.ReaderAt for inspecting
// a remote image without downloading it. Reads are aligned to blocks, neighbouring missing
// blocks are fetched in one request, and recent blocks are cached. It is safe for concurrent
// use. The context given to OpenRange bounds every read.
type RangeReader struct {
	c     *Client
	ctx   context.Context
	id    string
	size  int64
	bs    int64
	max   int
	mu    sync.Mutex
	cache map[int64][]byte
	order []int64 // cached block numbers, oldest first

	requests, fetched int64
}

// OpenRange returns a RangeReader over the image's data. The image must have a size. The first
// read tells whether the store serves ranges: if not, it fails with ErrRangeUnsupported.
func (c *Client) OpenRange(ctx context.Context, img *Image, opts RangeOptions) (*RangeReader, error) {
	if img.Size == nil {
		return nil, fmt.Errorf("image %s has no size yet: %w", img.ID, ErrNoData)
	}
	if opts.BlockSize <= 0 {
		opts.BlockSize = 64 << 10
	}
	if opts.CacheBlocks <= 0 {
		opts.CacheBlocks = 64
	}
	return &RangeReader{c: c, ctx: ctx, id: img.ID, size: *img.Size, bs: opts.BlockSize, max: opts.CacheBlocks, cache: map[int64][]byte{}}, nil
}

// Stats returns the number of Range requests made so far and the bytes they returned.
func (r *RangeReader) Stats() (requests, bytes int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.requests, r.fetched
}

// Size is the size of the image data.
func (r *RangeReader) Size() int64 { return r.size }

// ReadAt reads len(p) bytes at off, or fewer with io.EOF at the end of the data.
func (r *RangeReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("glanceclient: negative offset")
	}
	if off >= r.size {
		return 0, io.EOF
	}
	end := min(off+int64(len(p)), r.size)
	r.mu.Lock()
	defer r.mu.Unlock()
	first, last := off/r.bs, (end-1)/r.bs
	if need := int(last - first + 1); need > r.max {
		// A read larger than the cache: fetch it straight into p.
		n, err := r.fetch(p[:end-off], off)
		if err == nil && end-off < int64(len(p)) {
			err = io.EOF
		}
		return n, err
	}
	for b := first; b <= last; {
		if _, ok := r.cache[b]; ok {
			b++
			continue
		}
		run := b
		for run+1 <= last {
			if _, ok := r.cache[run+1]; ok {
				break
			}
			run++
		}
		start := b * r.bs
		buf := make([]byte, min((run+1)*r.bs, r.size)-start)
		if _, err := r.fetch(buf, start); err != nil {
			return 0, err
		}
		for k := b; k <= run; k++ {
			lo := (k - b) * r.bs
			r.put(k, buf[lo:min(lo+r.bs, int64(len(buf)))])
		}
		b = run + 1
	}
	n := 0
	for b := first; b <= last; b++ {
		blk := r.cache[b]
		bs := b * r.bs
		lo, hi := max(off, bs), min(end, bs+int64(len(blk)))
		n += copy(p[lo-off:hi-off], blk[lo-bs:hi-bs])
	}
	if int64(n) < int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

func (r *RangeReader) put(b int64, data []byte) {
	for len(r.order) >= r.max {
		delete(r.cache, r.order[0])
		r.order = r.order[1:]
	}
	r.cache[b] = data
	r.order = append(r.order, b)
}

// fetch fills p with the bytes at off by one Range request.
func (r *RangeReader) fetch(p []byte, off int64) (int, error) {
	last := off + int64(len(p)) - 1
	var n int
	err := r.c.retry(r.ctx, "ranged read", func() error {
		resp, err := r.c.sc.Get(r.ctx, r.c.imageURL(r.id, "file"), nil, &gophercloud.RequestOpts{
			MoreHeaders:      map[string]string{"Range": fmt.Sprintf("bytes=%d-%d", off, last)},
			OkCodes:          []int{http.StatusOK, http.StatusPartialContent, http.StatusNoContent},
			KeepResponseBody: true,
		})
		if err != nil {
			if s := statusOf(err); s == http.StatusBadRequest || s == http.StatusRequestedRangeNotSatisfiable {
				return fmt.Errorf("%w (HTTP %d to bytes=%d-%d)", ErrRangeUnsupported, s, off, last)
			}
			return err
		}
		defer resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusNoContent:
			return ErrNoData
		case http.StatusOK:
			return fmt.Errorf("%w (HTTP 200 to bytes=%d-%d)", ErrRangeUnsupported, off, last)
		}
		if start, ok := contentRangeStart(resp.Header.Get("Content-Range")); !ok || start != off {
			return fmt.Errorf("%w: Content-Range %q for bytes=%d-%d", ErrRangeUnsupported, resp.Header.Get("Content-Range"), off, last)
		}
		n, err = io.ReadFull(resp.Body, p)
		r.requests++
		r.fetched += int64(n)
		if err != nil {
			return fmt.Errorf("reading bytes %d-%d: %w", off, last, err)
		}
		return nil
	})
	if err != nil {
		return n, classify(err, "reading image %s", r.id)
	}
	return n, nil
}

// contentRangeStart parses the first byte position of "bytes a-b/size".
func contentRangeStart(v string) (int64, bool) {
	v, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, false
	}
	a, _, ok := strings.Cut(v, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(a, 10, 64)
	return n, err == nil
}

// DownloadResult is what Download verified.
type DownloadResult struct {
	// Bytes is the number of bytes written.
	Bytes int64
	// Algorithm is the hash that was checked: os_hash_algo (sha512 by default), or md5 when
	// only the legacy checksum is set, or "" when the image has neither.
	Algorithm string
}

// Download streams the image's data into w and verifies it in the same pass: against
// os_hash_algo/os_hash_value when Glance has them, else against the MD5 checksum. A difference,
// or a size other than the image's, is ErrChecksumMismatch. Download retries only until the
// first byte is written; a connection cut later is returned for the caller to retry whole.
func (c *Client) Download(ctx context.Context, img *Image, w io.Writer) (DownloadResult, error) {
	var res DownloadResult
	h, want, algo, err := imageHash(img)
	if err != nil {
		return res, err
	}
	res.Algorithm = algo
	var resp *http.Response
	err = c.retry(ctx, "download", func() error {
		var err error
		resp, err = c.sc.Get(ctx, c.imageURL(img.ID, "file"), nil, &gophercloud.RequestOpts{
			OkCodes:          []int{http.StatusOK, http.StatusNoContent},
			KeepResponseBody: true,
		})
		return err
	})
	if err != nil {
		return res, classify(err, "downloading image %s", img.ID)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNoContent {
		return res, fmt.Errorf("downloading image %s: %w", img.ID, ErrNoData)
	}
	res.Bytes, err = hashCopy(w, h, resp.Body)
	if err != nil {
		return res, fmt.Errorf("downloading image %s after %d bytes: %w", img.ID, res.Bytes, err)
	}
	if img.Size != nil && *img.Size != res.Bytes {
		return res, fmt.Errorf("image %s: got %d bytes, Glance says %d: %w", img.ID, res.Bytes, *img.Size, ErrChecksumMismatch)
	}
	if h != nil {
		if got := hex.EncodeToString(h.Sum(nil)); !strings.EqualFold(got, want) {
			return res, fmt.Errorf("image %s: %s %s, Glance says %s: %w", img.ID, algo, got, want, ErrChecksumMismatch)
		}
	}
	return res, nil
}

// imageHash picks the hash to verify an image with.
func imageHash(img *Image) (hash.Hash, string, string, error) {
	if img.HashAlgo != "" && img.HashValue != "" {
		var h hash.Hash
		switch strings.ToLower(img.HashAlgo) {
		case "sha512":
			h = sha512.New()
		case "sha384":
			h = sha512.New384()
		case "sha256":
			h = sha256.New()
		case "sha224":
			h = sha256.New224()
		case "sha1":
			h = sha1.New()
		case "md5":
			h = md5.New()
		default:
			return nil, "", "", fmt.Errorf("image %s: unsupported os_hash_algo %q", img.ID, img.HashAlgo)
		}
		return h, img.HashValue, strings.ToLower(img.HashAlgo), nil
	}
	if img.Checksum != "" {
		return md5.New(), img.Checksum, "md5", nil
	}
	return nil, "", "", nil
}

// hashCopy copies src to w while h hashes the same bytes on another core: the download, the
// hashing and the write overlap, so the pass goes at the speed of the slowest of them.
func hashCopy(w io.Writer, h hash.Hash, src io.Reader) (int64, error) {
	const bufSize, bufs = 1 << 20, 4
	type chunk struct {
		b   []byte
		err error
	}
	free := make(chan []byte, bufs)
	for range bufs {
		free <- make([]byte, bufSize)
	}
	filled := make(chan chunk, bufs)
	stop := make(chan struct{})
	go func() {
		defer close(filled)
		for {
			var buf []byte
			select {
			case buf = <-free:
			case <-stop:
				return
			}
			n, err := fill(src, buf)
			select {
			case filled <- chunk{buf[:n], err}:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	defer close(stop)
	var total int64
	hashed := make(chan struct{}, 1)
	for c := range filled {
		if len(c.b) > 0 {
			if h != nil {
				go func(b []byte) { h.Write(b); hashed <- struct{}{} }(c.b)
			}
			_, werr := w.Write(c.b)
			if h != nil {
				<-hashed
			}
			if werr != nil {
				return total, werr
			}
			total += int64(len(c.b))
		}
		if c.err == io.EOF {
			return total, nil
		}
		if c.err != nil {
			return total, c.err
		}
		free <- c.b[:cap(c.b)]
	}
	return total, nil
}

// fill reads into buf until it is full, the data ends (io.EOF) or reading fails. Unlike
// io.ReadFull it passes a body's own io.ErrUnexpectedEOF (a cut connection) through as the error
// it is.
func fill(src io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := src.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
