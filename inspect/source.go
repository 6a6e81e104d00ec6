package inspect

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// How parsers read, and why both ways in agree.
//
// Every format parser ("probe") is plain straight-line code over a *src: it asks for byte
// ranges with at(off, n), for the image size with size(), or for the last bytes with tail(n).
// A random-access backend answers from an io.ReaderAt. A streaming backend answers from what it
// kept of the stream: the head (the first headSize bytes), the tail (the last tailSize bytes,
// known at EOF) and the regions probes asked for, captured as the stream went past. When a
// region is not there yet the streaming backend answers errPending, the probe gives up, and it
// is run again from the start once the stream reaches the end of that region. Probes are cheap
// (headers only), so replaying them costs nothing measurable.
//
// For that to give identical answers, what a probe may read is decided by src, the same way in
// both modes, from the sequence of reads alone:
//   - The head is always readable.
//   - Before the probe has asked for the size, a region past the head must start (ignoring any
//     part inside the head) at or after the end of the furthest region read so far: the stream
//     only moves forward. A structure that points backwards is reported, not followed.
//   - After the probe has asked for the size (which in a stream means EOF), only the head and
//     the tail are readable.
//   - Each probe run may read at most maxFarReads regions past the head and maxFarBytes bytes.
//
// A read the rules refuse returns errBehind; a region that runs past the end of the data returns
// what exists with a *truncatedError.

const (
	headSize    = 64 << 10 // always kept; covers every header and the ISO volume descriptors
	tailSize    = 4 << 10  // kept at EOF; covers the VHD footer, the VMDK footer, the backup GPT
	maxRead     = 1 << 20  // the largest single region a probe may ask for
	maxFarReads = 64
	maxFarBytes = 3 << 20
)

var (
	// errPending: a streaming probe needs data the stream has not reached yet.
	errPending = errors.New("inspect: data not yet streamed")
	// errBehind: the read breaks the forward-only rule, or the read budget.
	errBehind = errors.New("region lies before data already passed, or beyond the read budget")
)

// truncatedError says a region runs past the end of the data.
type truncatedError struct {
	off  int64
	n    int
	size int64
}

func (e *truncatedError) Error() string {
	return fmt.Sprintf("needs bytes %d to %d, data ends at %d", e.off, e.off+int64(e.n), e.size)
}

func isTruncated(err error) bool {
	var t *truncatedError
	return errors.As(err, &t)
}

// backend is where a src gets its bytes.
type backend interface {
	// fetch returns the n bytes at off, or fewer with a *truncatedError when the data ends
	// first, or errPending.
	fetch(off int64, n int) ([]byte, error)
	// length returns the data size; ok is false while a stream has not reached EOF.
	length() (size int64, ok bool)
}

// src is what a probe reads through; one per probe run. It enforces the rules above.
type src struct {
	b        backend
	pos      int64 // end of the furthest region past the head read so far
	ended    bool  // the probe has seen the size: only head and tail are readable now
	farReads int
	farBytes int
}

func newSrc(b backend) *src { return &src{b: b, pos: headSize} }

// at returns the n bytes at off. On a *truncatedError it also returns the bytes that exist.
func (s *src) at(off int64, n int) ([]byte, error) {
	if off < 0 || n < 0 || n > maxRead || off > 1<<62 {
		return nil, errBehind
	}
	end := off + int64(n)
	if end > headSize {
		start := max(off, headSize)
		if s.ended {
			size, _ := s.b.length()
			if start < size && start < size-tailSize {
				return nil, errBehind
			}
		} else {
			if start < s.pos {
				return nil, errBehind
			}
			s.farReads++
			s.farBytes += n
			if s.farReads > maxFarReads || s.farBytes > maxFarBytes {
				return nil, errBehind
			}
			s.pos = end
		}
	}
	return s.b.fetch(off, n)
}

// size returns the size of the data. In a stream it is known only at EOF; from then on only the
// head and the tail can be read.
func (s *src) size() (int64, error) {
	size, ok := s.b.length()
	if !ok {
		return 0, errPending
	}
	s.ended = true
	return size, nil
}

// tail returns the last n bytes (fewer when the data is shorter) and the offset they start at.
func (s *src) tail(n int) ([]byte, int64, error) {
	if n > tailSize {
		n = tailSize
	}
	size, err := s.size()
	if err != nil {
		return nil, 0, err
	}
	off := max(size-int64(n), 0)
	b, err := s.at(off, int(size-off))
	return b, off, err
}

// randomBackend reads from an io.ReaderAt through a small cache of aligned blocks, so that the
// dozen probes asking for the first sector cost one read.
type randomBackend struct {
	ctx    context.Context
	r      io.ReaderAt
	sz     int64
	blocks map[int64][]byte
	err    error // first I/O error: the inspection fails
}

const (
	blockSize    = 4 << 10
	cachedBlocks = 64 // 256 KiB: head reads and small far reads
)

