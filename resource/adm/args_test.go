package adm

import (
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/blockrep/blockrep/resource"
)

func TestReorder(t *testing.T) {
	app := []struct{ in, want string }{
		{"status r0 --json", "status --json r0"},
		{"status --json r0", "status --json r0"},
		{"up r0 --run-dir /tmp/x", "--run-dir /tmp/x up r0"},
		{"primary r0 --force --config=/etc/x", "--config=/etc/x primary --force r0"},
		{"-c /etc/drbd.conf dump r0", "-c /etc/drbd.conf dump r0"},
		{"dump r0 -c /etc/drbd.conf", "-c /etc/drbd.conf dump r0"},
		{"wait-connect r0 --timeout 5", "wait-connect --timeout 5 r0"},
		{"new-current-uuid r0 --clear-bitmap", "new-current-uuid --clear-bitmap r0"},
		{"status -- --json", "status -- --json"},
		{"status r0 --bogus", "status --bogus r0"},
		{"nosuchverb r0 --json", "nosuchverb r0 --json"},
		{"verify r0 --x", "verify r0 --x"},
		{"--version", "--version"},
		{"switchover r0 beta --help", "switchover --help r0 beta"},
	}
	for _, tc := range app {
		got := reorder(strings.Fields(tc.in), globalFlags(), commands())
		if want := strings.Fields(tc.want); !reflect.DeepEqual(got, want) {
			t.Errorf("reorder(%q) = %q, want %q", tc.in, got, want)
		}
	}
}

// Flags after the resource work end to end: parsing succeeds and reaches the daemon
// (absent here), and a bad flag anywhere is a usage error (exit 1).
func TestFlagsAnywhere(t *testing.T) {
	run := func(args ...string) (int, string) {
		var out, errb strings.Builder
		code := Main(append([]string{"--run-dir", t.TempDir()}, args...), &out, &errb)
		return code, errb.String()
	}
	if code, msg := run("status", "r0", "--json"); code != 20 || !strings.Contains(msg, "not running") {
		t.Fatalf("status r0 --json: exit %d %q, want 20 (no daemon)", code, msg)
	}
	if code, msg := run("status", "r0", "--bogus"); code != 1 {
		t.Fatalf("status r0 --bogus: exit %d %q, want 1", code, msg)
	}
	if code, msg := run("dump", "r0", "--config", "/nonexistent"); code != 10 {
		t.Fatalf("dump with a missing config directory: exit %d %q, want 10", code, msg)
	}
	dir := t.TempDir()
	if code, msg := run("dump", "r9", "--config", dir); code != 10 || !strings.Contains(msg, "r9") {
		t.Fatalf("dump of an unknown resource: exit %d %q, want 10", code, msg)
	}
	// -c FILE: that file and its includes, not the directory (here also holding r9).
	os.WriteFile(filepath.Join(dir, "drbd.conf"), []byte(`include "r0.inc";`), 0o644)
	os.WriteFile(filepath.Join(dir, "r0.inc"), []byte("resource r0 {\n on x { node-id 0; disk /d/r0; }\n}\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "r9.res"), []byte("resource r9 {\n on x { node-id 0; disk /d/r9; }\n}\n"), 0o644)
	if code, msg := run("dump", "all", "-c", filepath.Join(dir, "drbd.conf")); code != 0 {
		t.Fatalf("dump -c FILE: exit %d %q", code, msg)
	}
	var dumped strings.Builder
	Main([]string{"dump", "all", "-c", filepath.Join(dir, "drbd.conf")}, &dumped, io.Discard)
	if !strings.Contains(dumped.String(), "resource r0") || strings.Contains(dumped.String(), "r9") {
		t.Fatalf("dump -c FILE:\n%s", dumped.String())
	}
	var out strings.Builder
	if code := Main([]string{"--version"}, &out, &out); code != 0 || !strings.Contains(out.String(), resource.Version) {
		t.Fatalf("--version: exit %d %q", code, out.String())
	}
}
