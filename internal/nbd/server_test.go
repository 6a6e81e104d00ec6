package nbd_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/glance-sidecar/glance-sidecar/internal/nbd"
)

// The protocol as a hand-written client sees it: the handshake, every command, and every way
// of breaking the rules.

const testSize = 1 << 20

func newMem(ro bool) *memExport {
	return &memExport{data: patterned(testSize), ro: ro}
}

// enter runs qemu's handshake (fixed newstyle, no zeroes, NBD_OPT_GO) and checks the answer.
func (c *client) enter() (size uint64, flags uint16) {
	c.t.Helper()
	c.send(goSession())
	size, flags, blocks := c.info(optGo)
	if blocks != [3]uint32{1, 4096, nbd.MaxRequest} {
		c.t.Fatalf("block sizes %v, want [1 4096 %d]", blocks, nbd.MaxRequest)
	}
	return size, flags
}

// expectErrno sends a request and checks the error in its reply.
func (c *client) expectErrno(req []byte, cookie uint64, want uint32) {
	c.t.Helper()
	c.send(req)
	if got, _ := c.replyTo(cookie, 0); got != want {
		c.t.Fatalf("request %x…: error %d, want %d", req[:min(len(req), 28)], got, want)
	}
}

// readBack reads n bytes at off and checks they are want.
func (c *client) readBack(cookie, off uint64, want []byte) {
	c.t.Helper()
	c.send(request(0, cmdRead, cookie, off, uint32(len(want)), nil))
	errno, got := c.replyTo(cookie, len(want))
	if errno != 0 {
		c.t.Fatalf("READ %d bytes at %d: error %d", len(want), off, errno)
	}
	if !bytes.Equal(got, want) {
		c.t.Fatalf("READ %d bytes at %d: wrong data", len(want), off)
	}
}

