package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/blockrep/blockrep/blockrep"
)

func TestErrors(t *testing.T) {
	threeHosts := lines(
		"resource r0 {",
		"    on alpha { node-id 0; address 127.0.0.1:7789; disk /d/a; }",
		"    on beta { node-id 1; address 127.0.0.1:7790; disk /d/b; }",
		"    on gamma { node-id 2; address 127.0.0.1:7791; disk /d/c; }",
	)
	tests := []struct {
		name, src, want string
	}{
		// statements and sections
		{"unknown statement in net", twoNode("net { protocl C; }"), `t.res:2: unknown statement "protocl" in net section`},
		{"unknown statement in resource", twoNode("ping-int 5;"), `t.res:2: unknown statement "ping-int" in resource section (ping-int belongs in a net section)`},
		{"misplaced disk option hints its section", twoNode("net { al-extents 100; }"), `t.res:2: unknown statement "al-extents" in net section (al-extents belongs in a disk section)`},
		{"unknown statement at top level", "resorce r0 { }", `t.res:1: unknown statement "resorce" at top level`},
		{"unknown statement in on", lines("resource r0 {", "on a {", "node-id 0; disk /d; adress 1.2.3.4:1;", "}", "}"), `t.res:3: unknown statement "adress" in on section`},
		{"unknown option in a DRBD 8 syncer section", twoNode("syncer { group 1; }"), `t.res:2: unknown statement "group" in syncer section`},
		{"DRBD 8 syncer option given twice", twoNode("disk { resync-rate 1M; }\nsyncer { rate 10M; }"), "t.res:3: resync-rate given twice in disk section (first at t.res:2)"},
		{"option given twice in one section", twoNode("net {\nprotocol A;\nprotocol C;\n}"), "t.res:4: protocol given twice in net section (first at t.res:3)"},
		{"section given twice", twoNode("net { }\nnet { }"), "t.res:3: net section given twice in resource r0 (first at t.res:2)"},
		{"section given twice on one line", twoNode("disk { } disk { }"), "t.res:2: disk section given twice in resource r0 (first at t.res:2)"},
		{"syncer without block", twoNode("syncer;"), "t.res:2: syncer must be a section: syncer { ... }"},
		{"common given twice", "common { }\ncommon { }\n", "t.res:2: common section given twice in configuration (first at t.res:1)"},
		{"unknown section in common", "common { on a { } }", `t.res:1: unknown statement "on" in common section`},
		{"unknown statement in global", "global { usage-count no; foo; }", `t.res:1: unknown statement "foo" in global section`},
		{"include inside a section", twoNode(`include "x";`), "t.res:2: include is only allowed at top level"},
		{"option section without block", twoNode("net;"), "t.res:2: net must be a section: net { ... }"},
		{"value option given a block", twoNode("net { protocol { } }"), "t.res:2: protocol takes a value, not a section"},
		{"option without value", twoNode("net { protocol; }"), "t.res:2: protocol takes exactly one value, got 0"},
		{"floating is unsupported", twoNode("floating 10.0.0.1:7789 { }"), "t.res:2: floating: not supported by blockrep: floating (address-matched) host sections"},
		{"stacked resources are unsupported", twoNode("stacked-on-top-of r1 { }"), "t.res:2: stacked-on-top-of: not supported by blockrep: stacked resources"},
		{"second volume", twoNode("volume 1 { disk /d; }"), "t.res:3: disk /d/a: not supported by blockrep: more than one volume per resource (another volume at t.res:2)"},
		{"two volume sections", twoNode("volume 0 { disk /d; }\nvolume 1 { disk /e; }"), "t.res:3: volume 1: not supported by blockrep: more than one volume per resource (another volume at t.res:2)"},
		{"volume and implicit volume 0", twoNode("volume 1 { device minor 1; }\ndevice minor 0;"), "t.res:3: device minor 0: not supported by blockrep: more than one volume per resource (another volume at t.res:2)"},
		{"bad volume number", twoNode("volume x { }"), `t.res:2: bad volume number "x"`},
		{"disk options in an on section are checked", lines("resource r0 {", "on a {", "node-id 0; disk /d;", "disk { al-extents 10; }", "}", "}"),
			"t.res:4: al-extents 10 is out of range 67..65534"},
		{"backing disk given at resource level and in volume 0", twoNode("disk /x;\nvolume 0 { disk /y; }"), "t.res:3: disk given twice in resource r0 (first at t.res:2)"},

		// values
		{"unknown enum value lists accepted ones", twoNode("disk { on-io-error panic; }"), `t.res:2: unknown value "panic" for on-io-error (accepted: detach, pass_on, call-local-io-error)`},
		{"malformed cram-hmac-alg", twoNode(`net { cram-hmac-alg "sha 1"; shared-secret x; }`), `t.res:2: bad cram-hmac-alg "sha 1": want a crypto API algorithm name such as sha256 or crc32c`},
		{"cram-hmac-alg needs a secret", twoNode("net { cram-hmac-alg sha1; }"), "t.res:2: cram-hmac-alg sha1 needs a shared-secret"},
		{"shared-secret too long", twoNode("net { shared-secret " + strings.Repeat("x", 65) + "; }"), "t.res:2: shared-secret is longer than 64 characters"},
		{"unknown protocol", twoNode("net { protocol D; }"), `t.res:2: unknown protocol "D" (want A, B or C)`},
		{"al-extents below range", twoNode("disk { al-extents 66; }"), "t.res:2: al-extents 66 is out of range 67..65534"},
		{"al-extents above range", twoNode("disk { al-extents 65535; }"), "t.res:2: al-extents 65535 is out of range 67..65534"},
		{"timeout above range", twoNode("net { timeout 601; }"), "t.res:2: timeout 601 is out of range 1..600 (unit 0.1 s)"},
		{"time option with suffix", twoNode("net { timeout 1K; }"), `t.res:2: timeout takes a plain number (unit 0.1 s), got "1K"`},
		{"negative number", twoNode("net { ko-count -1; }"), `t.res:2: ko-count takes a number, got "-1"`},
		{"resync-rate zero", twoNode("disk { resync-rate 0; }"), "t.res:2: resync-rate 0 is out of range 1..8388608 (unit KiB)"},
		{"c-max-rate below DRBD minimum", twoNode("disk { c-max-rate 100; }"), "t.res:2: c-max-rate 100 is out of range 250..4194304 (unit KiB)"},
		{"size suffix counts bytes in range check", twoNode("net { sndbuf-size 11M; }"), "t.res:2: sndbuf-size 11M is out of range 0..10485760 (unit bytes)"},
		{"bad size", twoNode("disk { resync-rate 1.5M; }"), `t.res:2: resync-rate: bad size "1.5M" (want a number with an optional K, M, G or T suffix)`},
		{"size overflow", twoNode("disk { resync-rate 99999999999999999999; }"), `t.res:2: resync-rate: bad size "99999999999999999999"`},
		{"bad boolean", twoNode("disk { md-flushes maybe; }"), `t.res:2: unknown value "maybe" for md-flushes (accepted: yes, no)`},
		{"dual primary rejected", twoNode("net { allow-two-primaries yes; }"), "t.res:2: allow-two-primaries yes: not supported by blockrep: dual-primary"},
		{"bare dual primary flag rejected", twoNode("net { allow-two-primaries; }"), "t.res:2: allow-two-primaries yes: not supported by blockrep: dual-primary"},
		{"compression lz4 rejected", twoNode("net { compression lz4; }"), `t.res:2: unknown value "lz4" for compression (accepted: none, zstd, s2)`},
		{"transport other than tcp", twoNode("net { transport rdma; }"), `t.res:2: unknown value "rdma" for transport (accepted: tcp)`},
		{"tls value", twoNode("net { tls maybe; }"), `t.res:2: unknown value "maybe" for tls (accepted: yes, no)`},
		{"quorum out of range", twoNode("options { quorum 33; }"), `t.res:2: unknown value "33" for quorum (accepted: off, majority, all, 1..32)`},
		{"pull-ahead needs protocol A", twoNode("net { on-congestion pull-ahead; }"), "t.res:2: on-congestion pull-ahead requires protocol A (have C)"},
		{"discard-node names unknown host", twoNode("net { after-sb-0pri discard-node-gamma; }"), `t.res:2: after-sb-0pri discard-node-gamma names unknown host "gamma"`},
		{"unknown after-sb-1pri", twoNode("net { after-sb-1pri discard-younger-primary; }"), `t.res:2: unknown value "discard-younger-primary" for after-sb-1pri (accepted: disconnect, consensus, discard-secondary, call-pri-lost-after-sb, violently-as0p)`},
		{"unknown handler", twoNode("handlers { fence-pear \"x\"; }"), `t.res:2: unknown handler "fence-pear" (known: fence-peer, unfence-peer, split-brain, initial-split-brain, pri-lost, pri-lost-after-sb, pri-on-incon-degr, local-io-error, before-resync-target, after-resync-target, before-resync-source, out-of-sync, quorum-lost, disconnected)`},
		{"handler without command", twoNode("handlers { fence-peer; }"), "t.res:2: handler fence-peer takes one quoted command"},
		{"unknown startup option", twoNode("startup { wfc 1; }"), `t.res:2: unknown startup option "wfc" (known: wfc-timeout, degr-wfc-timeout, outdated-wfc-timeout, wait-after-sb, become-primary-on, stacked-timeouts)`},
		{"startup timeout not a number", twoNode("startup { wfc-timeout x; }"), `t.res:2: wfc-timeout takes a number of seconds 0..300000, got "x"`},
		{"peer-device section takes only peer-device options", lines("resource r0 {", "connection {", "host alpha; host beta;", "disk { al-extents 100; }", "}", twoHosts+"}"),
			`t.res:4: disk option "al-extents" cannot be set per connection (peer-device options: resync-rate, c-plan-ahead, c-fill-target, c-delay-target, c-max-rate, c-min-rate)`},

		// resources and hosts
		{"resource defined twice", twoNode("") + twoNode(""), "t.res:6: resource r0 defined twice (first at t.res:1)"},
		{"reserved resource name", "resource all { }", `t.res:1: resource name "all" is reserved`},
		{"resource name with slash", `resource "a/b" { }`, `t.res:1: bad resource name "a/b": no whitespace, control characters or /`},
		{"resource without hosts", "resource r0 {\n}", `t.res:1: resource r0 has no "on HOST" section`},
		{"host given twice", lines("resource r0 {", "on a { node-id 0; disk /d; }", "on a { node-id 1; disk /d; }", "}"), "t.res:3: host a given twice in resource r0 (first at t.res:2)"},
		{"node-id used twice", lines("resource r0 {", "on a { node-id 0; disk /d; }", "on b { node-id 0; disk /d; }", "}"), "t.res:3: node-id 0 of host b is also used by host a (t.res:2)"},
		{"node-id missing", lines("resource r0 {", "on a { disk /d; }", "}"), "t.res:2: host a has no node-id (only a two-host resource without connection sections may leave both out)"},
		{"node-id missing on one of two hosts", lines("resource r0 {", "on a { node-id 0; disk /d; address 1.2.3.4:1; }", "on b { disk /d; address 1.2.3.5:1; }", "}"), "t.res:3: host b has no node-id (only a two-host resource without connection sections may leave both out)"},
		{"node-id missing with a connection section", lines("resource r0 {", "on a { disk /d; address 1.2.3.4:1; }", "on b { disk /d; address 1.2.3.5:1; }", "connection { host a; host b; }", "}"), "t.res:2: host a has no node-id (only a two-host resource without connection sections may leave both out)"},
		{"node-id out of range", lines("resource r0 {", "on a {", "node-id 32; disk /d; }", "}"), `t.res:3: node-id "32" is out of range 0..31`},
		{"disk missing", lines("resource r0 {", "on a { node-id 0; }", "}"), `t.res:2: host a has no disk (give "disk PATH;" or "disk none;")`},
		{"several host names in one on section", lines("resource r0 {", "on a b { node-id 0; disk /d; }", "}"), "t.res:2: on a b: not supported by blockrep: an on section with several host names"},
		{"peer without address", lines("resource r0 {", "on a { node-id 0; disk /d; address 1.2.3.4:1; }", "on b { node-id 1; disk /d; }", "}"), "t.res:3: host b has no address (needed to connect to a)"},
		{"address without port", lines("resource r0 {", "on a { node-id 0; disk /d;", "address 1.2.3.4; }", "}"), `t.res:3: bad address "1.2.3.4": want IP:PORT (IPv6 as [ADDR]:PORT)`},
		{"host name instead of IP", lines("resource r0 {", "on a { node-id 0; disk /d;", "address alpha:7789; }", "}"), `t.res:3: bad address "alpha:7789": want IP:PORT (IPv6 as [ADDR]:PORT)`},
		{"port 0", lines("resource r0 {", "on a { node-id 0; disk /d;", "address 1.2.3.4:0; }", "}"), `t.res:3: bad address "1.2.3.4:0": port 0`},
		{"port above 65535", lines("resource r0 {", "on a { node-id 0; disk /d;", "address 1.2.3.4:65536; }", "}"), `t.res:3: bad address "1.2.3.4:65536": want IP:PORT (IPv6 as [ADDR]:PORT)`},
		{"unbracketed IPv6", lines("resource r0 {", "on a { node-id 0; disk /d;", "address ipv6 ::1:7789; }", "}"), `t.res:3: bad address "::1:7789": want IP:PORT (IPv6 as [ADDR]:PORT)`},
		{"ipv4 family with IPv6 address", lines("resource r0 {", "on a { node-id 0; disk /d;", "address ipv4 [::1]:7789; }", "}"), "t.res:3: address ::1 is not an ipv4 address"},
		{"unsupported address family", lines("resource r0 {", "on a { node-id 0; disk /d;", "address sdp 1.2.3.4:7789; }", "}"), "t.res:3: address family sdp is not supported by blockrep (ipv4, ipv6)"},
		{"same address for two hosts", lines("resource r0 {", "on a { node-id 0; disk /d; address 1.2.3.4:1; }", "on b { node-id 1; disk /d; address 1.2.3.4:1; }", "}"), "t.res:3: address 1.2.3.4:1 of host b is also used by host a (t.res:2)"},
		{"bad meta-disk index", lines("resource r0 {", "on a { node-id 0; disk /d;", "meta-disk /m [x]; }", "}"), "t.res:3: want: meta-disk internal | meta-disk PATH [INDEX]"},
		{"bad device", lines("resource r0 {", "on a { node-id 0; disk /d;", "device drbd0; }", "}"), "t.res:3: want: device PATH | device minor N | device PATH minor N"},
		{"bad initiator name", lines("resource r0 {", "on a { node-id 0; disk /d;", "initiator-name gamma; }", "}"), `t.res:3: bad initiator-name "gamma": want an iSCSI name (iqn.…, eui.… or naa.…)`},
		{"bad export address", lines("resource r0 {", "on a { node-id 0; disk /d;", "export :10809; }", "}"), `t.res:3: bad address ":10809": want IP:PORT (IPv6 as [ADDR]:PORT)`},
		{"address used by two resources on one host", twoNode("") + lines("resource r1 {", "on alpha { node-id 0; address 127.0.0.1:7789; disk /d/x; }", "}"),
			"t.res:7: host alpha: address 127.0.0.1:7789 is also used by resource r0 (t.res:3)"},
		{"device used by two resources on one host", lines("resource r0 {", "on a { node-id 0; disk /d/0; device minor 0; }", "}", "resource r1 {", "on a { node-id 0; disk /d/1; device minor 0; }", "}"),
			"t.res:5: host a: device minor 0 is also used by resource r0 (t.res:2)"},

		// connections
		{"connection names unknown host", threeHosts + lines("connection {", "host alpha;", "host delta;", "}", "}"), `t.res:7: connection names unknown host "delta" (hosts: alpha, beta, gamma)`},
		{"connection with one host", threeHosts + lines("connection {", "host alpha;", "}", "}"), "t.res:5: connection needs two hosts, has 1"},
		{"connection with three hosts", threeHosts + lines("connection {", "host alpha; host beta;", "host gamma;", "}", "}"), "t.res:7: a connection has exactly two hosts (use connection-mesh for more)"},
		{"two paths", threeHosts + lines("connection {", "path { host alpha address 1.1.1.1:1; host beta address 1.1.1.2:1; }", "path { host alpha address 1.1.1.1:2; host beta address 1.1.1.2:2; }", "}", "}"),
			"t.res:7: path: not supported by blockrep: more than one path per connection (first at t.res:6)"},
		{"path host without address", threeHosts + lines("connection {", "path {", "host alpha;", "host beta address 1.1.1.2:1; }", "}", "}"), "t.res:7: path: host alpha needs an address"},
		{"address both in host and path", threeHosts + lines("connection {", "host alpha address 1.1.1.1:1; host beta;", "path { host alpha address 1.1.1.1:2; host beta address 1.1.1.2:2; }", "}", "}"),
			"t.res:6: address of host alpha given both here and in the path (t.res:7)"},
		{"connection given twice", threeHosts + lines("connection { host alpha; host beta; }", "connection { host beta; host alpha; }", "}"), "t.res:6: connection between beta and alpha given twice (first at t.res:5)"},
		{"mesh and connection overlap", threeHosts + lines("connection-mesh { hosts alpha beta gamma; }", "connection { host beta; host gamma; }", "}"), "t.res:6: connection between beta and gamma given twice (first at t.res:5)"},
		{"mesh names unknown host", threeHosts + lines("connection-mesh {", "hosts alpha delta;", "}", "}"), `t.res:6: connection-mesh names unknown host "delta" (hosts: alpha, beta, gamma)`},
		{"mesh without hosts", threeHosts + lines("connection-mesh { net { } }", "}"), "t.res:5: connection-mesh needs a hosts statement"},
		{"IPv4 to IPv6 connection", threeHosts + lines("connection {", "host alpha;", "host beta address ipv6 [::1]:7790;", "}", "}"), "t.res:5: connection between alpha (127.0.0.1:7789) and beta ([::1]:7790) mixes IPv4 and IPv6"},
		{"proxy via", threeHosts + lines("connection {", "host alpha address 127.0.0.1:7789 via proxy on p;", "}", "}"), "t.res:6: via: not supported by blockrep: DRBD Proxy"},
		{"bad port", threeHosts + lines("connection {", "host alpha port 0;", "host beta;", "}", "}"), `t.res:6: bad port "0": want 1..65535`},
		{"port given twice", threeHosts + lines("connection {", "host alpha port 1 port 2;", "host beta;", "}", "}"), `t.res:6: want one "port PORT" for host alpha`},
		{"junk in host statement", threeHosts + lines("connection {", "host alpha adress 1.2.3.4:1;", "host beta;", "}", "}"), `t.res:6: unexpected "adress" in host statement (want address, port or via outside-address)`},
		{"path names a third host", threeHosts + lines("connection {", "host alpha; host beta;", "path { host alpha address 1.1.1.1:1;", "host gamma address 1.1.1.3:1; }", "}", "}"), "t.res:7: path does not name connection host beta"},
		{"connection volume other than 0", threeHosts + lines("connection {", "host alpha; host beta;", "volume 1 { disk { resync-rate 1M; } }", "}", "}"), "t.res:7: volume 1: not supported by blockrep: more than one volume per resource (the resource's volume is 0)"},
		{"connection volume with a device", threeHosts + lines("connection {", "host alpha; host beta;", "volume 0 {", "device minor 1; }", "}", "}"), `t.res:8: unknown statement "device" in connection volume section`},
		{"mesh of one host", threeHosts + lines("connection-mesh {", "hosts alpha;", "}", "}"), "t.res:6: connection-mesh needs at least two hosts"},
		{"mesh host without address", lines("resource r0 {", "on a { node-id 0; address 1.1.1.1:1; disk /d; }", "on b { node-id 1; disk /d; }", "connection-mesh { hosts a b; }", "}"), "t.res:3: host b has no address (needed by connection-mesh at t.res:4)"},
		{"explicit connection to a host without address", lines("resource r0 {", "on a { node-id 0; address 1.1.1.1:1; disk /d; }", "on b { node-id 1; disk /d; }", "connection { host a; host b; }", "}"),
			"t.res:4: no address for host b in this connection (give one in its on section or in the connection)"},
		{"volume 0 given twice", twoNode("volume 0 { disk /x; }\nvolume 0 { device minor 0; }"), "t.res:3: volume 0 given twice in resource r0 (first at t.res:2)"},
		{"unknown statement in volume", twoNode("volume 0 { size 1G; }"), `t.res:2: unknown statement "size" in volume section`},
		{"connection net checked on effective values", threeHosts + lines("connection {", "host alpha; host beta;", "net { on-congestion pull-ahead; }", "}", "}"), "t.res:5: on-congestion pull-ahead requires protocol A (have C)"},

		// syntax, with positions
		{"unterminated string", twoNode("handlers {\nsplit-brain \"x;\n}"), "t.res:3: unterminated string"},
		{"unterminated resource", "resource r0 {\non a {\n}\n", "t.res:1: unterminated resource section (missing })"},
		{"missing semicolon", twoNode("net {\nprotocol C\n}"), `t.res:3: missing ; after "protocol"`},
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

func TestDefaults(t *testing.T) {
	cfg, err := parseText(twoNode(""))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Resources[0]
	// Spelled out rather than compared with DefaultNetOptions, so that a
	// changed default fails here.
	wantNet := NetOptions{
		Protocol: blockrep.ProtocolC, Timeout: 6 * time.Second, PingInt: 10 * time.Second,
		PingTimeout: 500 * time.Millisecond, ConnectInt: 10 * time.Second, KoCount: 7, MaxBuffers: 2048,
		AfterSB0Pri: "disconnect", AfterSB1Pri: "disconnect", AfterSB2Pri: "disconnect",
		RRConflict: "disconnect", OnCongestion: "block", CongestionExtents: 1237,
		Fencing: "dont-care", Compression: "none",
	}
	wantDisk := DiskOptions{
		OnIOError: "detach", ALExtents: 1237, ALUpdates: true, DiskFlushes: true, MDFlushes: true,
		ResyncRate: 250 * 1024, CPlanAhead: 2 * time.Second, CFillTarget: 100 * 512,
		CDelayTarget: time.Second, CMaxRate: 102400 * 1024, CMinRate: 250 * 1024,
	}
	wantOpts := Options{Quorum: "off", QuorumMinimumRedundancy: "off", OnNoQuorum: "suspend-io",
		OnNoDataAccessible: "io-error", AutoPromote: true, Storage: "replicated", HandlerTimeout: time.Minute}
	if r.Net != wantNet {
		t.Errorf("net defaults\n got %+v\nwant %+v", r.Net, wantNet)
	}
	if r.Disk != wantDisk {
		t.Errorf("disk defaults\n got %+v\nwant %+v", r.Disk, wantDisk)
	}
	if r.Options != wantOpts {
		t.Errorf("options defaults\n got %+v\nwant %+v", r.Options, wantOpts)
	}
	h := r.Hosts[0]
	if h.MetaDisk != "internal" || h.MetaIndex != -1 || h.Device != "" || h.Export != "" {
		t.Errorf("host defaults: meta-disk %q index %d device %q export %q", h.MetaDisk, h.MetaIndex, h.Device, h.Export)
	}
	if len(r.Handlers) != 0 || len(r.Startup) != 0 || r.Handlers == nil || r.Startup == nil {
		t.Errorf("handlers/startup: want empty non-nil maps, got %v %v", r.Handlers, r.Startup)
	}
	if len(cfg.Warnings) != 0 {
		t.Errorf("warnings: %v", cfg.Warnings)
	}
}

func TestValues(t *testing.T) {
	tests := []struct {
		name, body string
		get        func(r *Resource) any
		want       any
	}{
		{"timeout in 0.1 s", "net { timeout 50; }", func(r *Resource) any { return r.Net.Timeout }, 5 * time.Second},
		{"ping-int in seconds", "net { ping-int 5; }", func(r *Resource) any { return r.Net.PingInt }, 5 * time.Second},
		{"ping-timeout in 0.1 s", "net { ping-timeout 10; }", func(r *Resource) any { return r.Net.PingTimeout }, time.Second},
		{"connect-int in seconds", "net { connect-int 3; }", func(r *Resource) any { return r.Net.ConnectInt }, 3 * time.Second},
		{"ko-count 0 disables", "net { ko-count 0; }", func(r *Resource) any { return r.Net.KoCount }, 0},
		{"count with K suffix", "net { max-buffers 8K; }", func(r *Resource) any { return r.Net.MaxBuffers }, 8192},
		{"sndbuf-size bare is bytes", "net { sndbuf-size 4096; }", func(r *Resource) any { return r.Net.SndBufSize }, int64(4096)},
		{"rcvbuf-size with suffix", "net { rcvbuf-size 512K; }", func(r *Resource) any { return r.Net.RcvBufSize }, int64(512 << 10)},
		{"congestion-fill bare is sectors", "net { congestion-fill 100; }", func(r *Resource) any { return r.Net.CongestionFill }, int64(51200)},
		{"congestion-fill with suffix is bytes", "net { protocol A; congestion-fill 1G; }", func(r *Resource) any { return r.Net.CongestionFill }, int64(1 << 30)},
		{"congestion-extents", "net { congestion-extents 100; }", func(r *Resource) any { return r.Net.CongestionExtents }, 100},
		{"bare flag means yes", "net { always-asbp; }", func(r *Resource) any { return r.Net.AlwaysASBP }, true},
		{"explicit no", "disk { disk-flushes no; }", func(r *Resource) any { return r.Disk.DiskFlushes }, false},
		{"allow-two-primaries no accepted", "net { allow-two-primaries no; }", func(r *Resource) any { return r.Net.AllowTwoPrimaries }, false},
		{"protocol A", "net { protocol A; }", func(r *Resource) any { return r.Net.Protocol }, blockrep.ProtocolA},
		{"protocol B", "net { protocol B; }", func(r *Resource) any { return r.Net.Protocol }, blockrep.ProtocolB},
		{"discard-node names a host", "net { after-sb-0pri discard-node-beta; }", func(r *Resource) any { return r.Net.AfterSB0Pri }, "discard-node-beta"},
		{"shared secret with spaces", "net { cram-hmac-alg sha512; shared-secret \"a b\"; }", func(r *Resource) any { return r.Net.SharedSecret }, "a b"},
		{"fencing", "net { fencing resource-and-stonith; }", func(r *Resource) any { return r.Net.Fencing }, "resource-and-stonith"},
		{"compression s2", "net { compression s2; }", func(r *Resource) any { return r.Net.Compression }, "s2"},
		{"data-integrity-alg", "net { data-integrity-alg crc32c; }", func(r *Resource) any { return r.Net.DataIntegrityAlg }, "crc32c"},
		{"resync-rate bare is KiB/s", "disk { resync-rate 1000; }", func(r *Resource) any { return r.Disk.ResyncRate }, int64(1000 << 10)},
		{"resync-rate with suffix is bytes/s", "disk { resync-rate 10M; }", func(r *Resource) any { return r.Disk.ResyncRate }, int64(10 << 20)},
		{"lowercase suffix", "disk { resync-rate 10m; }", func(r *Resource) any { return r.Disk.ResyncRate }, int64(10 << 20)},
		{"c-plan-ahead 0 means fixed rate", "disk { c-plan-ahead 0; }", func(r *Resource) any { return r.Disk.CPlanAhead }, time.Duration(0)},
		{"c-fill-target bare is sectors", "disk { c-fill-target 200; }", func(r *Resource) any { return r.Disk.CFillTarget }, int64(200 * 512)},
		{"c-fill-target with suffix", "disk { c-fill-target 1M; }", func(r *Resource) any { return r.Disk.CFillTarget }, int64(1 << 20)},
		{"c-delay-target in 0.1 s", "disk { c-delay-target 5; }", func(r *Resource) any { return r.Disk.CDelayTarget }, 500 * time.Millisecond},
		{"c-max-rate with suffix", "disk { c-max-rate 1G; }", func(r *Resource) any { return r.Disk.CMaxRate }, int64(1 << 30)},
		{"c-min-rate 0", "disk { c-min-rate 0; }", func(r *Resource) any { return r.Disk.CMinRate }, int64(0)},
		{"disk-timeout in 0.1 s", "disk { disk-timeout 600; }", func(r *Resource) any { return r.Disk.DiskTimeout }, time.Minute},
		{"al-extents", "disk { al-extents 6433; }", func(r *Resource) any { return r.Disk.ALExtents }, 6433},
		{"al-updates", "disk { al-updates no; }", func(r *Resource) any { return r.Disk.ALUpdates }, false},
		{"md-flushes", "disk { md-flushes no; }", func(r *Resource) any { return r.Disk.MDFlushes }, false},
		{"on-io-error", "disk { on-io-error call-local-io-error; }", func(r *Resource) any { return r.Disk.OnIOError }, "call-local-io-error"},
		{"reservation", "disk { reservation exclusive-access; }", func(r *Resource) any { return r.Disk.Reservation }, "exclusive-access"},
		{"quorum number", "options { quorum 2; }", func(r *Resource) any { return r.Options.Quorum }, "2"},
		{"quorum number normalized", "options { quorum 02; }", func(r *Resource) any { return r.Options.Quorum }, "2"},
		{"quorum-minimum-redundancy", "options { quorum-minimum-redundancy majority; }", func(r *Resource) any { return r.Options.QuorumMinimumRedundancy }, "majority"},
		{"on-no-quorum", "options { on-no-quorum io-error; }", func(r *Resource) any { return r.Options.OnNoQuorum }, "io-error"},
		{"on-no-data-accessible", "options { on-no-data-accessible suspend-io; }", func(r *Resource) any { return r.Options.OnNoDataAccessible }, "suspend-io"},
		{"auto-promote kept", "options { auto-promote no; }", func(r *Resource) any { return r.Options.AutoPromote }, false},
		{"storage shared", "options { storage shared; }", func(r *Resource) any { return r.Options.Storage }, "shared"},
		{"handlers", "handlers { fence-peer \"/bin/fence \\\"x\\\"\"; }", func(r *Resource) any { return r.Handlers }, map[string]string{"fence-peer": `/bin/fence "x"`}},
		{"startup kept verbatim", "startup { wfc-timeout 10; become-primary-on alpha; wait-after-sb; }", func(r *Resource) any { return r.Startup },
			map[string]string{"wfc-timeout": "10", "become-primary-on": "alpha", "wait-after-sb": ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseText(twoNode(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if got := tt.get(cfg.Resources[0]); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v (%T), want %v (%T)", got, got, tt.want, tt.want)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"4096", 4096, true},
		{"256M", 256 << 20, true},
		{"1G", 1 << 30, true},
		{"2T", 2 << 40, true},
		{"3k", 3 << 10, true},
		{"0", 0, true},
		{"", 0, false},
		{"K", 0, false},
		{"-1", 0, false},
		{"+1", 0, false},
		{"1.5G", 0, false},
		{"1KB", 0, false},
		{"9223372036854775807", 1<<63 - 1, true},
		{"8388608T", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestHosts(t *testing.T) {
	src := lines(
		"resource r0 {",
		"    device /dev/drbd0;",
		"    meta-disk /md/shared;",
		"    volume 0 { disk /d/default; }",
		"    on a {",
		"        node-id 3;",
		"        address ipv4 10.0.0.1:7789;",
		"        export 0.0.0.0:10809;",
		"        initiator-name iqn.2024-01.org.example:a;",
		"    }",
		"    on b {",
		"        node-id 31;",
		"        address ipv6 [fd00::02]:7789;",
		"        volume 0 {",
		"            device /dev/drbd7 minor 7;",
		"            disk none;",
		"            meta-disk internal;",
		"        }",
		"    }",
		"    on c {",
		"        node-id 0;",
		"        address 10.0.0.3:7789;",
		"        device minor 9;",
		"        disk \"/d/with space\";",
		"        meta-disk /md/c[2];",
		"    }",
		"    on d {",
		"        node-id 1;",
		"        address 10.0.0.4:7789;",
		"        device /dev/nbd3;",
		"        meta-disk /md/d 5;",
		"    }",
		"    connection { host a; host c; }",
		"}",
	)
	cfg, err := parseText(src)
	if err != nil {
		t.Fatal(err)
	}
	want := []Host{
		{Name: "a", Pos: Pos{"t.res", 5}, NodeID: 3, Address: "10.0.0.1:7789", Disk: "/d/default", MetaDisk: "/md/shared", MetaIndex: -1,
			Device: "/dev/drbd0", Export: "0.0.0.0:10809", InitiatorName: "iqn.2024-01.org.example:a"},
		{Name: "b", Pos: Pos{"t.res", 11}, NodeID: 31, Address: "[fd00::2]:7789", Disk: "none", MetaDisk: "internal", MetaIndex: -1, Device: "/dev/drbd7 minor 7"},
		{Name: "c", Pos: Pos{"t.res", 20}, NodeID: 0, Address: "10.0.0.3:7789", Disk: "/d/with space", MetaDisk: "/md/c", MetaIndex: 2, Device: "minor 9"},
		{Name: "d", Pos: Pos{"t.res", 27}, NodeID: 1, Address: "10.0.0.4:7789", Disk: "/d/default", MetaDisk: "/md/d", MetaIndex: 5, Device: "/dev/nbd3"},
	}
	r := cfg.Resources[0]
	if len(r.Hosts) != len(want) {
		t.Fatalf("got %d hosts, want %d", len(r.Hosts), len(want))
	}
	for i, h := range r.Hosts {
		if *h != want[i] {
			t.Errorf("host %d\n got %+v\nwant %+v", i, *h, want[i])
		}
	}
	if h, err := r.Host("c"); err != nil || h != r.Hosts[2] {
		t.Errorf("Host(c) = %v, %v", h, err)
	}
	if _, err := r.Host("gamma"); err == nil || err.Error() != `resource r0 has no "on gamma" section (hosts: a, b, c, d)` {
		t.Errorf("Host(gamma) error = %v", err)
	}
}

func TestConfigLookup(t *testing.T) {
	cfg, err := parseText(twoNode("") + "resource r1 {\n" + strings.ReplaceAll(strings.ReplaceAll(twoHosts, "127.0.0.1:77", "127.0.0.1:78"), "/d/", "/e/") + "}\n")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Names(); !reflect.DeepEqual(got, []string{"r0", "r1"}) {
		t.Errorf("Names() = %v", got)
	}
	if r, err := cfg.Resource("r1"); err != nil || r.Name != "r1" {
		t.Errorf("Resource(r1) = %v, %v", r, err)
	}
	if _, err := cfg.Resource("r9"); err == nil || err.Error() != `unknown resource "r9" (defined: r0, r1)` {
		t.Errorf("Resource(r9) error = %v", err)
	}
	if _, err := (&Config{}).Resource("r9"); err == nil || err.Error() != `unknown resource "r9" (no resources defined)` {
		t.Errorf("empty config Resource(r9) error = %v", err)
	}
}

func TestWarnings(t *testing.T) {
	src := lines(
		"require-drbd-module-version-ge 9.0.16;",
		"global { usage-count yes; udev-always-use-vnr; }",
		"resource r0 {",
		"    options { cpu-mask ff; }",
		"    net { transport tcp; tls no; max-epoch-size 16000; }",
		"    disk { disk-barrier no; rs-discard-granularity 1048576; }",
		"    connection { host alpha; host beta; disk { bitmap no; } }",
		twoHosts+"}",
	)
	cfg, err := parseText(src)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, w := range cfg.Warnings {
		got = append(got, w.String())
	}
	want := []string{
		`t.res:1: DRBD option "require-drbd-module-version-ge" is accepted and ignored by blockrep`,
		`t.res:2: DRBD option "usage-count" is accepted and ignored by blockrep`,
		`t.res:2: DRBD option "udev-always-use-vnr" is accepted and ignored by blockrep`,
		`t.res:4: DRBD option "cpu-mask" is accepted and ignored by blockrep`,
		`t.res:5: DRBD option "transport" is accepted and ignored by blockrep`,
		`t.res:5: DRBD option "max-epoch-size" is accepted and ignored by blockrep`,
		`t.res:6: DRBD option "disk-barrier" is accepted and ignored by blockrep`,
		`t.res:6: DRBD option "rs-discard-granularity" is accepted and ignored by blockrep`,
		`t.res:7: DRBD option "bitmap" is accepted and ignored by blockrep`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("warnings\n got %q\nwant %q", got, want)
	}
}

// Every entry of the ignored table is accepted, with one warning, in every
// section it is listed for.
func TestEveryIgnoredOptionWarns(t *testing.T) {
	for _, o := range ignoredOptions {
		value := " 1"
		switch {
		case o.name == "usage-count":
			value = " no"
		case o.name == "transport":
			value = " tcp"
		case o.name == "on-suspended-primary-outdated":
			value = " disconnect"
		case reflect.ValueOf(o.check).Pointer() == reflect.ValueOf(flagValue).Pointer():
			value = ""
		}
		st := o.name + value + ";"
		var srcs []string
		if o.in&secTop != 0 {
			srcs = append(srcs, st+"\n"+twoNode(""))
		}
		if o.in&secGlobal != 0 {
			srcs = append(srcs, "global { "+st+" }\n"+twoNode(""))
		}
		if o.in&secOptions != 0 {
			srcs = append(srcs, twoNode("options { "+st+" }"))
		}
		if o.in&secNet != 0 {
			srcs = append(srcs, twoNode("net { "+st+" }"))
		}
		if o.in&secDisk != 0 {
			srcs = append(srcs, twoNode("disk { "+st+" }"))
		}
		if o.in&secPeerDisk != 0 {
			srcs = append(srcs, twoNode("connection { host alpha; host beta; disk { "+st+" } }"))
		}
		if o.in&secVolume != 0 {
			srcs = append(srcs, twoNode("volume 0 { "+st+" }"))
		}
		if len(srcs) == 0 {
			t.Errorf("%s: listed for no section", o.name)
		}
		for _, src := range srcs {
			cfg, err := parseText(src)
			if err != nil {
				t.Errorf("%s: %v", o.name, err)
				continue
			}
			want := []Warning{{Pos{"t.res", 1}, `DRBD option "` + o.name + `" is accepted and ignored by blockrep`}}
			if strings.HasPrefix(src, "resource") {
				want[0].Pos.Line = 2
			}
			if !reflect.DeepEqual(cfg.Warnings, want) {
				t.Errorf("%s in %q: warnings %v, want %v", o.name, src, cfg.Warnings, want)
			}
		}
	}
}

func TestIgnoredOptionsSortedAndUnique(t *testing.T) {
	names := IgnoredOptions()
	for i := 1; i < len(names); i++ {
		if names[i-1] >= names[i] {
			t.Errorf("IgnoredOptions not sorted and unique at %q, %q", names[i-1], names[i])
		}
	}
	// An option must not be both implemented and ignored in the same section.
	for _, o := range ignoredOptions {
		if (o.in&secNet != 0 && findOption(netTable, o.name) != nil) ||
			(o.in&(secDisk|secPeerDisk) != 0 && findOption(diskTable, o.name) != nil) ||
			(o.in&secOptions != 0 && findOption(optionsTable, o.name) != nil) {
			t.Errorf("%s is both implemented and ignored", o.name)
		}
	}
}

func TestCommonMerging(t *testing.T) {
	src := lines(
		"common {",
		"    net { protocol A; timeout 50; ping-int 3; }",
		"    disk { resync-rate 1M; al-extents 100; }",
		"    handlers { split-brain \"common-sb\"; fence-peer \"common-fence\"; }",
		"    startup { wfc-timeout 5; }",
		"    options { quorum majority; }",
		"}",
		"resource r0 {",
		"    net { timeout 70; }",
		"    disk { al-extents 200; }",
		"    volume 0 { disk { al-extents 300; } }",
		"    handlers { split-brain \"res-sb\"; }",
		"    startup { wfc-timeout 6; }",
		"    options { quorum all; }",
		"    connection { host alpha; host beta; net { protocol B; } disk { resync-rate 2M; } }",
		"    connection { host alpha; host gamma; }",
		"    on alpha { node-id 0; address 127.0.0.1:7789; disk /d/a; }",
		"    on beta { node-id 1; address 127.0.0.1:7790; disk /d/b; }",
		"    on gamma { node-id 2; address 127.0.0.1:7791; disk /d/c; }",
		"}",
		"resource r1 {",
		"    on alpha { node-id 0; disk /e/a; }",
		"}",
	)
	cfg, err := parseText(src)
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Resources[0]
	checks := []struct {
		name      string
		got, want any
	}{
		{"common option kept where the resource is silent", r.Net.PingInt, 3 * time.Second},
		{"resource overrides common", r.Net.Timeout, 7 * time.Second},
		{"common protocol reaches the resource", r.Net.Protocol, blockrep.ProtocolA},
		{"volume 0 disk overrides resource disk", r.Disk.ALExtents, 300},
		{"common disk kept", r.Disk.ResyncRate, int64(1 << 20)},
		{"handlers override per name", r.Handlers, map[string]string{"split-brain": "res-sb", "fence-peer": "common-fence"}},
		{"startup overrides", r.Startup["wfc-timeout"], "6"},
		{"options override", r.Options.Quorum, "all"},
		{"connection overrides protocol", r.Conns[0].Net.Protocol, blockrep.ProtocolB},
		{"connection inherits resource timeout", r.Conns[0].Net.Timeout, 7 * time.Second},
		{"connection inherits common ping-int", r.Conns[0].Net.PingInt, 3 * time.Second},
		{"connection peer-device option", r.Conns[0].Disk.ResyncRate, int64(2 << 20)},
		{"connection keeps resource disk options", r.Conns[0].Disk.ALExtents, 300},
		{"connection without net gets the resource's", r.Conns[1].Net, r.Net},
		{"connection without disk gets the resource's", r.Conns[1].Disk, r.Disk},
		{"common applies to every resource", cfg.Resources[1].Net.Timeout, 5 * time.Second},
		{"common applies to every resource's handlers", cfg.Resources[1].Handlers["split-brain"], "common-sb"},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestCommonAfterResourceStillApplies(t *testing.T) {
	cfg, err := parseText(twoNode("") + "common { net { protocol A; } }\n")
	if err != nil {
		t.Fatal(err)
	}
	if p := cfg.Resources[0].Net.Protocol; p != blockrep.ProtocolA {
		t.Errorf("protocol %v, want A", p)
	}
}

func TestCommonWarnsOnce(t *testing.T) {
	cfg, err := parseText("common { disk { disk-barrier no; } }\n" + twoNode("") + "resource r1 {\non x { node-id 0; disk /x; }\n}\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Warnings) != 1 || cfg.Warnings[0].Pos.Line != 1 {
		t.Errorf("want one warning at line 1, got %v", cfg.Warnings)
	}
}

type connSummary struct {
	A, B, AddrA, AddrB string
	Proto              blockrep.Protocol
}

func summarize(conns []*Connection) []connSummary {
	var out []connSummary
	for _, c := range conns {
		out = append(out, connSummary{c.A.Name, c.B.Name, c.AddrA, c.AddrB, c.Net.Protocol})
	}
	return out
}

func TestConnections(t *testing.T) {
	hosts := lines(
		"    on a { node-id 0; address 10.0.0.1:7789; disk /d; }",
		"    on b { node-id 1; address 10.0.0.2:7789; disk /d; }",
		"    on c { node-id 2; address 10.0.0.3:7789; disk /d; }",
		"    on d { node-id 3; address 10.0.0.4:7789; disk /d; }",
	)
	C, A := blockrep.ProtocolC, blockrep.ProtocolA
	tests := []struct {
		name, body string
		want       []connSummary
	}{
		{"implicit full mesh in host order", "", []connSummary{
			{"a", "b", "10.0.0.1:7789", "10.0.0.2:7789", C}, {"a", "c", "10.0.0.1:7789", "10.0.0.3:7789", C},
			{"a", "d", "10.0.0.1:7789", "10.0.0.4:7789", C}, {"b", "c", "10.0.0.2:7789", "10.0.0.3:7789", C},
			{"b", "d", "10.0.0.2:7789", "10.0.0.4:7789", C}, {"c", "d", "10.0.0.3:7789", "10.0.0.4:7789", C},
		}},
		{"connection-mesh covers listed hosts only", "connection-mesh { hosts c a b; net { protocol A; } }", []connSummary{
			{"c", "a", "10.0.0.3:7789", "10.0.0.1:7789", A}, {"c", "b", "10.0.0.3:7789", "10.0.0.2:7789", A},
			{"a", "b", "10.0.0.1:7789", "10.0.0.2:7789", A},
		}},
		{"mesh plus explicit connection", "connection-mesh { hosts a b c; }\nconnection { host d; host a port 7000; net { protocol A; } }", []connSummary{
			{"a", "b", "10.0.0.1:7789", "10.0.0.2:7789", C}, {"a", "c", "10.0.0.1:7789", "10.0.0.3:7789", C},
			{"b", "c", "10.0.0.2:7789", "10.0.0.3:7789", C}, {"d", "a", "10.0.0.4:7789", "10.0.0.1:7000", A},
		}},
		{"host address override", "connection { host a address 192.168.0.1:8000; host b address ipv4 192.168.0.2:8001; }", []connSummary{
			{"a", "b", "192.168.0.1:8000", "192.168.0.2:8001", C},
		}},
		{"host IP without port keeps the on section's port", "connection { host a address 192.168.0.1; host b address 192.168.0.2 port 9; }", []connSummary{
			{"a", "b", "192.168.0.1:7789", "192.168.0.2:9", C},
		}},
		{"path names the hosts", "connection { path { host c address 1.1.1.3:1; host d address 1.1.1.4:2; } }", []connSummary{
			{"c", "d", "1.1.1.3:1", "1.1.1.4:2", C},
		}},
		{"path gives addresses of named hosts", "connection { host b; host a; path { host a address 1.1.1.1:1; host b address 1.1.1.2:2; } }", []connSummary{
			{"b", "a", "1.1.1.2:2", "1.1.1.1:1", C},
		}},
		{"named connection", "connection ab { host a; host b; }", []connSummary{
			{"a", "b", "10.0.0.1:7789", "10.0.0.2:7789", C},
		}},
		{"skipped connection is gone", "connection { host a; host b; }\nskip connection { host c; host d; }", []connSummary{
			{"a", "b", "10.0.0.1:7789", "10.0.0.2:7789", C},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseText("resource r0 {\n" + tt.body + "\n" + hosts + "}\n")
			if err != nil {
				t.Fatal(err)
			}
			if got := summarize(cfg.Resources[0].Conns); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("connections\n got %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestSingleHostAndSharedStorageNeedNoAddress(t *testing.T) {
	for name, src := range map[string]string{
		"single host":    "resource r0 { on a { node-id 0; disk /d; } }",
		"shared storage": "resource r0 { options { storage shared; } disk /lun; on a { node-id 0; } on b { node-id 1; } }",
	} {
		cfg, err := parseText(src)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if n := len(cfg.Resources[0].Conns); n != 0 {
			t.Errorf("%s: %d connections, want 0", name, n)
		}
	}
}

// Peers of the three-node example, seen from each node: protocol C between
// alpha and beta, A from alpha to gamma over its own path.
func TestPeersThreeNodes(t *testing.T) {
	cfg, err := Parse("testdata/r1.res", mustRead(t, "testdata/r1.res"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := cfg.Resource("r1")
	if err != nil {
		t.Fatal(err)
	}
	type peer struct {
		Host, Local, Remote string
		Proto               blockrep.Protocol
		OnCongestion        string
		Compression         string
		ResyncRate          int64
	}
	C, A := blockrep.ProtocolC, blockrep.ProtocolA
	fixed, lan := int64(100<<20), int64(10<<20) // common's resync-rate; the WAN link's own
	want := map[string][]peer{
		"alpha": {
			{"beta", "127.0.0.1:7791", "127.0.0.1:7792", C, "block", "none", fixed},
			{"gamma", "[::1]:7794", "[::1]:7795", A, "pull-ahead", "zstd", lan},
		},
		"beta": {
			{"alpha", "127.0.0.1:7792", "127.0.0.1:7791", C, "block", "none", fixed},
			{"gamma", "[::1]:7796", "[::1]:7797", C, "block", "none", fixed},
		},
		"gamma": {
			{"alpha", "[::1]:7795", "[::1]:7794", A, "pull-ahead", "zstd", lan},
			{"beta", "[::1]:7797", "[::1]:7796", C, "block", "none", fixed},
		},
	}
	for node, w := range want {
		ps, err := r.Peers(node)
		if err != nil {
			t.Fatal(err)
		}
		var got []peer
		for _, p := range ps {
			got = append(got, peer{p.Host.Name, p.LocalAddress, p.PeerAddress, p.Net.Protocol, p.Net.OnCongestion, p.Net.Compression, p.Disk.ResyncRate})
			if p.Net.Timeout != 5*time.Second {
				t.Errorf("%s->%s: timeout %v, want common's 5s", node, p.Host.Name, p.Net.Timeout)
			}
		}
		if !reflect.DeepEqual(got, w) {
			t.Errorf("Peers(%s)\n got %+v\nwant %+v", node, got, w)
		}
	}
	if _, err := r.Peers("delta"); err == nil {
		t.Error("Peers(delta): no error")
	}
}
