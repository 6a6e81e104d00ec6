package convert

import (
	"bytes"
	"strconv"
)

// maxProgressToken bounds what progressWriter keeps of one token: qemu-img's are 17 bytes
// ("    (100.00/100%)"); anything longer is not progress and is skipped to the next separator.
const maxProgressToken = 64

// progressWriter parses what `qemu-img convert -p` writes to its standard output: one
// "    (12.34/100%)" per update, each ended by a carriage return (the last by "\r\n"). It calls fn
// with every percentage larger than the last one reported, so the values it reports increase
// and lie in [0, 100] whatever the input, and do not depend on how the output is cut into
// writes. It never fails a write: qemu-img must not die of a closed pipe.
type progressWriter struct {
	fn       func(percent float64)
	tok      [maxProgressToken]byte
	n        int
	overflow bool
	reported bool
	last     float64
}

func (w *progressWriter) Write(p []byte) (int, error) {
	written := len(p)
	for len(p) > 0 {
		i := bytes.IndexAny(p, "\r\n")
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		if !w.overflow {
			if w.n+len(chunk) > len(w.tok) {
				w.overflow = true
			} else {
				w.n += copy(w.tok[w.n:], chunk)
			}
		}
		if i < 0 {
			break
		}
		if !w.overflow {
			if v, ok := parseProgress(w.tok[:w.n]); ok && (!w.reported || v > w.last) {
				w.reported, w.last = true, v
				w.fn(v)
			}
		}
		w.n, w.overflow = 0, false
		p = p[i+1:]
	}
	return written, nil
}

// parseProgress parses one token of qemu-img's progress output, "    (12.34/100%)": optional
// blanks, then "(", a decimal number from 0 to 100 of at most 6 characters, "/100%)".
func parseProgress(tok []byte) (float64, bool) {
	tok = bytes.TrimLeft(tok, " \t")
	rest, ok := bytes.CutPrefix(tok, []byte("("))
	if !ok {
		return 0, false
	}
	num, ok := bytes.CutSuffix(rest, []byte("/100%)"))
	if !ok || len(num) == 0 || len(num) > 6 {
		return 0, false
	}
	dots := 0
	for _, c := range num {
		switch {
		case c == '.':
			dots++
		case c < '0' || c > '9':
			return 0, false
		}
	}
	if dots > 1 || num[0] == '.' || num[len(num)-1] == '.' {
		return 0, false
	}
	v, err := strconv.ParseFloat(string(num), 64)
	if err != nil || v < 0 || v > 100 {
		return 0, false
	}
	return v, true
}
