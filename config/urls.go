package config

import (
	"net/url"
	"regexp"
	"strings"
)

// mask replaces every password pgguard shows.
const mask = "****"

// connURL is a scheme://userinfo@rest URL split the way pgconn does: the
// userinfo ends at the first '@' if it comes before any '/'.
type connURL struct {
	scheme   string // up to and including "://"
	userinfo string // raw, before '@'; empty when hasUser is false
	hasUser  bool
	rest     string // host, port, path, query
}

// splitURL splits s; ok is false when s has no "scheme://".
func splitURL(s string) (u connURL, ok bool) {
	i := strings.Index(s, "://")
	if i <= 0 {
		return connURL{}, false
	}
	u.scheme, u.rest = s[:i+3], s[i+3:]
	if at := strings.IndexAny(u.rest, "@/"); at >= 0 && u.rest[at] == '@' {
		u.userinfo, u.hasUser, u.rest = u.rest[:at], true, u.rest[at+1:]
	}
	return u, true
}

// credentials returns the decoded user and password of the userinfo.
func (u connURL) credentials() (user, password string, hasPassword bool) {
	rawUser, rawPass, hasPassword := strings.Cut(u.userinfo, ":")
	user = unescape(rawUser)
	if hasPassword {
		password = unescape(rawPass)
	}
	return user, password, hasPassword
}

// dbName returns the decoded path without its leading '/'.
func (u connURL) dbName() string {
	p := u.rest
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	i := strings.IndexByte(p, '/')
	if i < 0 {
		return ""
	}
	return unescape(p[i+1:])
}

func unescape(s string) string {
	if v, err := url.PathUnescape(s); err == nil {
		return v
	}
	return s
}

var (
	// A password query parameter: password=..., sslpassword=...
	queryPassword = regexp.MustCompile(`(?i)([?&](?:ssl)?password=)[^&#]*`)
	// A keyword/value password: password=secret or password='sec ret'.
	kvPassword = regexp.MustCompile(`(?i)(\b(?:ssl)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s]*)`)
)

// RedactURL returns s with every password replaced by "****": the password
// of a URL's userinfo, password and sslpassword query parameters, and
// password= in a keyword/value connection string. It never fails and errs
// on the side of masking: in a URL, everything from the first ':' after the
// user name to the last '@' is masked, so a password containing unescaped
// '@', '/' or '?' is hidden whole (at worst, more than the password is).
func RedactURL(s string) string {
	i := strings.Index(s, "://")
	if i <= 0 {
		return kvPassword.ReplaceAllString(s, "${1}"+mask)
	}
	scheme, rest := s[:i+3], s[i+3:]
	var b strings.Builder
	b.WriteString(scheme)
	if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		user, _, hasPassword := strings.Cut(rest[:at], ":")
		b.WriteString(user)
		if hasPassword {
			b.WriteString(":" + mask)
		}
		b.WriteByte('@')
		rest = rest[at+1:]
	}
	b.WriteString(queryPassword.ReplaceAllString(rest, "${1}"+mask))
	return b.String()
}

// scrub removes the secrets of connection string s from msg, an error text
// that may quote s or parts of it.
func scrub(msg, s string) string {
	msg = strings.ReplaceAll(msg, s, RedactURL(s))
	var secrets []string
	if u, ok := splitURL(s); ok {
		if _, raw, has := strings.Cut(u.userinfo, ":"); has {
			secrets = append(secrets, raw, unescape(raw))
		}
		if at := strings.LastIndexByte(s, '@'); at >= 0 {
			if _, raw, has := strings.Cut(s[len(u.scheme):at], ":"); has {
				secrets = append(secrets, raw, unescape(raw))
			}
		}
		for _, m := range queryPassword.FindAllStringSubmatch(u.rest, -1) {
			secrets = append(secrets, strings.TrimPrefix(m[0], m[1]))
		}
	} else {
		for _, m := range kvPassword.FindAllStringSubmatch(s, -1) {
			v := strings.TrimPrefix(m[0], m[1])
			secrets = append(secrets, v, strings.Trim(v, "'"))
		}
	}
	for _, sec := range secrets {
		if sec != "" && sec != mask {
			msg = strings.ReplaceAll(msg, sec, mask)
		}
	}
	return msg
}

// CheckURL returns why s is not a usable PostgreSQL connection string, or ""
// when it is. The reason quotes s with its password masked, and never the
// password itself.
func CheckURL(s string) string { return checkPostgresURL(s) }

// Scrub removes the secrets of connection string s from msg, an error text
// that may quote s or parts of it.
func Scrub(msg, s string) string { return scrub(msg, s) }
