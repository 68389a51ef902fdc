package querylog

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
	"time"
)

// slogLine is the line slog.JSONHandler writes for the record: the format
// appendLine must keep.
func slogLine(r *Record, info *shapeInfo, slow bool, errMsg string) []byte {
	var buf bytes.Buffer
	h := slog.NewJSONHandler(&buf, nil)
	level := slog.LevelInfo
	if slow {
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{slog.String("database", r.Database), slog.String("user", r.User)}
	attrs = appendNonEmpty(attrs, "application", r.Application)
	attrs = appendNonEmpty(attrs, "client_addr", r.ClientAddr)
	if r.Client != 0 {
		attrs = append(attrs, slog.Uint64("client", uint64(r.Client)))
	}
	attrs = appendNonEmpty(attrs, "upstream", r.Upstream)
	attrs = append(attrs, slog.String("fingerprint", info.hex), slog.String("query", info.norm),
		slog.Float64("duration_ms", ms(r.Duration)), slog.Float64("wait_ms", ms(r.Wait)), slog.Int64("rows", r.Rows))
	attrs = appendNonEmpty(attrs, "tag", r.Tag)
	attrs = appendNonEmpty(attrs, "sqlstate", r.SQLState)
	attrs = appendNonEmpty(attrs, "error", errMsg)
	if r.Extended {
		attrs = append(attrs, slog.Bool("extended", true))
	}
	attrs = appendNonEmpty(attrs, "cache", r.Cache)
	attrs = appendNonEmpty(attrs, "tx", r.txString())
	attrs = appendNonEmpty(attrs, "args", r.argsString())
	if slow {
		attrs = append(attrs, slog.Bool("slow", true))
	}
	rec := slog.NewRecord(r.Time, level, "query", 0)
	rec.AddAttrs(attrs...)
	h.Handle(context.Background(), rec)
	return buf.Bytes()
}

func FuzzLineMatchesSlog(f *testing.F) {
	f.Add("app", "worker", "10.0.0.5:58178", "SELECT * FROM jobs WHERE id = $1", "SELECT", "", "", int64(867000), int64(7000), int64(1), false, false, int64(1764694496416123456))
	f.Add("d\"b", "a\\b\n\t\r\x01", "", "SELECT '\u2028\u2029 <>&' \xff", "", "22012", "division by zero", int64(0), int64(1), int64(-3), true, true, int64(0))
	f.Add("", "", "", "", "", "", "", int64(1), int64(1e18), int64(0), true, false, int64(-1))
	f.Fuzz(func(t *testing.T, db, app, addr, query, tag, sqlstate, errMsg string, dur, wait, rows int64, extended, slow bool, at int64) {
		tm := time.Unix(0, at).UTC()
		if y := tm.Year(); y < 0 || y >= 10000 {
			return
		}
		r := &Record{Time: tm, Database: db, User: app, Application: app, ClientAddr: addr, Upstream: "primary",
			Query: query, Duration: time.Duration(dur), Wait: time.Duration(wait), Rows: rows, Tag: tag, SQLState: sqlstate, Extended: extended}
		r.Client, r.Args = uint32(rows), uint64(wait)
		if extended {
			r.TxStatus = "ITE"[uint64(dur)%3]
		}
		if slow && extended { // a cache hit: no upstream
			r.Upstream, r.Cache = "", "hit"
		}
		info := &shapeInfo{hex: "50fde20626009aba", norm: query}
		got := appendLine(nil, r, info, slow, errMsg)
		if want := slogLine(r, info, slow, errMsg); !bytes.Equal(got, want) {
			t.Fatalf("line differs from slog's:\n got %s\nwant %s", got, want)
		}
	})
}

func BenchmarkLine(b *testing.B) {
	r := &Record{Time: time.Now(), Database: "app", User: "app", Application: "web", ClientAddr: "10.0.0.5:58178", Upstream: "primary",
		Query: "SELECT * FROM jobs WHERE id = $1", Duration: 867 * time.Microsecond, Rows: 1, Tag: "SELECT"}
	info := &shapeInfo{hex: "50fde20626009aba", norm: r.Query}
	b.Run("appendLine", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for range b.N {
			buf = appendLine(buf[:0], r, info, false, "")
		}
	})
	b.Run("slog", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			slogLine(r, info, false, "")
		}
	})
}
