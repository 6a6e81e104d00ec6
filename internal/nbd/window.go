package nbd

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
)

// A Window is a read-only export over data that arrives in order, a download still in
// progress, of which it keeps only the last few chunks in memory. qemu-img reads a source
// nearly front to back, a little behind the download, so almost every read is served from
// memory and the download is never written to disk.
//
// The downloader writes the data with Write. A read of bytes that have not arrived yet waits
// for them if they are near, within one window of what has arrived; bytes further on (the
// tables qemu-img reads first) are fetched at once by range, and checked against the download
// when it gets there. When the window is full, its oldest chunk makes room for the next:
//
//   - a chunk the client has read through is dropped, after its tag is noted; a later read of
//     it fetches it again by range, which must match the tag;
//   - a chunk not read through is kept only if a read waits for bytes past the window: it is
//     spilled to the Spill file, from which later reads are served;
//   - otherwise Write waits for the client: the window is the read-ahead, and a download that
//     outruns qemu-img slows to its pace instead of filling the disk.
//
// So a source read in order costs memory and no disk, and bytes read out of order cost a
// ranged fetch each time or, rarely, the disk.
//
// A chunk's tag is a GMAC (AES-GCM over no plaintext) under a key of the window's own, drawn at
// random and never shown: whoever serves the ranged reads cannot make other bytes match the
// download's. A mismatch fails the window.
//
// The downloader must call Fail if the download fails or ends short, and the caller must call
// Fail or Drain once the client is done (Drain: the download goes on to its end, still
// checked, so that its checksum can be verified). Until the download has ended without a
// failure, bytes a read returned may yet prove wrong. A read waiting for bytes does not notice
// its client hanging up: cancel Serve's context once the client process has exited.
type Window struct {
	size, chunk int64
	spill       Spill
	fetch       func(ctx context.Context, p []byte, off int64) error

	mu       sync.Mutex
	mac      cipher.AEAD
	avail    int64            // bytes [0, avail) have arrived
	lo, hi   int64            // chunks [lo, hi) are in memory; hi-1 may be arriving still
	slots    [][]byte         // chunk i is in slots[i%len(slots)]
	cover    []uint64         // per slot: which 64ths of its chunk were read
	ahead    map[int64]uint64 // which 64ths of chunks fetched ahead were read
	state    []byte           // per chunk: fetched ahead, or once it left the window, dropped or spilled
	tags     [][gmacSize]byte // per chunk fetched ahead or dropped
	needs    []int64          // the ends of the bytes reads are waiting for
	draining bool
	err      error
	arrived  chan struct{} // closed and replaced when bytes arrive, or on Fail or Drain: reads wait on it
	room     chan struct{} // closed and replaced when a read may let Write go on: Write waits on it
	stats    WindowStats
}

// Spill is where a Window keeps the chunks it must not drop: a file, usually empty and sparse.
type Spill interface {
	io.ReaderAt
	io.WriterAt
}

// WindowOptions configure a Window.
type WindowOptions struct {
	// Size is the export's size: the size of the download.
	Size int64
	// ChunkSize is the unit the window holds, drops and fetches (default 1 MiB).
	ChunkSize int64
	// Chunks is how many chunks are kept in memory (default 32).
	Chunks int
	// Spill receives the chunks that leave the window unread. Required.
	Spill Spill
	// Fetch reads a chunk by range (p is the whole chunk, off its start): one dropped and read
	// again, or one far ahead of the download. Required.
	Fetch func(ctx context.Context, p []byte, off int64) error
}

// WindowStats are what became of the chunks that left a Window, and what reads cost.
type WindowStats struct {
	// Dropped and Spilled are the bytes that left the window dropped (read through) and
	// spilled to the spill file (not read through).
	Dropped, Spilled int64
	// Fetched is the number of bytes fetched by range, and Fetches the number of fetches.
	Fetched, Fetches int64
}

