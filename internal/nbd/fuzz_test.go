package nbd_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/glance-sidecar/glance-sidecar/internal/nbd"
)

// FuzzServer feeds arbitrary client bytes, from the first byte of the handshake on, to a
// server over a pipe, serving each kind of export. The server must not panic, must end when
// the bytes do, and must not allocate more than the input justifies: a length field alone
// buys no memory.
func FuzzServer(f *testing.F) {
	disc := request(0, cmdDisc, 99, 0, 0, nil)
	for _, seed := range [][]byte{
		goSession(),
		join(goSession(), request(0, cmdWrite, 1, 512, 4, []byte("abcd")), request(0, cmdRead, 2, 0, 1024, nil), disc),
		join(goSession(), request(flagNoHole, cmdWriteZeroes, 1, 0, 4096, nil), request(0, cmdFlush, 2, 0, 0, nil), disc),
		join(goSession(), request(0, cmdWrite, 1, 0, 1<<20, []byte("short")), disc),
		join(goSession(), request(0, cmdTrim, 1, 0, 4096, nil), request(0, cmdCache, 2, 0, 1, nil), request(0, cmdBlockStatus, 3, 0, 1, nil), disc),
		join(goSession(), request(0, cmdRead, 1, 60<<10, 8<<10, nil), request(0, cmdWrite, 2, 1<<16-1, 2, []byte{1, 2})),
		join(goSession(), request(0, cmdRead, 1, 0, nbd.MaxRequest+1, nil)),
		join(clientFlags(cFixedNewstyle), option(optExportName, nil), request(0, cmdRead, 1, 0, 16, nil), disc),
		join(clientFlags(cFixedNewstyle|cNoZeroes), option(optList, nil), option(optInfo, infoData("", infoBlockSize)), option(optAbort, nil)),
		join(clientFlags(cFixedNewstyle), option(optStructuredReply, nil), option(optSetMetaContext, []byte("\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x0fbase:allocation")), option(optGo, infoData("")), disc),
		join(clientFlags(cFixedNewstyle), option(optGo, []byte{0xff, 0xff, 0xff, 0xff, 0, 0})),
		join(clientFlags(cFixedNewstyle), option(optGo, infoData("x")), option(optExportName, []byte("x"))),
		join(clientFlags(cFixedNewstyle), option(optGo, make([]byte, nbd.MaxOptionLen+1))),
		clientFlags(0xffffffff),
	} {
		for mode := range uint8(4) {
			f.Add(mode, seed)
		}
	}
	f.Fuzz(func(t *testing.T, mode uint8, data []byte) {
		const size = 64 << 10
		var exp nbd.Export
		switch mode % 4 {
		case 0:
			exp = &memExport{data: make([]byte, size)}
		case 1:
			exp = &memExport{data: make([]byte, size), ro: true}
		case 2:
			exp = nbd.NewSequentialWriter(io.Discard, size)
		case 3:
			w, err := nbd.NewWindow(nbd.WindowOptions{Size: size, ChunkSize: 4 << 10, Chunks: size / (4 << 10), Spill: &memSpill{b: make([]byte, size)},
				Fetch: func(context.Context, []byte, int64) error { return errors.New("no fetch here") }})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(make([]byte, size)); err != nil {
				t.Fatal(err)
			}
			exp = w
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)

		client, server := net.Pipe()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done := make(chan error, 1)
		go func() {
			done <- (&nbd.Server{Export: exp, Logger: discardLogger}).ServeConn(ctx, &eofAfter{Conn: server, left: len(data)})
		}()
		drained := make(chan struct{})
		go func() {
			io.Copy(io.Discard, client) // the replies, until the server closes its end
			close(drained)
		}()
		client.Write(data) // the server may hang up first
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the server did not end when the client's bytes did")
		}
		client.Close()
		<-drained

		runtime.ReadMemStats(&after)
		// The export's own 64 KiB, the connection's buffers (64 KiB read buffer, the 4 KiB
		// option buffer, one export-sized READ buffer), and WRITE payloads at most twice what
		// was actually sent.
		bound := uint64(3*size+256<<10) + 2*uint64(len(data))
		if got := after.TotalAlloc - before.TotalAlloc; got > bound {
			t.Fatalf("allocated %d bytes for %d bytes of input (bound %d)", got, len(data), bound)
		}
	})
}

func join(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// eofAfter is the server's end of a pipe that reads as the end of the stream once n bytes
// have come through: a client that has sent everything and shut down its writing side, which
// net.Pipe cannot do, while still reading the replies.
type eofAfter struct {
	net.Conn
	left int
}

func (c *eofAfter) Read(p []byte) (int, error) {
	if c.left == 0 {
		return 0, io.EOF
	}
	n, err := c.Conn.Read(p[:min(len(p), c.left)])
	c.left -= n
	return n, err
}
