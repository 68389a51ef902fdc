package proxy

import (
	"bytes"
	"encoding/binary"
)

// inspectServer reports whether the pump must see a server message's body
// (PostgreSQL docs 55.7): the rest is streamed on unread.
func inspectServer(typ byte) bool {
	return typ == 'Z' || typ == 'E' || typ == 'S' || typ == '1' || typ == '3' || typ == 'C'
}

// bodyLen reads a message's length word and returns its body length; a
// malformed length (below 4) counts as an empty body.
func bodyLen(b []byte) int {
	n := int(binary.BigEndian.Uint32(b)) - 4
	if n < 0 {
		return 0
	}
	return n
}

// cbytes splits a NUL-terminated string off the front of b, without copying.
func cbytes(b []byte) (s, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

// cstring is cbytes returning a string (a copy), for what is kept.
func cstring(b []byte) (s string, rest []byte, ok bool) {
	sb, rest, ok := cbytes(b)
	return string(sb), rest, ok
}

// beginMsg starts a protocol message of type typ; endMsg fills in its
// length once the body is appended (PostgreSQL docs 55.7).
func beginMsg(dst []byte, typ byte) ([]byte, int) {
	dst = append(dst, typ, 0, 0, 0, 0)
	return dst, len(dst) - 4
}

func endMsg(dst []byte, at int) []byte {
	binary.BigEndian.PutUint32(dst[at:], uint32(len(dst)-at))
	return dst
}

// errorFields returns the severity and SQLSTATE of an ErrorResponse body
// without decoding the rest (PostgreSQL docs 55.8: field type byte, string).
func errorFields(body []byte) (severity, code string) {
	for len(body) > 0 && body[0] != 0 {
		t := body[0]
		i := bytes.IndexByte(body[1:], 0)
		if i < 0 {
			return
		}
		v := body[1 : 1+i]
		switch t {
		case 'V':
			severity = string(v)
		case 'S':
			if severity == "" {
				severity = string(v)
			}
		case 'C':
			code = string(v)
		}
		body = body[2+i:]
	}
	return
}
