package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/blockrep/blockrep/blockrep"
)

// option describes one statement of an options/net/disk section: how to
// parse it into T and how to print it back (Dump).
type option[T any] struct {
	name   string
	peer   bool // disk options that may also sit in a connection's disk section
	flag   bool // yes/no: DRBD also reads "no-NAME;" for "NAME no;"
	parse  func(o *T, s *stmt) error
	format func(o *T) string
}

const decisecond = 100 * time.Millisecond

var netTable = []option[NetOptions]{
	{
		name: "protocol",
		parse: func(o *NetOptions, s *stmt) error {
			v, err := oneArg(s)
			if err != nil {
				return err
			}
			p, err := blockrep.ParseProtocol(v)
			if err != nil {
				return errorf(s.pos, "%v", err)
			}
			o.Protocol = p
			return nil
		},
		format: func(o *NetOptions) string { return o.Protocol.String() },
	},
	{
		name: "shared-secret",
		parse: func(o *NetOptions, s *stmt) error {
			v, err := oneArg(s)
			if err != nil {
				return err
			}
			if len(v) > 64 {
				return errorf(s.pos, "shared-secret is longer than 64 characters")
			}
			o.SharedSecret = v
			return nil
		},
		format: func(o *NetOptions) string { return o.SharedSecret },
	},
	algOpt("cram-hmac-alg", func(o *NetOptions) *string { return &o.CramHMACAlg }),
	durOpt("timeout", func(o *NetOptions) *time.Duration { return &o.Timeout }, decisecond, 1, 600),
	durOpt("ping-int", func(o *NetOptions) *time.Duration { return &o.PingInt }, time.Second, 1, 120),
	durOpt("ping-timeout", func(o *NetOptions) *time.Duration { return &o.PingTimeout }, decisecond, 1, 300),
	durOpt("connect-int", func(o *NetOptions) *time.Duration { return &o.ConnectInt }, time.Second, 1, 120),
	intOpt("ko-count", func(o *NetOptions) *int { return &o.KoCount }, 0, 200),
	intOpt("max-buffers", func(o *NetOptions) *int { return &o.MaxBuffers }, 32, 131072),
	sizeOpt("sndbuf-size", func(o *NetOptions) *int64 { return &o.SndBufSize }, 1, 0, 10<<20),
	sizeOpt("rcvbuf-size", func(o *NetOptions) *int64 { return &o.RcvBufSize }, 1, 0, 10<<20),
	{
		name: "after-sb-0pri",
		parse: func(o *NetOptions, s *stmt) error {
			v, err := oneArg(s)
			if err != nil {
				return err
			}
			// discard-node-NAME is checked against the hosts once they are known.
			if !strings.HasPrefix(v, "discard-node-") || v == "discard-node-" {
				if err := checkEnum(s, v, []string{"disconnect", "discard-younger-primary",
					"discard-older-primary", "discard-zero-changes", "discard-least-changes", "discard-node-NAME"}); err != nil {
					return err
				}
			}
			o.AfterSB0Pri = v
			return nil
		},
		format: func(o *NetOptions) string { return o.AfterSB0Pri },
	},
	enumOpt("after-sb-1pri", func(o *NetOptions) *string { return &o.AfterSB1Pri },
		"disconnect", "consensus", "discard-secondary", "call-pri-lost-after-sb", "violently-as0p"),
	enumOpt("after-sb-2pri", func(o *NetOptions) *string { return &o.AfterSB2Pri },
		"disconnect", "violently-as0p", "call-pri-lost-after-sb"),
	boolOpt("always-asbp", func(o *NetOptions) *bool { return &o.AlwaysASBP }),
	enumOpt("rr-conflict", func(o *NetOptions) *string { return &o.RRConflict },
		"disconnect", "retry-connect", "violently", "call-pri-lost", "auto-discard"),
	enumOpt("on-congestion", func(o *NetOptions) *string { return &o.OnCongestion }, "block", "pull-ahead"),
	sizeOpt("congestion-fill", func(o *NetOptions) *int64 { return &o.CongestionFill }, 512, 0, 10<<21),
	intOpt("congestion-extents", func(o *NetOptions) *int { return &o.CongestionExtents }, 67, 65534),
	enumOpt("fencing", func(o *NetOptions) *string { return &o.Fencing }, "dont-care", "resource-only", "resource-and-stonith"),
	algOpt("csums-alg", func(o *NetOptions) *string { return &o.CsumsAlg }),
	algOpt("verify-alg", func(o *NetOptions) *string { return &o.VerifyAlg }),
	algOpt("data-integrity-alg", func(o *NetOptions) *string { return &o.DataIntegrityAlg }),
	enumOpt("compression", func(o *NetOptions) *string { return &o.Compression }, "none", "zstd", "s2"),
	boolOpt("allow-unauthenticated", func(o *NetOptions) *bool { return &o.AllowUnauthenticated }),
	boolOpt("tls", func(o *NetOptions) *bool { return &o.TLS }),
	pathOpt("tls-certificate", func(o *NetOptions) *string { return &o.TLSCertificate }),
	pathOpt("tls-key", func(o *NetOptions) *string { return &o.TLSKey }),
	pathOpt("tls-ca", func(o *NetOptions) *string { return &o.TLSCA }),
	{
		name: "allow-two-primaries",
		parse: func(o *NetOptions, s *stmt) error {
			v, err := parseBool(s)
			if err != nil {
				return err
			}
			if v {
				return unsupported(s.pos, "allow-two-primaries yes", "dual-primary")
			}
			o.AllowTwoPrimaries = false
			return nil
		},
		format: func(o *NetOptions) string { return yesNo(o.AllowTwoPrimaries) },
	},
}

