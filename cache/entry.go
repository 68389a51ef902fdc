package cache

import (
	"encoding/binary"
	"hash/crc32"
	"slices"
	"time"

	"github.com/pgguard/pgguard/internal/msgread"
)

// entry is one cached reply with what it was stored under. Immutable once
// built: the in-process LRU and concurrent Gets share it.
type entry struct {
	digest  [32]byte  // the Key's digest: a value found under another key is a miss
	expires time.Time // wall clock; Redis expires the value by itself too
	fields  []string  // generation fields, as in Key.fields
	gens    []uint64  // their values when the reply was read from the server
	reply   []byte    // RowDescription, DataRow..., CommandComplete
}

// size is what the entry costs the LRU, roughly.
func (e *entry) size() int {
	n := len(e.reply) + 160
	for _, f := range e.fields {
		n += len(f) + 24
	}
	return n
}

// fresh reports whether e may answer a lookup of fields that found gens at now.
func (e *entry) fresh(now time.Time, fields []string, gens []uint64) bool {
	return now.Before(e.expires) && slices.Equal(e.fields, fields) && slices.Equal(e.gens, gens)
}

// The value stored in Redis. Anything that does not decode exactly,
// checksum included, is a miss: Redis may hold garbage, a value of another
// format version, or nothing (evicted).
//
//	magic    "PGGC"
//	version  1 byte
//	digest   32 bytes
//	expires  int64, Unix ms
//	nfields  uint16, then per field: uint16 length, bytes, uint64 generation
//	nreply   uint32, then the reply bytes
//	crc      uint32, CRC-32C of everything before it
//
// Integers are big-endian.
const (
	entryMagic   = "PGGC"
	entryVersion = 1
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// encode serializes e.
func (e *entry) encode() []byte {
	n := 4 + 1 + 32 + 8 + 2 + 4 + len(e.reply) + 4
	for _, f := range e.fields {
		n += 2 + len(f) + 8
	}
	b := make([]byte, 0, n)
	b = append(b, entryMagic...)
	b = append(b, entryVersion)
	b = append(b, e.digest[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(e.expires.UnixMilli()))
	b = binary.BigEndian.AppendUint16(b, uint16(len(e.fields)))
	for i, f := range e.fields {
		b = binary.BigEndian.AppendUint16(b, uint16(len(f)))
		b = append(b, f...)
		b = binary.BigEndian.AppendUint64(b, e.gens[i])
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(e.reply)))
	b = append(b, e.reply...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

// decodeEntry parses a value read under digest; ok is false for anything
// but a well-formed entry of this version for this digest.
func decodeEntry(b []byte, digest [32]byte) (*entry, bool) {
	if len(b) < 4+1+32+8+2+4+4 || string(b[:4]) != entryMagic || b[4] != entryVersion {
		return nil, false
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, crcTable) != sum {
		return nil, false
	}
	r := msgread.Reader{B: body[5:]}
	e := &entry{}
	copy(e.digest[:], r.Next(32))
	if e.digest != digest {
		return nil, false
	}
	e.expires = time.UnixMilli(int64(r.U64()))
	nf := int(r.U16())
	for range nf {
		f := r.Next(int(r.U16()))
		e.fields = append(e.fields, string(f))
		e.gens = append(e.gens, r.U64())
	}
	e.reply = r.Next(int(r.U32()))
	if r.Bad || len(r.B) != 0 || !validReply(e.reply) {
		return nil, false
	}
	return e, true
}

// ValidReply reports whether b is a reply the cache stores: a
// RowDescription ('T') exactly when described, any number of DataRows
// ('D') and one CommandComplete ('C'), each a whole backend message
// (PostgreSQL docs, "Message Formats"), nothing else. A simple Query's reply
// is always described; an extended-protocol one only when the client sent
// Describe for the portal. An ErrorResponse, a NoticeResponse, a
// ParameterStatus, a PortalSuspended (an Execute with a row limit) or a
// ReadyForQuery makes it uncacheable; the proxy adds what the client's
// protocol expects around it (ParseComplete, BindComplete, ReadyForQuery).
func ValidReply(b []byte, described bool) bool {
	return len(b) > 0 && hasRowDescription(b) == described && validReply(b)
}

// hasRowDescription reports whether a reply starts with a RowDescription.
func hasRowDescription(b []byte) bool { return len(b) > 0 && b[0] == 'T' }

// validReply checks a reply's messages: T? D* C.
func validReply(b []byte) bool {
	state := 'T' // what may come next: 'T' or 'D' first, then 'D' or 'C'
	for len(b) > 0 {
		if len(b) < 5 {
			return false
		}
		typ := b[0]
		n := int(binary.BigEndian.Uint32(b[1:5]))
		if n < 4 || n > len(b)-1 {
			return false
		}
		switch {
		case state == 'T' && typ == 'T':
			state = 'D'
		case state != 0 && typ == 'D':
			state = 'D'
		case state != 0 && typ == 'C':
			// A SELECT's tag: anything else ran another statement than
			// the one its key names (a name the client reused).
			if n < 4+len("SELECT ") || string(b[5:5+len("SELECT ")]) != "SELECT " {
				return false
			}
			state = 0
		default:
			return false
		}
		b = b[1+n:]
	}
	return state == 0
}