func TestProtocol(t *testing.T) {
	tests := []struct {
		name string
		ro   bool
		// script talks to the server; it ends having sent DISC or ABORT, or having seen the
		// server close the connection.
		script func(c *client, m *memExport)
		want   error // errors.Is; nil: a clean end
	}{
		{"go write read zeroes flush disc", false, func(c *client, m *memExport) {
			size, flags := c.enter()
			if size != testSize || flags != tflagHasFlags|tflagFlush|tflagWriteZeroes {
				c.t.Fatalf("size %d flags %#x", size, flags)
			}
			data := bytes.Repeat([]byte{0xab}, 4096)
			c.expectErrno(request(0, cmdWrite, 1, 8192, 4096, data), 1, 0)
			c.readBack(2, 8192, data)
			c.expectErrno(request(flagNoHole, cmdWriteZeroes, 3, 8192, 1024, nil), 3, 0)
			c.expectErrno(request(0, cmdWriteZeroes, 4, testSize-512, 512, nil), 4, 0)
			c.readBack(5, 8192, append(make([]byte, 1024), data[1024:]...))
			if !bytes.Equal(m.data[testSize-512:], make([]byte, 512)) {
				c.t.Fatal("WRITE_ZEROES at the end left data")
			}
			c.expectErrno(request(0, cmdFlush, 6, 0, 0, nil), 6, 0)
			c.readBack(7, testSize-1, []byte{0})
			c.send(request(0, cmdDisc, 8, 0, 0, nil))
			c.closed()
		}, nil},
		{"read-only export", true, func(c *client, m *memExport) {
			if _, flags := c.enter(); flags != tflagHasFlags|tflagReadOnly|tflagFlush {
				c.t.Fatalf("flags %#x", flags)
			}
			c.expectErrno(request(0, cmdWrite, 1, 0, 512, make([]byte, 512)), 1, ePerm)
			c.expectErrno(request(0, cmdWriteZeroes, 2, 0, 512, nil), 2, ePerm)
			c.readBack(3, 0, m.data[:4096]) // the WRITE's payload was consumed
			c.send(request(0, cmdDisc, 4, 0, 0, nil))
		}, nil},
		{"export name with zeroes", false, func(c *client, m *memExport) {
			c.send(clientFlags(cFixedNewstyle))
			c.send(option(optExportName, nil))
			if size := c.u64(); size != testSize {
				c.t.Fatalf("size %d", size)
			}
			c.u16()
			if z := c.read(124); !bytes.Equal(z, make([]byte, 124)) {
				c.t.Fatal("124 bytes of padding are not zeros")
			}
			c.readBack(1, 100, m.data[100:200])
			c.send(request(0, cmdDisc, 2, 0, 0, nil))
		}, nil},
		{"export name without zeroes", false, func(c *client, m *memExport) {
			c.send(clientFlags(cFixedNewstyle | cNoZeroes))
			c.send(option(optExportName, nil))
			c.u64()
			c.u16()
			c.readBack(1, 100, m.data[100:200]) // straight after the flags: no padding
			c.send(request(0, cmdDisc, 2, 0, 0, nil))
		}, nil},
		{"list then abort", false, func(c *client, m *memExport) {
			c.send(clientFlags(cFixedNewstyle))
			c.send(option(optList, nil))
			if typ, data := c.optReply(optList); typ != repServer || !bytes.Equal(data, []byte{0, 0, 0, 0}) {
				c.t.Fatalf("reply %#x %x, want NBD_REP_SERVER with the empty name", typ, data)
			}
			if typ, _ := c.optReply(optList); typ != repAck {
				c.t.Fatalf("reply %#x, want ACK", typ)
			}
			c.send(option(optList, []byte("x")))
			if typ, _ := c.optReply(optList); typ != repErrInvalid {
				c.t.Fatalf("LIST with data: reply %#x, want ERR_INVALID", typ)
			}
			c.send(option(optAbort, nil))
			if typ, _ := c.optReply(optAbort); typ != repAck {
				c.t.Fatalf("reply %#x to ABORT, want ACK", typ)
			}
			c.closed()
		}, nil},
		{"info then go", false, func(c *client, m *memExport) {
			c.send(clientFlags(cFixedNewstyle))
			c.send(option(optInfo, infoData("", infoName, infoBlockSize)))
			if size, _, _ := c.info(optInfo); size != testSize {
				c.t.Fatalf("size %d", size)
			}
			c.send(option(optGo, infoData("")))
			c.info(optGo)
			c.readBack(1, 0, m.data[:10])
			c.send(request(0, cmdDisc, 2, 0, 0, nil))
		}, nil},
		{"unsupported options refused, simple replies used", false, func(c *client, m *memExport) {
			c.send(clientFlags(cFixedNewstyle | cNoZeroes))
			for _, opt := range []uint32{optStructuredReply, optStartTLS, 4, optListMetaContext, optSetMetaContext, 11, 12, 4242, 1 << 31} {
				c.send(option(opt, []byte("base:allocation")))
				if typ, msg := c.optReply(opt); typ != repErrUnsup {
					c.t.Fatalf("option %d: reply %#x %q, want ERR_UNSUP", opt, typ, msg)
				}
			}
			c.send(option(optGo, infoData("")))
			c.info(optGo)
			c.readBack(1, 512, m.data[512:1024])
			c.send(request(0, cmdDisc, 2, 0, 0, nil))
		}, nil},
		{"unknown or malformed export requests", false, func(c *client, m *memExport) {
			c.send(clientFlags(cFixedNewstyle))
			c.send(option(optGo, infoData("other")))
			if typ, _ := c.optReply(optGo); typ != repErrUnknown {
				c.t.Fatalf("GO for another export: reply %#x, want ERR_UNKNOWN", typ)
			}
			for _, bad := range [][]byte{
				nil,
				{0, 0, 0},
				{0, 0, 0, 9, 0, 0},              // name longer than the data
				{0xff, 0xff, 0xff, 0xff, 0, 0},  // a length that would overflow
				{0, 0, 0, 0, 0, 2, 0, 3},        // two requests announced, one sent
				{0, 0, 0, 0, 0, 0, 0},           // a stray byte
				append(infoData(""), 0, 3, 0x1), // trailing bytes
			} {
				c.send(option(optInfo, bad))
				if typ, _ := c.optReply(optInfo); typ != repErrInvalid {
					c.t.Fatalf("INFO with data %x: reply %#x, want ERR_INVALID", bad, typ)
				}
			}
			c.send(option(optGo, infoData("")))
			c.info(optGo)
			c.send(request(0, cmdDisc, 1, 0, 0, nil))
		}, nil},
		{"error replies keep the session", false, func(c *client, m *memExport) {
			c.enter()
			const max = nbd.MaxRequest
			orig := bytes.Clone(m.data)
			for i, r := range []struct {
				req  []byte
				want uint32
				data []byte // what a successful READ returns
			}{
				{request(0, cmdRead, 1, testSize-10, 20, nil), eInval, nil},             // past the end
				{request(0, cmdRead, 1, ^uint64(0), 2, nil), eInval, nil},               // offset overflow
				{request(0, cmdRead, 1, testSize+1, 0, nil), eInval, nil},               // empty, past the end
				{request(0, cmdWrite, 1, testSize-1, 2, []byte{1, 2}), eNoSpc, nil},     // past the end
				{request(0, cmdWrite, 1, ^uint64(0)-1, 4, []byte("abcd")), eNoSpc, nil}, // offset overflow
				{request(0, cmdWriteZeroes, 1, testSize, 1, nil), eNoSpc, nil},          // past the end
				{request(0, cmdWriteZeroes, 1, testSize-1, 2, nil), eNoSpc, nil},        // straddles the end
				{request(0, cmdWriteZeroes, 1, 0, max+1, nil), eInval, nil},             // over the maximum
				{request(0, cmdWriteZeroes, 1, 0, max, nil), eNoSpc, nil},               // the maximum, too far
				{request(0, cmdTrim, 1, 0, 4096, nil), eInval, nil},                     // not advertised
				{request(0, cmdTrim, 1, testSize, 1<<31, nil), eInval, nil},             // of any size
				{request(0, cmdCache, 1, 0, ^uint32(0), nil), eInval, nil},              // not advertised
				{request(0, cmdBlockStatus, 1, 0, 4096, nil), eInval, nil},              // no metadata context
				{request(0, 42, 1, 0, 4096, nil), eInval, nil},                          // unknown
				{request(flagFUA, cmdRead, 1, 0, 512, nil), eInval, nil},                // FUA not advertised
				{request(flagFUA, cmdWrite, 1, 0, 1, []byte{9}), eInval, nil},           // FUA not advertised
				{request(flagNoHole, cmdRead, 1, 0, 512, nil), eInval, nil},             // not a READ flag
				{request(flagFastZero, cmdWriteZeroes, 1, 0, 512, nil), eInval, nil},    // not advertised
				{request(0x8000, cmdWriteZeroes, 1, 0, 512, nil), eInval, nil},          // unknown flag
				{request(0, cmdFlush, 1, 512, 0, nil), eInval, nil},                     // FLUSH takes no range
				{request(0, cmdRead, 1, 10, 0, nil), 0, nil},                            // empty read, no data
				{request(0, cmdWrite, 1, 10, 0, nil), 0, nil},                           // empty write
				{request(0, cmdWriteZeroes, 1, testSize, 0, nil), 0, nil},               // empty, at the end
				{request(0, cmdRead, 1, 0, testSize, nil), 0, orig},                     // nothing changed
				{request(0, cmdWrite, 1, testSize-2, 2, []byte{0xee, 0xef}), 0, nil},    // the last two bytes
				{request(flagNoHole, cmdWriteZeroes, 1, testSize-1, 1, nil), 0, nil},    // the last byte
				{request(0, cmdRead, 1, testSize-3, 3, nil), 0, []byte{orig[testSize-3], 0xee, 0}},
			} {
				c.send(r.req)
				errno, data := c.replyTo(1, len(r.data))
				if errno != r.want || !bytes.Equal(data, r.data) {
					c.t.Fatalf("request %d (%x): error %d, want %d (data %d bytes, want %d)", i, r.req[:28], errno, r.want, len(data), len(r.data))
				}
			}
			c.send(request(0, cmdDisc, 9, 0, 0, nil))
			c.closed()
		}, nil},

		// Protocol violations: the server hangs up and ServeConn says why.
		{"unknown client flags", false, func(c *client, m *memExport) {
			c.send(clientFlags(cFixedNewstyle | 1<<5))
			c.closed()
		}, nbd.ErrProtocol},
		{"not fixed newstyle", false, func(c *client, m *memExport) {
			c.send(clientFlags(0))
			c.closed()
		}, nbd.ErrProtocol},
		{"bad option magic", false, func(c *client, m *memExport) {
			c.send(clientFlags(cFixedNewstyle))
			b := option(optGo, infoData(""))
			b[0] ^= 0xff
			c.trySend(b)
			c.closed()
		}, nbd.ErrProtocol},
		{"option too long", false, func(c *client, m *memExport) {
			c.send(clientFlags(cFixedNewstyle))
			b := binary.BigEndian.AppendUint64(nil, magicOpt)
			b = binary.BigEndian.AppendUint32(b, optGo)
			b = binary.BigEndian.AppendUint32(b, nbd.MaxOptionLen+1)
			c.send(b) // the header only: the server must not wait for the data
			c.closed()
		}, nbd.ErrProtocol},
		{"too many options", false, func(c *client, m *memExport) {
			c.send(clientFlags(cFixedNewstyle))
			for range 64 {
				c.send(option(optStructuredReply, nil))
				c.optReply(optStructuredReply)
			}
			c.trySend(option(optStructuredReply, nil))
			c.closed()
		}, nbd.ErrProtocol},
		{"export name that does not exist", false, func(c *client, m *memExport) {
			c.send(clientFlags(cFixedNewstyle))
			c.send(option(optExportName, []byte("other")))
			c.closed()
		}, errAny},
		{"bad request magic", false, func(c *client, m *memExport) {
			c.enter()
			b := request(0, cmdRead, 1, 0, 512, nil)
			b[3] ^= 1
			c.trySend(b)
			c.closed()
		}, nbd.ErrProtocol},
		{"oversize read", false, func(c *client, m *memExport) {
			c.enter()
			c.trySend(request(0, cmdRead, 1, 0, nbd.MaxRequest+1, nil))
			c.closed()
		}, nbd.ErrProtocol},
		{"oversize write", false, func(c *client, m *memExport) {
			c.enter()
			c.trySend(request(0, cmdWrite, 1, 0, ^uint32(0), nil)) // the header only
			c.closed()
		}, nbd.ErrProtocol},
		{"DISC with a length", false, func(c *client, m *memExport) {
			c.enter()
			c.trySend(request(0, cmdDisc, 1, 0, 512, nil))
			c.closed()
		}, nbd.ErrProtocol},
		{"hang up in the handshake", false, func(c *client, m *memExport) {
			c.send(clientFlags(cFixedNewstyle))
			c.conn.Close()
		}, nbd.ErrDisconnected},
		{"hang up without DISC", false, func(c *client, m *memExport) {
			c.enter()
			c.readBack(1, 0, m.data[:512])
			c.conn.Close()
		}, nbd.ErrDisconnected},
		{"hang up inside a WRITE", false, func(c *client, m *memExport) {
			c.enter()
			c.send(request(0, cmdWrite, 1, 0, 1<<20, make([]byte, 1000)))
			c.conn.Close()
		}, nbd.ErrDisconnected},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMem(tt.ro)
			c := dial(t, &nbd.Server{Export: m})
			tt.script(c, m)
			err := c.result()
			switch {
			case tt.want == nil && err != nil:
				t.Fatalf("ServeConn: %v", err)
			case tt.want == errAny && err == nil, tt.want != nil && tt.want != errAny && !errors.Is(err, tt.want):
				t.Fatalf("ServeConn returned %v, want %v", err, tt.want)
			}
		})
	}
}

