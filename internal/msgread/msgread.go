// Package msgread reads the big-endian fields of a protocol message or a
// stored value without panicking on short input: an overrun is remembered
// and every later read returns zero values.
package msgread

import "encoding/binary"

// Reader reads fields off the front of B.
type Reader struct {
	B   []byte
	Bad bool // a read ran past the end (or asked for a negative length)
}

// Next returns the next n bytes (capacity n, so an append cannot overwrite
// what follows), or nil after an overrun.
func (r *Reader) Next(n int) []byte {
	if r.Bad || n < 0 || n > len(r.B) {
		r.Bad = true
		return nil
	}
	v := r.B[:n:n]
	r.B = r.B[n:]
	return v
}

func (r *Reader) U16() uint16 {
	if b := r.Next(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (r *Reader) U32() uint32 {
	if b := r.Next(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (r *Reader) U64() uint64 {
	if b := r.Next(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}
