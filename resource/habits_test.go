package resource_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockrep/blockrep/internal/clustertest"
)

// The drbdadm habits with real daemons: new-current-uuid --clear-bitmap on two fresh
// nodes (no resync), role/cstate/dstate, wait-connect and wait-sync, outdate, and
// down on a resource that is not up.
func TestAdmHabits(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{})
	alpha, beta := c.Nodes[0], c.Nodes[1]
	c.StartAll()
	adm := func(n *clustertest.Node, want int, args ...string) string {
		t.Helper()
		out, errOut, code := c.Adm(n, args...)
		if code != want {
			t.Fatalf("%s: blockrepadm %s: exit %d, want %d: %s%s", n.Name, strings.Join(args, " "), code, want, out, errOut)
		}
		return strings.TrimSpace(out)
	}
	adm(alpha, 0, "wait-connect", "r0", "--timeout", "60")
	adm(alpha, 11, "up", "r0") // up already: refused, as drbdadm up of an existing minor
	adm(alpha, 0, "up", "all") // all: what is not up yet, here nothing
	if got := adm(alpha, 0, "dstate", "r0"); got != "Inconsistent/Inconsistent" {
		t.Fatalf("dstate of fresh disks: %q", got)
	}

	// Flags after the resource, as drbdadm takes them.
	adm(alpha, 0, "new-current-uuid", "r0", "--clear-bitmap")
	adm(beta, 0, "wait-sync", "r0", "--timeout", "30")
	adm(alpha, 0, "wait-sync", "r0", "--timeout", "30")
	for _, n := range []*clustertest.Node{alpha, beta} {
		if got := adm(n, 0, "dstate", "r0"); got != "UpToDate/UpToDate" {
			t.Fatalf("%s: dstate after new-current-uuid --clear-bitmap: %q", n.Name, got)
		}
		for _, p := range c.Status(n).Peers {
			if p.ResyncBytes != 0 || p.OutOfSyncBytes != 0 {
				t.Fatalf("%s: a resync happened: %+v", n.Name, p)
			}
		}
	}
	if a, b := c.DataSum(alpha, 4<<20), c.DataSum(beta, 4<<20); a != b {
		t.Fatal("the data differs")
	}
	// Skipping the initial resync is for fresh disks only.
	adm(alpha, 11, "new-current-uuid", "--clear-bitmap", "r0")
	adm(alpha, 11, "new-current-uuid", "r0")

	if got := adm(alpha, 0, "role", "r0"); got != "Secondary" {
		t.Fatalf("role: %q", got)
	}
	if got := adm(alpha, 0, "cstate", "r0"); got != "Connected" {
		t.Fatalf("cstate: %q", got)
	}
	adm(alpha, 0, "primary", "r0")
	if got := adm(alpha, 0, "role", "r0"); got != "Primary" {
		t.Fatalf("role after primary: %q", got)
	}
	adm(alpha, 0, "new-current-uuid", "r0")
	adm(alpha, 11, "outdate", "r0")
	adm(beta, 11, "outdate", "r0") // connected: the handshake would undo it

	stats := adm(alpha, 0, "status", "r0", "--verbose", "--statistics")
	for _, w := range []string{"node-id:0", "al-writes:", "bm-writes:", "beta node-id:1 connection:Connected", "sent:", "pending:"} {
		if !strings.Contains(stats, w) {
			t.Fatalf("status --verbose --statistics lacks %q:\n%s", w, stats)
		}
	}

	adm(beta, 0, "disconnect", "r0")
	adm(beta, 0, "outdate", "r0")
	if got := adm(beta, 0, "dstate", "r0"); got != "Outdated/DUnknown" {
		t.Fatalf("dstate after outdate: %q", got)
	}
	if got := adm(beta, 0, "cstate", "r0"); got != "StandAlone" {
		t.Fatalf("cstate after disconnect: %q", got)
	}
	start := time.Now()
	adm(beta, 5, "wait-connect", "r0", "--timeout", "1")
	if d := time.Since(start); d < time.Second {
		t.Fatalf("wait-connect gave up after %s", d)
	}
	adm(beta, 17, "primary", "r0")

	adm(beta, 0, "down", "r0")
	adm(beta, 0, "down", "r0") // not up: nothing to do, as drbdadm
	adm(beta, 10, "down", "r9")
	adm(beta, 10, "role", "r9")
	adm(beta, 20, "role", "r0") // known, but not up

	// up -c FILE reads the resource from that file (which includes the real one here).
	adm(beta, 10, "up", "r0", "-c", filepath.Join(c.Dir, "missing.conf"))
	single := filepath.Join(c.Dir, "single.conf")
	if err := os.WriteFile(single, []byte(`include "conf/r0.res";`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	adm(beta, 0, "up", "r0", "-c", single)
	adm(beta, 0, "wait-sync", "r0", "--timeout", "60")
}
