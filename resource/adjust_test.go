package resource

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/blockrep/blockrep/internal/clustertest"
)

// TestAdjust: adjust applies a changed ping-int and a moved peer address to a
// resource that is up, reconnecting without the Primary stepping down; --dry-run only
// prints the plan; what cannot change live (a node added) is refused, naming it.
func TestAdjust(t *testing.T) {
	if testing.Short() {
		t.Skip("starts daemons")
	}
	c := clustertest.New(t, clustertest.Options{Size: 64 << 20})
	alpha, beta := c.Nodes[0], c.Nodes[1]
	c.StartAll()
	c.MustAdm(alpha, "primary", "--force", c.Res)
	c.WaitFor("in sync", func() bool { return c.InSync(beta, alpha) })
	resFile := filepath.Join(c.Conf, c.Res+".res")
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

	// A third node cannot be added live: refused, naming it, nothing changed.
	b, _ := os.ReadFile(resFile)
	third := strings.Replace(string(b), "    on beta {", "    on gamma {\n        node-id 2;\n        address 127.0.0.1:"+strconv.Itoa(freePort(t))+";\n        disk /tmp/none.img;\n        meta-disk internal;\n    }\n    on beta {", 1)
	os.WriteFile(resFile, []byte(third), 0o644)
	_, e, code := c.Adm(alpha, "adjust", c.Res)
	if code == 0 || !strings.Contains(e, "node gamma added") {
		t.Fatalf("adjust with a node added: exit %d, %q", code, e)
	}
}
