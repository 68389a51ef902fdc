package proxy

// Parameter sync: before a client's messages reach a server, the server's
// session parameters are brought in line with the client's (one
// set_config query, answered before the client's), unless the server was
// last synced for the same parameters (a profile, client.profile).

import (
	"time"
	"unique"
)

// needsSync reports whether b's session parameters must be brought in line
// with c's before c's next message (mu held): b was last synced for other
// values than c's, or, while no transaction is open, the read-only switch
// flipped, b must now be read-only or no longer, or b must be read-only and
// reported default_transaction_read_only off (a function's set_config).
// Never while replies are outstanding.
func (b *backend) needsSync(c *client) bool {
	if b.queue.len() > 0 {
		return false
	}
	if b.profile != c.profile() {
		return true
	}
	if b.txStatus != 'I' {
		return false
	}
	ro := b.mustReadOnly()
	return b.roGen != c.p.roGen.Load() || b.roForced != ro || ro && b.params[readOnlyParam] != "on"
}

// inSync reports whether b can run c's next message without a sync query
// (mu held). A server last synced for other values may hold c's already:
// that is recorded, so the next check is a comparison.
func (b *backend) inSync(c *client) bool {
	if !b.needsSync(c) {
		return true
	}
	ro := b.mustReadOnly()
	if syncSQL(c, b, ro) != "" {
		return false
	}
	b.profile, b.roGen, b.roForced = c.profile(), c.p.roGen.Load(), ro
	return true
}

// syncParams brings b's session parameters in line with c's before c's
// next message, and waits for the answer: the client's statements must not
// run with another client's settings. It reports false when the sync failed
// (b is then unusable: its values are unknown) or b was lost meanwhile.
func (b *backend) syncParams(c *client) bool {
	b.mu.Lock() // send waited for c's last request to settle (awaitSettled)
	if b.client != c || b.inSync(c) {
		b.mu.Unlock()
		return true
	}
	ro := b.mustReadOnly()
	sql := syncSQL(c, b, ro)
	b.profile, b.roGen, b.roForced = c.profile(), c.p.roGen.Load(), ro
	b.custom = append(b.custom[:0], c.want.custom...)
	b.queue.push(request{kind: reqParamSync, announce: c.want.announce, inflightQuery: inflightQuery{start: time.Now()}})
	b.unnamedOwner = nil           // a Query destroys the unnamed statement
	b.act.Query(c.app, time.Now()) // the sync runs for c
	c.want.announce = false
	b.syncBad = false
	b.setStateLocked(srvSyncing)
	b.mu.Unlock()
	if _, err := b.out.Write(appendQuery(nil, sql)); err != nil {
		return false
	}
	b.awaitAnswered(c)
	b.mu.Lock()
	ok := !b.syncBad && b.client == c
	if !ok {
		b.profile = unique.Handle[string]{}
	}
	b.mu.Unlock()
	return ok
}
