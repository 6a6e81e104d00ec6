// Package nbd is a small, strict NBD server that lets qemu-img read its source from, or write
// its target to, something that is not a regular file: a download still in progress, or an
// upload stream. It serves one export over a unix socket (never TCP) to one client at a time,
// speaking the fixed newstyle handshake and simple replies of the NBD protocol
// (NetworkBlockDevice/nbd, doc/proto.md).
//
// Start with [Serve] (or a [Server] for its options) and [Listen], which makes the socket in a
// private directory and gives the nbd+unix URI to hand to qemu-img. The two exports the sidecar
// needs are ready-made:
//
//   - [SequentialWriter] is a write-only export over an io.Writer: qemu-img convert -n -O raw
//     writes its target strictly in order, so the raw bytes can go straight into an upload.
//   - [Window] is a read-only export over a download in progress, of which it keeps the last
//     few MiB in memory: qemu-img reads its source a little behind the download, and the
//     download need not touch the disk.
//
// Anything else that implements [Export] can be served too.
//
// What qemu-img 7.2 sends, as this package's tests record it: in the handshake,
// NBD_OPT_STRUCTURED_REPLY (refused, so no metadata context is asked for and simple replies
// are used), then NBD_OPT_GO for the default export asking for NBD_INFO_BLOCK_SIZE. As the
// target of `convert -n -O raw` (any -m): WRITE for data, 2 MiB each (its buffer; shorter at
// the edges of zero runs), and WRITE_ZEROES with no flags for zero runs, at most the advertised
// 32 MiB each, every one starting where the previous ended, from 0 to the end; then one FLUSH
// and DISC. Never READ, TRIM, or a whole-disk zeroing first (that needs NBD_FLAG_SEND_FAST_ZERO,
// which is not advertised). With --target-is-zero it skips zero runs, which SequentialWriter
// fills; with -W it writes out of order (zero runs first), which fails cleanly. As a source
// (`convert -f qcow2 'nbd+unix:///?socket=PATH' OUT`): READ only, the 112-byte header and a few
// 8-byte table reads first, then 64 KiB L2 tables and 2 MiB of data at a time in nearly
// ascending order (an L2 table written late sits late in the file), then DISC. qemu-io -c
// 'write -z' sends WRITE_ZEROES with NBD_CMD_FLAG_NO_HOLE, which is accepted and ignored.
//
// The client is not trusted. Every length is checked before it is used: options are at most
// [MaxOptionLen] bytes, READ and WRITE at most [MaxRequest] (the maximum block size advertised),
// every request must lie within the export, and a WRITE's buffer grows only as its bytes
// arrive. Options other than NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_EXPORT_NAME, NBD_OPT_LIST and
// NBD_OPT_ABORT are refused with NBD_REP_ERR_UNSUP, structured replies and metadata contexts
// included; commands other than READ, WRITE, WRITE_ZEROES, FLUSH and DISC get EINVAL. A
// protocol violation (a bad magic number, an oversized option or request, unknown client
// flags) closes the connection and is returned as an error wrapping [ErrProtocol].
package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
)

// Errors ServeConn and Serve return, wrapped with what happened.
var (
	// ErrProtocol is a client that broke the NBD protocol; its connection was closed.
	ErrProtocol = errors.New("nbd: protocol violation")
	// ErrDisconnected is a client that hung up without ending its session (NBD_CMD_DISC, or
	// NBD_OPT_ABORT in the handshake): whatever it was doing is unfinished.
	ErrDisconnected = errors.New("nbd: client hung up without ending its session")
)

// Serve serves exp on ln with a Server's defaults; see [Server.Serve].
func Serve(ctx context.Context, ln net.Listener, exp Export) error {
	return (&Server{Export: exp}).Serve(ctx, ln)
}

// A Server serves one Export to one client at a time.
type Server struct {
	// Export is what is served. Required.
	Export Export
	// Name is the export's name, which clients must ask for. Optional: the default export
	// (""), which is what qemu asks for with nbd+unix:///?socket=PATH.
	Name string
	// Logger gets a debug line for every option and request, and one for every session.
	// Optional: slog.Default().
	Logger *slog.Logger
}

