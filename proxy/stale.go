package proxy

import (
	"bytes"
	"encoding/binary"
	"hash/maphash"
	"maps"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// Prepared statements gone stale. A statement prepared on a server keeps
// what it was planned with: after a migration its next execution may fail
// with "cached plan must not change result type" (0A000: its result type
// changed) or "cache lookup failed for type" (XX000: a type it names was
// dropped and created again), and keeps failing until the client prepares
// it again. On a direct connection that fresh Parse is planned afresh;
// through pgguard it must not be answered with the server statement it
// shares with other clients, which is stale too.
//
// A client's statements keep the server key they were prepared with
// (stmt.key); a database's stmtKeys say which key a statement text
// (stmt.base) gets when prepared now — one per epoch — and which keys are
// known stale. Each copy on a server records when it was prepared (seq).
//
//   - A schema change a client runs through pgguard (ALTER, DROP, CREATE OR
//     REPLACE, ...) starts a new epoch at its COMMIT: statements prepared
//     afterwards never meet a copy planned before it.
//   - So does the first stale-statement error from a copy prepared in the
//     current epoch: it shows a migration made elsewhere, which may have
//     made other statements stale too.
//   - A result type changed (0A000): statements the clients prepared before
//     fail as they would on a direct connection: the key is known stale,
//     its copies on servers are closed in a later batch, and a Bind or
//     Describe of it gets the server's error replayed in stream order
//     (rewriter.ensure, staleReplay). Re-preparing them silently would hand
//     their driver rows of a shape it was not told of.
//   - A type is gone (XX000): each copy of the key prepared before the
//     finding is prepared again before its next use; the statement then
//     names the type by its name again, as a fresh Parse does.
//
// Which statement failed is not in the error: it is one the failing batch
// named that the batch did not prepare itself (and prepared under the
// search_path the client has now). With several candidates a
// result-type change replays nothing (their texts have new keys anyway);
// a type change prepares them all again.
//
// What is not covered: a client Parse of a text, after a migration over a
// direct connection and before any statement failed because of it, is
// answered from the server's copy; it fails once where a direct one would
// not (asyncpg then prepares again by itself outside a transaction).

// stmtKeys are a database's statement keys. Readers load the state without
// a lock; changes (rare) copy it under mu.
type stmtKeys struct {
	mu    sync.Mutex
	state atomic.Pointer[keyState]
}

// keyState is an immutable snapshot of a database's statement keys.
type keyState struct {
	epoch uint64 // what keys are derived from
	// seq counts the changes (new epochs and findings); copies record it
	// when prepared. The current epoch began at change number rekeyed.
	seq, rekeyed uint64
	// stale are the keys known stale, by change number seq of theirs.
	stale map[uint64]staleKey
}

// staleKey says which copies of a key are stale. With replay (the server's
// ErrorResponse body; its result type changed) every copy is, and the
// error is replayed; without (a type it names is gone), copies prepared
// before change number seq are, and are prepared again.
type staleKey struct {
	seq    uint64
	replay []byte
}

// maxStaleKeys bounds stale; past it, it starts over.
const maxStaleKeys = 4096

var noKeys keyState

func (k *stmtKeys) load() *keyState {
	if s := k.state.Load(); s != nil {
		return s
	}
	return &noKeys
}

// seq returns the number of the last change, for a copy prepared now.
func (k *stmtKeys) seq() uint64 { return k.load().seq }

// key returns the server key of statements prepared now from the text
// whose base key is base.
func (k *stmtKeys) key(base uint64) uint64 {
	epoch := k.load().epoch
	if epoch == 0 {
		return base
	}
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:], base)
	binary.LittleEndian.PutUint64(b[8:], epoch)
	return maphash.Bytes(stmtSeed, b[:])
}

// stale reports whether a copy of key prepared as of change seq is stale,
// and the error to replay for the key, if any.
func (k *stmtKeys) stale(key, seq uint64) (replay []byte, stale bool) {
	st, ok := k.load().stale[key]
	return st.replay, ok && (st.replay != nil || seq < st.seq)
}

