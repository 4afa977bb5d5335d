package config

import (
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Promoter is a promoter section (blockrep extension): the PostgreSQL service
// stack (device, filesystem, PostgreSQL, floating IP) that the promoter starts
// on the node it promotes.
//
// Resource.Promoter holds the resource-level section with defaults applied.
// Host.Promoter holds an on section's own statements only (a field is zero
// when the statement was not given there). Resource.PromoterFor merges them.
type Promoter struct {
	MountPoint string // absolute path where the filesystem is mounted
	FSType     string // ext4 (default) | xfs
	PGBinDir   string // absolute; default /usr/lib/postgresql/15/bin
	PGData     string // absolute, a directory below MountPoint
	PGUser     string // OS user running PostgreSQL, also its superuser; default postgres
	PGPort     int    // default 5432
	// Address is the floating IPv4 address with its prefix length; zero if none.
	// AddressDev is the interface to put it on ("" = the one holding an address
	// in that subnet).
	Address    netip.Prefix
	AddressDev string
	// Prefer is the host promoted without delay when several could be; "" if none.
	// Resource-wide: every node must agree on it.
	Prefer string
	// RestartLimit in-place restarts of PostgreSQL within RestartWindow; one more
	// failed health check stops the stack and hands the resource to another node.
	// Default 3 in 60 s.
	RestartLimit  int
	RestartWindow time.Duration
	Pos           Pos // of the promoter section (the on section's, when merged with one)
}

// DefaultPromoter returns the defaults of a promoter section.
func DefaultPromoter() Promoter {
	return Promoter{
		FSType:        "ext4",
		PGBinDir:      "/usr/lib/postgresql/15/bin",
		PGUser:        "postgres",
		PGPort:        5432,
		RestartLimit:  3,
		RestartWindow: 60 * time.Second,
	}
}

// AddressString is Address as "IP/PREFIX" or "IP/PREFIX dev IFACE" (the form
// pgagent.Config.Address takes); "" when there is none.
func (p *Promoter) AddressString() string {
	switch {
	case !p.Address.IsValid():
		return ""
	case p.AddressDev != "":
		return p.Address.String() + " dev " + p.AddressDev
	}
	return p.Address.String()
}

// HasPromoter reports whether the resource has a promoter section, at resource
// level or in any on section.
func (r *Resource) HasPromoter() bool {
	if r.Promoter != nil {
		return true
	}
	for _, h := range r.Hosts {
		if h.Promoter != nil {
			return true
		}
	}
	return false
}

// PromoterFor returns node's promoter settings: the resource's promoter
// section with the statements of node's own (in its on section) applied, and
// defaults for the rest. ok is false when the resource has no promoter section,
// node is not one of its hosts (matched as Host matches), or node is diskless:
// a diskless node never runs the service. The result is a copy.
func (r *Resource) PromoterFor(node string) (p *Promoter, ok bool) {
	if !r.HasPromoter() {
		return nil, false
	}
	h, err := r.Host(node)
	if err != nil || h.Disk == "none" {
		return nil, false
	}
	m := r.mergedPromoter(h)
	return &m, true
}

func (r *Resource) mergedPromoter(h *Host) Promoter {
	m := DefaultPromoter()
	if r.Promoter != nil {
		m = *r.Promoter
	}
	if o := h.Promoter; o != nil {
		m.Pos = o.Pos
		for _, st := range promoterStmts {
			if st.format(o) != nil {
				st.copy(&m, o)
			}
		}
	}
	return m
}

// promoterStmt is one statement of a promoter section.
type promoterStmt struct {
	name   string
	parse  func(p *Promoter, s *stmt) error
	format func(p *Promoter) []string // words to print; nil when unset (zero)
	copy   func(dst, src *Promoter)
}

// promoterStmts in the order Dump prints them.
var promoterStmts = []promoterStmt{
	{
		name:   "mount-point",
		parse:  func(p *Promoter, s *stmt) error { return absPath(s, &p.MountPoint, true) },
		format: func(p *Promoter) []string { return wordsOf(p.MountPoint) },
		copy:   func(d, s *Promoter) { d.MountPoint = s.MountPoint },
	},
	{
		name: "fs-type",
		parse: func(p *Promoter, s *stmt) error {
			v, err := oneArg(s)
			if err != nil {
				return err
			}
			if err := checkEnum(s, v, []string{"ext4", "xfs"}); err != nil {
				return err
			}
			p.FSType = v
			return nil
		},
		format: func(p *Promoter) []string { return wordsOf(p.FSType) },
		copy:   func(d, s *Promoter) { d.FSType = s.FSType },
	},
	{
		name:   "pg-bin-dir",
		parse:  func(p *Promoter, s *stmt) error { return absPath(s, &p.PGBinDir, false) },
		format: func(p *Promoter) []string { return wordsOf(p.PGBinDir) },
		copy:   func(d, s *Promoter) { d.PGBinDir = s.PGBinDir },
	},
	{
		name:   "pg-data",
		parse:  func(p *Promoter, s *stmt) error { return absPath(s, &p.PGData, false) },
		format: func(p *Promoter) []string { return wordsOf(p.PGData) },
		copy:   func(d, s *Promoter) { d.PGData = s.PGData },
	},
	{
		name: "pg-port",
		parse: func(p *Promoter, s *stmt) error {
			v, err := oneArg(s)
			if err != nil {
				return err
			}
			n, err := parseUint(v)
			if err != nil || n < 1 || n > 65535 {
				return errorf(s.pos, "pg-port takes a port number 1..65535, got %q", v)
			}
			p.PGPort = int(n)
			return nil
		},
		format: func(p *Promoter) []string {
			if p.PGPort == 0 {
				return nil
			}
			return []string{strconv.Itoa(p.PGPort)}
		},
		copy: func(d, s *Promoter) { d.PGPort = s.PGPort },
	},
	{
		name: "pg-user",
		parse: func(p *Promoter, s *stmt) error {
			v, err := oneArg(s)
			if err != nil {
				return err
			}
			if v == "" || v[0] == '-' || strings.ContainsAny(v, ":/") || hasSpaceOrControl(v) {
				return errorf(s.pos, "bad pg-user %q: want a user name", v)
			}
			p.PGUser = v
			return nil
		},
		format: func(p *Promoter) []string { return wordsOf(p.PGUser) },
		copy:   func(d, s *Promoter) { d.PGUser = s.PGUser },
	},
	{
		name:  "address",
		parse: parseFloatingAddress,
		format: func(p *Promoter) []string {
			if !p.Address.IsValid() {
				return nil
			}
			if p.AddressDev != "" {
				return []string{p.Address.String(), "dev", p.AddressDev}
			}
			return []string{p.Address.String()}
		},
		copy: func(d, s *Promoter) { d.Address, d.AddressDev = s.Address, s.AddressDev },
	},
	{
		// Checked against the hosts once they are known.
		name: "prefer",
		parse: func(p *Promoter, s *stmt) error {
			v, err := oneArg(s)
			if err != nil {
				return err
			}
			if v == "" {
				return errorf(s.pos, "prefer needs a host name")
			}
			p.Prefer = v
			return nil
		},
		format: func(p *Promoter) []string { return wordsOf(p.Prefer) },
		copy:   func(d, s *Promoter) { d.Prefer = s.Prefer },
	},
	{
		name: "restart-limit",
		parse: func(p *Promoter, s *stmt) error {
			if s.hasBlock {
				return errorf(s.pos, "restart-limit takes a value, not a section")
			}
			var n, sec int64
			var err1, err2 error
			if len(s.args) == 2 {
				n, err1 = parseUint(s.args[0])
				sec, err2 = parseUint(s.args[1])
			}
			if len(s.args) != 2 || err1 != nil || err2 != nil || n < 1 || n > 1000 || sec < 1 || sec > 86400 {
				return errorf(s.pos, "want: restart-limit RESTARTS SECONDS (1..1000 restarts within 1..86400 s), got %q", strings.Join(s.args, " "))
			}
			p.RestartLimit, p.RestartWindow = int(n), time.Duration(sec)*time.Second
			return nil
		},
		format: func(p *Promoter) []string {
			if p.RestartLimit == 0 {
				return nil
			}
			return []string{strconv.Itoa(p.RestartLimit), strconv.FormatInt(int64(p.RestartWindow/time.Second), 10)}
		},
		copy: func(d, s *Promoter) { d.RestartLimit, d.RestartWindow = s.RestartLimit, s.RestartWindow },
	},
}

func wordsOf(v string) []string {
	if v == "" {
		return nil
	}
	return []string{v}
}

func hasSpaceOrControl(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= ' ' || c == 0x7f {
			return true
		}
	}
	return false
}

