package config

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

// roundTrip dumps r, parses the dump and requires an equal resource.
func roundTrip(t *testing.T, r *Resource) {
	t.Helper()
	var out bytes.Buffer
	if err := r.Dump(&out); err != nil {
		t.Fatalf("Dump(%s): %v", r.Name, err)
	}
	cfg, err := parseText(out.String())
	if err != nil {
		t.Fatalf("re-parsing the dump of %s: %v\n%s", r.Name, err, out.String())
	}
	back := cfg.Resources[0]
	var again bytes.Buffer
	if err := back.Dump(&again); err != nil {
		t.Fatal(err)
	}
	if again.String() != out.String() {
		t.Errorf("dump of the re-parsed %s differs:\n%s\nvs\n%s", r.Name, again.String(), out.String())
	}
	if !reflect.DeepEqual(stripPos(back), stripPos(r)) {
		t.Errorf("re-parsed %s differs from the original; dump:\n%s", r.Name, out.String())
	}
}

func TestDumpRoundTripExamples(t *testing.T) {
	cfg, err := Load("testdata")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range cfg.Resources {
		t.Run(r.Name, func(t *testing.T) { roundTrip(t, r) })
	}
}

func TestDumpRoundTrip(t *testing.T) {
	bodies := []string{
		"",
		"net { protocol A; on-congestion pull-ahead; congestion-fill 100; congestion-extents 500; sndbuf-size 1M; rcvbuf-size 1; }",
		"net { cram-hmac-alg sha1; shared-secret \"has \\\\ backslash and \\\" quote {;}\"; }",
		"net { after-sb-0pri discard-node-beta; after-sb-2pri violently-as0p; always-asbp; rr-conflict retry-connect; }",
		"net { ping-int 1; ping-timeout 300; connect-int 120; timeout 1; ko-count 200; max-buffers 32; }",
		"disk { resync-rate 1; c-plan-ahead 300; c-fill-target 0; c-delay-target 100; c-max-rate 250; c-min-rate 4G; disk-timeout 1; }",
		"disk { al-updates no; disk-flushes no; md-flushes no; on-io-error pass_on; reservation write-exclusive; }",
		"options { quorum 2; quorum-minimum-redundancy all; on-no-quorum io-error; on-no-data-accessible suspend-io; auto-promote no; storage shared; }",
		"handlers { local-io-error \"\"; out-of-sync \"#x\"; }",
		"startup { wait-after-sb; stacked-timeouts no; become-primary-on \"a  b\"; outdated-wfc-timeout 300000; }",
		"connection { host alpha; host beta port 9000; net { protocol B; ping-int 2; } volume 0 { disk { c-max-rate 1G; } } }",
		"connection-mesh { hosts beta alpha; }",
		"device minor 1048575; meta-disk \"/m d\" [7];",
		"device \"/dev/a;b\" minor 3;",
		"promoter { mount-point /m; pg-data /m/d; }",
		"promoter { mount-point \"/m p\"; fs-type xfs; pg-bin-dir /b; pg-data \"/m p/#d\"; pg-port 1; pg-user u; address 10.0.0.1/32 dev eth0; prefer beta; restart-limit 1 86400; }",
		"promoter { mount-point /m; pg-data /m/d; fs-type ext4; pg-port 5432; pg-user postgres; restart-limit 3 60; }",
	}
	for _, body := range bodies {
		t.Run(body, func(t *testing.T) {
			cfg, err := parseText(twoNode(body))
			if err != nil {
				t.Fatal(err)
			}
			roundTrip(t, cfg.Resources[0])
		})
	}
	odd := []string{
		`resource "r#{x}" { on "a b" { node-id 0; disk "#d"; initiator-name iqn.x; export [::1]:1; } }`,
		`resource r0 { options { storage shared; } disk /lun; on a { node-id 0; address 1.1.1.1:1; } on b { node-id 1; } }`,
		`resource r0 { on a { node-id 0; address [fe80::1%eth0]:1; disk /d; } on b { node-id 1; address [fe80::2%eth0]:1; disk /d; } }`,
		`resource r0 { on a { node-id 0; address "[fe80::1%a;b c]:1"; disk /d; } on b { node-id 1; address [fe80::2%eth0]:1; disk /d; } }`,
		`resource r0 { on a { node-id 0; address 1.1.1.1:1; disk /d; promoter { mount-point /a; pg-data /a/d; fs-type ext4; address 10.0.0.1/8; } } on b { node-id 1; address 1.1.1.2:1; disk none; promoter { } } }`,
		`resource r0 { promoter { } on a { node-id 0; disk /d; promoter { mount-point /a; pg-data /a/d; restart-limit 3 60; } } }`,
	}
	for _, src := range odd {
		t.Run(src, func(t *testing.T) {
			cfg, err := parseText(src)
			if err != nil {
				t.Fatal(err)
			}
			roundTrip(t, cfg.Resources[0])
		})
	}
}

func TestDumpFormat(t *testing.T) {
	src := lines(
		"common { disk { resync-rate 10M; } }",
		"resource r0 {",
		"    net { timeout 60; ping-int 5; }",
		"    handlers { split-brain \"/bin/echo sb\"; fence-peer \"/bin/f\"; }",
		"    device minor 0;",
		"    on beta { node-id 1; address 127.0.0.1:7790; disk /d/b; meta-disk /m 0; }",
		"    on alpha { node-id 0; address 127.0.0.1:7789; disk /d/a; }",
		"    connection { host alpha; host beta; net { protocol A; } }",
		"}",
	)
	want := lines(
		"resource r0 {",
		"    net {",
		"        protocol C;",
		"        ping-int 5;",
		"    }",
		"    disk {",
		"        resync-rate 10240;",
		"    }",
		"    handlers {",
		"        fence-peer \"/bin/f\";",
		"        split-brain \"/bin/echo sb\";",
		"    }",
		"    on beta {",
		"        node-id 1;",
		"        address 127.0.0.1:7790;",
		"        device minor 0;",
		"        disk /d/b;",
		"        meta-disk /m [0];",
		"    }",
		"    on alpha {",
		"        node-id 0;",
		"        address 127.0.0.1:7789;",
		"        device minor 0;",
		"        disk /d/a;",
		"        meta-disk internal;",
		"    }",
		"    connection {",
		"        host alpha address 127.0.0.1:7789;",
		"        host beta address 127.0.0.1:7790;",
		"        net {",
		"            protocol A;",
		"        }",
		"    }",
		"}",
	)
	cfg, err := parseText(src)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := cfg.Resources[0].Dump(&out); err != nil {
		t.Fatal(err)
	}
	if out.String() != want {
		t.Errorf("dump\n%s\nwant\n%s", out.String(), want)
	}
}

func TestDumpRejectsNewlines(t *testing.T) {
	cfg, err := parseText(twoNode(""))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Resources[0]
	r.Handlers["split-brain"] = "a\nb"
	var out bytes.Buffer
	if err := r.Dump(&out); err == nil || !strings.Contains(err.Error(), "newline") {
		t.Errorf("got %v, want an error about the newline", err)
	}
	if out.Len() != 0 {
		t.Error("Dump wrote output despite failing")
	}
}
