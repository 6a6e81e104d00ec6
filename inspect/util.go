package inspect

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// printable renders bytes found inside an image for logs and terminals: valid printable UTF-8
// stays as it is, anything else is escaped. The result is for reporting only.
func printable(b []byte) string {
	s := string(b)
	if utf8.ValidString(s) && strings.IndexFunc(s, func(r rune) bool { return !strconv.IsPrint(r) }) < 0 {
		return s
	}
	q := strconv.QuoteToASCII(s)
	return q[1 : len(q)-1]
}

// cstring returns b up to its first NUL byte.
func cstring(b []byte) []byte {
	for i, c := range b {
		if c == 0 {
			return b[:i]
		}
	}
	return b
}
