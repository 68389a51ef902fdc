package config

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// This file locates keys in the config file text. BurntSushi/toml keeps key
// positions private, so a small scanner walks the text: it tracks [table] and
// [[array]] headers, dotted and quoted keys, inline tables and arrays, and
// skips strings (multi-line ones included). It runs only on text the TOML
// parser accepted; on anything odd it skips ahead and never panics.

// keyLine is one key as written in the file.
type keyLine struct {
	key  toml.Key // as MetaData reports it: no array indices
	path string   // canonical form with indices, e.g. "users[1].name"
	line int      // 1-based
}

// origin records where each value of a loaded Config came from.
type origin struct {
	file  string            // config file path; "" when no file was read
	lines map[string]int    // canonical key -> line in file
	env   map[string]string // canonical key -> environment variable that set it
}

func newOrigin(file string) *origin {
	return &origin{file: file, lines: map[string]int{}, env: map[string]string{}}
}

// where returns the file (or environment variable) and line to blame for key:
// the closest of key and its parents that the environment or the file set.
// The environment is checked first because it wins over the file.
func (o *origin) where(key string) (string, int) {
	if o == nil {
		return "defaults", 0
	}
	for k, ok := key, true; ok; k, ok = parentKey(k) {
		if e, found := o.env[k]; found {
			return e, 0
		}
		if l, found := o.lines[k]; found {
			return o.file, l
		}
	}
	if o.file != "" {
		return o.file, 0
	}
	return "defaults", 0
}

// joinKey appends one segment to a canonical key, quoting it when needed.
func joinKey(prefix, seg string) string {
	s := toml.Key{seg}.String()
	if prefix == "" {
		return s
	}
	return prefix + "." + s
}

// indexKey appends an array index to a canonical key.
func indexKey(key string, i int) string { return fmt.Sprintf("%s[%d]", key, i) }

// parentKey strips the last segment or index from a canonical key.
func parentKey(k string) (string, bool) {
	if k == "" {
		return "", false
	}
	if strings.HasSuffix(k, "]") {
		if i := strings.LastIndexByte(k, '['); i > 0 {
			return k[:i], true
		}
		return "", false
	}
	end := len(k)
	if strings.HasSuffix(k, `"`) && len(k) >= 2 {
		// Quoted segment: find its opening quote, skipping escaped quotes.
		j := len(k) - 2
		for j >= 0 && !(k[j] == '"' && (j == 0 || k[j-1] != '\\')) {
			j--
		}
		if j <= 0 {
			return "", false
		}
		end = j
	}
	i := strings.LastIndexByte(k[:end], '.')
	if i < 0 {
		return "", false
	}
	return k[:i], true
}

// scanKeys lists the keys written in a TOML text with their lines.
func scanKeys(text string) []keyLine {
	s := &keyScanner{s: text, arrays: map[string]int{}}
	for i := 0; i < len(text); i++ {
		if text[i] == '\n' {
			s.nl = append(s.nl, i)
		}
	}
	s.run()
	return s.out
}

type keyScanner struct {
	s      string
	i      int
	nl     []int          // offsets of '\n', for lineAt
	arrays map[string]int // [[header]] canonical path -> elements seen
	out    []keyLine
}

func (s *keyScanner) at(j int) byte {
	if j < 0 || j >= len(s.s) {
		return 0
	}
	return s.s[j]
}

func (s *keyScanner) lineAt(off int) int { return sort.SearchInts(s.nl, off) + 1 }

// skipSpaces skips spaces and tabs on the current line.
func (s *keyScanner) skipSpaces() {
	for c := s.at(s.i); c == ' ' || c == '\t' || c == '\r'; c = s.at(s.i) {
		s.i++
	}
}

// skipBlank skips whitespace, newlines and comments.
func (s *keyScanner) skipBlank() {
	for s.i < len(s.s) {
		switch s.s[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		case '#':
			s.skipLine()
		default:
			return
		}
	}
}

// skipLine moves past the next newline.
func (s *keyScanner) skipLine() {
	if s.i >= len(s.s) {
		s.i = len(s.s)
		return
	}
	if j := strings.IndexByte(s.s[s.i:], '\n'); j >= 0 {
		s.i += j + 1
	} else {
		s.i = len(s.s)
	}
}

func (s *keyScanner) run() {
	var ctxKey toml.Key
	ctxPath := ""
	for s.i < len(s.s) {
		start := s.i
		s.skipBlank()
		if s.i >= len(s.s) {
			break
		}
		if s.s[s.i] == '[' {
			if k, p, ok := s.header(); ok {
				ctxKey, ctxPath = k, p
			}
		} else {
			s.keyValue(ctxKey, ctxPath)
		}
		s.skipLine()
		if s.i <= start {
			s.i = start + 1
		}
	}
}

