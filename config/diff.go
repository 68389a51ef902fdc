package config

import (
	"reflect"
	"sort"
	"strings"
)

// restartKeys cannot change while pgguard runs: they are bound at startup.
var restartKeys = map[string]bool{
	"listen":                   true,
	"http_listen":              true,
	"tls_cert":                 true,
	"tls_key":                  true,
	"pool.mode":                true,
	"limiter.redis_url":        true,
	"cache_store.redis_url":    true,
	"run.rewrite_env":          true,
	"fleet.redis_url":          true,
	"fleet.instance_id":        true,
	"fleet.lease_ttl":          true,
	"fleet.heartbeat":          true,
	"querylog.advisor_records": true,
}

// Diff lists the dotted keys whose values differ between old and new, e.g.
// "pool.size", "databases.app.primary", "limits.workers.burst", and the
// subset that needs a restart: listen, http_listen, tls_cert, tls_key,
// pool.mode, limiter.redis_url, cache_store.redis_url, run.rewrite_env, querylog.advisor_records, the [fleet] keys, the primary or fallback of a database
// present in both, and its fleet_max_connections set where it was 0. An added or removed database, user or limit rule is one
// key ("databases.NAME", "users.NAME", "limits.NAME", "cache.NAME") and is
// live. Entries of [[users]], [[limits]] and [[cache]] are matched by name. Both lists are sorted; a nil
// Config counts as empty.
func Diff(old, new *Config) (changed, needsRestart []string) {
	if old == nil {
		old = &Config{}
	}
	if new == nil {
		new = &Config{}
	}
	d := &differ{}
	d.walk("", reflect.ValueOf(old).Elem(), reflect.ValueOf(new).Elem())
	sort.Strings(d.changed)
	for _, k := range d.changed {
		if restartKeys[k] || isUpstreamKey(k) {
			needsRestart = append(needsRestart, k)
		}
	}
	// A fleet cap set where there was none: the pool takes leases from its start.
	for name, nd := range new.Databases {
		if od := old.Databases[name]; od != nil && nd != nil && od.FleetMaxConnections == 0 && nd.FleetMaxConnections > 0 {
			needsRestart = append(needsRestart, joinKey(joinKey("databases", name), "fleet_max_connections"))
		}
	}
	sort.Strings(needsRestart)
	return d.changed, needsRestart
}

// isUpstreamKey reports whether k is "databases.NAME.primary" or
// "databases.NAME.fallback" or "databases.NAME.replicas".
func isUpstreamKey(k string) bool {
	if !strings.HasPrefix(k, "databases.") {
		return false
	}
	return strings.HasSuffix(k, ".primary") || strings.HasSuffix(k, ".fallback") || strings.HasSuffix(k, ".replicas")
}

type differ struct{ changed []string }

var durationType = reflect.TypeFor[Duration]()

func (d *differ) walk(key string, a, b reflect.Value) {
	switch {
	case a.Kind() == reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			if a.IsNil() != b.IsNil() {
				d.changed = append(d.changed, key)
			}
			return
		}
		d.walk(key, a.Elem(), b.Elem())
	case a.Kind() == reflect.Struct && a.Type() != durationType:
		t := a.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if !f.IsExported() || name == "" || name == "-" {
				continue
			}
			d.walk(joinKey(key, name), a.Field(i), b.Field(i))
		}
	case a.Kind() == reflect.Map:
		d.entries(key, mapEntries(a), mapEntries(b))
	case a.Kind() == reflect.Slice && hasNameField(a.Type().Elem()):
		ea, oka := sliceEntries(a)
		eb, okb := sliceEntries(b)
		if oka && okb {
			d.entries(key, ea, eb)
		} else if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			d.changed = append(d.changed, key) // names not unique: compare whole
		}
	default:
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			d.changed = append(d.changed, key)
		}
	}
}

// entries compares named entries: added or removed ones are one key each,
// common ones are compared field by field.
func (d *differ) entries(key string, a, b map[string]reflect.Value) {
	names := make([]string, 0, len(a)+len(b))
	for n := range a {
		names = append(names, n)
	}
	for n := range b {
		if _, ok := a[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		va, oka := a[n]
		vb, okb := b[n]
		if oka && okb {
			d.walk(joinKey(key, n), va, vb)
		} else {
			d.changed = append(d.changed, joinKey(key, n))
		}
	}
}

func mapEntries(m reflect.Value) map[string]reflect.Value {
	out := make(map[string]reflect.Value, m.Len())
	for it := m.MapRange(); it.Next(); {
		out[it.Key().String()] = it.Value()
	}
	return out
}

// sliceEntries indexes a slice of structs by their Name field; ok is false
// when names repeat.
func sliceEntries(s reflect.Value) (map[string]reflect.Value, bool) {
	out := make(map[string]reflect.Value, s.Len())
	for i := 0; i < s.Len(); i++ {
		name := s.Index(i).FieldByName("Name").String()
		if _, dup := out[name]; dup {
			return nil, false
		}
		out[name] = s.Index(i)
	}
	return out, true
}

func hasNameField(t reflect.Type) bool {
	if t.Kind() != reflect.Struct {
		return false
	}
	f, ok := t.FieldByName("Name")
	return ok && f.Type.Kind() == reflect.String && len(f.Index) == 1
}