func (s *Server) validate() error {
	if s.Export == nil {
		return errors.New("nbd: Server.Export is required")
	}
	if size := s.Export.Size(); size < 0 {
		return fmt.Errorf("nbd: export size %d is negative", size)
	}
	if len(s.Name) > MaxOptionLen {
		return fmt.Errorf("nbd: export name is %d bytes, more than %d", len(s.Name), MaxOptionLen)
	}
	return nil
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

// Serve accepts connections on ln one at a time and serves each until it ends. It returns
// when a client that reached the transmission phase has disconnected (nil after a clean
// NBD_CMD_DISC, see ServeConn), when any connection fails, or when ctx is done. A client that
// only lists exports or aborts the handshake does not end it. ln must be a unix socket (see
// Listen); Serve closes it when it returns.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	defer ln.Close()
	if err := s.validate(); err != nil {
		return err
	}
	if network := ln.Addr().Network(); network != "unix" {
		return fmt.Errorf("nbd: serving on %s %s: only unix sockets are served", network, ln.Addr())
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("nbd: serving %s: %w", ln.Addr(), context.Cause(ctx))
			}
			return fmt.Errorf("nbd: accepting on %s: %w", ln.Addr(), err)
		}
		transmitted, err := s.serveConn(ctx, conn)
		if err != nil || transmitted {
			return err
		}
	}
}

// ServeConn serves one client on conn and closes it. It returns nil when the client ended
// cleanly: NBD_OPT_ABORT during the handshake, or NBD_CMD_DISC after which the export's
// Finish (if it is a Finisher) succeeded. Otherwise it returns why the session failed: a
// protocol violation (ErrProtocol), a hang-up without NBD_CMD_DISC (ErrDisconnected), ctx's
// cause, Finish's error, or else the first error the export returned to a request (the client
// was told EIO and may have carried on). When ctx is done, conn is closed.
func (s *Server) ServeConn(ctx context.Context, conn net.Conn) error {
	if err := s.validate(); err != nil {
		conn.Close()
		return err
	}
	_, err := s.serveConn(ctx, conn)
	return err
}

// serveConn is ServeConn, also telling whether the transmission phase was reached.
func (s *Server) serveConn(ctx context.Context, conn net.Conn) (transmitted bool, err error) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	c := &session{
		srv:  s,
		exp:  s.Export,
		conn: conn,
		r:    bufio.NewReaderSize(conn, 64<<10),
		log:  s.logger(),
		size: uint64(s.Export.Size()),
	}
	transmitted, err = c.handshake(ctx)
	if err == nil && transmitted {
		err = c.transmit(ctx)
	}
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("nbd: session ended: %w", context.Cause(ctx))
	}
	c.log.LogAttrs(ctx, slog.LevelDebug, "nbd session ended", slog.Bool("transmitted", transmitted),
		slog.Int64("reads", c.stats.reads), slog.Int64("read_bytes", c.stats.readBytes),
		slog.Int64("writes", c.stats.writes), slog.Int64("write_bytes", c.stats.writeBytes),
		slog.Int64("zero_requests", c.stats.zeroes), slog.Int64("zero_bytes", c.stats.zeroBytes),
		slog.Int64("flushes", c.stats.flushes), slog.Any("error", err))
	return transmitted, err
}

// session is one client connection.
type session struct {
	srv      *Server
	exp      Export
	conn     net.Conn
	r        *bufio.Reader
	log      *slog.Logger
	size     uint64
	noZeroes bool
	ioErr    error // the first error the export returned to a request
	hdr      [requestHeaderLen]byte
	opt      [MaxOptionLen]byte
	out      []byte      // option replies and reply headers are built here
	buf      []byte      // WRITE payloads and READ data, at most MaxRequest
	bufs     net.Buffers // reply header and READ data, written with one writev
	stats    struct {
		reads, readBytes, writes, writeBytes, zeroes, zeroBytes, flushes int64
	}
}

func violation(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}

// readFull reads exactly len(p) bytes; a hang-up is ErrDisconnected.
func (c *session) readFull(p []byte, what string) error {
	if _, err := io.ReadFull(c.r, p); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w (while reading %s)", ErrDisconnected, what)
		}
		return fmt.Errorf("nbd: reading %s: %w", what, err)
	}
	return nil
}

func (c *session) write(p []byte, what string) error {
	if _, err := c.conn.Write(p); err != nil {
		return fmt.Errorf("nbd: writing %s: %w", what, err)
	}
	return nil
}

