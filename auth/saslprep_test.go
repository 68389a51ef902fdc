package auth

import "testing"

// saslprepVectors are verifiers made by PostgreSQL 15 (CREATE ROLE ...
// PASSWORD with password_encryption = 'scram-sha-256') for non-ASCII
// passwords, with what its SASLprep turns each password into.
var saslprepVectors = []struct {
	name, password, prepared, verifier string
}{
	{
		name:     "NFKC",
		password: "Ⅸ pässwörd", // U+2168 ROMAN NUMERAL NINE is compatibility-equivalent to "IX"
		prepared: "IX pässwörd",
		verifier: "SCRAM-SHA-256$4096:crG9M56Y+t2LvBYh7VaJwA==$plxdSj30vFrtb/7HhEm8Xe+eaFS/X/QgYzNHftDgvZg=:EYKtECvz8hhWxI+pT0lCflOIzHn138oN0H5ze3kyOOY=",
	},
	{
		name:     "mapping",
		password: "pass\u00ADword\u00A0x", // SOFT HYPHEN maps to nothing, NO-BREAK SPACE to space
		prepared: "password x",
		verifier: "SCRAM-SHA-256$4096:1dl0hb+Tubn0g4I1GsPlMA==$aY6kqg8kGwk/p+PkKx70TvORxcf/7VGPPHaM+Oil4Do=:DPl05pRNfXwHP0raWUo6sE71rvPV/61Vhl0MI0wGmGI=",
	},
	{
		name:     "prohibited, used raw",
		password: "\uE000secret", // private use
		prepared: "\uE000secret",
		verifier: "SCRAM-SHA-256$4096:NayTSuzw0F2BDoi3Yie1Rw==$ReMK+qLzOiGj/zJ52HVa1PHTM8LhKp0u03Vy1eMZi2E=:u+hfj4RXOye9TQxWNr6f1uklAQbOO7M3h/z3a7bwt2o=",
	},
	{
		name:     "mixed direction, used raw",
		password: "\u05D0abc", // HEBREW LETTER ALEF then Latin: fails the bidi rule
		prepared: "\u05D0abc",
		verifier: "SCRAM-SHA-256$4096:9BBs8H3uvl/BNbsLC3dhtg==$zvCoOnMOQ97DAxqp2Hjs3CPyPTsq4ofa4I6ASPx0RCk=:YpIif4O33sK1ugCwUlUw8fSZEwAzFmb+5SD+PR7R83M=",
	},
}

func TestSASLprep(t *testing.T) {
	for _, v := range saslprepVectors {
		if got := saslprep(v.password); got != v.prepared {
			t.Errorf("%s: saslprep(%q) = %q, want %q", v.name, v.password, got, v.prepared)
		}
		ok, err := verifySCRAMPlain(v.verifier, v.password)
		if err != nil || !ok {
			t.Errorf("%s: PostgreSQL's verifier does not match %q: %v", v.name, v.password, err)
		}
	}
	for in, want := range map[string]string{
		"plain ascii \x01":     "plain ascii \x01", // ASCII is used as is, controls too
		"\xff\xfe":             "\xff\xfe",         // not UTF-8: raw
		"\u00AD":               "\u00AD",           // maps to nothing: raw
		"e\u0301t\u00E9":       "\u00E9t\u00E9",    // composed
		"\uFB01x":              "fix",              // LATIN SMALL LIGATURE FI
		"\u05D0\u05D1":         "\u05D0\u05D1",     // right-to-left only: fine
		"\u05D0 1 \u05D1":      "\u05D0 1 \u05D1",  // neutral in between: fine
		"1\u05D0":              "1\u05D0",          // must start with RandALCat: raw
		"a\u0221":              "a\u0221",          // unassigned in Unicode 3.2 (A.1): raw
		"pass\u3000word\u200B": "pass word ",       // IDEOGRAPHIC SPACE, ZERO WIDTH SPACE
	} {
		if got := saslprep(in); got != want {
			t.Errorf("saslprep(%q) = %q, want %q", in, got, want)
		}
	}
}
