package config

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blockrep/blockrep/blockrep"
)

func TestDRBD84Syntax(t *testing.T) {
	cfg, err := parseText(lines(
		"common {",
		"  protocol A;",
		"  syncer { rate 10M; al-extents 379; verify-alg crc32c; c-max-rate 500M; use-rle; }",
		"}",
		"resource r0 {",
		"  disk { no-disk-flushes; no-disk-barrier; fencing resource-only; }",
		"  handlers { outdate-peer \"/bin/fence\"; }",
		"  syncer { csums-alg md5; after r9; }",
		"  on a { address 10.0.0.1:7789; disk /d; }",
		"  on b { address 10.0.0.2:7789; disk /d; }",
		"}"))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Resources[0]
	if r.Net.Protocol != blockrep.ProtocolA || r.Net.VerifyAlg != "crc32c" || r.Net.CsumsAlg != "md5" || r.Net.Fencing != "resource-only" {
		t.Errorf("net %+v", r.Net)
	}
	if r.Disk.ResyncRate != 10<<20 || r.Disk.ALExtents != 379 || r.Disk.CMaxRate != 500<<20 || r.Disk.DiskFlushes {
		t.Errorf("disk %+v", r.Disk)
	}
	if r.Handlers["fence-peer"] != "/bin/fence" {
		t.Errorf("handlers %v", r.Handlers)
	}
	var warned []string
	for _, w := range cfg.Warnings {
		warned = append(warned, w.String())
	}
	want := []string{
		`t.res:3: DRBD option "use-rle" is accepted and ignored by blockrep`,
		`t.res:6: DRBD option "disk-barrier" is accepted and ignored by blockrep`,
		`t.res:8: DRBD option "resync-after" is accepted and ignored by blockrep`,
	}
	if !reflect.DeepEqual(warned, want) {
		t.Errorf("warnings %q\nwant %q", warned, want)
	}
	if r.Conns[0].Net.Protocol != blockrep.ProtocolA {
		t.Errorf("connection protocol %v", r.Conns[0].Net.Protocol)
	}
}

// drbd-utils' own test (tests/v9/drbd_8.4.test) shows the ids drbdadm gives:
// "new-resource dbdata_resource 1" on undertest, "new-peer ... 0 --_name=peer-host".
func TestImplicitNodeIDsAsDrbdadm(t *testing.T) {
	r := corpusResource(t, "drbd-utils_v9_drbd_8.4.res", "dbdata_resource")
	got := map[string]int{}
	for _, h := range r.Hosts {
		got[h.Name] = h.NodeID
	}
	if want := map[string]int{"undertest": 1, "peer-host": 0}; !reflect.DeepEqual(got, want) {
		t.Errorf("node ids %v, want %v", got, want)
	}
	// The ids do not depend on the order of the on sections.
	cfg, err := parseText(lines("resource r {",
		"on b { address 172.16.0.249:1120; disk /d; }",
		"on a { address 172.16.6.211:1120; disk /d; }", "}"))
	if err != nil {
		t.Fatal(err)
	}
	if h := cfg.Resources[0].Hosts; h[0].NodeID != 0 || h[1].NodeID != 1 {
		t.Errorf("swapped: %s=%d %s=%d", h[0].Name, h[0].NodeID, h[1].Name, h[1].NodeID)
	}
	if r.Net.CramHMACAlg != "md5" || r.Net.Fencing != "resource-and-stonith" || r.Disk.MDFlushes {
		t.Errorf("net %+v disk %+v", r.Net, r.Disk)
	}
}

