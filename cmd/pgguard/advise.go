package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/pgguard/pgguard/advisor"
	"github.com/pgguard/pgguard/config"
)

// advise is `pgguard advise [-config FILE] [-json] FILE...`: the advisor's
// findings computed from query log files (JSON lines; "-" reads stdin),
// judged against the config when one is given (else the defaults). The
// records go through the same Analyzer the running proxy feeds.
func advise(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pgguard advise", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "config file the findings are judged against (suspend_after, pool, existing rules); default: built-in defaults")
	asJSON := fs.Bool("json", false, "print the findings as GET /advice does")
	maxRecords := fs.Int("max-records", 10_000_000, "queries held (the newest are kept)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "usage: pgguard advise [-config FILE] [-json] QUERYLOG.jsonl...")
		return 2
	}
	settings := advisor.DefaultSettings()
	if *cfgPath != "" {
		cfg, err := config.Load(*cfgPath, os.Getenv)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		settings = advisor.SettingsFrom(cfg)
	}
	a := advisor.New(advisor.Options{MaxRecords: *maxRecords})
	for _, name := range fs.Args() {
		f := os.Stdin
		if name != "-" {
			var err error
			if f, err = os.Open(name); err != nil {
				fmt.Fprintln(stderr, "pgguard advise:", err)
				return 1
			}
		}
		_, err := a.ReadLog(f)
		if name != "-" {
			f.Close()
		}
		if err != nil {
			fmt.Fprintf(stderr, "pgguard advise: %s: %v\n", name, err)
			return 1
		}
	}
	adv := a.Advise(settings)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(adv)
		return 0
	}
	_, rows := adv.Rows()
	for _, r := range rows {
		fmt.Fprintf(stdout, "%s: %s\n  %s\n", strings.ToUpper(r[0]), r[1], r[2])
		if r[3] != "" {
			fmt.Fprintf(stdout, "  %s\n", strings.ReplaceAll(strings.TrimRight(r[3], "\n"), "\n", "\n  "))
		}
		fmt.Fprintln(stdout)
	}
	return 0
}