// errAny stands for any error in the table above.
var errAny = errors.New("any error")

// A request the export fails is answered with EIO and the session goes on; ServeConn returns
// the export's error at the end even though the client disconnected cleanly.
func TestProtocolExportError(t *testing.T) {
	broken := errors.New("disk on fire")
	c := dial(t, &nbd.Server{Export: failingExport{newMem(false), broken}})
	c.enter()
	c.expectErrno(request(0, cmdRead, 1, 0, 512, nil), 1, eIO)
	c.expectErrno(request(0, cmdWrite, 2, 0, 2, []byte{1, 2}), 2, eIO)
	c.expectErrno(request(0, cmdWriteZeroes, 3, 0, 2, nil), 3, eIO)
	c.send(request(0, cmdDisc, 4, 0, 0, nil))
	if err := c.result(); !errors.Is(err, broken) {
		t.Fatalf("ServeConn returned %v, want the export's error", err)
	}
}

type failingExport struct {
	*memExport
	err error
}

func (f failingExport) ReadAt(context.Context, []byte, int64) error  { return f.err }
func (f failingExport) WriteAt(context.Context, []byte, int64) error { return f.err }

// A read of exactly the maximum block size is served.
func TestProtocolMaxRequest(t *testing.T) {
	m := &memExport{data: patterned(nbd.MaxRequest + 4096)}
	c := dial(t, &nbd.Server{Export: m})
	c.enter()
	c.readBack(1, 4096, m.data[4096:])
	c.send(request(0, cmdWrite, 2, 0, nbd.MaxRequest, make([]byte, nbd.MaxRequest)))
	if errno, _ := c.replyTo(2, 0); errno != 0 {
		t.Fatalf("WRITE of the maximum: error %d", errno)
	}
	c.send(request(0, cmdDisc, 3, 0, 0, nil))
	if err := c.result(); err != nil {
		t.Fatal(err)
	}
}