func newRandomBackend(ctx context.Context, r io.ReaderAt, size int64) *randomBackend {
	return &randomBackend{ctx: ctx, r: r, sz: size, blocks: map[int64][]byte{}}
}

func (b *randomBackend) length() (int64, bool) { return b.sz, true }

func (b *randomBackend) fetch(off int64, n int) ([]byte, error) {
	if b.err != nil {
		return nil, b.err
	}
	if err := b.ctx.Err(); err != nil {
		b.err = fmt.Errorf("inspecting image: %w", err)
		return nil, b.err
	}
	end := min(off+int64(n), b.sz)
	var out []byte
	if end > off {
		out = make([]byte, end-off)
		if n > 16*blockSize {
			if err := b.readFull(out, off); err != nil {
				return nil, err
			}
		} else if err := b.cached(out, off); err != nil {
			return nil, err
		}
	}
	if len(out) < n {
		return out, &truncatedError{off: off, n: n, size: b.sz}
	}
	return out, nil
}

// cached fills p from the block cache, reading each run of missing blocks with one ReadAt.
func (b *randomBackend) cached(p []byte, off int64) error {
	first := off / blockSize
	last := (off + int64(len(p)) - 1) / blockSize
	if len(b.blocks)+int(last-first+1) > cachedBlocks {
		clear(b.blocks)
	}
	for i := first; i <= last; {
		if _, ok := b.blocks[i]; ok {
			i++
			continue
		}
		j := i
		for j+1 <= last {
			if _, ok := b.blocks[j+1]; ok {
				break
			}
			j++
		}
		start := i * blockSize
		end := min((j+1)*blockSize, b.sz)
		buf := make([]byte, end-start)
		if err := b.readFull(buf, start); err != nil {
			return err
		}
		for k := i; k <= j; k++ {
			lo := (k - i) * blockSize
			b.blocks[k] = buf[lo:min(lo+blockSize, int64(len(buf)))]
		}
		i = j + 1
	}
	for i := first; i <= last; i++ {
		blk := b.blocks[i]
		bs := i * blockSize
		lo := max(off, bs)
		hi := min(off+int64(len(p)), bs+int64(len(blk)))
		if hi > lo {
			copy(p[lo-off:hi-off], blk[lo-bs:hi-bs])
		}
	}
	return nil
}

func (b *randomBackend) readFull(p []byte, off int64) error {
	n, err := b.r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	b.err = fmt.Errorf("reading image bytes %d to %d: %w", off, off+int64(len(p)), err)
	return b.err
}

// streamBackend keeps what probes need of a stream: the head, the tail, and captured regions.
type streamBackend struct {
	pos   int64 // bytes seen so far
	eof   bool
	head  []byte
	tail  ring // the last tailSize bytes seen
	wants map[region]*capture
	open  []*capture // captures still filling
	// pendingOn is the capture the last errPending waits for (nil: it waits for EOF).
	pendingOn *capture
}

type region struct {
	off int64
	n   int
}

type capture struct {
	region
	buf []byte
}

func (c *capture) end() int64 { return c.off + int64(c.n) }

func newStreamBackend() *streamBackend {
	return &streamBackend{
		head:  make([]byte, 0, headSize),
		wants: map[region]*capture{},
	}
}

func (b *streamBackend) length() (int64, bool) { return b.pos, b.eof }

func (b *streamBackend) fetch(off int64, n int) ([]byte, error) {
	end := off + int64(n)
	if end <= headSize && (end <= int64(len(b.head)) || b.eof || len(b.head) == headSize) {
		return b.served(b.head[min(off, int64(len(b.head))):min(end, int64(len(b.head)))], off, n)
	}
	if c, ok := b.wants[region{off, n}]; ok {
		if len(c.buf) == n || b.eof {
			return b.served(c.buf, off, n)
		}
		b.pendingOn = c
		return nil, errPending
	}
	if b.eof {
		// Only head and tail remain: src lets nothing else through after EOF except regions
		// that start at or past the end of the data.
		tail := b.tail.bytes()
		tailOff := b.pos - int64(len(tail))
		start := max(off, headSize)
		if start < tailOff && start < b.pos {
			return nil, errBehind
		}
		out := make([]byte, 0, n)
		if hl := int64(len(b.head)); off < hl {
			out = append(out, b.head[off:min(hl, end)]...)
		}
		if start < b.pos {
			out = append(out, tail[start-tailOff:min(end, b.pos)-tailOff]...)
		}
		return b.served(out, off, n)
	}
	start := max(off, headSize)
	if start < b.pos {
		return nil, errBehind // src's rules make this unreachable; stay safe regardless
	}
	c := &capture{region: region{off, n}, buf: make([]byte, 0, n)}
	if off < headSize {
		c.buf = append(c.buf, b.head[off:]...)
	}
	b.wants[c.region] = c
	b.open = append(b.open, c)
	b.pendingOn = c
	return nil, errPending
}

func (b *streamBackend) served(p []byte, off int64, n int) ([]byte, error) {
	if len(p) < n {
		return p, &truncatedError{off: off, n: n, size: b.pos}
	}
	return p, nil
}