// absPath reads an absolute path, cleaned. A mount point of / would hide the
// root filesystem.
func absPath(s *stmt, dst *string, mountPoint bool) error {
	v, err := oneArg(s)
	if err != nil {
		return err
	}
	if !filepath.IsAbs(v) {
		return errorf(s.pos, "%s %q is not an absolute path", s.name, v)
	}
	v = filepath.Clean(v)
	if mountPoint && v == "/" {
		return errorf(s.pos, "mount-point / would hide the root filesystem")
	}
	*dst = v
	return nil
}

// parseFloatingAddress reads "address IP/PREFIX [dev IFACE]". IPv4 only, as
// the service stack's floating address is.
func parseFloatingAddress(p *Promoter, s *stmt) error {
	if s.hasBlock {
		return errorf(s.pos, "address takes a value, not a section")
	}
	if len(s.args) != 1 && (len(s.args) != 3 || s.args[1] != "dev") {
		return errorf(s.pos, "want: address IP/PREFIX [dev IFACE] in a promoter section")
	}
	pfx, err := netip.ParsePrefix(s.args[0])
	if err != nil {
		return errorf(s.pos, "bad address %q: want IP/PREFIX, such as 198.51.100.10/24", s.args[0])
	}
	if !pfx.Addr().Is4() || pfx.Addr().IsUnspecified() {
		return errorf(s.pos, "address %s: only an IPv4 floating address is supported", pfx)
	}
	dev := ""
	if len(s.args) == 3 {
		dev = s.args[2]
		// IFNAMSIZ is 16 with the NUL.
		if dev == "" || len(dev) > 15 || strings.ContainsRune(dev, '/') || hasSpaceOrControl(dev) || dev == "." || dev == ".." {
			return errorf(s.pos, "bad interface name %q", dev)
		}
	}
	p.Address, p.AddressDev = pfx, dev
	return nil
}