// A named export: clients must ask for it by name.
func TestProtocolExportName(t *testing.T) {
	c := dial(t, &nbd.Server{Export: newMem(false), Name: "image"})
	c.send(clientFlags(cFixedNewstyle))
	c.send(option(optGo, infoData("")))
	if typ, _ := c.optReply(optGo); typ != repErrUnknown {
		t.Fatalf("GO for the default export: reply %#x, want ERR_UNKNOWN", typ)
	}
	c.send(option(optList, nil))
	if _, data := c.optReply(optList); string(data) != "\x00\x00\x00\x05image" {
		t.Fatalf("LIST: %q", data)
	}
	c.optReply(optList)
	c.send(option(optGo, infoData("image")))
	c.info(optGo)
	c.send(request(0, cmdDisc, 1, 0, 0, nil))
	if err := c.result(); err != nil {
		t.Fatal(err)
	}
}

func TestServerValidate(t *testing.T) {
	for name, srv := range map[string]*nbd.Server{
		"no export":     {},
		"negative size": {Export: &sizeOnly{-1}},
		"long name":     {Export: newMem(false), Name: strings.Repeat("x", nbd.MaxOptionLen+1)},
	} {
		t.Run(name, func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			if err := srv.ServeConn(context.Background(), b); err == nil {
				t.Fatal("ServeConn accepted an invalid server")
			}
		})
	}
}

