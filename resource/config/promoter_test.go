package config

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// pgExample is the promoter example of docs/configuration.md.
const pgExample = `resource pg {
  options { quorum majority; on-no-quorum io-error; }
  net { protocol C; shared-secret "x"; ping-int 1; ping-timeout 5; timeout 10; connect-int 1; }
  promoter {
    mount-point  /srv/pg;
    fs-type      ext4;
    pg-bin-dir   /usr/lib/postgresql/15/bin;
    pg-data      /srv/pg/data;
    pg-port      5432;
    pg-user      postgres;
    address      198.18.0.100/24;
    prefer       alpha;
    restart-limit 3 60;
  }
  on alpha { node-id 0; address 198.18.0.1:7789; disk /dev/vdb; meta-disk internal;
             promoter { mount-point /srv/alpha/pg; pg-data /srv/alpha/pg/data; } }
  on beta  { node-id 1; address 198.18.0.2:7789; disk /dev/vdb; meta-disk internal; }
  on gamma { node-id 2; address 198.18.0.3:7789; disk none; }
}
`

// promRes is a resource with a promoter section (body, from line 2, may be
// several lines) and three hosts: alpha and beta with disks, gamma diskless.
// Each host's on section is one line; alpha and beta get the extra statements.
func promRes(body, alpha, beta string) string {
	return lines(
		"resource r0 {",
		body,
		"    on alpha { node-id 0; address 127.0.0.1:7789; disk /d/a; "+alpha+" }",
		"    on beta { node-id 1; address 127.0.0.1:7790; disk /d/b; "+beta+" }",
		"    on gamma { node-id 2; address 127.0.0.1:7791; disk none; }",
		"}",
	)
}

// pgMin is the smallest valid resource-level promoter section.
const pgMin = "promoter { mount-point /srv/pg; pg-data /srv/pg/data; }"

