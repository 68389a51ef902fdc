package config

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Problem is one thing wrong with a configuration, located where the value
// came from.
type Problem struct {
	// File is the config file path, the environment variable that set the
	// value, or "defaults" when there is no file.
	File string
	// Line is the 1-based line in File, or 0 when unknown or not a file.
	Line int
	// Key is the dotted config key, e.g. "pool.size" or "users[0].password";
	// empty for problems not tied to a key (a syntax error, an unreadable file).
	Key string
	// Reason says what is wrong and what is accepted.
	Reason string
}

// String renders the problem as "FILE:LINE: key: reason".
func (p Problem) String() string {
	if p.Key == "" {
		return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Reason)
	}
	return fmt.Sprintf("%s:%d: %s: %s", p.File, p.Line, p.Key, p.Reason)
}

// Error is returned by Load and Validate; it lists every problem found.
type Error struct {
	// Problems are in the order they were found; never empty.
	Problems []Problem
}

// Error renders one "FILE:LINE: key: reason" line per problem.
func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// problems collects Problems; its err method returns nil when there are none,
// so callers never see a typed nil *Error.
type problems []Problem

func (ps *problems) add(p Problem) { *ps = append(*ps, p) }

// err returns the problems as an *Error, ordered for reading: located
// problems by file and line, then those without a line (line 0: environment
// variables, keys absent from the file), each group stable.
func (ps problems) err() error {
	if len(ps) == 0 {
		return nil
	}
	sorted := slices.Clone(ps)
	slices.SortStableFunc(sorted, func(a, b Problem) int {
		if c := cmp.Compare(boolInt(a.Line == 0), boolInt(b.Line == 0)); c != 0 {
			return c
		}
		return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Line, b.Line))
	})
	return &Error{Problems: sorted}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
