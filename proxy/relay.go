package proxy

import (
	"bytes"
	"encoding/binary"
)

// frameReader finds message boundaries in a byte stream that arrives in
// arbitrary chunks (PostgreSQL docs 55.7: a type byte, then an int32 length
// that counts itself). It never copies a message it is not asked to inspect;
// an inspected one that spans reads is assembled in a small side buffer.
// Owned by one goroutine.
type frameReader struct {
	hdr     [5]byte
	nhdr    int    // bytes of a split header collected so far
	typ     byte   // type of the frame whose body is in flight
	remain  int    // body bytes of that frame still to come
	inspect bool   // whether that frame is being assembled for the callback
	asm     []byte // its body so far
}

// inspectServer reports whether the pump must see a server message's body.
func inspectServer(typ byte) bool {
	return typ == 'Z' || typ == 'E' || typ == 'S' || typ == '1' || typ == '3' || typ == 'C'
}

// scan walks data, calling fn for each complete inspected frame with its body
// and the offset in data just past its end. Bodies passed to fn are valid only
// during the call.
func (f *frameReader) scan(data []byte, fn func(typ byte, body []byte, end int)) {
	pos := 0
	for pos < len(data) {
		if f.remain > 0 {
			k := min(f.remain, len(data)-pos)
			if f.inspect {
				f.asm = append(f.asm, data[pos:pos+k]...)
			}
			pos += k
			f.remain -= k
			if f.remain == 0 && f.inspect {
				fn(f.typ, f.asm, pos)
				f.asm = f.asm[:0]
			}
			continue
		}
		if f.nhdr > 0 || len(data)-pos < 5 {
			k := copy(f.hdr[f.nhdr:], data[pos:])
			f.nhdr += k
			pos += k
			if f.nhdr < 5 {
				return
			}
			f.nhdr = 0
			f.begin(f.hdr[0], bodyLen(f.hdr[1:]), nil, pos, fn)
			continue
		}
		typ, n := data[pos], bodyLen(data[pos+1:])
		pos += 5
		if pos+n <= len(data) {
			if inspectServer(typ) {
				fn(typ, data[pos:pos+n], pos+n)
			}
			pos += n
			continue
		}
		f.begin(typ, n, data[pos:], len(data), fn)
		pos = len(data)
	}
}

// begin starts a frame whose body did not arrive whole; have is the part that did.
func (f *frameReader) begin(typ byte, n int, have []byte, end int, fn func(byte, []byte, int)) {
	f.typ, f.remain, f.inspect = typ, n-len(have), inspectServer(typ)
	if f.inspect {
		f.asm = append(f.asm[:0], have...)
		if f.remain == 0 {
			fn(typ, f.asm, end)
			f.asm = f.asm[:0]
		}
	}
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