var diskTable = []option[DiskOptions]{
	enumOpt("on-io-error", func(o *DiskOptions) *string { return &o.OnIOError }, "detach", "pass_on", "call-local-io-error"),
	intOpt("al-extents", func(o *DiskOptions) *int { return &o.ALExtents }, 67, 65534),
	boolOpt("al-updates", func(o *DiskOptions) *bool { return &o.ALUpdates }),
	boolOpt("disk-flushes", func(o *DiskOptions) *bool { return &o.DiskFlushes }),
	boolOpt("md-flushes", func(o *DiskOptions) *bool { return &o.MDFlushes }),
	peer(sizeOpt("resync-rate", func(o *DiskOptions) *int64 { return &o.ResyncRate }, 1024, 1, 8<<20)),
	peer(durOpt("c-plan-ahead", func(o *DiskOptions) *time.Duration { return &o.CPlanAhead }, decisecond, 0, 300)),
	peer(sizeOpt("c-fill-target", func(o *DiskOptions) *int64 { return &o.CFillTarget }, 512, 0, 1<<20)),
	peer(durOpt("c-delay-target", func(o *DiskOptions) *time.Duration { return &o.CDelayTarget }, decisecond, 1, 100)),
	peer(sizeOpt("c-max-rate", func(o *DiskOptions) *int64 { return &o.CMaxRate }, 1024, 250, 4<<20)),
	peer(sizeOpt("c-min-rate", func(o *DiskOptions) *int64 { return &o.CMinRate }, 1024, 0, 4<<20)),
	durOpt("disk-timeout", func(o *DiskOptions) *time.Duration { return &o.DiskTimeout }, decisecond, 0, 6000),
	enumOpt("reservation", func(o *DiskOptions) *string { return &o.Reservation },
		"write-exclusive", "write-exclusive-registrants-only", "exclusive-access"),
}

var optionsTable = []option[Options]{
	quorumOpt("quorum", func(o *Options) *string { return &o.Quorum }),
	quorumOpt("quorum-minimum-redundancy", func(o *Options) *string { return &o.QuorumMinimumRedundancy }),
	enumOpt("on-no-quorum", func(o *Options) *string { return &o.OnNoQuorum }, "suspend-io", "io-error"),
	enumOpt("on-no-data-accessible", func(o *Options) *string { return &o.OnNoDataAccessible }, "io-error", "suspend-io"),
	boolOpt("auto-promote", func(o *Options) *bool { return &o.AutoPromote }),
	enumOpt("storage", func(o *Options) *string { return &o.Storage }, "replicated", "shared"),
	durOpt("handler-timeout", func(o *Options) *time.Duration { return &o.HandlerTimeout }, time.Second, 1, 3600),
}