// header parses "[a.b]" or "[[a.b]]" and records it.
func (s *keyScanner) header() (toml.Key, string, bool) {
	at := s.i
	array := s.at(s.i+1) == '['
	if array {
		s.i += 2
	} else {
		s.i++
	}
	key, ok := s.parseKey()
	if !ok || s.at(s.i) != ']' {
		return nil, "", false
	}
	path := ""
	for j, seg := range key {
		path = joinKey(path, seg)
		if array && j == len(key)-1 {
			s.arrays[path]++
		}
		if n, isArray := s.arrays[path]; isArray {
			path = indexKey(path, n-1)
		}
	}
	s.out = append(s.out, keyLine{key: key, path: path, line: s.lineAt(at)})
	return key, path, true
}

// keyValue parses "key = value" under the given prefix and records the key
// and any keys inside an inline-table value.
func (s *keyScanner) keyValue(prefix toml.Key, prefixPath string) bool {
	at := s.i
	key, ok := s.parseKey()
	if !ok || s.at(s.i) != '=' {
		return false
	}
	s.i++
	s.skipSpaces()
	full := append(append(toml.Key{}, prefix...), key...)
	path := prefixPath
	for _, seg := range key {
		path = joinKey(path, seg)
	}
	s.out = append(s.out, keyLine{key: full, path: path, line: s.lineAt(at)})
	s.value(full, path)
	return true
}

// parseKey reads a possibly dotted key of bare, "basic" or 'literal' parts
// and the spaces after it.
func (s *keyScanner) parseKey() (toml.Key, bool) {
	var key toml.Key
	for {
		s.skipSpaces()
		seg, ok := s.keySegment()
		if !ok {
			return nil, false
		}
		key = append(key, seg)
		s.skipSpaces()
		if s.at(s.i) != '.' {
			return key, true
		}
		s.i++
	}
}

func (s *keyScanner) keySegment() (string, bool) {
	start := s.i
	switch s.at(s.i) {
	case '"':
		s.skipString()
		raw := s.s[start:s.i]
		if v, err := strconv.Unquote(raw); err == nil {
			return v, true
		}
		return strings.Trim(raw, `"`), len(raw) >= 2
	case '\'':
		s.skipString()
		raw := s.s[start:s.i]
		return strings.Trim(raw, "'"), len(raw) >= 2
	}
	for c := s.at(s.i); c == '_' || c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'; c = s.at(s.i) {
		s.i++
	}
	return s.s[start:s.i], s.i > start
}

// value skips one value, recording keys inside inline tables.
func (s *keyScanner) value(key toml.Key, path string) {
	switch s.at(s.i) {
	case '"', '\'':
		s.skipString()
	case '{':
		s.i++
		for s.i < len(s.s) {
			s.skipBlank()
			switch s.at(s.i) {
			case 0:
				return
			case '}':
				s.i++
				return
			case ',':
				s.i++
				continue
			}
			before := s.i
			if !s.keyValue(key, path) || s.i == before {
				s.i = before + 1
			}
		}
	case '[':
		s.i++
		for n := 0; s.i < len(s.s); {
			s.skipBlank()
			switch s.at(s.i) {
			case 0:
				return
			case ']':
				s.i++
				return
			case ',':
				s.i++
				continue
			}
			before := s.i
			if s.at(s.i) == '{' {
				s.value(key, indexKey(path, n))
			} else {
				s.value(key, path)
			}
			n++
			if s.i == before {
				s.i++
			}
		}
	default:
		for c := s.at(s.i); s.i < len(s.s) && !strings.ContainsRune(",]}#\n", rune(c)); c = s.at(s.i) {
			s.i++
		}
	}
}

// skipString moves past a basic, literal or multi-line string.
func (s *keyScanner) skipString() {
	defer func() { s.i = min(s.i, len(s.s)) }()
	q := s.at(s.i)
	if q != '"' && q != '\'' {
		return
	}
	delim := string([]byte{q, q, q})
	if strings.HasPrefix(s.s[s.i:], delim) {
		s.i += 3
		for s.i < len(s.s) {
			if q == '"' && s.s[s.i] == '\\' {
				s.i += 2
				continue
			}
			if strings.HasPrefix(s.s[s.i:], delim) {
				s.i += 3
				// Up to two more quotes may close the string's content.
				for extra := 0; extra < 2 && s.at(s.i) == q; extra++ {
					s.i++
				}
				return
			}
			s.i++
		}
		return
	}
	s.i++
	for s.i < len(s.s) {
		switch c := s.s[s.i]; {
		case c == '\\' && q == '"':
			s.i += 2
		case c == q:
			s.i++
			return
		case c == '\n':
			return
		default:
			s.i++
		}
	}
}