func TestPromoterAccepted(t *testing.T) {
	def := DefaultPromoter()
	with := func(f func(p *Promoter)) Promoter {
		p := def
		p.MountPoint, p.PGData = "/srv/pg", "/srv/pg/data"
		f(&p)
		return p
	}
	tests := []struct {
		name  string
		src   string
		alpha Promoter // PromoterFor("alpha"), positions ignored
		beta  Promoter
	}{
		{"defaults", promRes(pgMin, "", ""), with(func(*Promoter) {}), with(func(*Promoter) {})},
		{"every statement", promRes(`promoter { mount-point /m; fs-type xfs; pg-bin-dir /opt/pg/bin; pg-data /m/d; pg-port 6543;
			pg-user pg; address 10.1.2.3/16 dev eth1; prefer beta; restart-limit 5 300; }`, "", ""),
			Promoter{MountPoint: "/m", FSType: "xfs", PGBinDir: "/opt/pg/bin", PGData: "/m/d", PGPort: 6543, PGUser: "pg",
				Address: netip.MustParsePrefix("10.1.2.3/16"), AddressDev: "eth1", Prefer: "beta", RestartLimit: 5, RestartWindow: 300 * time.Second},
			Promoter{MountPoint: "/m", FSType: "xfs", PGBinDir: "/opt/pg/bin", PGData: "/m/d", PGPort: 6543, PGUser: "pg",
				Address: netip.MustParsePrefix("10.1.2.3/16"), AddressDev: "eth1", Prefer: "beta", RestartLimit: 5, RestartWindow: 300 * time.Second}},
		{"address without dev keeps the host bits", promRes("promoter { mount-point /srv/pg; pg-data /srv/pg/data; address 198.18.0.100/24; }", "", ""),
			with(func(p *Promoter) { p.Address = netip.MustParsePrefix("198.18.0.100/24") }),
			with(func(p *Promoter) { p.Address = netip.MustParsePrefix("198.18.0.100/24") })},
		{"an on section overrides single statements",
			promRes("promoter { mount-point /srv/pg; pg-data /srv/pg/data; pg-port 5432; prefer alpha; }",
				"promoter { mount-point /srv/alpha/pg; pg-data /srv/alpha/pg/data; }", "promoter { pg-port 5433; }"),
			with(func(p *Promoter) { p.MountPoint, p.PGData, p.Prefer = "/srv/alpha/pg", "/srv/alpha/pg/data", "alpha" }),
			with(func(p *Promoter) { p.PGPort, p.Prefer = 5433, "alpha" })},
		{"paths are cleaned", promRes(`promoter { mount-point /srv/pg/; pg-data "/srv/pg/./data/"; pg-bin-dir //usr/bin/; }`, "", ""),
			with(func(p *Promoter) { p.PGBinDir = "/usr/bin" }), with(func(p *Promoter) { p.PGBinDir = "/usr/bin" })},
		{"only on sections", promRes("", "promoter { mount-point /a; pg-data /a/d; }", "promoter { mount-point /b; pg-data /b/d; pg-port 5433; }"),
			with(func(p *Promoter) { p.MountPoint, p.PGData = "/a", "/a/d" }),
			with(func(p *Promoter) { p.MountPoint, p.PGData, p.PGPort = "/b", "/b/d", 5433 })},
		{"an on section's address replaces address and dev", promRes("promoter { mount-point /srv/pg; pg-data /srv/pg/data; address 10.0.0.9/8 dev eth0; }",
			"promoter { address 10.0.0.10/8; }", "promoter { address 10.0.0.11/8 dev ens3; restart-limit 1 1; }"),
			with(func(p *Promoter) { p.Address = netip.MustParsePrefix("10.0.0.10/8") }),
			with(func(p *Promoter) {
				p.Address, p.AddressDev, p.RestartLimit, p.RestartWindow = netip.MustParsePrefix("10.0.0.11/8"), "ens3", 1, time.Second
			})},
		{"an on section may repeat a default", promRes(pgMin, "promoter { fs-type ext4; pg-user postgres; }", "promoter { }"),
			with(func(*Promoter) {}), with(func(*Promoter) {})},
		{"an empty resource section leaves everything to the hosts", promRes("promoter { }", "promoter { mount-point /a; pg-data /a/d; }", "promoter { mount-point /b; pg-data /b/d; }"),
			with(func(p *Promoter) { p.MountPoint, p.PGData = "/a", "/a/d" }),
			with(func(p *Promoter) { p.MountPoint, p.PGData = "/b", "/b/d" })},
		{"pg-data deep below the mount point", promRes("promoter { mount-point /srv; pg-data /srv/a/b/c; restart-limit 1000 86400; }", "", ""),
			with(func(p *Promoter) {
				p.MountPoint, p.PGData, p.RestartLimit, p.RestartWindow = "/srv", "/srv/a/b/c", 1000, 86400*time.Second
			}),
			with(func(p *Promoter) {
				p.MountPoint, p.PGData, p.RestartLimit, p.RestartWindow = "/srv", "/srv/a/b/c", 1000, 86400*time.Second
			})},
		{"a directory named like ..x is inside", promRes("promoter { mount-point /srv; pg-data /srv/..x; }", "", ""),
			with(func(p *Promoter) { p.MountPoint, p.PGData = "/srv", "/srv/..x" }),
			with(func(p *Promoter) { p.MountPoint, p.PGData = "/srv", "/srv/..x" })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseText(tt.src)
			if err != nil {
				t.Fatal(err)
			}
			r := cfg.Resources[0]
			if !r.HasPromoter() {
				t.Error("HasPromoter() = false")
			}
			for _, c := range []struct {
				host string
				want Promoter
			}{{"alpha", tt.alpha}, {"beta", tt.beta}} {
				p, ok := r.PromoterFor(c.host)
				if !ok {
					t.Fatalf("PromoterFor(%s): not ok", c.host)
				}
				got := *p
				got.Pos = Pos{}
				if got != c.want {
					t.Errorf("PromoterFor(%s)\n got %+v\nwant %+v", c.host, got, c.want)
				}
			}
			if p, ok := r.PromoterFor("gamma"); ok || p != nil {
				t.Errorf("PromoterFor(gamma) of a diskless host = %+v, %v", p, ok)
			}
			if p, ok := r.PromoterFor("delta"); ok || p != nil {
				t.Errorf("PromoterFor(delta) of an unknown host = %+v, %v", p, ok)
			}
			roundTrip(t, r)
		})
	}
}