// handlerNames are DRBD 9's handlers; blockrep runs them the same way.
var handlerNames = []string{
	"fence-peer", "unfence-peer", "split-brain", "initial-split-brain", "pri-lost",
	"pri-lost-after-sb", "pri-on-incon-degr", "local-io-error", "before-resync-target",
	"after-resync-target", "before-resync-source", "out-of-sync", "quorum-lost", "disconnected",
}

// startupNames are kept verbatim; the timeouts are checked against drbd_limits.
var startupNames = []string{
	"wfc-timeout", "degr-wfc-timeout", "outdated-wfc-timeout", "wait-after-sb",
	"become-primary-on", "stacked-timeouts",
}

func peer[T any](o option[T]) option[T] { o.peer = true; return o }

func findOption[T any](table []option[T], name string) *option[T] {
	for i := range table {
		if table[i].name == name {
			return &table[i]
		}
	}
	return nil
}

func peerOptionNames() string {
	var names []string
	for _, o := range diskTable {
		if o.peer {
			names = append(names, o.name)
		}
	}
	return strings.Join(names, ", ")
}

// applySection applies one section's statements to o. warn is nil when the
// section was already checked (common, applied once per resource).
func applySection[T any](o *T, sec *stmt, table []option[T], in section, warn func(Pos, string)) error {
	seen := map[string]Pos{}
	for _, s := range sec.block {
		s = noPrefix(s, table, in)
		if first, ok := seen[s.name]; ok {
			return errorf(s.pos, "%s given twice in %s (first at %s)", s.name, in, first)
		}
		seen[s.name] = s.pos
		if opt := findOption(table, s.name); opt != nil {
			if in == secPeerDisk && !opt.peer {
				return errorf(s.pos, "disk option %q cannot be set per connection (peer-device options: %s)", s.name, peerOptionNames())
			}
			if err := opt.parse(o, s); err != nil {
				return err
			}
			continue
		}
		if ig := findIgnored(in, s.name); ig != nil {
			if err := ignore(ig, s, warn); err != nil {
				return err
			}
			continue
		}
		return unknownStmt(s, in.String())
	}
	return nil
}

// noPrefix rewrites DRBD's "no-NAME;" for a yes/no option to "NAME no;".
func noPrefix[T any](s *stmt, table []option[T], in section) *stmt {
	name, ok := strings.CutPrefix(s.name, "no-")
	if !ok || s.hasBlock || len(s.args) != 0 {
		return s
	}
	opt := findOption(table, name)
	ig := findIgnored(in, name)
	if (opt == nil || !opt.flag) && (ig == nil || ig.check(&stmt{pos: s.pos, name: name}) != nil) {
		return s // not a yes/no option: a zero-value check fails
	}
	return &stmt{pos: s.pos, name: name, args: []string{"no"}}
}

func unknownStmt(s *stmt, where string) error {
	if s.name == "include" {
		return errorf(s.pos, "include is only allowed at top level")
	}
	msg := fmt.Sprintf("unknown statement %q in %s", s.name, where)
	if where == secTop.String() {
		msg = fmt.Sprintf("unknown statement %q at top level", s.name)
	}
	if home := homeSection(s.name); home != "" {
		msg += fmt.Sprintf(" (%s belongs in a %s section)", s.name, home)
	}
	return &Error{Pos: s.pos, Msg: msg}
}

// homeSection names the section an option belongs in, for the hint on a
// misplaced one such as DRBD 8's resource-level "protocol C;".
func homeSection(name string) string {
	switch {
	case findOption(netTable, name) != nil || findIgnored(secNet, name) != nil:
		return "net"
	case findOption(diskTable, name) != nil || findIgnored(secDisk, name) != nil:
		return "disk"
	case findOption(optionsTable, name) != nil || findIgnored(secOptions, name) != nil:
		return "options"
	case contains(handlerNames, name):
		return "handlers"
	case contains(startupNames, name):
		return "startup"
	case name != "address" && findPromoterStmt(name) != nil: // address also belongs in on sections
		return "promoter"
	}
	return ""
}