func TestHostnamesMatchAsDrbdadm(t *testing.T) {
	for _, c := range []struct {
		a, b string
		eq   bool
	}{
		{"n1", "n1", true}, {"n1", "N1", true}, {"n1", "n1.example.com", true},
		{"n1.example.com", "N1.Example.COM", true}, {"n1.example.com", "n1.example.org", false},
		{"n1", "n10.example.com", false}, {"n1", "n2", false},
	} {
		if hostnamesEqual(c.a, c.b) != c.eq || hostnamesEqual(c.b, c.a) != c.eq {
			t.Errorf("hostnamesEqual(%q, %q) != %v", c.a, c.b, c.eq)
		}
	}
	r := corpusResource(t, "drbd-utils_v9_adjust_switch_interface_r0.res", "r0")
	for _, node := range []string{"n1", "N1", "n1.ryzen9.home"} {
		h, err := r.Host(node)
		if err != nil || h.Name != "n1.ryzen9.home" {
			t.Errorf("Host(%q) = %v, %v", node, h, err)
		}
		if p, err := r.Peers(node); err != nil || len(p) == 0 {
			t.Errorf("Peers(%q) = %v, %v", node, p, err)
		}
	}
	if _, err := r.Host("n1.other.home"); err == nil {
		t.Error("a different domain matched")
	}
	cfg, err := parseText(lines("resource r {",
		"on n1.a { node-id 0; address 10.0.0.1:1; disk /d; }",
		"on n1.b { node-id 1; address 10.0.0.2:1; disk /d; }", "}"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.Resources[0].Host("n1"); err == nil || !strings.Contains(err.Error(), "matches several hosts") {
		t.Errorf("ambiguous short name: %v", err)
	}
}

func TestPerHostDiskOptions(t *testing.T) {
	cfg, err := parseText(lines("resource r {",
		"disk { c-max-rate 1G; }",
		"on a { node-id 0; address 10.0.0.1:1; disk /d; disk { resync-rate 1M; al-extents 100; } }",
		"on b { node-id 1; address 10.0.0.2:1; volume 0 { disk /d; disk { c-plan-ahead 0; } } }",
		"on c { node-id 2; address 10.0.0.3:1; disk /d; }",
		"connection { host a; host b; disk { c-min-rate 1M; } }",
		"connection { host a; host c; }",
		"}"))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Resources[0]
	a, b, c := r.Hosts[0], r.Hosts[1], r.Hosts[2]
	if a.DiskOptions == nil || a.DiskOptions.ALExtents != 100 || a.DiskOptions.CMaxRate != 1<<30 || b.DiskOptions == nil || b.DiskOptions.CPlanAhead != 0 || c.DiskOptions != nil {
		t.Fatalf("host disk options: a %+v b %+v c %+v", a.DiskOptions, b.DiskOptions, c.DiskOptions)
	}
	pa, _ := r.Peers("a")
	if d := pa[0].Disk; d.ResyncRate != 1<<20 || d.CMinRate != 1<<20 || d.CMaxRate != 1<<30 {
		t.Errorf("a to b: %+v", d)
	}
	if d := pa[1].Disk; d.ResyncRate != 1<<20 || d.CMinRate != DefaultDiskOptions().CMinRate {
		t.Errorf("a to c: %+v", d)
	}
	pb, _ := r.Peers("b")
	if d := pb[0].Disk; d.ResyncRate != DefaultDiskOptions().ResyncRate || d.CPlanAhead != 0 || d.CMinRate != 1<<20 {
		t.Errorf("b to a: %+v", d)
	}
	if !slices.Contains(r.NotHonoured("a"), "disk options of on a other than the resync ones (the resource's disk options are used)") {
		t.Errorf("NotHonoured(a) = %q", r.NotHonoured("a"))
	}
	if slices.ContainsFunc(r.NotHonoured("b"), func(s string) bool { return strings.HasPrefix(s, "disk options of on") }) {
		t.Errorf("NotHonoured(b) = %q", r.NotHonoured("b"))
	}
	roundTrip(t, r)
}

// tests/v9/nat-address.test: "new-path nat-address 1 ipv4:10.43.10.50:7000 ipv4:192.168.17.20:7000".
func TestNATOutsideAddress(t *testing.T) {
	r := corpusResource(t, "drbd-utils_v9_nat-address.res", "nat-address")
	p, err := r.Peers("undertest")
	if err != nil || len(p) != 1 {
		t.Fatal(p, err)
	}
	if p[0].LocalAddress != "10.43.10.50:7000" || p[0].PeerAddress != "192.168.17.20:7000" {
		t.Errorf("local %s peer %s", p[0].LocalAddress, p[0].PeerAddress)
	}
	p, _ = r.Peers("other")
	if p[0].LocalAddress != "10.43.10.51:7000" || p[0].PeerAddress != "192.168.17.19:7000" {
		t.Errorf("local %s peer %s", p[0].LocalAddress, p[0].PeerAddress)
	}
	roundTrip(t, r)
}

func TestFlexibleMetaDiskAndWinDRBD(t *testing.T) {
	cfg, err := parseText(twoNode("flexible-meta-disk /dev/md;"))
	if err != nil {
		t.Fatal(err)
	}
	if h := cfg.Resources[0].Hosts[0]; h.MetaDisk != "/dev/md" || h.MetaIndex != -1 {
		t.Errorf("meta-disk %q [%d]", h.MetaDisk, h.MetaIndex)
	}
	if _, err := parseText(twoNode("meta-disk internal;\nflexible-meta-disk /dev/md;")); err == nil || err.Error() != "t.res:3: flexible-meta-disk given twice in resource r0 (first at t.res:2)" {
		t.Errorf("meta-disk and flexible-meta-disk: %v", err)
	}
	_, err = parseText(twoNode(`device "F:" minor 1;`))
	if err == nil || err.Error() != "t.res:2: device F: minor 1: not supported by blockrep: WinDRBD (Windows drive letter devices)" {
		t.Errorf("WinDRBD device: %v", err)
	}
}

func TestCryptoAlgorithmNames(t *testing.T) {
	cfg, err := parseText(twoNode(`net { cram-hmac-alg md5; shared-secret x; verify-alg "hmac(sha256)"; csums-alg crc32c; data-integrity-alg sha3-256; }`))
	if err != nil {
		t.Fatal(err)
	}
	n := cfg.Resources[0].Net
	if n.CramHMACAlg != "md5" || n.VerifyAlg != "hmac(sha256)" || n.CsumsAlg != "crc32c" || n.DataIntegrityAlg != "sha3-256" {
		t.Errorf("%+v", n)
	}
}

func TestOneVolumeNumberedOtherThanZero(t *testing.T) {
	r := corpusResource(t, "drbd-utils_v9_sh-list-adjustable.res", "r1")
	if r.Volume != 1 || r.Hosts[0].Disk != "/dev/vdc" || r.Hosts[0].Device != "minor 1" {
		t.Errorf("volume %d host %+v", r.Volume, r.Hosts[0])
	}
	roundTrip(t, r)
	cfg, err := parseText(twoNode("volume 1 { device minor 1; }\nconnection { host alpha; host beta; volume 1 { disk { resync-rate 1M; } } }"))
	if err == nil {
		_, err = cfg.Resources[0].Peers("alpha")
	}
	if err == nil || !strings.Contains(err.Error(), "more than one volume") {
		t.Errorf("host disk /d/a is volume 0 beside volume 1: %v", err)
	}
}

func TestLoadReadsGlobalCommonWithoutInclude(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"global_common.conf": "common { net { ping-int 3; } }\n",
		"a.res":              oneHost("ra", "x", 0),
	})
	cfg, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Resources[0].Net.PingInt; got != 3*time.Second {
		t.Errorf("ping-int %v: global_common.conf not read", got)
	}
	// Included as well: still read once (a second common would be an error).
	writeFiles(t, dir, map[string]string{"a.res": `include "global_common.conf";` + "\n" + oneHost("ra", "x", 0)})
	if _, err := Load(dir); err != nil {
		t.Fatal(err)
	}
}

