package iscsi

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// DefaultPort is the IANA port of iSCSI.
const DefaultPort = 3260

// URL addresses one logical unit of an iSCSI target, in libiscsi's form:
//
//	iscsi://[user[%password]@]host[:port]/target-iqn/lun
//
// An IPv6 host is written in brackets. libiscsi does not percent-decode: '%' separates
// the CHAP user from the secret, so a secret may contain anything but the URL is then
// not a valid RFC 3986 URL — keep secrets out of URLs that are logged (String redacts).
type URL struct {
	User     string
	Password string
	Host     string // without brackets
	Port     int
	Target   string
	LUN      uint64
}

// ParseURL parses an iscsi:// URL; errors are single lines naming what is wrong and never
// contain the password.
func ParseURL(s string) (*URL, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("iscsi URL %q: %s", redactURL(s), fmt.Sprintf(format, a...))
	}
	rest, ok := strings.CutPrefix(s, "iscsi://")
	if !ok {
		return nil, bad("must start with iscsi://")
	}
	u := &URL{Port: DefaultPort}
	// Target names never contain '@' (RFC 3722 allows only letters, digits, '-', '.',
	// ':'), so the last '@' ends the user information even if the secret contains one.
	if i := strings.LastIndex(rest, "@"); i >= 0 {
		ui := rest[:i]
		rest = rest[i+1:]
		u.User, u.Password, _ = strings.Cut(ui, "%")
		if u.User == "" {
			return nil, bad("empty user name before '@'")
		}
	}
	hostport, path, _ := strings.Cut(rest, "/")
	if hostport == "" {
		return nil, bad("missing host")
	}
	host, port := hostport, ""
	if strings.HasPrefix(hostport, "[") {
		end := strings.Index(hostport, "]")
		if end < 0 {
			return nil, bad("unterminated IPv6 address")
		}
		host = hostport[1:end]
		if r := hostport[end+1:]; r != "" {
			p, ok := strings.CutPrefix(r, ":")
			if !ok {
				return nil, bad("garbage %q after IPv6 address", r)
			}
			port = p
		}
	} else if i := strings.LastIndex(hostport, ":"); i >= 0 {
		host, port = hostport[:i], hostport[i+1:]
		if strings.Contains(host, ":") {
			return nil, bad("IPv6 address must be in brackets")
		}
	}
	if host == "" {
		return nil, bad("missing host")
	}
	u.Host = host
	if port != "" {
		p, err := strconv.Atoi(port)
		if err != nil || p <= 0 || p > 65535 {
			return nil, bad("bad port %q", port)
		}
		u.Port = p
	}
	target, lun, hasLUN := strings.Cut(path, "/")
	if target == "" {
		return nil, bad("missing target name")
	}
	if err := checkName(target); err != nil {
		return nil, bad("%v", err)
	}
	u.Target = target
	if !hasLUN || lun == "" {
		return nil, bad("missing LUN")
	}
	if strings.Contains(lun, "/") {
		return nil, bad("unexpected path after LUN")
	}
	n, err := strconv.ParseUint(lun, 10, 64)
	if err != nil || n >= 1<<14 {
		return nil, bad("bad LUN %q (want 0 to 16383)", lun)
	}
	u.LUN = n
	return u, nil
}

// checkName accepts the iSCSI name forms of RFC 7143 section 4.2.7 loosely: a known
// prefix and no characters that cannot appear in any of them.
func checkName(n string) error {
	l := strings.ToLower(n)
	if !strings.HasPrefix(l, "iqn.") && !strings.HasPrefix(l, "eui.") && !strings.HasPrefix(l, "naa.") {
		return fmt.Errorf("target name %q is not an iqn., eui. or naa. name", n)
	}
	for _, r := range l {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '.', r == ':':
		default:
			return fmt.Errorf("target name %q contains %q", n, r)
		}
	}
	return nil
}

// Addr is host:port for net.Dial.
func (u *URL) Addr() string { return net.JoinHostPort(u.Host, strconv.Itoa(u.Port)) }

// String formats the URL with the password replaced by "***".
func (u *URL) String() string {
	var b strings.Builder
	b.WriteString("iscsi://")
	if u.User != "" {
		b.WriteString(u.User)
		if u.Password != "" {
			b.WriteString("%***")
		}
		b.WriteByte('@')
	}
	b.WriteString(u.Addr())
	b.WriteByte('/')
	b.WriteString(u.Target)
	b.WriteByte('/')
	b.WriteString(strconv.FormatUint(u.LUN, 10))
	return b.String()
}

// redactURL hides a password in a URL that failed to parse.
func redactURL(s string) string {
	rest, ok := strings.CutPrefix(s, "iscsi://")
	if !ok {
		if i := strings.LastIndex(s, "@"); i >= 0 {
			if j := strings.Index(s[:i], "%"); j >= 0 {
				return s[:j] + "%***" + s[i:]
			}
		}
		return s
	}
	i := strings.LastIndex(rest, "@")
	if i < 0 {
		return s
	}
	user, _, hasPw := strings.Cut(rest[:i], "%")
	if !hasPw {
		return s
	}
	return "iscsi://" + user + "%***" + rest[i:]
}