// oneArg returns the single value of a "name value;" statement.
func oneArg(s *stmt) (string, error) {
	if s.hasBlock {
		return "", errorf(s.pos, "%s takes a value, not a section", s.name)
	}
	if len(s.args) != 1 {
		return "", errorf(s.pos, "%s takes exactly one value, got %d", s.name, len(s.args))
	}
	return s.args[0], nil
}

// parseBool accepts "name yes|no;" and, as DRBD does, a bare "name;" for yes.
func parseBool(s *stmt) (bool, error) {
	if s.hasBlock {
		return false, errorf(s.pos, "%s takes a value, not a section", s.name)
	}
	switch {
	case len(s.args) == 0:
		return true, nil
	case len(s.args) > 1:
		return false, errorf(s.pos, "%s takes yes or no, got %d values", s.name, len(s.args))
	case s.args[0] == "yes":
		return true, nil
	case s.args[0] == "no":
		return false, nil
	}
	return false, errorf(s.pos, "unknown value %q for %s (accepted: yes, no)", s.args[0], s.name)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func checkEnum(s *stmt, v string, values []string) error {
	for _, a := range values {
		if v == a {
			return nil
		}
	}
	return errorf(s.pos, "unknown value %q for %s (accepted: %s)", v, s.name, strings.Join(values, ", "))
}

func enumOpt[T any](name string, f func(*T) *string, values ...string) option[T] {
	return option[T]{
		name: name,
		parse: func(o *T, s *stmt) error {
			v, err := oneArg(s)
			if err != nil {
				return err
			}
			if err := checkEnum(s, v, values); err != nil {
				return err
			}
			*f(o) = v
			return nil
		},
		format: func(o *T) string { return *f(o) },
	}
}

// algOpt is an algorithm name of the kernel's crypto API ("sha1",
// "crc32c", "hmac(sha256)", ...). Any well-formed name is accepted, as
// drbdadm does: whoever uses the option refuses an algorithm it does not
// have, naming it.
func algOpt[T any](name string, f func(*T) *string) option[T] {
	return option[T]{
		name: name,
		parse: func(o *T, s *stmt) error {
			v, err := oneArg(s)
			if err != nil {
				return err
			}
			if !cryptoName(v) {
				return errorf(s.pos, "bad %s %q: want a crypto API algorithm name such as sha256 or crc32c", name, v)
			}
			*f(o) = v
			return nil
		},
		format: func(o *T) string { return *f(o) },
	}
}

// cryptoName reports whether v looks like a crypto API algorithm name
// (CRYPTO_MAX_ALG_NAME is 128 bytes with its NUL).
func cryptoName(v string) bool {
	if v == "" || len(v) > 127 {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-_(),.", c) >= 0) {
			return false
		}
	}
	return true
}

func boolOpt[T any](name string, f func(*T) *bool) option[T] {
	return option[T]{
		name: name,
		flag: true,
		parse: func(o *T, s *stmt) error {
			v, err := parseBool(s)
			if err != nil {
				return err
			}
			*f(o) = v
			return nil
		},
		format: func(o *T) string { return yesNo(*f(o)) },
	}
}

// intOpt is a count; K/M/G suffixes multiply, as drbdsetup allows.
func intOpt[T any](name string, f func(*T) *int, lo, hi int64) option[T] {
	return option[T]{
		name: name,
		parse: func(o *T, s *stmt) error {
			v, err := oneArg(s)
			if err != nil {
				return err
			}
			n, err := ParseSize(v)
			if err != nil {
				return errorf(s.pos, "%s takes a number, got %q", name, v)
			}
			if n < lo || n > hi {
				return errorf(s.pos, "%s %s is out of range %d..%d", name, v, lo, hi)
			}
			*f(o) = int(n)
			return nil
		},
		format: func(o *T) string { return strconv.Itoa(*f(o)) },
	}
}

