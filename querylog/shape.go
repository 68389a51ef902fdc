package querylog

import (
	"strconv"
	"strings"
	"sync"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

const (
	shapeCacheEntries = 8192
	shapeCacheBytes   = 16 << 20 // query and normalized text held by the cache
	shapeCacheMaxLen  = 16 << 10 // longer texts are parsed every time
	shapeMaxParseLen  = 1 << 20  // longer texts get the fallback fingerprint
)

// shapeInfo is what the writer needs to know about a query text.
type shapeInfo struct {
	fp       uint64
	hex      string // fp as 16 hex digits, for the log and ShapeStats
	norm     string // normalized text: literals replaced by $n (or ? in the fallback)
	fallback bool   // pg_query could not parse the text
	// exact: the normalized text shows numbers the query wrote (ORDER BY
	// 1, varchar(20)), so the shape is cached under the exact text, not
	// under the text with numbers zeroed.
	exact bool
}

// Shape returns the fingerprint and normalized text of query. Literals
// become $n (pg_query.Normalize) and the fingerprint is
// pg_query.FingerprintToUInt64, so queries differing only in literals share
// both. Text pg_query cannot parse gets a fallback: a hash of the text with
// numbers and quoted strings masked as ?. Results are cached by text in a
// bounded LRU; a miss costs a parse (tens of µs). Safe for concurrent use.
func Shape(query string) (fingerprint uint64, normalized string) {
	s := shapes.shape(ZeroNumbers(nil, []byte(query)), query)
	return s.fp, s.norm
}

var shapes = newShapeCache(shapeCacheEntries, shapeCacheBytes)

// shapeCache is an LRU from query text to shapeInfo, bounded by entries and bytes.
type shapeCache struct {
	mu       sync.Mutex
	m        map[string]*shapeEntry
	lru      shapeEntry // sentinel: lru.next is the most recent
	bytes    int
	maxLen   int
	maxBytes int
}

type shapeEntry struct {
	key        string
	info       shapeInfo
	prev, next *shapeEntry
}

func newShapeCache(entries, bytes int) *shapeCache {
	c := &shapeCache{m: map[string]*shapeEntry{}, maxLen: entries, maxBytes: bytes} // grows as shapes come
	c.lru.prev, c.lru.next = &c.lru, &c.lru
	return c
}

// shape returns the shape of query, whose text with numbers zeroed
// (ZeroNumbers) is zeroed. The cache is keyed by that text: queries that
// differ only in numeric literals (pgbench -M simple, ORMs inlining ids)
// then parse once, not once per call; a shape whose normalized text shows
// numbers (exact) is keyed by the exact text instead, under a marker at
// the zeroed one. A hit allocates nothing.
func (c *shapeCache) shape(zeroed []byte, query string) shapeInfo {
	c.mu.Lock()
	e := c.m[string(zeroed)] // no allocation: the conversion only indexes
	if e != nil && e.info.exact {
		e = c.m[query]
	}
	if e != nil {
		c.unlink(e)
		c.pushFront(e)
		c.mu.Unlock()
		return e.info
	}
	c.mu.Unlock()
	info := parseShape(query) // outside the lock: parsing is the slow part
	if !info.exact {
		return c.add(string(zeroed), info)
	}
	c.add(string(zeroed), shapeInfo{exact: true})
	return c.add(query, info)
}

// add caches info as the shape of the text q.
func (c *shapeCache) add(q string, info shapeInfo) shapeInfo {
	if len(q) > shapeCacheMaxLen {
		return info
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.m[q]; e != nil { // another goroutine parsed it meanwhile
		return e.info
	}
	e := &shapeEntry{key: q, info: info}
	c.m[q] = e
	c.pushFront(e)
	c.bytes += entrySize(e)
	for len(c.m) > c.maxLen || c.bytes > c.maxBytes {
		old := c.lru.prev
		c.unlink(old)
		delete(c.m, old.key)
		c.bytes -= entrySize(old)
	}
	return info
}

func entrySize(e *shapeEntry) int { return len(e.key) + len(e.info.norm) + 128 }

func (c *shapeCache) unlink(e *shapeEntry) {
	e.prev.next, e.next.prev = e.next, e.prev
}

func (c *shapeCache) pushFront(e *shapeEntry) {
	e.prev, e.next = &c.lru, c.lru.next
	c.lru.next.prev = e
	c.lru.next = e
}

// parseShape normalizes and fingerprints q with pg_query, or falls back.
func parseShape(q string) shapeInfo {
	if len(q) <= shapeMaxParseLen {
		norm, err := pg_query.Normalize(q)
		if err == nil {
			fp, err := pg_query.FingerprintToUInt64(q)
			if err == nil {
				exact := string(ZeroNumbers(nil, []byte(norm))) != norm
				return shapeInfo{fp: fp, hex: fpHex(fp), norm: norm, exact: exact}
			}
		}
	}
	return fallbackShape(q)
}

func fpHex(fp uint64) string {
	s := strconv.FormatUint(fp, 16)
	return strings.Repeat("0", 16-len(s)) + s
}

// fallbackShape masks quoted strings ('...', E'...', $tag$...$tag$), numbers
// and $n parameters as ?, collapses whitespace, and hashes the result with
// FNV-1a. Crude, but it groups an unparsable statement's variants and keeps
// literals out of the log.
func fallbackShape(q string) shapeInfo {
	var b strings.Builder
	b.Grow(len(q))
	space := false
	for i := 0; i < len(q); {
		c := q[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f':
			space = true
			i++
			continue
		case c == '\'':
			i = skipQuoted(q, i)
			c = '?'
		case c == '$':
			if j := skipDollar(q, i); j > i {
				i = j
				c = '?'
			} else {
				i++
			}
		case isDigit(c) && (i == 0 || !isIdent(q[i-1])):
			for i < len(q) && (isDigit(q[i]) || q[i] == '.' || q[i] == 'e' || q[i] == 'E') {
				i++
			}
			c = '?'
		default:
			i++
		}
		if space && b.Len() > 0 {
			b.WriteByte(' ')
		}
		space = false
		b.WriteByte(c)
	}
	norm := b.String()
	h := uint64(14695981039346656037) // FNV-1a 64
	for i := 0; i < len(norm); i++ {
		h ^= uint64(norm[i])
		h *= 1099511628211
	}
	return shapeInfo{fp: h, hex: fpHex(h), norm: norm, fallback: true}
}

// skipQuoted returns the index after the quoted literal starting at i; a
// doubled quote inside escapes a quote.
func skipQuoted(q string, i int) int {
	for i++; i < len(q); i++ {
		if q[i] == '\'' {
			if i+1 < len(q) && q[i+1] == '\'' {
				i++
				continue
			}
			return i + 1
		}
	}
	return len(q)
}

// skipDollar returns the index after a $n parameter or a $tag$...$tag$
// string starting at i, or i when q[i:] is neither.
func skipDollar(q string, i int) int {
	j := i + 1
	if j < len(q) && isDigit(q[j]) {
		for j < len(q) && isDigit(q[j]) {
			j++
		}
		return j
	}
	for j < len(q) && isIdent(q[j]) && !isDigit(q[j]) {
		j++
	}
	if j >= len(q) || q[j] != '$' {
		return i
	}
	tag := q[i : j+1]
	if k := strings.Index(q[j+1:], tag); k >= 0 {
		return j + 1 + k + len(tag)
	}
	return len(q)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isIdent(c byte) bool {
	return c == '_' || isDigit(c) || (c|0x20 >= 'a' && c|0x20 <= 'z') || c >= 0x80
}