// ErrFetchMismatch is a chunk fetched by range whose bytes differ from the download's.
var ErrFetchMismatch = errors.New("nbd: a chunk fetched by range differs from the download")

// ErrDrained is a read after Drain.
var ErrDrained = errors.New("nbd: window drained, its client is done")

const (
	chunkAhead = 1 + iota // fetched before it arrived: checked when it does
	chunkDropped
	chunkSpilled
	chunkGone // left the window while draining: no read may come
)

const gmacSize = 16

// NewWindow returns a Window with nothing arrived yet.
func NewWindow(opts WindowOptions) (*Window, error) {
	if opts.ChunkSize <= 0 {
		opts.ChunkSize = 1 << 20
	}
	if opts.Chunks <= 0 {
		opts.Chunks = 32
	}
	if opts.Size < 0 || opts.Spill == nil || opts.Fetch == nil {
		return nil, errors.New("nbd: a window needs a size, a spill file and a fetch function")
	}
	key := make([]byte, 16)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	mac, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	n := (opts.Size + opts.ChunkSize - 1) / opts.ChunkSize
	slots := min(int64(opts.Chunks), max(n, 1))
	return &Window{
		size: opts.Size, chunk: opts.ChunkSize, spill: opts.Spill, fetch: opts.Fetch, mac: mac,
		slots: make([][]byte, slots), cover: make([]uint64, slots), ahead: map[int64]uint64{},
		state: make([]byte, n), tags: make([][gmacSize]byte, n),
		arrived: make(chan struct{}), room: make(chan struct{}),
	}, nil
}

// Size is the export's size.
func (w *Window) Size() int64 { return w.size }

// ReadOnly is true.
func (w *Window) ReadOnly() bool { return true }

// Available is how many bytes from the start have arrived.
func (w *Window) Available() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.avail
}

// Stats returns what the window has dropped, spilled and fetched so far.
func (w *Window) Stats() WindowStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stats
}

// chunkLen is the length of chunk i: ChunkSize but for the last.
func (w *Window) chunkLen(i int64) int64 { return min(w.chunk, w.size-i*w.chunk) }

// tagLocked is the GMAC of chunk i holding data. The AEAD is used under the lock only.
func (w *Window) tagLocked(i int64, data []byte) [gmacSize]byte {
	var nonce [12]byte
	binary.BigEndian.PutUint64(nonce[4:], uint64(i))
	var tag [gmacSize]byte
	w.mac.Seal(tag[:0], nonce[:], nil, data)
	return tag
}

// coverage is the bits of the 64ths of a chunk that bytes [a, b) within it touch.
func (w *Window) coverage(a, b int64) uint64 {
	g := (w.chunk + 63) / 64
	first, last := a/g, (b-1)/g
	return (^uint64(0) >> (63 - last)) &^ (1<<first - 1)
}

// readThrough reports whether every 64th of chunk i is covered.
func (w *Window) readThrough(i int64, cover uint64) bool {
	return cover == w.coverage(0, w.chunkLen(i))
}

// Write adds p to the data that has arrived. It waits while the window is full and its oldest
// chunk is still to be read, and fails once the window failed; writing past Size fails it.
func (w *Window) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for len(p) > 0 {
		if w.err != nil {
			return n, w.err
		}
		if int64(len(p)) > w.size-w.avail {
			w.failLocked(fmt.Errorf("%w: %d more bytes after %d, size %d", ErrPastSize, len(p), w.avail, w.size))
			return n, w.err
		}
		i := w.avail / w.chunk
		if i == w.hi { // the first byte of a new chunk: make room for it
			if w.hi-w.lo == int64(len(w.slots)) && !w.evictLocked() {
				if w.err == nil {
					room := w.room
					w.mu.Unlock()
					<-room
					w.mu.Lock()
				}
				continue
			}
			s := i % int64(len(w.slots))
			if w.slots[s] == nil {
				w.slots[s] = make([]byte, w.chunk)
			}
			w.cover[s] = w.ahead[i]
			delete(w.ahead, i)
			w.hi++
		}
		off, slot := w.avail-i*w.chunk, w.slots[i%int64(len(w.slots))][:w.chunkLen(i)]
		k := copy(slot[off:], p)
		p = p[k:]
		n += k
		w.avail += int64(k)
		if w.state[i] == chunkAhead && off+int64(k) == int64(len(slot)) {
			if w.tagLocked(i, slot) != w.tags[i] {
				w.failLocked(fmt.Errorf("%w: bytes %d to %d, fetched ahead", ErrFetchMismatch, i*w.chunk, i*w.chunk+int64(len(slot))))
				return n, w.err
			}
			w.state[i] = 0
		}
		close(w.arrived)
		w.arrived = make(chan struct{})
	}
	return n, nil
}