// durOpt is a plain number of unit; lo and hi are in unit.
func durOpt[T any](name string, f func(*T) *time.Duration, unit time.Duration, lo, hi int64) option[T] {
	unitName := "s"
	if unit == decisecond {
		unitName = "0.1 s"
	}
	return option[T]{
		name: name,
		parse: func(o *T, s *stmt) error {
			v, err := oneArg(s)
			if err != nil {
				return err
			}
			n, err := parseUint(v)
			if err != nil {
				return errorf(s.pos, "%s takes a plain number (unit %s), got %q", name, unitName, v)
			}
			if n < lo || n > hi {
				return errorf(s.pos, "%s %s is out of range %d..%d (unit %s)", name, v, lo, hi, unitName)
			}
			*f(o) = time.Duration(n) * unit
			return nil
		},
		format: func(o *T) string { return strconv.FormatInt(int64(*f(o)/unit), 10) },
	}
}

// sizeOpt stores bytes. A bare number is in unit (DRBD's default unit for the
// option); with a K/M/G/T suffix it is in bytes. lo and hi are in unit.
func sizeOpt[T any](name string, f func(*T) *int64, unit, lo, hi int64) option[T] {
	unitName := map[int64]string{1: "bytes", 512: "sectors", 1024: "KiB"}[unit]
	return option[T]{
		name: name,
		parse: func(o *T, s *stmt) error {
			v, err := oneArg(s)
			if err != nil {
				return err
			}
			n, err := parseScaled(v, unit)
			if err != nil {
				return errorf(s.pos, "%s: %v", name, err)
			}
			if n < lo*unit || n > hi*unit {
				return errorf(s.pos, "%s %s is out of range %d..%d (unit %s)", name, v, lo, hi, unitName)
			}
			*f(o) = n
			return nil
		},
		// Parsed values are whole units: suffixes are multiples of 1024.
		format: func(o *T) string { return strconv.FormatInt(*f(o)/unit, 10) },
	}
}

func quorumOpt[T any](name string, f func(*T) *string) option[T] {
	return option[T]{
		name: name,
		parse: func(o *T, s *stmt) error {
			v, err := oneArg(s)
			if err != nil {
				return err
			}
			switch v {
			case "off", "majority", "all":
			default:
				n, err := parseUint(v)
				if err != nil || n < 1 || n > blockrep.MaxNodes {
					return errorf(s.pos, "unknown value %q for %s (accepted: off, majority, all, 1..%d)", v, name, blockrep.MaxNodes)
				}
				v = strconv.FormatInt(n, 10)
			}
			*f(o) = v
			return nil
		},
		format: func(o *T) string { return *f(o) },
	}
}

// parseUint parses a plain decimal number (no sign, no suffix).
func parseUint(s string) (int64, error) {
	if s == "" {
		return 0, fmt.Errorf("empty number")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("bad number %q", s)
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("number %q is too large", s)
	}
	return n, nil
}

// ParseSize parses a size in bytes: a plain number, or a number with a
// K, M, G or T suffix (either case) meaning 1024ⁿ, as in DRBD.
func ParseSize(s string) (int64, error) {
	mult, num := int64(1), s
	if s != "" {
		switch s[len(s)-1] {
		case 'K', 'k':
			mult = 1 << 10
		case 'M', 'm':
			mult = 1 << 20
		case 'G', 'g':
			mult = 1 << 30
		case 'T', 't':
			mult = 1 << 40
		}
		if mult != 1 {
			num = s[:len(s)-1]
		}
	}
	n, err := parseUint(num)
	if err != nil || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("bad size %q (want a number with an optional K, M, G or T suffix)", s)
	}
	return n * mult, nil
}

// parseScaled is ParseSize where a bare number counts units instead of bytes.
func parseScaled(s string, unit int64) (int64, error) {
	if s != "" && s[len(s)-1] >= '0' && s[len(s)-1] <= '9' {
		n, err := parseUint(s)
		if err != nil || n > math.MaxInt64/unit {
			return 0, fmt.Errorf("bad size %q", s)
		}
		return n * unit, nil
	}
	return ParseSize(s)
}

// pathOpt is a file path (a certificate, a key).
func pathOpt[T any](name string, f func(*T) *string) option[T] {
	return option[T]{
		name: name,
		parse: func(o *T, s *stmt) error {
			v, err := oneArg(s)
			if err != nil {
				return err
			}
			if v == "" {
				return errorf(s.pos, "%s needs a file name", name)
			}
			*f(o) = v
			return nil
		},
		format: func(o *T) string { return *f(o) },
	}
}