// drbd-utils' global_common.conf beside real .res files, included by them or
// not, as /etc/drbd.d holds them.
func TestLoadCorpusDirectory(t *testing.T) {
	for _, include := range []bool{false, true} {
		dir := t.TempDir()
		files := map[string]string{
			"global_common.conf": string(mustRead(t, "testdata/corpus/drbd-utils_scripts_global_common.conf")),
		}
		for _, f := range []string{"linbit-ug9_configure_simple.res", "linbit-ug9_configure_mesh.res"} {
			src := string(mustRead(t, "testdata/corpus/"+f))
			if include {
				src = `include "global_common.conf";` + "\n" + src
			}
			files[f] = strings.ReplaceAll(src, "r0", strings.TrimSuffix(f, ".res")) // two resources, two names
		}
		// Both use minor 1 and /dev/vg0/lv0 on alice and bob: a real directory
		// could not hold both, so the second moves.
		files["linbit-ug9_configure_mesh.res"] = strings.NewReplacer("minor 1", "minor 2", "lv0", "lv1", ":7000", ":7001").Replace(files["linbit-ug9_configure_mesh.res"])
		writeFiles(t, dir, files)
		cfg, err := Load(dir)
		if err != nil {
			t.Fatalf("include %v: %v", include, err)
		}
		if len(cfg.Resources) != 2 || len(cfg.Warnings) == 0 || cfg.Warnings[0].String() != `global_common.conf:6: DRBD option "usage-count" is accepted and ignored by blockrep` {
			t.Errorf("include %v: %d resources, warnings %v", include, len(cfg.Resources), cfg.Warnings)
		}
	}
}

func corpusResource(t *testing.T, file, res string) *Resource {
	t.Helper()
	p := filepath.Join("testdata", "corpus", file)
	src, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse(p, src)
	if err != nil {
		t.Fatal(err)
	}
	r, err := cfg.Resource(res)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