// handshake runs the fixed newstyle handshake and reports whether the client entered the
// transmission phase (false with a nil error: it aborted).
func (c *session) handshake(ctx context.Context) (bool, error) {
	g := c.out[:0]
	g = binary.BigEndian.AppendUint64(g, magicInit)
	g = binary.BigEndian.AppendUint64(g, magicOpt)
	g = binary.BigEndian.AppendUint16(g, flagFixedNewstyle|flagNoZeroes)
	c.out = g
	if err := c.write(g, "greeting"); err != nil {
		return false, err
	}
	var cf [4]byte
	if err := c.readFull(cf[:], "client flags"); err != nil {
		return false, err
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^(flagCFixedNewstyle|flagCNoZeroes) != 0 {
		return false, violation("unknown client flags %#x", flags)
	}
	if flags&flagCFixedNewstyle == 0 {
		return false, violation("client does not speak fixed newstyle (flags %#x)", flags)
	}
	c.noZeroes = flags&flagCNoZeroes != 0

	for i := 0; ; i++ {
		if i == maxOptions {
			return false, violation("more than %d options", maxOptions)
		}
		h := c.hdr[:optHeaderLen]
		if err := c.readFull(h, "option header"); err != nil {
			return false, err
		}
		if m := binary.BigEndian.Uint64(h); m != magicOpt {
			return false, violation("option magic %#x", m)
		}
		opt := binary.BigEndian.Uint32(h[8:])
		n := binary.BigEndian.Uint32(h[12:])
		if n > MaxOptionLen {
			return false, violation("option %s (%d) has %d bytes of data, more than %d", optName(opt), opt, n, MaxOptionLen)
		}
		data := c.opt[:n]
		if err := c.readFull(data, "option data"); err != nil {
			return false, err
		}
		c.log.LogAttrs(ctx, slog.LevelDebug, "nbd option", slog.String("option", optName(opt)),
			slog.Uint64("code", uint64(opt)), slog.Int("length", int(n)))
		switch opt {
		case optExportName:
			if string(data) != c.srv.Name {
				// The protocol leaves no way to refuse but hanging up.
				return false, fmt.Errorf("nbd: client asked for export %q, which does not exist", data)
			}
			r := binary.BigEndian.AppendUint64(c.out[:0], c.size)
			r = binary.BigEndian.AppendUint16(r, c.transmissionFlags())
			if !c.noZeroes {
				r = append(r, zeroes[:exportNameReplyZeroes]...)
			}
			c.out = r
			return true, c.write(r, "export information")
		case optAbort:
			// The client may already have gone: a failed ACK changes nothing.
			_ = c.optReply(opt, optReplyAck, nil)
			return false, nil
		case optList:
			if n != 0 {
				if err := c.optError(ctx, opt, optReplyErrInvalid, "NBD_OPT_LIST takes no data"); err != nil {
					return false, err
				}
				continue
			}
			var p []byte
			p = binary.BigEndian.AppendUint32(p, uint32(len(c.srv.Name)))
			p = append(p, c.srv.Name...)
			if err := c.optReply(opt, optReplyServer, p); err != nil {
				return false, err
			}
			if err := c.optReply(opt, optReplyAck, nil); err != nil {
				return false, err
			}
		case optInfo, optGo:
			name, ok := parseInfoRequest(data)
			var err error
			switch {
			case !ok:
				err = c.optError(ctx, opt, optReplyErrInvalid, "malformed export name or information requests")
			case name != c.srv.Name:
				err = c.optError(ctx, opt, optReplyErrUnknown, "no such export")
			default:
				if err = c.sendInfo(opt); err == nil && opt == optGo {
					return true, nil
				}
			}
			if err != nil {
				return false, err
			}
		default:
			// STARTTLS, STRUCTURED_REPLY, the metadata contexts, EXTENDED_HEADERS and anything
			// unknown: simple replies and nothing else.
			if err := c.optError(ctx, opt, optReplyErrUnsup, "not supported by this server"); err != nil {
				return false, err
			}
		}
	}
}

// parseInfoRequest checks the data of NBD_OPT_INFO or NBD_OPT_GO (name length, name, number of
// information requests, requests) and returns the export name. The requests themselves are
// not needed: the server always sends NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE.
func parseInfoRequest(data []byte) (string, bool) {
	if len(data) < 6 {
		return "", false
	}
	n := binary.BigEndian.Uint32(data)
	if uint64(n) > uint64(len(data)-6) {
		return "", false
	}
	rest := data[4+n:]
	k := binary.BigEndian.Uint16(rest)
	if len(rest) != 2+2*int(k) {
		return "", false
	}
	return string(data[4 : 4+n]), true
}

// sendInfo answers NBD_OPT_INFO or NBD_OPT_GO for the export: its size and flags, its block
// sizes, and ACK.
func (c *session) sendInfo(opt uint32) error {
	var p [14]byte
	binary.BigEndian.PutUint16(p[0:], infoExport)
	binary.BigEndian.PutUint64(p[2:], c.size)
	binary.BigEndian.PutUint16(p[10:], c.transmissionFlags())
	if err := c.optReply(opt, optReplyInfo, p[:12]); err != nil {
		return err
	}
	binary.BigEndian.PutUint16(p[0:], infoBlockSize)
	binary.BigEndian.PutUint32(p[2:], minBlock)
	binary.BigEndian.PutUint32(p[6:], preferredBlock)
	binary.BigEndian.PutUint32(p[10:], MaxRequest)
	if err := c.optReply(opt, optReplyInfo, p[:14]); err != nil {
		return err
	}
	return c.optReply(opt, optReplyAck, nil)
}

func (c *session) optReply(opt, typ uint32, data []byte) error {
	r := binary.BigEndian.AppendUint64(c.out[:0], magicOptReply)
	r = binary.BigEndian.AppendUint32(r, opt)
	r = binary.BigEndian.AppendUint32(r, typ)
	r = binary.BigEndian.AppendUint32(r, uint32(len(data)))
	r = append(r, data...)
	c.out = r
	return c.write(r, "option reply")
}

func (c *session) optError(ctx context.Context, opt, typ uint32, msg string) error {
	c.log.LogAttrs(ctx, slog.LevelDebug, "nbd option refused", slog.String("option", optName(opt)),
		slog.Uint64("code", uint64(opt)), slog.String("reason", msg))
	return c.optReply(opt, typ, []byte(msg))
}

func (c *session) transmissionFlags() uint16 {
	if c.exp.ReadOnly() {
		return flagHasFlags | flagReadOnly | flagSendFlush
	}
	return flagHasFlags | flagSendFlush | flagSendWriteZeroes
}

// transmit answers requests, one at a time in the order they come, until NBD_CMD_DISC.
func (c *session) transmit(ctx context.Context) error {
	debug := c.log.Enabled(ctx, slog.LevelDebug)
	for {
		h := c.hdr[:requestHeaderLen]
		if err := c.readFull(h, "request header"); err != nil {
			return err
		}
		if m := binary.BigEndian.Uint32(h); m != magicRequest {
			return violation("request magic %#x", m)
		}
		flags := binary.BigEndian.Uint16(h[4:])
		typ := binary.BigEndian.Uint16(h[6:])
		cookie := binary.BigEndian.Uint64(h[8:])
		off := binary.BigEndian.Uint64(h[16:])
		length := binary.BigEndian.Uint32(h[24:])
		if debug {
			c.log.LogAttrs(ctx, slog.LevelDebug, "nbd request", slog.String("command", cmdName(typ)),
				slog.Int("type", int(typ)), slog.Int("flags", int(flags)),
				slog.Uint64("offset", off), slog.Uint64("length", uint64(length)))
		}
		switch typ {
		case cmdDisc:
			if flags != 0 || off != 0 || length != 0 {
				return violation("NBD_CMD_DISC with flags %#x, offset %d, length %d", flags, off, length)
			}
			return c.finish(ctx)
		case cmdRead, cmdWrite:
			if length > MaxRequest {
				return violation("%s of %d bytes, more than the maximum block size %d", cmdName(typ), length, MaxRequest)
			}
		}
		var payload []byte
		if typ == cmdWrite {
			var err error
			if payload, err = c.readPayload(int(length)); err != nil {
				return err
			}
		}
		errno, data := c.handle(ctx, flags, typ, off, length, payload)
		if err := c.reply(cookie, errno, data); err != nil {
			return err
		}
	}
}

// finish ends a session the client ended with NBD_CMD_DISC.
func (c *session) finish(ctx context.Context) error {
	if f, ok := c.exp.(Finisher); ok {
		if err := f.Finish(ctx); err != nil {
			return fmt.Errorf("nbd: finishing the export after NBD_CMD_DISC: %w", err)
		}
	}
	return c.ioErr
}

// readPayload reads a WRITE's n bytes (n <= MaxRequest). The buffer grows only as the bytes
// arrive, so a length the client does not back with data costs no memory.
func (c *session) readPayload(n int) ([]byte, error) {
	buf := c.buf[:0]
	for len(buf) < n {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), min(n, max(2*cap(buf), 64<<10)))
			copy(grown, buf)
			buf = grown
		}
		end := min(n, cap(buf))
		if err := c.readFull(buf[len(buf):end], "WRITE payload"); err != nil {
			return nil, err
		}
		buf = buf[:end]
	}
	c.buf = buf
	return buf, nil
}