// sizeOnly is an export of a given size that cannot be read or written.
type sizeOnly struct{ n int64 }

func (s *sizeOnly) Size() int64                                  { return s.n }
func (s *sizeOnly) ReadOnly() bool                               { return true }
func (s *sizeOnly) ReadAt(context.Context, []byte, int64) error  { return nbd.ErrNotReadable }
func (s *sizeOnly) WriteAt(context.Context, []byte, int64) error { return nbd.ErrReadOnly }

// Serve goes on after a client that only listed exports, ends after the first that reached
// transmission, removes the socket, and returns when its context is done.
func TestServe(t *testing.T) {
	t.Run("list, then a session", func(t *testing.T) {
		s := serve(t, newMem(false))
		path := s.path
		talk := func(script []byte) {
			conn, err := net.Dial("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.Write(script); err != nil {
				t.Fatal(err)
			}
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			io.Copy(io.Discard, conn) // until the server closes the connection
		}
		talk(append(append(clientFlags(cFixedNewstyle), option(optList, nil)...), option(optAbort, nil)...))
		select {
		case err := <-s.done:
			t.Fatalf("Serve returned after a client that only listed exports: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		talk(append(goSession(), request(0, cmdDisc, 1, 0, 0, nil)...))
		if err := s.wait(t); err != nil {
			t.Fatalf("Serve: %v", err)
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("socket still there: %v", err)
		}
	})
	t.Run("context", func(t *testing.T) {
		ln, err := nbd.Listen(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancelCause(context.Background())
		done := make(chan error, 1)
		go func() { done <- nbd.Serve(ctx, ln, newMem(false)) }()
		// A client in the middle of a session when the context ends.
		conn, err := net.Dial("unix", ln.Path())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write(goSession()); err != nil {
			t.Fatal(err)
		}
		stop := errors.New("shutting down")
		time.AfterFunc(50*time.Millisecond, func() { cancel(stop) })
		select {
		case err := <-done:
			if !errors.Is(err, stop) {
				t.Fatalf("Serve returned %v, want the context's cause", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return when its context ended")
		}
		if _, err := os.Stat(ln.Path()); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("socket still there: %v", err)
		}
	})
}

func TestServeRefusesTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := nbd.Serve(context.Background(), ln, newMem(false)); err == nil || !strings.Contains(err.Error(), "unix") {
		t.Fatalf("Serve on TCP: %v, want a refusal", err)
	}
}

func TestURI(t *testing.T) {
	for path, want := range map[string]string{
		"/tmp/nbd-123/sock":   "nbd+unix:///?socket=/tmp/nbd-123/sock",
		"/tmp/a b&c=d#e%/s?k": "nbd+unix:///?socket=/tmp/a%20b%26c%3Dd%23e%25/s%3Fk",
	} {
		if got := nbd.URI(path); got != want {
			t.Errorf("URI(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestListenPathTooLong(t *testing.T) {
	dir := t.TempDir() + "/" + strings.Repeat("d", 100)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := nbd.Listen(dir); err == nil || !strings.Contains(err.Error(), "unix socket") {
		t.Fatalf("Listen in a deep directory: %v, want a path-length error", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 0 {
		t.Fatalf("Listen left %v behind (%v)", entries, err)
	}
}

// A SequentialWriter over the protocol: a gap is filled, the tail is written on DISC; a read
// and a write behind the current offset get EIO, and the session's end reports the latter.
func TestProtocolSequentialWriter(t *testing.T) {
	t.Run("in order with gaps", func(t *testing.T) {
		var out bytes.Buffer
		c := dial(t, &nbd.Server{Export: nbd.NewSequentialWriter(&out, 16)})
		c.enter()
		c.expectErrno(request(0, cmdWrite, 1, 0, 2, []byte("ab")), 1, 0)
		c.expectErrno(request(0, cmdWriteZeroes, 2, 4, 2, nil), 2, 0)
		c.expectErrno(request(0, cmdWrite, 3, 8, 2, []byte("cd")), 3, 0)
		c.expectErrno(request(0, cmdFlush, 4, 0, 0, nil), 4, 0)
		c.send(request(0, cmdDisc, 5, 0, 0, nil))
		if err := c.result(); err != nil {
			t.Fatal(err)
		}
		if want := "ab\x00\x00\x00\x00\x00\x00cd\x00\x00\x00\x00\x00\x00"; out.String() != want {
			t.Fatalf("writer received %q, want %q", out.String(), want)
		}
	})
	t.Run("out of order", func(t *testing.T) {
		var out bytes.Buffer
		c := dial(t, &nbd.Server{Export: nbd.NewSequentialWriter(&out, 16)})
		c.enter()
		c.expectErrno(request(0, cmdWrite, 1, 0, 2, []byte("ab")), 1, 0)
		c.expectErrno(request(0, cmdWrite, 2, 4, 2, []byte("cd")), 2, 0)
		c.expectErrno(request(0, cmdRead, 3, 0, 2, nil), 3, eIO)
		c.expectErrno(request(0, cmdWrite, 4, 2, 2, []byte("xy")), 4, eIO)
		c.expectErrno(request(0, cmdWrite, 5, 6, 2, []byte("ef")), 5, eIO) // sticky
		c.send(request(0, cmdDisc, 6, 0, 0, nil))
		if err := c.result(); !errors.Is(err, nbd.ErrOutOfOrder) {
			t.Fatalf("ServeConn returned %v, want ErrOutOfOrder", err)
		}
		if want := "ab\x00\x00cd"; out.String() != want {
			t.Fatalf("writer received %q, want %q and no tail", out.String(), want)
		}
	})
}
