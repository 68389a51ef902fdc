package main

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"sort"
	"strings"

	"github.com/pgguard/pgguard/config"
)

// rewriteTarget is one variable of run.rewrite_env that the app gets
// pointed at pgguard.
type rewriteTarget struct {
	name     string   // the variable
	u        *url.URL // its value (or NEON_DATABASE_URL's), parsed
	database string   // the database pgguard serves it as
}

// parseAppURL parses the postgres:// URL in variable name. Its errors name
// the variable and never hold the password.
func parseAppURL(name, raw string) (*url.URL, error) {
	scheme, _, _ := strings.Cut(raw, "://")
	if scheme != "postgres" && scheme != "postgresql" {
		return nil, fmt.Errorf("%s is not a postgres:// URL (%s); want postgres://user:password@host:port/dbname", name, config.RedactURL(raw))
	}
	u, err := url.Parse(raw)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // the url.Error repeats the whole URL, password included
		}
		return nil, fmt.Errorf("%s cannot be parsed (%s): %s; want postgres://user:password@host:port/dbname",
			name, config.RedactURL(raw), config.Scrub(err.Error(), raw))
	}
	// What pgconn would reject; the TLS files are the app's business (a
	// path may exist only where the app runs), not the loopback hop's.
	bare := *u
	q := bare.Query()
	for _, k := range sslParams {
		q.Del(k)
	}
	bare.RawQuery = q.Encode()
	if r := config.CheckURL(bare.String()); r != "" {
		return nil, fmt.Errorf("%s: %s", name, r)
	}
	return u, nil
}

// urlDatabase is the database a URL names: its path, else its user.
func urlDatabase(u *url.URL) string {
	if db := strings.TrimPrefix(u.Path, "/"); db != "" {
		return db
	}
	return u.User.Username()
}

// rewriteTargets resolves run.rewrite_env against the environment: each
// variable that is set must be a URL whose database pgguard serves and
// whose user is in [[users]]. DATABASE_URL, when listed but unset, is made
// from NEON_DATABASE_URL, so that the app finds the URL it expects.
func rewriteTargets(cfg *config.Config, getenv func(string) string) ([]rewriteTarget, error) {
	var out []rewriteTarget
	for _, name := range cfg.Run.RewriteEnv {
		raw, from := getenv(name), name
		if raw == "" && name == envDatabaseURL {
			raw, from = getenv(config.EnvPrimaryURL), config.EnvPrimaryURL
		}
		if raw == "" {
			continue
		}
		u, err := parseAppURL(from, raw)
		if err != nil {
			return nil, err
		}
		db := urlDatabase(u)
		if cfg.Databases[db] == nil {
			// NEON_DATABASE_URL may have replaced the primary of an entry of
			// another name: the app then connects to that entry.
			served := ""
			for n, d := range cfg.Databases {
				if d != nil && d.Primary == raw {
					served = n
				}
			}
			if served == "" {
				return nil, fmt.Errorf("%s names database %q, which pgguard does not serve (it serves %s); add [databases.%s] or change the URL",
					from, db, strings.Join(sortedKeys(cfg.Databases), ", "), db)
			}
			db = served
		}
		if _, ok := cfg.User(u.User.Username()); !ok {
			return nil, fmt.Errorf("%s logs in as %q, which is not in [[users]]; add it there (or leave [[users]] empty to take the users of the primary URLs)",
				from, u.User.Username())
		}
		if listensOn(cfg.Listen, u) {
			return nil, fmt.Errorf("%s already points at pgguard's listen address %s; give pgguard the primary's URL in %s", from, cfg.Listen, config.EnvPrimaryURL)
		}
		out = append(out, rewriteTarget{name: name, u: u, database: db})
	}
	return out, nil
}

// listensOn reports whether u is pgguard's own listen address (a loopback
// or unspecified host on the same port): pgguard run nested in itself.
func listensOn(listen string, u *url.URL) bool {
	_, lport, err := net.SplitHostPort(listen)
	if err != nil || lport == "0" {
		return false
	}
	port := u.Port()
	if port == "" {
		port = "5432"
	}
	h := u.Hostname()
	ip := net.ParseIP(h)
	return port == lport && (h == "localhost" || ip != nil && (ip.IsLoopback() || ip.IsUnspecified()))
}

// sslParams are the query parameters about the upstream's TLS and
// authentication that mean nothing on the loopback hop to pgguard.
var sslParams = []string{"sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslnegotiation", "sslsni",
	"sslcrl", "sslcrldir", "sslcompression", "channel_binding", "gssencmode", "target_session_attrs", "load_balance_hosts"}

// rewrite points u at pgguard's address: same user, password and
// parameters, database db, no TLS on the loopback hop.
func rewrite(u *url.URL, addr net.Addr, db string) string {
	v := *u
	v.Host = dialAddr(addr)
	v.Path, v.RawPath = "/"+db, ""
	q := v.Query()
	for _, k := range sslParams {
		q.Del(k)
	}
	q.Set("sslmode", "disable")
	v.RawQuery = q.Encode()
	return v.String()
}

// dialAddr turns a listener address into one to dial: an unspecified host
// (0.0.0.0, ::) becomes the loopback address.
func dialAddr(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip.To4() == nil {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port)
}

// appEnv is environ with each target rewritten (added when it came from
// NEON_DATABASE_URL), and the new values as log attributes, passwords masked.
func appEnv(environ []string, targets []rewriteTarget, addr net.Addr) (env []string, shown []any) {
	set := map[string]string{}
	for _, t := range targets {
		set[t.name] = rewrite(t.u, addr, t.database)
		shown = append(shown, t.name, config.RedactURL(set[t.name]))
	}
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := set[k]; !ok {
			env = append(env, kv)
		}
	}
	for _, t := range targets {
		env = append(env, t.name+"="+set[t.name])
	}
	return env, shown
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
