package proxy

import (
	"cmp"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ListenerStatus is one channel of a database's listener (SHOW LISTENERS,
// /status); a database whose listener has no channel has one row with an
// empty channel when it ever listened.
type ListenerStatus struct {
	Database    string `json:"database"`
	Channel     string `json:"channel"`
	Subscribers int    `json:"subscribers"`
	// Staged counts LISTENs of it in open transaction blocks.
	Staged    int    `json:"staged"`
	Received  uint64 `json:"received"`
	Delivered uint64 `json:"delivered"`
	Dropped   uint64 `json:"dropped"`
	// State is the listening connection's: "listening", "down" (closed by
	// the upstream; re-established before the next query) or "closed"
	// (no channel to listen to).
	State      string  `json:"state"`
	Upstream   string  `json:"upstream,omitempty"`
	BackendPID uint32  `json:"backend_pid,omitempty"`
	DownFor    float64 `json:"down_seconds,omitempty"`
	Gaps       uint64  `json:"gaps"`
}

// Listeners describes every database's listener, by database and channel.
func (p *Proxy) Listeners() []ListenerStatus {
	var out []ListenerStatus
	for _, db := range p.databases() {
		out = append(out, db.listen.status()...)
	}
	slices.SortFunc(out, func(a, b ListenerStatus) int {
		return cmp.Or(cmp.Compare(a.Database, b.Database), cmp.Compare(a.Channel, b.Channel))
	})
	return out
}

func (l *listener) status() []ListenerStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	base := ListenerStatus{Database: l.db.name, State: "closed", Gaps: l.gaps}
	switch {
	case l.conn != nil:
		base.State, base.Upstream, base.BackendPID = "listening", l.conn.upstream, l.conn.pid
	case !l.downSince.IsZero():
		base.State, base.DownFor = "down", time.Since(l.downSince).Seconds()
	}
	if len(l.channels) == 0 {
		if l.received == 0 && l.gaps == 0 {
			return nil
		}
		return []ListenerStatus{base}
	}
	out := make([]ListenerStatus, 0, len(l.channels))
	for _, ch := range l.channels {
		r := base
		r.Channel, r.Subscribers, r.Staged = ch.name, len(ch.subs), ch.staged
		r.Received, r.Delivered, r.Dropped = ch.received, ch.delivered, ch.dropped
		out = append(out, r)
	}
	return out
}

// listenCollector reports the listeners at scrape time.
type listenCollector struct{ p *Proxy }

var (
	listenUpDesc = prometheus.NewDesc("pgguard_listen_connections",
		"Listening server connections by database (1 while it listens for transaction-mode clients' LISTEN).", []string{"database"}, nil)
	listenChannelsDesc = prometheus.NewDesc("pgguard_listen_channels",
		"Channels LISTENed on a database's listening connection.", []string{"database"}, nil)
	listenSubsDesc = prometheus.NewDesc("pgguard_listen_subscriptions",
		"Client subscriptions to channels (a client on 3 channels counts 3).", []string{"database"}, nil)
	notifyReceivedDesc = prometheus.NewDesc("pgguard_notifications_received_total",
		"Notifications the listening connection received.", []string{"database"}, nil)
	notifyDeliveredDesc = prometheus.NewDesc("pgguard_notifications_delivered_total",
		"Notifications queued to subscribed clients (one per client).", []string{"database"}, nil)
	notifyDroppedDesc = prometheus.NewDesc("pgguard_notifications_dropped_total",
		"Notifications dropped with a client cut off past notify.client_buffer.", []string{"database"}, nil)
	listenCutDesc = prometheus.NewDesc("pgguard_listen_clients_cut_total",
		"Clients disconnected for leaving more than notify.client_buffer bytes of notifications unread.", []string{"database"}, nil)
	listenGapsDesc = prometheus.NewDesc("pgguard_listen_gaps_total",
		"Times the listening connection was re-established after the upstream closed it (notifications sent meanwhile were lost).", []string{"database"}, nil)
	listenGapSecondsDesc = prometheus.NewDesc("pgguard_listen_gap_seconds_total",
		"Summed time subscribed channels had no listening connection, over ended gaps.", []string{"database"}, nil)
)

func (lc listenCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{listenUpDesc, listenChannelsDesc, listenSubsDesc, notifyReceivedDesc,
		notifyDeliveredDesc, notifyDroppedDesc, listenCutDesc, listenGapsDesc, listenGapSecondsDesc} {
		ch <- d
	}
}

func (lc listenCollector) Collect(ch chan<- prometheus.Metric) {
	for _, db := range lc.p.databases() {
		l := db.listen
		l.mu.Lock()
		up, subs := 0.0, 0
		if l.conn != nil {
			up = 1
		}
		for _, c := range l.channels {
			subs += len(c.subs)
		}
		vals := []struct {
			d *prometheus.Desc
			t prometheus.ValueType
			v float64
		}{
			{listenUpDesc, prometheus.GaugeValue, up},
			{listenChannelsDesc, prometheus.GaugeValue, float64(len(l.channels))},
			{listenSubsDesc, prometheus.GaugeValue, float64(subs)},
			{notifyReceivedDesc, prometheus.CounterValue, float64(l.received)},
			{notifyDeliveredDesc, prometheus.CounterValue, float64(l.delivered)},
			{notifyDroppedDesc, prometheus.CounterValue, float64(l.dropped)},
			{listenCutDesc, prometheus.CounterValue, float64(l.cut)},
			{listenGapsDesc, prometheus.CounterValue, float64(l.gaps)},
			{listenGapSecondsDesc, prometheus.CounterValue, l.gapSeconds},
		}
		l.mu.Unlock()
		for _, v := range vals {
			ch <- prometheus.MustNewConstMetric(v.d, v.t, v.v, db.name)
		}
	}
}
