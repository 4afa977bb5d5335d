package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func mustRead(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func oneHost(res, host string, id int) string {
	return "resource " + res + " {\n    on " + host + " { node-id " + string(rune('0'+id)) + "; disk /d/" + res + "; }\n}\n"
}

func TestLoadExamples(t *testing.T) {
	cfg, err := Load("testdata")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Names(); !reflect.DeepEqual(got, []string{"r0", "r1", "r2"}) {
		t.Errorf("Names() = %v (r9 is skipped)", got)
	}
	// global_common.conf is included by r0.res and r1.res but read once.
	want := []string{
		`global_common.conf:3: DRBD option "usage-count" is accepted and ignored by blockrep`,
		`r0.res:19: DRBD option "disk-barrier" is accepted and ignored by blockrep`,
	}
	var got []string
	for _, w := range cfg.Warnings {
		got = append(got, w.String())
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("warnings\n got %q\nwant %q", got, want)
	}
	r0, _ := cfg.Resource("r0")
	if r0.Pos != (Pos{"r0.res", 4}) || r0.Hosts[1].Pos != (Pos{"r0.res", 33}) {
		t.Errorf("positions relative to the directory: %v %v", r0.Pos, r0.Hosts[1].Pos)
	}
	if r0.Net.SharedSecret != `s3cret#with "quotes"` || r0.Handlers["split-brain"] != "/bin/true" ||
		r0.Handlers["fence-peer"] != "/usr/lib/blockrep/fence-peer.sh" || r0.Net.Timeout.Seconds() != 5 {
		t.Errorf("r0 not merged with common as expected: %+v %v", r0.Net, r0.Handlers)
	}
	r2, _ := cfg.Resource("r2")
	if r2.Options.Storage != "shared" || len(r2.Conns) != 3 || r2.Conns[0].Net.PingTimeout.Seconds() != 1 {
		t.Errorf("r2: storage %q, %d conns", r2.Options.Storage, len(r2.Conns))
	}
}

func TestLoadErrorsNameTheFile(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"a.res": oneHost("ra", "x", 0),
		"b.res": "resource rb {\n  net { protocl C; }\n}\n",
	})
	_, err := Load(dir)
	if err == nil || err.Error() != `b.res:2: unknown statement "protocl" in net section` {
		t.Errorf("got %v", err)
	}
}

func TestLoadDuplicateAcrossFiles(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"a.res": oneHost("r0", "x", 0),
		"b.res": "\n" + oneHost("r0", "y", 0),
	})
	_, err := Load(dir)
	if err == nil || err.Error() != "b.res:2: resource r0 defined twice (first at a.res:1)" {
		t.Errorf("got %v", err)
	}
}

func TestLoadReadsOnlyResFiles(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"b.res":          oneHost("rb", "x", 0),
		"a.res":          oneHost("ra", "x", 1),
		"c.res.bak":      "garbage {",
		"notes.txt":      "garbage {",
		"sub.res/x.res":  "garbage {",
		"global.conf":    "garbage {",
		"drbd.d/rc.conf": "garbage {",
	})
	cfg, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Names(); !reflect.DeepEqual(got, []string{"ra", "rb"}) {
		t.Errorf("Names() = %v, want lexical file order", got)
	}
	empty := t.TempDir()
	if cfg, err := Load(empty); err != nil || len(cfg.Resources) != 0 {
		t.Errorf("empty dir: %v, %v", cfg, err)
	}
	if _, err := Load(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing dir: no error")
	}
}

