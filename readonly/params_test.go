package readonly

import "testing"

func TestCheckSetting(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		write       bool
	}{
		{"default_transaction_read_only", "on", false},
		{"default_transaction_read_only", "TRUE", false},
		{"Transaction_Read_Only", "t", false},
		{"default_transaction_read_only", "1", false},
		{"default_transaction_read_only", "ye", false},
		{"default_transaction_read_only", "off", true},
		{"default_transaction_read_only", "", true},
		{"default_transaction_read_only", "o", true},
		{"default_transaction_read_only", " on", true},
		{"standard_conforming_strings", "on", false},
		{"standard_conforming_strings", "off", true},
		{"client_encoding", "UTF8", false},
		{"client_encoding", "Shift_JIS", true},
		{"client_encoding", "win-932", true},
		{"client_encoding", "GB18030", true},
		{"application_name", "anything", false},
	} {
		if got := CheckSetting(tc.name, tc.value); got.Write != tc.write || got.Write == (got.Reason == "") {
			t.Errorf("CheckSetting(%q, %q) = %+v, want write %v", tc.name, tc.value, got, tc.write)
		}
	}
}
