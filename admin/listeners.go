package admin

import (
	"strconv"

	"github.com/pgguard/pgguard/proxy"
)

// listenersTable is SHOW LISTENERS: every channel transaction-mode clients
// LISTEN to through pgguard, with its subscribers and counts, and the
// state of the database's listening connection.
func listenersTable(ls []proxy.ListenerStatus) Table {
	t := Table{Columns: []string{"database", "channel", "subscribers", "staged", "received", "delivered", "dropped",
		"state", "upstream", "backend_pid", "down_s", "gaps"}}
	for _, l := range ls {
		pid := ""
		if l.BackendPID != 0 {
			pid = strconv.FormatUint(uint64(l.BackendPID), 10)
		}
		down := ""
		if l.State == "down" {
			down = strconv.FormatFloat(l.DownFor, 'f', 1, 64)
		}
		t.Rows = append(t.Rows, []string{l.Database, l.Channel, itoa(l.Subscribers), itoa(l.Staged),
			u64(l.Received), u64(l.Delivered), u64(l.Dropped), l.State, l.Upstream, pid, down, u64(l.Gaps)})
	}
	return t
}

func u64(v uint64) string { return strconv.FormatUint(v, 10) }