// handle does one request (other than DISC) and returns the error to send, and READ's data.
func (c *session) handle(ctx context.Context, flags, typ uint16, off uint64, length uint32, payload []byte) (uint32, []byte) {
	inRange := off <= c.size && uint64(length) <= c.size-off
	ro := c.exp.ReadOnly()
	switch typ {
	case cmdRead:
		if flags != 0 || !inRange {
			return errInval, nil
		}
		if length == 0 {
			return 0, nil
		}
		if cap(c.buf) < int(length) {
			c.buf = make([]byte, length)
		}
		p := c.buf[:length]
		if err := c.exp.ReadAt(ctx, p, int64(off)); err != nil {
			return c.exportError(ctx, fmt.Errorf("nbd: reading %d bytes at %d: %w", length, off, err)), nil
		}
		c.stats.reads++
		c.stats.readBytes += int64(length)
		return 0, p
	case cmdWrite:
		switch {
		case flags != 0:
			return errInval, nil
		case ro:
			return errPerm, nil
		case !inRange:
			return errNoSpc, nil
		case length == 0:
			return 0, nil
		}
		if err := c.exp.WriteAt(ctx, payload, int64(off)); err != nil {
			return c.exportError(ctx, fmt.Errorf("nbd: writing %d bytes at %d: %w", length, off, err)), nil
		}
		c.stats.writes++
		c.stats.writeBytes += int64(length)
		return 0, nil
	case cmdWriteZeroes:
		switch {
		case flags&^cmdFlagNoHole != 0 || length > MaxRequest:
			return errInval, nil
		case ro:
			return errPerm, nil
		case !inRange:
			return errNoSpc, nil
		case length == 0:
			return 0, nil
		}
		if err := c.writeZeroes(ctx, int64(off), int64(length)); err != nil {
			return c.exportError(ctx, fmt.Errorf("nbd: writing %d zero bytes at %d: %w", length, off, err)), nil
		}
		c.stats.zeroes++
		c.stats.zeroBytes += int64(length)
		return 0, nil
	case cmdFlush:
		if flags != 0 || off != 0 || length != 0 {
			return errInval, nil
		}
		if f, ok := c.exp.(Flusher); ok {
			if err := f.Flush(ctx); err != nil {
				return c.exportError(ctx, fmt.Errorf("nbd: flushing: %w", err)), nil
			}
		}
		c.stats.flushes++
		return 0, nil
	}
	// TRIM, CACHE, BLOCK_STATUS and anything unknown: none is advertised.
	return errInval, nil
}