func findPromoterStmt(name string) *promoterStmt {
	for i := range promoterStmts {
		if promoterStmts[i].name == name {
			return &promoterStmts[i]
		}
	}
	return nil
}

// promoterSec is a parsed promoter section and where each statement was.
type promoterSec struct {
	p   *Promoter
	pos map[string]Pos // statement name -> position
}

// parsePromoter reads a promoter section. host is "" for the resource's
// section, which gets the defaults; an on section's keeps only what it gives.
func parsePromoter(sec *stmt, host string) (promoterSec, error) {
	p := &Promoter{Pos: sec.pos}
	if host == "" {
		*p = DefaultPromoter()
		p.Pos = sec.pos
	}
	ps := promoterSec{p: p, pos: map[string]Pos{}}
	for _, s := range sec.block {
		st := findPromoterStmt(s.name)
		if st == nil {
			return ps, unknownStmt(s, "promoter section")
		}
		if first, ok := ps.pos[s.name]; ok {
			return ps, errorf(s.pos, "%s given twice in promoter section (first at %s)", s.name, first)
		}
		ps.pos[s.name] = s.pos
		if s.name == "prefer" && host != "" {
			return ps, errorf(s.pos, "prefer is resource-wide (every node must agree on it): give it in the resource's promoter section, not in on %s", host)
		}
		if err := st.parse(p, s); err != nil {
			return ps, err
		}
	}
	return ps, nil
}

// checkPromoter validates the promoter settings of every data host once the
// hosts are known: prefer names a data host, and each data host ends up with
// mount-point and pg-data, pg-data below mount-point.
func checkPromoter(r *Resource, res promoterSec, hostSecs map[*Host]promoterSec, byName map[string]*Host) error {
	if res.p != nil && res.p.Prefer != "" {
		h := lookupHost(byName, res.p.Prefer)
		switch {
		case h == nil:
			return errorf(res.pos["prefer"], "prefer names unknown host %q (hosts: %s)", res.p.Prefer, hostNames(byName))
		case h.Disk == "none":
			return errorf(res.pos["prefer"], "prefer names diskless host %s (it never runs the service)", h.Name)
		}
		res.p.Prefer = h.Name
	}
	if !r.HasPromoter() {
		return nil
	}
	for _, h := range r.Hosts {
		if h.Disk == "none" {
			continue
		}
		own := hostSecs[h]
		// where is the statement that gives name its value for h, and whether
		// it is h's own.
		where := func(name string) (Pos, bool) {
			if p, ok := own.pos[name]; ok {
				return p, true
			}
			return res.pos[name], false
		}
		m := r.mergedPromoter(h)
		for _, need := range []struct{ name, v string }{{"mount-point", m.MountPoint}, {"pg-data", m.PGData}} {
			if need.v != "" {
				continue
			}
			at := h.Pos
			switch {
			case own.p != nil:
				at = own.p.Pos
			case res.p != nil:
				at = res.p.Pos
			}
			return errorf(at, "host %s has no promoter %s (data hosts need mount-point and pg-data, in the resource's promoter section or their own)", h.Name, need.name)
		}
		rel, err := filepath.Rel(m.MountPoint, m.PGData)
		inside := err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../")
		if inside {
			continue
		}
		dataAt, dataOwn := where("pg-data")
		mpAt, mpOwn := where("mount-point")
		prefix := ""
		if dataOwn || mpOwn {
			prefix = "host " + h.Name + ": "
		}
		if rel == "." {
			return errorf(dataAt, "%spg-data %s must be a directory below mount-point %s, not the mount point itself", prefix, m.PGData, m.MountPoint)
		}
		return errorf(dataAt, "%spg-data %s is not inside mount-point %s (%s)", prefix, m.PGData, m.MountPoint, mpAt)
	}
	return nil
}

// promoter prints a promoter section: the resource's with what differs from
// the defaults, an on section's with what it gives. Printed even when empty:
// the section's presence matters.
func (d *dumper) promoter(depth int, p, base *Promoter) {
	d.line(depth, "promoter {")
	for _, st := range promoterStmts {
		v := st.format(p)
		if v == nil || (base != nil && slices.Equal(v, st.format(base))) {
			continue
		}
		for i, w := range v {
			v[i] = d.word(w)
		}
		d.line(depth+1, "%s %s;", st.name, strings.Join(v, " "))
	}
	d.line(depth, "}")
}
