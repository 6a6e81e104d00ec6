package nbd_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/glance-sidecar/glance-sidecar/internal/nbd"
)

// A hand-written NBD client for the protocol tests, and the byte builders it shares with the
// fuzz target's seeds. The numbers are written out here again, from the protocol document,
// rather than taken from the package: the tests check the server against the document.

const (
	magicInit        = 0x4e42444d41474943
	magicOpt         = 0x49484156454f5054
	magicOptReply    = 0x0003e889045565a9
	magicRequest     = 0x25609513
	magicSimpleReply = 0x67446698

	cFixedNewstyle = 1
	cNoZeroes      = 2

	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10

	repAck        = 1
	repServer     = 2
	repInfo       = 3
	repErrUnsup   = 1<<31 + 1
	repErrInvalid = 1<<31 + 3
	repErrUnknown = 1<<31 + 6

	infoExport    = 0
	infoName      = 1
	infoBlockSize = 3

	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7

	flagFUA      = 1 << 0
	flagNoHole   = 1 << 1
	flagFastZero = 1 << 4

	tflagHasFlags    = 1 << 0
	tflagReadOnly    = 1 << 1
	tflagFlush       = 1 << 2
	tflagWriteZeroes = 1 << 6

	ePerm  = 1
	eInval = 22
	eNoSpc = 28
	eIO    = 5
)

// clientFlags is what the client sends after the greeting.
func clientFlags(f uint32) []byte { return binary.BigEndian.AppendUint32(nil, f) }

// option is one option request.
func option(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// infoData is the data of NBD_OPT_INFO and NBD_OPT_GO.
func infoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// request is one transmission request, with its payload.
func request(flags, typ uint16, cookie, off uint64, length uint32, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	return append(b, payload...)
}

// goSession is what qemu sends to enter transmission: fixed newstyle without zeroes, and
// NBD_OPT_GO for the default export asking for block sizes.
func goSession() []byte {
	b := clientFlags(cFixedNewstyle | cNoZeroes)
	return append(b, option(optGo, infoData("", infoBlockSize))...)
}

// client is a test's end of a connection to a Server running ServeConn on the other end.
type client struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
	done chan error
}

// dial starts srv.ServeConn on one end of a pipe and returns the client's end, having read the
// greeting.
func dial(t *testing.T, srv *nbd.Server) *client {
	t.Helper()
	a, b := net.Pipe()
	c := &client{t: t, conn: a, r: bufio.NewReader(a), done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { c.done <- srv.ServeConn(ctx, b) }()
	t.Cleanup(func() {
		cancel()
		a.Close()
		<-c.done
	})
	if m := c.u64(); m != magicInit {
		t.Fatalf("greeting magic %#x", m)
	}
	if m := c.u64(); m != magicOpt {
		t.Fatalf("greeting second magic %#x", m)
	}
	if f := c.u16(); f != 3 {
		t.Fatalf("handshake flags %#x, want FIXED_NEWSTYLE|NO_ZEROES", f)
	}
	return c
}

// send writes b to the server, failing the test unless all of it was read.
func (c *client) send(b []byte) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatalf("sending %d bytes: %v", len(b), err)
	}
}

// trySend writes b and returns the error: the server may hang up part way.
func (c *client) trySend(b []byte) error {
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := c.conn.Write(b)
	return err
}

func (c *client) read(n int) []byte {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, n)
	if _, err := io.ReadFull(c.r, b); err != nil {
		c.t.Fatalf("reading %d bytes from the server: %v", n, err)
	}
	return b
}

func (c *client) u16() uint16 { return binary.BigEndian.Uint16(c.read(2)) }
func (c *client) u32() uint32 { return binary.BigEndian.Uint32(c.read(4)) }
func (c *client) u64() uint64 { return binary.BigEndian.Uint64(c.read(8)) }

// optReply reads one option reply and checks it answers opt.
func (c *client) optReply(opt uint32) (typ uint32, data []byte) {
	c.t.Helper()
	if m := c.u64(); m != magicOptReply {
		c.t.Fatalf("option reply magic %#x", m)
	}
	if o := c.u32(); o != opt {
		c.t.Fatalf("reply to option %d, want %d", o, opt)
	}
	typ = c.u32()
	n := c.u32()
	if n > 1<<16 {
		c.t.Fatalf("option reply of %d bytes", n)
	}
	return typ, c.read(int(n))
}

// info reads the replies to NBD_OPT_INFO or NBD_OPT_GO up to ACK and returns the export size,
// transmission flags and block sizes.
func (c *client) info(opt uint32) (size uint64, flags uint16, blocks [3]uint32) {
	c.t.Helper()
	var sawExport bool
	for {
		typ, data := c.optReply(opt)
		switch typ {
		case repAck:
			if !sawExport {
				c.t.Fatal("ACK without NBD_INFO_EXPORT")
			}
			return size, flags, blocks
		case repInfo:
			switch binary.BigEndian.Uint16(data) {
			case infoExport:
				if len(data) != 12 {
					c.t.Fatalf("NBD_INFO_EXPORT of %d bytes", len(data))
				}
				size, flags, sawExport = binary.BigEndian.Uint64(data[2:]), binary.BigEndian.Uint16(data[10:]), true
			case infoBlockSize:
				if len(data) != 14 {
					c.t.Fatalf("NBD_INFO_BLOCK_SIZE of %d bytes", len(data))
				}
				for i := range blocks {
					blocks[i] = binary.BigEndian.Uint32(data[2+4*i:])
				}
			}
		default:
			c.t.Fatalf("reply type %#x to option %d", typ, opt)
		}
	}
}

// replyTo reads a simple reply, checks its cookie, and reads n bytes of data when it is a
// success and n > 0. It returns the error field and the data.
func (c *client) replyTo(cookie uint64, n int) (uint32, []byte) {
	c.t.Helper()
	if m := c.u32(); m != magicSimpleReply {
		c.t.Fatalf("reply magic %#x", m)
	}
	errno := c.u32()
	if got := c.u64(); got != cookie {
		c.t.Fatalf("reply cookie %d, want %d", got, cookie)
	}
	if errno != 0 || n == 0 {
		return errno, nil
	}
	return errno, c.read(n)
}

// closed checks the server has closed the connection: nothing more can be read.
func (c *client) closed() {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := c.r.ReadByte(); err == nil {
		c.t.Fatalf("read %#x from a connection the server should have closed", b)
	}
}

// result waits for ServeConn's result.
func (c *client) result() error {
	c.t.Helper()
	select {
	case err := <-c.done:
		c.done <- err
		return err
	case <-time.After(10 * time.Second):
		c.t.Fatal("ServeConn did not return")
		return nil
	}
}