func TestPromoterExample(t *testing.T) {
	cfg, err := parseText(pgExample)
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Resources[0]
	if r.Promoter == nil || r.Promoter.Pos != (Pos{"t.res", 4}) {
		t.Fatalf("resource promoter %+v", r.Promoter)
	}
	if h := r.Hosts[0].Promoter; h == nil || *h != (Promoter{MountPoint: "/srv/alpha/pg", PGData: "/srv/alpha/pg/data", Pos: Pos{"t.res", 16}}) {
		t.Errorf("alpha's own promoter statements: %+v", h)
	}
	if r.Hosts[1].Promoter != nil || r.Hosts[2].Promoter != nil {
		t.Errorf("beta and gamma have no promoter section: %+v %+v", r.Hosts[1].Promoter, r.Hosts[2].Promoter)
	}
	alpha, ok := r.PromoterFor("alpha")
	want := Promoter{MountPoint: "/srv/alpha/pg", FSType: "ext4", PGBinDir: "/usr/lib/postgresql/15/bin", PGData: "/srv/alpha/pg/data",
		PGUser: "postgres", PGPort: 5432, Address: netip.MustParsePrefix("198.18.0.100/24"), Prefer: "alpha",
		RestartLimit: 3, RestartWindow: time.Minute, Pos: Pos{"t.res", 16}}
	if !ok || *alpha != want {
		t.Errorf("PromoterFor(alpha)\n got %+v\nwant %+v", alpha, want)
	}
	beta, ok := r.PromoterFor("beta")
	want.MountPoint, want.PGData, want.Pos = "/srv/pg", "/srv/pg/data", Pos{"t.res", 4}
	if !ok || *beta != want {
		t.Errorf("PromoterFor(beta)\n got %+v\nwant %+v", beta, want)
	}
	// The result is a copy.
	beta.PGPort = 1
	if again, _ := r.PromoterFor("beta"); again.PGPort != 5432 {
		t.Error("PromoterFor returned shared state")
	}
	if got := beta.AddressString(); got != "198.18.0.100/24" {
		t.Errorf("AddressString() = %q", got)
	}
	roundTrip(t, r)
}

func TestPromoterDefaults(t *testing.T) {
	want := Promoter{FSType: "ext4", PGBinDir: "/usr/lib/postgresql/15/bin", PGUser: "postgres", PGPort: 5432,
		RestartLimit: 3, RestartWindow: 60 * time.Second}
	if got := DefaultPromoter(); got != want {
		t.Errorf("DefaultPromoter()\n got %+v\nwant %+v", got, want)
	}
	cfg, err := parseText(twoNode(""))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Resources[0]
	if r.Promoter != nil || r.Hosts[0].Promoter != nil || r.HasPromoter() {
		t.Error("a resource without promoter section has one")
	}
	if p, ok := r.PromoterFor("alpha"); ok || p != nil {
		t.Errorf("PromoterFor without promoter section = %+v, %v", p, ok)
	}
}

func TestPromoterAddressString(t *testing.T) {
	for _, tt := range []struct {
		p    Promoter
		want string
	}{
		{Promoter{}, ""},
		{Promoter{Address: netip.MustParsePrefix("10.0.0.1/24")}, "10.0.0.1/24"},
		{Promoter{Address: netip.MustParsePrefix("10.0.0.1/24"), AddressDev: "eth0"}, "10.0.0.1/24 dev eth0"},
	} {
		if got := tt.p.AddressString(); got != tt.want {
			t.Errorf("AddressString(%+v) = %q, want %q", tt.p, got, tt.want)
		}
	}
}

func TestPromoterPreferMatchesHostNames(t *testing.T) {
	src := lines(
		"resource r0 {",
		"    promoter { mount-point /m; pg-data /m/d; prefer ALPHA; }",
		"    on alpha.example.com { node-id 0; address 127.0.0.1:7789; disk /d/a; }",
		"    on beta.example.com { node-id 1; address 127.0.0.1:7790; disk /d/b; }",
		"}",
	)
	cfg, err := parseText(src)
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Resources[0]
	if p, ok := r.PromoterFor("beta"); !ok || p.Prefer != "alpha.example.com" {
		t.Errorf("prefer is not the host's name: %+v", p)
	}
	roundTrip(t, r)
}