func TestInclude(t *testing.T) {
	tests := []struct {
		name      string
		files     map[string]string
		wantNames []string
		wantErr   string
	}{
		{
			name: "glob relative to the including file, lexical order",
			files: map[string]string{
				"main.res":         `include "conf.d/*.res";` + "\n",
				"conf.d/b.res":     oneHost("rb", "x", 0),
				"conf.d/a.res":     oneHost("ra", "x", 1),
				"conf.d/c.res.bak": "garbage {",
			},
			wantNames: []string{"ra", "rb"},
		},
		{
			name: "nested include resolves from the included file's directory",
			files: map[string]string{
				"main.res":          `include "sub/inc.conf";`,
				"sub/inc.conf":      `include "deeper/*.conf";`,
				"sub/deeper/x.conf": oneHost("rx", "x", 0),
			},
			wantNames: []string{"rx"},
		},
		{
			name: "includes expand in place",
			files: map[string]string{
				"main.res": oneHost("r1", "x", 0) + `include "two.conf";` + "\n" + oneHost("r3", "x", 2),
				"two.conf": oneHost("r2", "x", 1),
			},
			wantNames: []string{"r1", "r2", "r3"},
		},
		{
			name:      "glob matching nothing is fine",
			files:     map[string]string{"main.res": `include "none/*.res"; include "missing.conf";` + oneHost("r0", "x", 0)},
			wantNames: []string{"r0"},
		},
		{
			name: "a file included twice is read once",
			files: map[string]string{
				"main.res": `include "c.conf"; include "*.conf";`,
				"c.conf":   "common { net { protocol A; } }\n" + oneHost("r0", "x", 0),
			},
			wantNames: []string{"r0"},
		},
		{
			name: "include cycle",
			files: map[string]string{
				"main.res": `include "a.conf";`,
				"a.conf":   "\n" + `include "b.conf";`,
				"b.conf":   "\n\n" + `include "a.conf";`,
			},
			wantErr: "b.conf:3: include cycle: a.conf -> b.conf -> a.conf",
		},
		{
			name:    "self include",
			files:   map[string]string{"main.res": `include "main.res";`},
			wantErr: "main.res:1: include cycle: main.res -> main.res",
		},
		{
			name:    "include without pattern",
			files:   map[string]string{"main.res": "include;"},
			wantErr: "main.res:1: include takes one quoted file pattern",
		},
		{
			name:    "bad glob pattern",
			files:   map[string]string{"main.res": `include "[";`},
			wantErr: `main.res:1: bad include pattern "[": syntax error in pattern`,
		},
		{
			name:    "error inside an included file names that file",
			files:   map[string]string{"main.res": `include "x.conf";`, "x.conf": "\nresource r0 { net { protocl C; } }"},
			wantErr: `x.conf:2: unknown statement "protocl" in net section`,
		},
		{
			name:      "skip disables an include",
			files:     map[string]string{"main.res": `skip include "x.conf";` + oneHost("r0", "x", 0), "x.conf": "garbage {"},
			wantNames: []string{"r0"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, tt.files)
			// Load reads main.res (the only .res at the top of dir) ...
			cfg, err := Load(dir)
			check := func(how string, cfg *Config, err error) {
				if tt.wantErr != "" {
					// Parse was given an absolute name, so its positions are absolute.
					if err == nil || strings.ReplaceAll(err.Error(), dir+"/", "") != tt.wantErr {
						t.Errorf("%s: got error %v, want %s", how, err, tt.wantErr)
					}
					return
				}
				if err != nil {
					t.Fatalf("%s: %v", how, err)
				}
				if got := cfg.Names(); !reflect.DeepEqual(got, tt.wantNames) {
					t.Errorf("%s: Names() = %v, want %v", how, got, tt.wantNames)
				}
			}
			check("Load", cfg, err)
			// ... and Parse resolves includes relative to the name's directory.
			main := filepath.Join(dir, "main.res")
			cfg, err = Parse(main, mustRead(t, main))
			check("Parse", cfg, err)
		})
	}
}

func TestIncludeSkipsDirectoriesAndRejectsSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"main.res":    `include "d/*";` + "\n" + `include "/dev/null";`,
		"d/sub/x.res": "garbage {",
		"d/r.conf":    oneHost("r0", "x", 0),
	})
	_, err := Load(dir)
	if err == nil || err.Error() != "main.res:2: include: /dev/null is not a regular file" {
		t.Errorf("got %v", err)
	}
}

func TestSkip(t *testing.T) {
	src := lines(
		"skip global { whatever; }",
		"skip resource r9 { on x { } garbage; }",
		"resource r0 {",
		"    skip net { protocol X; }",
		"    skip on gamma { node-id 99; }",
		"    disk { skip al-extents 1; }",
		twoHosts+"}",
	)
	cfg, err := parseText(src)
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Resources[0]
	if got := cfg.Names(); !reflect.DeepEqual(got, []string{"r0"}) || len(r.Hosts) != 2 || r.Disk.ALExtents != 1237 {
		t.Errorf("skip did not disable: names %v, %d hosts, al-extents %d", got, len(r.Hosts), r.Disk.ALExtents)
	}
	// A skipped section must still be well-formed.
	if _, err := parseText("skip resource r9 {\n"); err == nil {
		t.Error("unterminated skipped section: no error")
	}
}

// drbdadm -c FILE: one file and what it includes, not the directory around it.
func TestLoadSingleFile(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"drbd.conf":                 `include "drbd.d/global_common.conf"; include "drbd.d/*.res";` + "\n",
		"drbd.d/r0.res":             oneHost("r0", "x", 0),
		"drbd.d/global_common.conf": "global { usage-count no; }\n",
		"other.res":                 oneHost("other", "x", 1),
	})
	cfg, err := Load(filepath.Join(dir, "drbd.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Names(); !reflect.DeepEqual(got, []string{"r0"}) {
		t.Fatalf("resources %v, want [r0]", got)
	}
	if _, err := Load(filepath.Join(dir, "missing.conf")); err == nil {
		t.Fatal("a missing file loaded")
	}
}
