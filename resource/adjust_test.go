package resource

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/blockrep/blockrep/internal/clustertest"
)

// TestAdjust: adjust applies a changed ping-int, a moved peer address and a node that
// joined to a resource that is up, without the Primary stepping down; --dry-run only
// prints the plan; what cannot change live (a node removed) is refused, naming it.
func TestAdjust(t *testing.T) {
	if testing.Short() {
		t.Skip("starts daemons")
	}
	c := clustertest.New(t, clustertest.Options{Nodes: 3, Size: 64 << 20})
	alpha, beta, gamma := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	resFile := filepath.Join(c.Conf, c.Res+".res")
	full, err := os.ReadFile(resFile)
	if err != nil {
		t.Fatal(err)
	}
	// gamma joins later: the resource starts as alpha and beta.
	i := strings.Index(string(full), "    on gamma {")
	j := i + strings.Index(string(full)[i:], "    }\n") + len("    }\n")
	gammaSection := string(full)[i:j]
	os.WriteFile(resFile, []byte(string(full)[:i]+string(full)[j:]), 0o644)
	for _, n := range []*clustertest.Node{alpha, beta} {
		c.Start(n)
		c.MustAdm(n, "up", c.Res)
	}
	c.MustAdm(alpha, "primary", "--force", c.Res)
	c.WaitFor("in sync", func() bool { return c.InSync(beta, alpha) })
	edit := func(from, to string) {
		t.Helper()
		b, _ := os.ReadFile(resFile)
		if !strings.Contains(string(b), from) {
			t.Fatalf("%q not in the resource file", from)
		}
		os.WriteFile(resFile, []byte(strings.Replace(string(b), from, to, 1)), 0o644)
	}

	if out := c.MustAdm(alpha, "adjust", c.Res); !strings.Contains(out, "nothing to adjust") {
		t.Fatalf("adjust without changes: %q", out)
	}
	edit("ping-int 1;", "ping-int 2;")
	out := c.MustAdm(alpha, "adjust", "--dry-run", c.Res)
	if !strings.Contains(out, "connection to beta: ping-int 1s -> 2s (reconnect)") {
		t.Fatalf("dry run: %q", out)
	}
	// The peer moves: down, new address, up; then adjust points alpha at it.
	c.MustAdm(beta, "down", c.Res)
	oldAddr := "127.0.0.1:" + strconv.Itoa(beta.Port)
	newPort := freePort(t)
	edit("address "+oldAddr+";", "address 127.0.0.1:"+strconv.Itoa(newPort)+";")
	beta.Port = newPort
	c.MustAdm(beta, "up", c.Res)
	out = c.MustAdm(alpha, "adjust", c.Res)
	if !strings.Contains(out, "peer address "+oldAddr+" -> 127.0.0.1:"+strconv.Itoa(newPort)) || !strings.Contains(out, "ping-int 1s -> 2s") {
		t.Fatalf("adjust: %q", out)
	}
	c.WaitFor("reconnected at the new address and in sync", func() bool { return c.InSync(beta, alpha) && c.InSync(alpha, beta) })
	if s := c.Status(alpha); s.Role != "Primary" {
		t.Fatalf("alpha after adjust: %s", s.Role)
	}
	if out := c.MustAdm(alpha, "adjust", c.Res); !strings.Contains(out, "nothing to adjust") {
		t.Fatalf("second adjust: %q", out)
	}

	// gamma joins: its section comes back, it comes up, and adjust on both data nodes
	// connects them to it; it is synced in full while alpha stays Primary.
	b, _ := os.ReadFile(resFile)
	os.WriteFile(resFile, []byte(strings.Replace(string(b), "    on beta {", gammaSection+"    on beta {", 1)), 0o644)
	c.Start(gamma)
	c.MustAdm(gamma, "up", c.Res)
	if out := c.MustAdm(alpha, "adjust", "--dry-run", c.Res); !strings.Contains(out, "node gamma added (node-id 2") {
		t.Fatalf("dry run with gamma added: %q", out)
	}
	c.MustAdm(alpha, "adjust", c.Res)
	c.MustAdm(beta, "adjust", c.Res)
	c.WaitFor("gamma in sync with alpha and beta", func() bool { return c.InSync(gamma, alpha) && c.InSync(gamma, beta) })
	if s := c.Status(alpha); s.Role != "Primary" || len(s.Peers) != 2 {
		t.Fatalf("alpha after gamma joined: %s, %d peers", s.Role, len(s.Peers))
	}

	// Removing a node is refused, naming it, and changes nothing.
	b, _ = os.ReadFile(resFile)
	os.WriteFile(resFile, []byte(strings.Replace(string(b), gammaSection, "", 1)), 0o644)
	_, e, code := c.Adm(alpha, "adjust", c.Res)
	if code == 0 || !strings.Contains(e, "node gamma removed") {
		t.Fatalf("adjust with a node removed: exit %d, %q", code, e)
	}
	if !c.InSync(alpha, gamma) {
		t.Fatal("the refused adjust disturbed gamma's connection")
	}
}