// change applies f to a copy of the state.
func (k *stmtKeys) change(f func(s *keyState)) {
	k.mu.Lock()
	defer k.mu.Unlock()
	s := *k.load()
	s.stale = maps.Clone(s.stale)
	if s.stale == nil || len(s.stale) >= maxStaleKeys {
		s.stale = make(map[uint64]staleKey)
	}
	f(&s)
	k.state.Store(&s)
}

// schemaChanged starts a new epoch: a schema change a client ran through
// pgguard committed.
func (k *stmtKeys) schemaChanged() {
	k.change(func(s *keyState) { s.newEpoch() })
}

func (s *keyState) newEpoch() {
	s.seq++
	s.epoch++
	s.rekeyed = s.seq
}

// found records that one of the statements cands, all a failing batch
// named, is stale, as errBody says (see staleStatementError).
func (k *stmtKeys) found(cands []serverStmt, errBody []byte) {
	typeGone := errorCode(errBody) == codeInternalError
	k.change(func(s *keyState) {
		s.seq++
		for _, c := range cands {
			if c.seq >= s.rekeyed { // prepared in this epoch: the first news of a migration
				s.newEpoch()
				break
			}
		}
		for _, c := range cands {
			switch {
			case typeGone:
				s.stale[c.key] = staleKey{seq: s.seq}
			case len(cands) == 1:
				s.stale[c.key] = staleKey{seq: s.seq, replay: bytes.Clone(errBody)}
			}
		}
	})
}

// staleStatementError reports whether an ErrorResponse says a prepared
// statement no longer matches the schema (see the top of this file).
func staleStatementError(code string, body []byte) bool {
	switch code {
	case codeFeatureUnsupported:
		return string(errorField(body, 'R')) == "RevalidateCachedQuery" ||
			string(errorField(body, 'M')) == "cached plan must not change result type"
	case codeInternalError:
		return bytes.HasPrefix(errorField(body, 'M'), []byte("cache lookup failed for type "))
	}
	return false
}

// staleStatements follows a stale-statement error in the batch the server
// is answering (pump, mu held): the statements that batch named and did
// not prepare itself are the candidates.
func (b *backend) staleStatements(errBody []byte) {
	batch := b.queue.popped
	sp, _ := b.client.want.custom.get("search_path")
	var cands []serverStmt
	for e := b.stmts.lru.Front(); e != nil; e = e.Next() {
		// One prepared under another search_path may fail for that alone,
		// as on a direct connection: it tells nothing of the schema.
		if st := e.Value.(*serverStmt); st.used == batch && st.batch != batch && st.sp == sp {
			cands = append(cands, *st)
		}
	}
	if len(cands) == 0 {
		return
	}
	b.db.stmtKeys.found(cands, errBody)
	b.db.p.log.Info("prepared statements found stale after a schema change; they are prepared afresh for the statements clients prepare from now on",
		"database", b.db.name, "server", b.id, "candidates", len(cands), "error", string(errorField(errBody, 'M')))
}

// staleName is what a Bind or Describe of a client's statement whose
// result type changed names on the server: a statement that does not
// exist, so that the server fails the message in stream order, and the
// pump puts the stale statement's own error in place of its 26000.
func staleName(key uint64) string {
	return "pgg_stale_" + strconv.FormatUint(key, 36)
}

const codeUndefinedPstmt = "26000"

// staleReplay returns the error to forward in place of the server's 26000
// for a stale statement's name (see staleName), or nil.
func (b *backend) staleReplay(code string, body []byte) *Error {
	if code != codeUndefinedPstmt {
		return nil
	}
	msg := string(errorField(body, 'M'))
	const prefix = `prepared statement "pgg_stale_`
	if !strings.HasPrefix(msg, prefix) {
		return nil
	}
	name, _, ok := strings.Cut(msg[len(prefix):], `"`)
	if !ok {
		return nil
	}
	key, err := strconv.ParseUint(name, 36, 64)
	if err != nil {
		return nil
	}
	raw, _ := b.db.stmtKeys.stale(key, 0)
	if raw == nil {
		return nil
	}
	return &Error{Severity: "ERROR", Code: errorCode(raw), Message: string(errorField(raw, 'M')), raw: raw}
}

// errorCode returns an ErrorResponse body's SQLSTATE.
func errorCode(body []byte) string { return string(errorField(body, 'C')) }