func (c *session) writeZeroes(ctx context.Context, off, n int64) error {
	if z, ok := c.exp.(Zeroer); ok {
		return z.WriteZeroes(ctx, off, n)
	}
	for n > 0 {
		k := min(n, int64(len(zeroes)))
		if err := c.exp.WriteAt(ctx, zeroes[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// exportError records the first error the export returned and gives the errno for it.
func (c *session) exportError(ctx context.Context, err error) uint32 {
	c.log.LogAttrs(ctx, slog.LevelDebug, "nbd request failed", slog.Any("error", err))
	if c.ioErr == nil {
		c.ioErr = err
	}
	if errors.Is(err, ErrReadOnly) {
		return errPerm
	}
	if errors.Is(err, ErrPastSize) {
		return errNoSpc
	}
	return errIO
}

func (c *session) reply(cookie uint64, errno uint32, data []byte) error {
	r := binary.BigEndian.AppendUint32(c.out[:0], magicSimpleReply)
	r = binary.BigEndian.AppendUint32(r, errno)
	r = binary.BigEndian.AppendUint64(r, cookie)
	c.out = r
	if len(data) == 0 {
		return c.write(r, "reply")
	}
	c.bufs = append(c.bufs[:0], r, data)
	v := c.bufs
	if _, err := v.WriteTo(c.conn); err != nil {
		return fmt.Errorf("nbd: writing reply: %w", err)
	}
	return nil
}
