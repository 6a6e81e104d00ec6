package nbd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// maxSocketPath is the longest path a unix socket can have on Linux (sun_path is 108 bytes,
// with the terminating NUL).
const maxSocketPath = 107

// A Listener is a unix socket listener in a private directory of its own (mode 0700), so that
// only this user's processes can connect. Close removes the socket and the directory.
type Listener struct {
	*net.UnixListener
	dir, path string
	once      sync.Once
	closeErr  error
}

// Listen makes a private directory in dir (os.TempDir() when empty) and listens on a unix
// socket in it. Hand [Listener.URI] to qemu-img.
func Listen(dir string) (*Listener, error) {
	if dir == "" {
		dir = os.TempDir()
	}
	priv, err := os.MkdirTemp(dir, "nbd-")
	if err != nil {
		return nil, fmt.Errorf("nbd: making the socket's directory: %w", err)
	}
	path := filepath.Join(priv, "sock")
	if len(path) > maxSocketPath {
		os.Remove(priv)
		return nil, fmt.Errorf("nbd: socket path %s is %d bytes, more than the %d a unix socket may have", path, len(path), maxSocketPath)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		os.Remove(priv)
		return nil, fmt.Errorf("nbd: listening: %w", err)
	}
	return &Listener{UnixListener: ln, dir: priv, path: path}, nil
}

// Path is the socket's path.
func (l *Listener) Path() string { return l.path }

// URI is the socket's address as qemu wants it: nbd+unix:///?socket=PATH (the default
// export).
func (l *Listener) URI() string { return URI(l.path) }

// Close stops listening and removes the socket and its directory. It may be called more than
// once.
func (l *Listener) Close() error {
	l.once.Do(func() {
		err := l.UnixListener.Close() // removes the socket file
		if rerr := os.RemoveAll(l.dir); rerr != nil {
			err = errors.Join(err, fmt.Errorf("nbd: removing the socket's directory: %w", rerr))
		}
		l.closeErr = err
	})
	return l.closeErr
}

// URI returns the nbd+unix URI of the default export on the unix socket at path, with the
// path percent-encoded where a URI query needs it.
func URI(path string) string {
	var b strings.Builder
	b.WriteString("nbd+unix:///?socket=")
	for i := 0; i < len(path); i++ {
		c := path[i]
		if c == '/' || c == '-' || c == '.' || c == '_' || c == '~' ||
			'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}
