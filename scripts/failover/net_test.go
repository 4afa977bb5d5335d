package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blockrep/blockrep/resource/config"
)

func TestMountsUnder(t *testing.T) {
	mi := filepath.Join(t.TempDir(), "mountinfo")
	os.WriteFile(mi, []byte(`22 1 0:21 / / rw - ext4 /dev/vda1 rw
30 22 0:40 / /var/tmp/fo/alpha/run/pg-pg/nbdfuse rw - fuse nbdfuse rw
31 22 7:0 / /var/tmp/fo/alpha/mnt rw - ext4 /dev/loop0 rw
32 22 7:1 / /var/tmp/fo\040x/mnt rw - ext4 /dev/loop1 rw
33 22 7:2 / /var/tmp/foo rw - ext4 /dev/loop2 rw
`), 0o644)
	got := mountsUnder(mi, "/var/tmp/fo")
	want := []string{"/var/tmp/fo/alpha/run/pg-pg/nbdfuse", "/var/tmp/fo/alpha/mnt"}
	if !slices.Equal(got, want) {
		t.Fatalf("mountsUnder = %q, want %q", got, want)
	}
	if got := mountsUnder(mi, "/var/tmp/fo x"); !slices.Equal(got, []string{"/var/tmp/fo x/mnt"}) {
		t.Fatalf("escaped space: %q", got)
	}
}

func TestResFile(t *testing.T) {
	c := newCluster("/w", "/bin")
	s := c.resFile("sekrit")
	for _, want := range []string{
		`shared-secret "sekrit"`,
		"ping-int 1; ping-timeout 5; timeout 10;",
		"quorum majority; on-no-quorum io-error;",
		"address 198.18.0.100/24 dev eth0;",
		"on alpha { node-id 0; address 198.18.0.1:7789; disk /w/alpha/disk.img; meta-disk internal;",
		"promoter { mount-point /w/beta/mnt; pg-data /w/beta/mnt/data; }",
		"on gamma { node-id 2; address 198.18.0.3:7789; disk none; }",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("res file lacks %q:\n%s", want, s)
		}
	}
	// The daemon's own parser accepts it, with the detection times intended.
	cfg, err := config.Parse("pg.res", []byte(s))
	if err != nil {
		t.Fatalf("%v\n%s", err, s)
	}
	r := cfg.Resources[0]
	if r.Net.PingInt != time.Second || r.Net.PingTimeout != 500*time.Millisecond || r.Net.Timeout != time.Second {
		t.Fatalf("ping-int %v ping-timeout %v timeout %v", r.Net.PingInt, r.Net.PingTimeout, r.Net.Timeout)
	}
	for _, n := range []string{"alpha", "beta"} {
		p, ok := r.PromoterFor(n)
		if !ok || p.MountPoint != "/w/"+n+"/mnt" || p.PGData != "/w/"+n+"/mnt/data" || p.AddressDev != "eth0" {
			t.Fatalf("%s's promoter: %+v %v", n, p, ok)
		}
	}
}
