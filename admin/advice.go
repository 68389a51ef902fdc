package admin

import (
	"encoding/json"
	"net/http"

	"github.com/pgguard/pgguard/advisor"
)

// The advisor's findings: GET /advice (JSON) and SHOW ADVICE. Both compute
// them afresh from the advisor's ring, judged against the running config.

// advice serves GET /advice.
func (h *HTTP) advice(w http.ResponseWriter, r *http.Request) {
	adv := h.Advisor.Advise(advisor.SettingsFrom(h.Proxy.Config()))
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(adv)
}

// AdviceView returns the SHOW ADVICE view of a, for Console.Views.
func (c *Console) AdviceView(a *advisor.Analyzer) func() Table {
	return func() Table {
		cols, rows := a.Advise(advisor.SettingsFrom(c.proxy.Config())).Rows()
		return Table{Columns: cols, Rows: rows}
	}
}