// evictLocked makes the oldest chunk leave the window if it may, and reports whether it did.
func (w *Window) evictLocked() bool {
	i := w.lo
	s := i % int64(len(w.slots))
	data := w.slots[s][:w.chunkLen(i)]
	switch {
	case w.draining:
		w.state[i] = chunkGone
	case w.readThrough(i, w.cover[s]):
		w.tags[i] = w.tagLocked(i, data)
		w.state[i] = chunkDropped
		w.stats.Dropped += int64(len(data))
	case slices.ContainsFunc(w.needs, func(end int64) bool { return end > w.hi*w.chunk }):
		if _, err := w.spill.WriteAt(data, i*w.chunk); err != nil {
			w.failLocked(fmt.Errorf("nbd: spilling bytes %d to %d of the download: %w", i*w.chunk, i*w.chunk+int64(len(data)), err))
			return false
		}
		w.stats.Spilled += int64(len(data))
		w.state[i] = chunkSpilled
	default:
		return false
	}
	w.lo++
	return true
}

// Fail makes pending and later reads and writes fail with err (nil means
// io.ErrUnexpectedEOF). Only the first failure counts.
func (w *Window) Fail(err error) {
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.failLocked(fmt.Errorf("nbd: download failed after %d of %d bytes: %w", w.avail, w.size, err))
	}
}

func (w *Window) failLocked(err error) {
	w.err = err
	w.wakeAllLocked()
}

// Drain says the client is done: the rest of the download is accepted and discarded (a chunk
// fetched ahead still checked), and reads fail with ErrDrained.
func (w *Window) Drain() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.draining = true
	w.wakeAllLocked()
}

func (w *Window) wakeAllLocked() {
	close(w.arrived)
	w.arrived = make(chan struct{})
	w.wakeWriterLocked()
}

func (w *Window) wakeWriterLocked() {
	close(w.room)
	w.room = make(chan struct{})
}

// ReadAt fills p from off, waiting until those bytes have arrived.
func (w *Window) ReadAt(ctx context.Context, p []byte, off int64) error {
	end := off + int64(len(p))
	if off < 0 || end < off || end > w.size {
		return fmt.Errorf("%w: read of %d bytes at %d, size %d", ErrPastSize, len(p), off, w.size)
	}
	for len(p) > 0 {
		i := off / w.chunk
		k := min(int64(len(p)), (i+1)*w.chunk-off)
		if err := w.readChunk(ctx, p[:k], off, i); err != nil {
			return err
		}
		p, off = p[k:], off+k
	}
	return nil
}