// nextBoundary is the stream position at which something must happen: the head is complete,
// or a capture is.
func (b *streamBackend) nextBoundary() int64 {
	next := int64(-1)
	if b.pos < headSize {
		next = headSize
	}
	for _, c := range b.open {
		if e := c.end(); e > b.pos && (next < 0 || e < next) {
			next = e
		}
	}
	return next
}

// take appends p, which starts at b.pos, to everything that wants it.
func (b *streamBackend) take(p []byte) {
	if b.pos < headSize {
		b.head = append(b.head, p[:min(int64(len(p)), headSize-b.pos)]...)
	}
	end := b.pos + int64(len(p))
	if len(b.open) > 0 {
		kept := b.open[:0]
		for _, c := range b.open {
			lo := max(b.pos, c.off)
			hi := min(end, c.end())
			if hi > lo && int64(len(c.buf)) == lo-c.off {
				c.buf = append(c.buf, p[lo-b.pos:hi-b.pos]...)
			}
			if len(c.buf) < c.n && c.end() > end {
				kept = append(kept, c)
			}
		}
		clear(b.open[len(kept):])
		b.open = kept
	}
	b.tail.write(p)
	b.pos = end
}

// Stream inspects an image written to it, for callers that already copy the image somewhere
// (to disk, through a hash): io.Copy(io.MultiWriter(file, hash, stream), body). Close it at the
// end of the data to get the Report. A Stream is not safe for concurrent use.
type Stream struct {
	probes  []probe
	decl    Format
	sb      *streamBackend
	states  []probeState
	started bool
	closed  bool
}

type probeState struct {
	done bool
	res  result
	wait int64 // stream position to run again at; -1 waits for EOF
}

// NewStream returns a Stream ready for Write.
func NewStream(opts Options) (*Stream, error) {
	decl, err := opts.declared()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	return newStream(probes, decl), nil
}

func newStream(ps []probe, decl Format) *Stream {
	return &Stream{probes: ps, decl: decl, sb: newStreamBackend(), states: make([]probeState, len(ps))}
}

// Write feeds the next bytes of the image. It never fails before Close.
func (s *Stream) Write(p []byte) (int, error) {
	if s.closed {
		return 0, errors.New("inspect: write after close")
	}
	s.feed(p)
	return len(p), nil
}

func (s *Stream) feed(p []byte) {
	for len(p) > 0 {
		n := len(p)
		if next := s.sb.nextBoundary(); next > s.sb.pos && next-s.sb.pos < int64(n) {
			n = int(next - s.sb.pos)
		}
		s.sb.take(p[:n])
		p = p[n:]
		switch {
		case !s.started && s.sb.pos == headSize:
			s.start()
		case s.started:
			s.rerun(s.sb.pos)
		}
	}
}

func (s *Stream) start() {
	s.started = true
	for i := range s.states {
		s.step(i)
	}
}

// rerun runs again the probes waiting for position pos.
func (s *Stream) rerun(pos int64) {
	for i := range s.states {
		if st := &s.states[i]; !st.done && st.wait == pos {
			s.step(i)
		}
	}
}

func (s *Stream) step(i int) {
	st := &s.states[i]
	s.sb.pendingOn = nil
	f, err := run(s.probes[i], s.sb)
	if errors.Is(err, errPending) && !s.sb.eof {
		st.wait = -1
		if c := s.sb.pendingOn; c != nil {
			st.wait = c.end()
		}
		return
	}
	st.done = true
	st.res = result{f, err}
}

// Close ends the stream and returns the Report.
func (s *Stream) Close() (*Report, error) {
	if s.closed {
		return nil, errors.New("inspect: stream closed twice")
	}
	s.closed = true
	s.sb.eof = true
	if !s.started {
		s.start()
	}
	results := make([]result, len(s.probes))
	for i := range s.states {
		for !s.states[i].done {
			s.step(i) // after EOF nothing pends, so this ends after one call
		}
		results[i] = s.states[i].res
	}
	return decide(s.probes, results, s.sb.pos, s.decl), nil
}

// ring keeps the last tailSize bytes written to it.
type ring struct {
	buf  [tailSize]byte
	w    int  // next write position
	full bool // buf has wrapped at least once
}

func (r *ring) write(p []byte) {
	if len(p) >= tailSize {
		copy(r.buf[:], p[len(p)-tailSize:])
		r.w, r.full = 0, true
		return
	}
	n := copy(r.buf[r.w:], p)
	if n < len(p) {
		r.w = copy(r.buf[:], p[n:])
		r.full = true
		return
	}
	r.w += n
	if r.w == tailSize {
		r.w, r.full = 0, true
	}
}

// bytes returns the kept bytes, oldest first.
func (r *ring) bytes() []byte {
	if !r.full {
		return append([]byte(nil), r.buf[:r.w]...)
	}
	return append(append(make([]byte, 0, tailSize), r.buf[r.w:]...), r.buf[:r.w]...)
}
