package proxy

import "testing"

func TestTruthySetting(t *testing.T) {
	for sql, want := range map[string]bool{
		"SET default_transaction_read_only TO on":                                     true,
		"SET default_transaction_read_only TO 'on'":                                   true,
		"SET default_transaction_read_only TO true":                                   true,
		"SET default_transaction_read_only TO 1":                                      true,
		"SET default_transaction_read_only TO off":                                    false,
		"SET default_transaction_read_only TO 0":                                      false,
		"SELECT pg_catalog.set_config('default_transaction_read_only', 'on', false)":  true,
		"SELECT pg_catalog.set_config('default_transaction_read_only', 'off', false)": false,
		"SELECT pg_catalog.set_config('default_transaction_read_only', 'yes', false)": true,
	} {
		if got := truthySetting(sql, "default_transaction_read_only"); got != want {
			t.Errorf("%s: %v, want %v", sql, got, want)
		}
	}
}
