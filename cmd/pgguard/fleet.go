package main

import (
	"log/slog"

	"github.com/pgguard/pgguard/admin/dashboard"
	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/fleet"
	"github.com/pgguard/pgguard/limiter"
	"github.com/pgguard/pgguard/proxy"
)

// wireFleet gives the fleet its heartbeat's content and the switches it
// may flip here. dash may be nil (no http_listen): no qps and p95 then.
func wireFleet(fl *fleet.Fleet, p *proxy.Proxy, lim *limiter.Limiter, dash func() *dashboard.Dashboard, log *slog.Logger) {
	fl.Describe = func() fleet.Instance {
		in := fleet.Instance{Version: version, ReadOnly: p.ReadOnly(), WorkersDisabled: lim.WorkersDisabled()}
		for _, ps := range p.Pools() {
			clients := ps.ClientsActive + ps.ClientsWaiting + ps.ClientsIdle
			in.Clients += clients
			in.Waiting += ps.ClientsWaiting
			in.Pools = append(in.Pools, fleet.Pool{Database: ps.Database,
				ServerConns: ps.ServersActive + ps.ServersIdle + ps.ServersOpening + ps.ServersClosing,
				Clients:     clients, Waiting: ps.ClientsWaiting, UpstreamRefusals: ps.UpstreamFull})
		}
		if d := dash(); d != nil {
			pt := d.Latest()
			in.QPS, in.P95MS = pt.QPS, pt.P95MS
		}
		return in
	}
	envOf := map[string]string{"read_only": config.EnvReadOnly, "disable_workers": config.EnvDisableWorkers}
	fl.Switch = func(name string, on bool, who string) {
		if env := envOf[name]; p.Config().Origin(name) == env {
			log.Warn("fleet-wide switch not applied here: this machine's environment sets it", "switch", name, "on", on, "by", who, "env", env)
			return
		}
		switch name {
		case "read_only":
			p.SetReadOnly(on, who)
		case "disable_workers":
			lim.SetWorkersDisabled(on, who)
		}
	}
}

// alsoReconfigure makes a reload apply fleet caps too, from the config the
// proxy then runs with.
func alsoReconfigure(reload func() error, p *proxy.Proxy, fl *fleet.Fleet) func() error {
	return func() error {
		err := reload()
		fl.Reconfigure(p.Config())
		return err
	}
}
