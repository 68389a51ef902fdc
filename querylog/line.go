package querylog

import (
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// appendLine appends a query record's JSON line, byte for byte what
// slog.JSONHandler writes for the same attributes (line_test.go checks it),
// without building slog values: this runs once per query on the writer
// goroutine. Records with parameters (log_parameters) go through slog.
func appendLine(b []byte, r *Record, info *shapeInfo, slow bool, errMsg string) []byte {
	b = append(b, `{"time":"`...)
	b = r.Time.AppendFormat(b, time.RFC3339Nano)
	if slow {
		b = append(b, `","level":"WARN","msg":"query"`...)
	} else {
		b = append(b, `","level":"INFO","msg":"query"`...)
	}
	b = appendField(b, "database", r.Database)
	b = appendField(b, "user", r.User)
	b = appendNonEmptyField(b, "application", r.Application)
	b = appendNonEmptyField(b, "client_addr", r.ClientAddr)
	if r.Client != 0 {
		b = append(b, `,"client":`...)
		b = strconv.AppendUint(b, uint64(r.Client), 10)
	}
	b = appendNonEmptyField(b, "upstream", r.Upstream)
	b = appendField(b, "fingerprint", info.hex)
	b = appendField(b, "query", info.norm)
	b = append(b, `,"duration_ms":`...)
	b = appendJSONFloat(b, ms(r.Duration))
	b = append(b, `,"wait_ms":`...)
	b = appendJSONFloat(b, ms(r.Wait))
	b = append(b, `,"rows":`...)
	b = strconv.AppendInt(b, r.Rows, 10)
	b = appendNonEmptyField(b, "tag", r.Tag)
	b = appendNonEmptyField(b, "sqlstate", r.SQLState)
	b = appendNonEmptyField(b, "error", errMsg)
	if r.Extended {
		b = append(b, `,"extended":true`...)
	}
	b = appendNonEmptyField(b, "cache", r.Cache)
	b = appendNonEmptyField(b, "tx", r.txString())
	if r.Args != 0 {
		b = appendField(b, "args", r.argsString())
	}
	if slow {
		b = append(b, `,"slow":true`...)
	}
	return append(b, "}\n"...)
}

func appendField(b []byte, key, v string) []byte {
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, '"', ':')
	return appendJSONString(b, v)
}

func appendNonEmptyField(b []byte, key, v string) []byte {
	if v == "" {
		return b
	}
	return appendField(b, key, v)
}

// appendJSONFloat formats f as encoding/json does.
func appendJSONFloat(b []byte, f float64) []byte {
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9, as encoding/json does
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

const hexDigits = "0123456789abcdef"

// appendJSONString quotes s as encoding/json does with HTML escaping off:
// quotes, backslashes and control characters escaped, invalid UTF-8 as
// U+FFFD, and U+2028/U+2029 escaped.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