func TestPromoterDisklessHosts(t *testing.T) {
	// A diskless host needs no settings, and may still carry some.
	src := promRes(pgMin, "", "")
	src = strings.Replace(src, "disk none; }", "disk none; promoter { pg-port 1; } }", 1)
	cfg, err := parseText(src)
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Resources[0]
	if _, ok := r.PromoterFor("gamma"); ok {
		t.Error("PromoterFor(gamma) of a diskless host is ok")
	}
	roundTrip(t, r)

	// A resource whose only promoter section sits in a diskless host's on
	// section still has a promoter: the data hosts need their settings.
	src = strings.Replace(promRes("", "", ""), "disk none; }", "disk none; promoter { } }", 1)
	if _, err := parseText(src); err == nil || err.Error() != "t.res:3: host alpha has no promoter mount-point (data hosts need mount-point and pg-data, in the resource's promoter section or their own)" {
		t.Errorf("got %v", err)
	}
}

func TestPromoterErrors(t *testing.T) {
	pr := func(stmts string) string {
		return promRes("promoter { mount-point /srv/pg; pg-data /srv/pg/data; "+stmts+" }", "", "")
	}
	tests := []struct {
		name, src, want string
	}{
		// statements and sections
		{"unknown statement", pr("mount-piont /x;"), `t.res:2: unknown statement "mount-piont" in promoter section`},
		{"unknown statement in an on section's", promRes(pgMin, "promoter { pg-dat /x; }", ""), `t.res:3: unknown statement "pg-dat" in promoter section`},
		{"net option in promoter", pr("ping-int 5;"), `t.res:2: unknown statement "ping-int" in promoter section (ping-int belongs in a net section)`},
		{"promoter statement in the resource", promRes(pgMin+"\npg-port 5433;", "", ""), `t.res:3: unknown statement "pg-port" in resource section (pg-port belongs in a promoter section)`},
		{"promoter statement in an on section", promRes(pgMin, "", "pg-data /x;"), `t.res:4: unknown statement "pg-data" in on section (pg-data belongs in a promoter section)`},
		{"promoter in common", "common { promoter { } }\n" + promRes(pgMin, "", ""), `t.res:1: unknown statement "promoter" in common section`},
		{"statement given twice", promRes("promoter {\nmount-point /a; pg-data /a/d;\nmount-point /b;\n}", "", ""), "t.res:4: mount-point given twice in promoter section (first at t.res:3)"},
		{"statement given twice in an on section's", promRes(pgMin, "promoter { pg-port 1; pg-port 2; }", ""), "t.res:3: pg-port given twice in promoter section (first at t.res:3)"},
		{"section given twice", promRes(pgMin+"\n"+pgMin, "", ""), "t.res:3: promoter section given twice in resource r0 (first at t.res:2)"},
		{"section given twice in an on section", promRes(pgMin, "promoter { } promoter { }", ""), "t.res:3: promoter section given twice in on alpha (first at t.res:3)"},
		{"section without block", promRes("promoter;", "", ""), "t.res:2: promoter must be a section: promoter { ... }"},
		{"section with an argument", promRes("promoter pg { }", "", ""), "t.res:2: promoter section takes no arguments"},
		{"value given a block", pr("pg-user { }"), "t.res:2: pg-user takes a value, not a section"},
		{"value missing", pr("fs-type;"), "t.res:2: fs-type takes exactly one value, got 0"},

		// values
		{"fs-type btrfs", pr("fs-type btrfs;"), `t.res:2: unknown value "btrfs" for fs-type (accepted: ext4, xfs)`},
		{"pg-port 0", pr("pg-port 0;"), `t.res:2: pg-port takes a port number 1..65535, got "0"`},
		{"pg-port 65536", pr("pg-port 65536;"), `t.res:2: pg-port takes a port number 1..65535, got "65536"`},
		{"pg-port not a number", pr("pg-port 5k;"), `t.res:2: pg-port takes a port number 1..65535, got "5k"`},
		{"pg-user with a slash", pr("pg-user a/b;"), `t.res:2: bad pg-user "a/b": want a user name`},
		{"pg-user with a space", pr(`pg-user "a b";`), `t.res:2: bad pg-user "a b": want a user name`},
		{"pg-user like an option", pr("pg-user -x;"), `t.res:2: bad pg-user "-x": want a user name`},
		{"address without prefix", pr("address 198.18.0.100;"), `t.res:2: bad address "198.18.0.100": want IP/PREFIX, such as 198.51.100.10/24`},
		{"address with a port", pr("address 198.18.0.100:5432;"), `t.res:2: bad address "198.18.0.100:5432": want IP/PREFIX, such as 198.51.100.10/24`},
		{"address a host name", pr("address db/24;"), `t.res:2: bad address "db/24": want IP/PREFIX, such as 198.51.100.10/24`},
		{"address prefix too long", pr("address 10.0.0.1/33;"), `t.res:2: bad address "10.0.0.1/33": want IP/PREFIX, such as 198.51.100.10/24`},
		{"address IPv6", pr("address fd00::10/64;"), "t.res:2: address fd00::10/64: only an IPv4 floating address is supported"},
		{"address unspecified", pr("address 0.0.0.0/0;"), "t.res:2: address 0.0.0.0/0: only an IPv4 floating address is supported"},
		{"address with interface but no dev", pr("address 10.0.0.1/24 eth0;"), "t.res:2: want: address IP/PREFIX [dev IFACE] in a promoter section"},
		{"address dev without interface", pr("address 10.0.0.1/24 dev;"), "t.res:2: want: address IP/PREFIX [dev IFACE] in a promoter section"},
		{"address interface name too long", pr("address 10.0.0.1/24 dev abcdefghijklmnop;"), `t.res:2: bad interface name "abcdefghijklmnop"`},
		{"address interface with a slash", pr("address 10.0.0.1/24 dev a/b;"), `t.res:2: bad interface name "a/b"`},
		{"restart-limit one number", pr("restart-limit 3;"), `t.res:2: want: restart-limit RESTARTS SECONDS (1..1000 restarts within 1..86400 s), got "3"`},
		{"restart-limit three numbers", pr("restart-limit 3 60 1;"), `t.res:2: want: restart-limit RESTARTS SECONDS (1..1000 restarts within 1..86400 s), got "3 60 1"`},
		{"restart-limit zero restarts", pr("restart-limit 0 60;"), `t.res:2: want: restart-limit RESTARTS SECONDS (1..1000 restarts within 1..86400 s), got "0 60"`},
		{"restart-limit zero seconds", pr("restart-limit 3 0;"), `t.res:2: want: restart-limit RESTARTS SECONDS (1..1000 restarts within 1..86400 s), got "3 0"`},
		{"restart-limit negative", pr("restart-limit -1 60;"), `t.res:2: want: restart-limit RESTARTS SECONDS (1..1000 restarts within 1..86400 s), got "-1 60"`},
		{"restart-limit with a unit", pr("restart-limit 3 60s;"), `t.res:2: want: restart-limit RESTARTS SECONDS (1..1000 restarts within 1..86400 s), got "3 60s"`},
		{"restart-limit window too long", pr("restart-limit 3 86401;"), `t.res:2: want: restart-limit RESTARTS SECONDS (1..1000 restarts within 1..86400 s), got "3 86401"`},
		{"restart-limit given a block", pr("restart-limit { }"), "t.res:2: restart-limit takes a value, not a section"},
		{"prefer unknown host", pr("prefer delta;"), `t.res:2: prefer names unknown host "delta" (hosts: alpha, beta, gamma)`},
		{"prefer diskless host", pr("prefer gamma;"), "t.res:2: prefer names diskless host gamma (it never runs the service)"},
		{"prefer in an on section", promRes(pgMin, "", "promoter { prefer beta; }"), "t.res:4: prefer is resource-wide (every node must agree on it): give it in the resource's promoter section, not in on beta"},
		{"prefer empty", pr(`prefer "";`), "t.res:2: prefer needs a host name"},

		// paths
		{"relative mount-point", promRes("promoter { mount-point srv/pg; pg-data /srv/pg/data; }", "", ""), `t.res:2: mount-point "srv/pg" is not an absolute path`},
		{"relative pg-data", promRes("promoter { mount-point /srv/pg; pg-data data; }", "", ""), `t.res:2: pg-data "data" is not an absolute path`},
		{"relative pg-bin-dir", pr("pg-bin-dir bin;"), `t.res:2: pg-bin-dir "bin" is not an absolute path`},
		{"relative path in an on section", promRes(pgMin, "promoter { mount-point ./a; }", ""), `t.res:3: mount-point "./a" is not an absolute path`},
		{"mount-point /", promRes("promoter { mount-point /; pg-data /data; }", "", ""), "t.res:2: mount-point / would hide the root filesystem"},
		{"pg-data outside the mount point", promRes("promoter {\nmount-point /srv/pg;\npg-data /var/lib/pg;\n}", "", ""),
			"t.res:4: pg-data /var/lib/pg is not inside mount-point /srv/pg (t.res:3)"},
		{"pg-data beside the mount point, sharing a prefix", promRes("promoter {\nmount-point /srv/pg;\npg-data /srv/pgdata;\n}", "", ""),
			"t.res:4: pg-data /srv/pgdata is not inside mount-point /srv/pg (t.res:3)"},
		{"pg-data above the mount point", promRes("promoter {\nmount-point /srv/pg;\npg-data /srv;\n}", "", ""),
			"t.res:4: pg-data /srv is not inside mount-point /srv/pg (t.res:3)"},
		{"pg-data is the mount point", promRes("promoter {\nmount-point /srv/pg;\npg-data /srv/pg/;\n}", "", ""),
			"t.res:4: pg-data /srv/pg must be a directory below mount-point /srv/pg, not the mount point itself"},
		{"an on section's mount-point leaves the resource's pg-data outside", promRes(pgMin, "", "promoter { mount-point /srv/beta; }"),
			"t.res:2: host beta: pg-data /srv/pg/data is not inside mount-point /srv/beta (t.res:4)"},
		{"an on section's pg-data outside the resource's mount point", promRes(pgMin, "promoter { pg-data /srv/alpha/data; }", ""),
			"t.res:3: host alpha: pg-data /srv/alpha/data is not inside mount-point /srv/pg (t.res:2)"},

		// mandatory statements
		{"no mount-point", promRes("promoter { pg-data /srv/pg/data; }", "", ""),
			"t.res:2: host alpha has no promoter mount-point (data hosts need mount-point and pg-data, in the resource's promoter section or their own)"},
		{"no pg-data", promRes("promoter { mount-point /srv/pg; }", "", ""),
			"t.res:2: host alpha has no promoter pg-data (data hosts need mount-point and pg-data, in the resource's promoter section or their own)"},
		{"no pg-data on one host", promRes("promoter { mount-point /srv/pg; }", "promoter { pg-data /srv/pg/a; }", "promoter { pg-port 1; }"),
			"t.res:4: host beta has no promoter pg-data (data hosts need mount-point and pg-data, in the resource's promoter section or their own)"},
		{"one data host without any promoter section", promRes("", "promoter { mount-point /a; pg-data /a/d; }", ""),
			"t.res:4: host beta has no promoter mount-point (data hosts need mount-point and pg-data, in the resource's promoter section or their own)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseText(tt.src)
			if err == nil {
				t.Fatalf("no error, want %s", tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("got  %s\nwant %s", err, tt.want)
			}
			var e *Error
			if !errors.As(err, &e) || e.Pos.File != "t.res" {
				t.Errorf("error %v is not an *Error naming t.res", err)
			}
		})
	}
}

func TestPromoterDumpFormat(t *testing.T) {
	cfg, err := parseText(pgExample)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := cfg.Resources[0].Dump(&out); err != nil {
		t.Fatal(err)
	}
	want := lines(
		"    promoter {",
		"        mount-point /srv/pg;",
		"        pg-data /srv/pg/data;",
		"        address 198.18.0.100/24;",
		"        prefer alpha;",
		"    }",
		"    on alpha {",
		"        node-id 0;",
		"        address 198.18.0.1:7789;",
		"        disk /dev/vdb;",
		"        meta-disk internal;",
		"        promoter {",
		"            mount-point /srv/alpha/pg;",
		"            pg-data /srv/alpha/pg/data;",
		"        }",
		"    }",
	)
	if !strings.Contains(out.String(), want) {
		t.Errorf("dump\n%s\nlacks\n%s", out.String(), want)
	}
}
