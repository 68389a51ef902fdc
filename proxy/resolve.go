package proxy

import (
	"context"
	"net"
)

// lookupHost is the pgconn LookupFunc of every upstream: Proxy.LookupHost
// when set, else DNS.
func (p *Proxy) lookupHost(ctx context.Context, host string) ([]string, error) {
	if p.LookupHost != nil {
		return p.LookupHost(ctx, host)
	}
	return net.DefaultResolver.LookupHost(ctx, host)
}