// readChunk fills p, which lies within chunk i, from off.
func (w *Window) readChunk(ctx context.Context, p []byte, off, i int64) error {
	end := off + int64(len(p))
	bits := w.coverage(off-i*w.chunk, end-i*w.chunk)
	w.mu.Lock()
	for {
		switch {
		case w.err != nil:
			err := w.err
			w.mu.Unlock()
			return err
		case w.draining:
			w.mu.Unlock()
			return ErrDrained
		case i < w.lo:
			state := w.state[i]
			w.mu.Unlock()
			return w.readEvicted(ctx, p, off, i, state)
		case end <= w.avail:
			s := i % int64(len(w.slots))
			copy(p, w.slots[s][off-i*w.chunk:])
			w.cover[s] |= bits
			if i == w.lo {
				w.wakeWriterLocked() // it may be waiting for this chunk to be read through
			}
			w.mu.Unlock()
			return nil
		case i >= w.hi+int64(len(w.slots)):
			w.mu.Unlock()
			done, err := w.fetchAhead(ctx, p, off, i, bits)
			if done || err != nil {
				return err
			}
			w.mu.Lock() // it arrived meanwhile
			continue
		}
		// Not arrived yet: the writer may now spill what it must to get there.
		w.needs = append(w.needs, end)
		w.wakeWriterLocked()
		arrived, avail := w.arrived, w.avail
		w.mu.Unlock()
		var cause error
		select {
		case <-arrived:
		case <-ctx.Done():
			cause = context.Cause(ctx)
		}
		w.mu.Lock()
		k := slices.Index(w.needs, end)
		w.needs = slices.Delete(w.needs, k, k+1)
		if cause != nil {
			w.mu.Unlock()
			return fmt.Errorf("nbd: waiting for bytes %d to %d (%d arrived): %w", off, end, avail, cause)
		}
	}
}

// readEvicted fills p from chunk i, which has left the window.
func (w *Window) readEvicted(ctx context.Context, p []byte, off, i int64, state byte) error {
	switch state {
	case chunkSpilled:
		n, err := w.spill.ReadAt(p, off)
		if n == len(p) {
			return nil
		}
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("nbd: reading %d bytes at %d from the spill file: %w", len(p), off, err)
	case chunkDropped:
		buf, err := w.fetchChunk(ctx, i)
		if err != nil {
			return err
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.tagLocked(i, buf) != w.tags[i] {
			err := fmt.Errorf("%w: bytes %d to %d, fetched again", ErrFetchMismatch, i*w.chunk, i*w.chunk+int64(len(buf)))
			if w.err == nil {
				w.failLocked(err)
			}
			return err
		}
		copy(p, buf[off-i*w.chunk:])
		return nil
	}
	return ErrDrained
}

// fetchAhead fills p from chunk i, far ahead of the download, by range, and notes its tag for
// when the download gets there, and bits as read. It reports false, and fills nothing, if
// chunk i arrived meanwhile.
func (w *Window) fetchAhead(ctx context.Context, p []byte, off, i int64, bits uint64) (bool, error) {
	buf, err := w.fetchChunk(ctx, i)
	if err != nil {
		return false, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.err != nil:
		return false, w.err
	case i < w.hi:
		return false, nil
	}
	tag := w.tagLocked(i, buf)
	if w.state[i] == chunkAhead && tag != w.tags[i] {
		err := fmt.Errorf("%w: bytes %d to %d, fetched ahead twice", ErrFetchMismatch, i*w.chunk, i*w.chunk+int64(len(buf)))
		w.failLocked(err)
		return false, err
	}
	w.state[i], w.tags[i] = chunkAhead, tag
	w.ahead[i] |= bits
	copy(p, buf[off-i*w.chunk:])
	return true, nil
}

// fetchChunk fetches chunk i by range.
func (w *Window) fetchChunk(ctx context.Context, i int64) ([]byte, error) {
	buf := make([]byte, w.chunkLen(i))
	if err := w.fetch(ctx, buf, i*w.chunk); err != nil {
		return nil, fmt.Errorf("nbd: fetching bytes %d to %d by range: %w", i*w.chunk, i*w.chunk+int64(len(buf)), err)
	}
	w.mu.Lock()
	w.stats.Fetched += int64(len(buf))
	w.stats.Fetches++
	w.mu.Unlock()
	return buf, nil
}

// WriteAt fails: the export is read-only.
func (w *Window) WriteAt(_ context.Context, p []byte, off int64) error {
	return fmt.Errorf("%w (write of %d bytes at %d)", ErrReadOnly, len(p), off)
}
