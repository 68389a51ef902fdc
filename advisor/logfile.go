package advisor

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/pgguard/pgguard/querylog"
)

// logLine is the part of a query log JSON line the advisor reads.
type logLine struct {
	Time        time.Time `json:"time"`
	Msg         string    `json:"msg"`
	Database    string    `json:"database"`
	Application string    `json:"application"`
	Upstream    string    `json:"upstream"`
	Fingerprint string    `json:"fingerprint"`
	Query       string    `json:"query"`
	DurationMS  float64   `json:"duration_ms"`
	WaitMS      float64   `json:"wait_ms"`
	Rows        int64     `json:"rows"`
	Tag         string    `json:"tag"`
	SQLState    string    `json:"sqlstate"`
	Error       string    `json:"error"`
	Cache       string    `json:"cache"`
	Client      uint32    `json:"client"`
	Tx          string    `json:"tx"`
	Args        string    `json:"args"`
}

// ReadLog feeds the query records of a query log (JSON lines, as
// querylog.path writes them) to a, skipping other lines (the main log's,
// when both went to stderr). It returns how many records it read, and an
// error only when r fails.
func (a *Analyzer) ReadLog(r io.Reader) (int, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	n := 0
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var l logLine
		if err := json.Unmarshal(line, &l); err != nil || l.Msg != "query" || l.Query == "" {
			continue
		}
		fp, err := strconv.ParseUint(l.Fingerprint, 16, 64)
		if err != nil || l.Fingerprint == "" {
			fp, l.Query = querylog.Shape(l.Query)
		}
		e := Entry{
			Time: l.Time, Database: l.Database, Application: l.Application,
			Fingerprint: fp, Query: l.Query,
			Duration: msDuration(l.DurationMS), Wait: msDuration(l.WaitMS),
			Rows: l.Rows, Tag: l.Tag, Failed: l.SQLState != "" || l.Error != "",
			Hit: l.Cache == "hit", Primary: l.Cache == "" && l.Upstream == "primary",
			Client: l.Client,
		}
		if l.Tx != "" {
			e.TxStatus = l.Tx[0]
		}
		if l.Args != "" {
			e.Args, _ = strconv.ParseUint(l.Args, 16, 64)
		}
		a.Add(e)
		n++
	}
	if err := sc.Err(); err != nil {
		return n, fmt.Errorf("reading the query log: %w", err)
	}
	return n, nil
}

func msDuration(ms float64) time.Duration { return time.Duration(ms * float64(time.Millisecond)) }
