package config

import (
	"fmt"
	"reflect"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
)

// schemaNode is one table of the config schema, derived from the struct tags
// so unknown-key messages can list what a table accepts.
type schemaNode struct {
	keys     []string               // accepted keys, in declaration order
	children map[string]*schemaNode // sub-tables by key; "*" for map entries
}

var schema = buildSchema(reflect.TypeFor[Config]())

func buildSchema(t reflect.Type) *schemaNode {
	n := &schemaNode{children: map[string]*schemaNode{}}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if !f.IsExported() || name == "" || name == "-" {
			continue
		}
		n.keys = append(n.keys, name)
		ft := f.Type
		if ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		switch {
		case ft.Kind() == reflect.Map:
			e := ft.Elem()
			if e.Kind() == reflect.Pointer {
				e = e.Elem()
			}
			if e.Kind() == reflect.Struct {
				n.children[name] = &schemaNode{children: map[string]*schemaNode{"*": buildSchema(e)}}
			}
		case ft.Kind() == reflect.Struct && ft != reflect.TypeFor[Duration]():
			n.children[name] = buildSchema(ft)
		}
	}
	return n
}

// unknownKeyReason says a key is unknown and what its table accepts,
// suggesting the closest accepted key when one is near.
func unknownKeyReason(k toml.Key) string {
	n := schema
	for _, seg := range k[:len(k)-1] {
		next := n.children[seg]
		if next == nil {
			next = n.children["*"]
		}
		if next == nil {
			return "unknown key"
		}
		n = next
	}
	if n.children["*"] != nil {
		return "unknown key" // a map of user-named tables: anything goes
	}
	last := k[len(k)-1]
	best, bestDist := "", 3
	for _, cand := range n.keys {
		if d := editDistance(last, cand); d < bestDist {
			best, bestDist = cand, d
		}
	}
	if best != "" {
		return fmt.Sprintf("unknown key; did you mean %s?", append(k[:len(k)-1:len(k)-1], best).String())
	}
	where := "the top level"
	if len(k) > 1 {
		where = "[" + k[:len(k)-1].String() + "]"
	}
	accepted := append([]string(nil), n.keys...)
	sort.Strings(accepted)
	return fmt.Sprintf("unknown key; %s accepts %s", where, strings.Join(accepted, ", "))
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
