package config

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// DefaultFile is the config file Load reads when neither its path argument
// nor PGGUARD_CONFIG names one, if it exists.
const DefaultFile = "pgguard.toml"

// Load builds the effective configuration and validates it.
//
// The file is path if non-empty, else $PGGUARD_CONFIG, else ./pgguard.toml
// if it exists, else none (defaults plus environment). The file is decoded
// over Default(); unknown keys are errors. The environment (see the Env
// constants) then wins over the file. When no [[users]] are configured, they
// are derived from the databases' primary URLs (see deriveUsers). getenv is
// usually os.Getenv; nil means os.Getenv.
//
// Every problem found is returned at once as an *Error, each located as
// "FILE:LINE: key: reason"; the Config is nil then.
func Load(path string, getenv func(string) string) (*Config, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	file, err := chooseFile(path, getenv)
	if err != nil {
		return nil, err
	}
	c := Default()
	o := newOrigin(file)
	var ps problems
	if file != "" {
		text, err := os.ReadFile(file)
		if err != nil {
			ps.add(Problem{File: file, Reason: fmt.Sprintf("cannot read the config file: %v", err)})
			return nil, ps.err()
		}
		if !decode(file, string(text), c, o, &ps) {
			return nil, ps.err()
		}
	}
	applyEnv(c, getenv, o, &ps)
	applyLimitDefaults(c)
	applyCacheDefaults(c)
	deriveUsers(c, o)
	c.src = o
	var verr *Error
	if errors.As(c.Validate(), &verr) {
		ps = append(ps, verr.Problems...)
	}
	if err := ps.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// chooseFile picks the config file; "" means none.
func chooseFile(path string, getenv func(string) string) (string, error) {
	if path != "" {
		return path, nil
	}
	if p := getenv(EnvConfig); p != "" {
		return p, nil
	}
	switch _, err := os.Stat(DefaultFile); {
	case err == nil:
		return DefaultFile, nil
	case errors.Is(err, os.ErrNotExist):
		return "", nil
	default:
		return "", &Error{Problems: []Problem{{File: DefaultFile, Reason: fmt.Sprintf("cannot read the config file: %v", err)}}}
	}
}

// decode decodes text over c and records key lines in o. It reports false
// when nothing usable was decoded (a syntax or type error).
func decode(file, text string, c *Config, o *origin, ps *problems) bool {
	md, err := toml.Decode(text, c)
	if err != nil {
		p := decodeProblem(file, err)
		if p.Key == "cache" {
			p.Reason += "; write each rule as [[cache]], and the store's settings (redis_url, local_max_bytes, degraded_ttl) under [cache_store]"
		}
		ps.add(p)
		return false
	}
	keys := scanKeys(text)
	lines := map[string][]int{} // MetaData key -> lines, in file order
	for _, k := range keys {
		o.lines[k.path] = k.line
		s := k.key.String()
		lines[s] = append(lines[s], k.line)
	}
	undecoded := md.Undecoded()
	isUndecoded := make(map[string]bool, len(undecoded))
	for _, k := range undecoded {
		isUndecoded[k.String()] = true
	}
	for _, k := range undecoded {
		s := k.String()
		line := 0
		if l := lines[s]; len(l) > 0 {
			line, lines[s] = l[0], l[1:]
		}
		if hasUndecodedParent(k, isUndecoded) {
			continue // reported with its table
		}
		ps.add(Problem{File: file, Line: line, Key: s, Reason: unknownKeyReason(k)})
	}
	return true
}

func hasUndecodedParent(k toml.Key, isUndecoded map[string]bool) bool {
	for n := len(k) - 1; n > 0; n-- {
		if isUndecoded[k[:n].String()] {
			return true
		}
	}
	return false
}

// typeErr matches BurntSushi's untyped decode errors, which carry the line
// and key only in their text.
var typeErr = regexp.MustCompile(`^toml: (?:line (\d+) )?\(last key ("(?:[^"\\]|\\.)*")\): (.*)$`)

// decodeProblem turns a toml decode error into a located Problem.
func decodeProblem(file string, err error) Problem {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		p := Problem{File: file, Line: pe.Position.Line, Key: pe.LastKey, Reason: pe.Message}
		if p.Key == "" || !strings.HasPrefix(pe.Message, "invalid duration") {
			// A syntax error: LastKey is only the last key parsed before it.
			p.Key = ""
			p.Reason = "syntax error: " + pe.Message
		}
		return p
	}
	if m := typeErr.FindStringSubmatch(err.Error()); m != nil {
		line, _ := strconv.Atoi(m[1])
		key, uerr := strconv.Unquote(m[2])
		if uerr != nil {
			key = ""
		}
		return Problem{File: file, Line: line, Key: key, Reason: typeReason(m[3])}
	}
	return Problem{File: file, Reason: strings.TrimPrefix(err.Error(), "toml: ")}
}

// applyLimitDefaults fills the per-rule defaults of [[limits]], which cannot
// live in Default(): action "delay", burst 1, and max_delay 5s for a delay
// rule (a delay of 0 would be a reject; say action = "reject" for that).
func applyLimitDefaults(c *Config) {
	for i := range c.Limits {
		l := &c.Limits[i]
		if l.Action == "" {
			l.Action = "delay"
		}
		if l.Burst == 0 {
			l.Burst = 1
		}
		if l.Action == "delay" && l.MaxDelay.Duration == 0 {
			l.MaxDelay = D(DefaultMaxDelay)
		}
	}
}

// applyCacheDefaults fills the per-rule defaults of [[cache]]:
// max_entry_bytes 1 MiB.
func applyCacheDefaults(c *Config) {
	for i := range c.Cache {
		if c.Cache[i].MaxEntryBytes == 0 {
			c.Cache[i].MaxEntryBytes = DefaultCacheMaxEntryBytes
		}
	}
}

// DefaultMaxDelay is a delay rule's max_delay when none is given.
const DefaultMaxDelay = 5 * time.Second

var incompatible = regexp.MustCompile(`^incompatible types: TOML value has type (\S+); destination has type (.+)$`)

// typeReason rewrites BurntSushi's type mismatch text in the user's terms.
func typeReason(msg string) string {
	m := incompatible.FindStringSubmatch(msg)
	if m == nil {
		return msg
	}
	names := map[string]string{
		"int64": "an integer", "integer": "an integer", "string": "a string",
		"float64": "a number", "float": "a number", "bool": "a boolean", "boolean": "a boolean",
		"[]any": "an array", "[]map[string]any": "an array of tables", "slice": "an array",
		"map[string]any": "a table", "map": "a table", "time.Time": "a date",
		"primitive (string-like)": "a string",
	}
	name := func(s string) string {
		if n, ok := names[s]; ok {
			return n
		}
		return s
	}
	return fmt.Sprintf("is %s; want %s", name(m[1]), name(m[2]))
}
