package auth

import (
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/bidi"
	"golang.org/x/text/unicode/norm"
	"golang.org/x/text/unicode/rangetable"
)

// saslprep prepares password the way PostgreSQL does before deriving SCRAM
// keys (src/common/saslprep.c; RFC 4013 SASLprep, a profile of RFC 3454
// stringprep), so that a verifier made by PostgreSQL matches the same
// password here and the other way round.
//
// As in PostgreSQL, an ASCII password is used as is, and a password that is
// not valid UTF-8, maps to nothing or holds a prohibited character is used
// raw rather than refused; and, as in PostgreSQL, the prohibited and bidi
// checks look at the mapped input, before normalization.
//
// Differences from PostgreSQL's tables, for characters no password is
// likely to hold: "unassigned" (table A.1, Unicode 3.2) is approximated by
// Unicode 4.1, and the bidi classes (D.1, D.2) are today's.
func saslprep(password string) string {
	if isASCII(password) || !utf8.ValidString(password) {
		return password
	}
	// RFC 4013 §2.1: non-ASCII spaces map to SPACE, "commonly mapped to
	// nothing" characters are removed.
	mapped := make([]rune, 0, len(password))
	for _, r := range password {
		switch {
		case inRanges(r, nonASCIISpace):
			mapped = append(mapped, ' ')
		case inRanges(r, mappedToNothing):
		default:
			mapped = append(mapped, r)
		}
	}
	if len(mapped) == 0 {
		return password
	}
	// RFC 4013 §2.3 and §2.5, RFC 3454 §6.
	hasRandAL := false
	for _, r := range mapped {
		if inRanges(r, prohibited) || !unicode.Is(assigned, r) {
			return password
		}
		hasRandAL = hasRandAL || isRandALCat(r)
	}
	if hasRandAL {
		for _, r := range mapped {
			if isLCat(r) {
				return password
			}
		}
		if !isRandALCat(mapped[0]) || !isRandALCat(mapped[len(mapped)-1]) {
			return password
		}
	}
	// RFC 4013 §2.2: Unicode normalization form KC.
	return norm.NFKC.String(string(mapped))
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// isRandALCat reports RFC 3454 table D.1: bidi class R or AL.
func isRandALCat(r rune) bool {
	p, _ := bidi.LookupRune(r)
	return p.Class() == bidi.R || p.Class() == bidi.AL
}

// isLCat reports RFC 3454 table D.2: bidi class L.
func isLCat(r rune) bool {
	p, _ := bidi.LookupRune(r)
	return p.Class() == bidi.L
}

// inRanges reports whether r is in one of the inclusive ranges.
func inRanges(r rune, ranges [][2]rune) bool {
	for _, rg := range ranges {
		if rg[0] <= r && r <= rg[1] {
			return true
		}
	}
	return false
}

// assigned approximates the complement of RFC 3454 table A.1, the code
// points assigned in Unicode 3.2.
var assigned = rangetable.Assigned("4.1.0")

// nonASCIISpace is RFC 3454 table C.1.2.
var nonASCIISpace = [][2]rune{
	{0x00A0, 0x00A0}, {0x1680, 0x1680}, {0x2000, 0x200B}, {0x202F, 0x202F},
	{0x205F, 0x205F}, {0x3000, 0x3000},
}

// mappedToNothing is RFC 3454 table B.1.
var mappedToNothing = [][2]rune{
	{0x00AD, 0x00AD}, {0x034F, 0x034F}, {0x1806, 0x1806}, {0x180B, 0x180D},
	{0x200B, 0x200D}, {0x2060, 0x2060}, {0xFE00, 0xFE0F}, {0xFEFF, 0xFEFF},
}

// prohibited is RFC 4013 §2.3: RFC 3454 tables C.1.2 (above), C.2.1, C.2.2,
// C.3, C.4, C.5, C.6, C.7, C.8 and C.9.
var prohibited = append([][2]rune{
	// C.2.1 ASCII control characters.
	{0x0000, 0x001F}, {0x007F, 0x007F},
	// C.2.2 Non-ASCII control characters.
	{0x0080, 0x009F}, {0x06DD, 0x06DD}, {0x070F, 0x070F}, {0x180E, 0x180E},
	{0x200C, 0x200D}, {0x2028, 0x2029}, {0x2060, 0x2063}, {0x206A, 0x206F},
	{0xFEFF, 0xFEFF}, {0xFFF9, 0xFFFC}, {0x1D173, 0x1D17A},
	// C.3 Private use.
	{0xE000, 0xF8FF}, {0xF0000, 0xFFFFD}, {0x100000, 0x10FFFD},
	// C.4 Non-character code points: FDD0-FDEF and the last two of each plane.
	{0xFDD0, 0xFDEF}, {0xFFFE, 0xFFFF}, {0x1FFFE, 0x1FFFF}, {0x2FFFE, 0x2FFFF},
	{0x3FFFE, 0x3FFFF}, {0x4FFFE, 0x4FFFF}, {0x5FFFE, 0x5FFFF}, {0x6FFFE, 0x6FFFF},
	{0x7FFFE, 0x7FFFF}, {0x8FFFE, 0x8FFFF}, {0x9FFFE, 0x9FFFF}, {0xAFFFE, 0xAFFFF},
	{0xBFFFE, 0xBFFFF}, {0xCFFFE, 0xCFFFF}, {0xDFFFE, 0xDFFFF}, {0xEFFFE, 0xEFFFF},
	{0xFFFFE, 0xFFFFF}, {0x10FFFE, 0x10FFFF},
	// C.5 Surrogate codes.
	{0xD800, 0xDFFF},
	// C.6 Inappropriate for plain text.
	{0xFFF9, 0xFFFD},
	// C.7 Inappropriate for canonical representation.
	{0x2FF0, 0x2FFB},
	// C.8 Change display properties or deprecated.
	{0x0340, 0x0341}, {0x200E, 0x200F}, {0x202A, 0x202E}, {0x206A, 0x206F},
	// C.9 Tagging characters.
	{0xE0001, 0xE0001}, {0xE0020, 0xE007F},
}, nonASCIISpace...)
