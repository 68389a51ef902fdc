package admin

import "testing"

func TestCutFleet(t *testing.T) {
	for in, want := range map[string]string{"on FLEET": "on fleet", "off fleet": "off fleet", "on": "on -", "'on'  Fleet": "'on' fleet", "on fleet now": "on fleet now -"} {
		v, ok := cutFleet(in)
		got := v + " -"
		if ok {
			got = v + " fleet"
		}
		if got != want {
			t.Errorf("cutFleet(%q) = %q, want %q", in, got, want)
		}
	}
}
