package config

import (
	"net/url"
	"regexp"
	"strings"
)

// mask replaces every password pgguard shows.
const mask = "****"

// connURL is a scheme://userinfo@rest URL split by hand, so that URLs net/url
// rejects (a bad port, an unescaped character in the password) are still
// understood well enough to redact.
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
	// The userinfo ends at the last '@' before the path; a '/' inside the
	// password is tolerated as long as no '@' has been seen yet.
	at := -1
	for j := 0; j < len(u.rest); j++ {
		c := u.rest[j]
		if c == '@' {
			at = j
		} else if (c == '/' || c == '?' || c == '#') && at >= 0 {
			break
		}
	}
	if at >= 0 {
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
// password= in a keyword/value connection string. It never fails; text it
// cannot understand is returned with the recognisable parts masked.
func RedactURL(s string) string {
	u, ok := splitURL(s)
	if !ok {
		return kvPassword.ReplaceAllString(s, "${1}"+mask)
	}
	var b strings.Builder
	b.WriteString(u.scheme)
	if u.hasUser {
		user, _, hasPassword := strings.Cut(u.userinfo, ":")
		b.WriteString(user)
		if hasPassword {
			b.WriteString(":" + mask)
		}
		b.WriteByte('@')
	}
	b.WriteString(queryPassword.ReplaceAllString(u.rest, "${1}"+mask))
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
