package resource

import (
	"strings"
	"testing"

	"github.com/blockrep/blockrep/internal/clustertest"
)

// TestTiebreakerDaemons: two data nodes and a diskless tiebreaker (disk none) as real
// daemons. The tiebreaker connects to both, shows its vote in status, and refuses what
// needs a disk; with the Primary's daemon killed, beta promotes without --force once the
// tiebreaker has lost the Primary too; with the tiebreaker gone as well, beta has no
// quorum.
func TestTiebreakerDaemons(t *testing.T) {
	if testing.Short() {
		t.Skip("starts daemons")
	}
	c := clustertest.New(t, clustertest.Options{Nodes: 3, Size: 64 << 20, Diskless: map[int]bool{2: true},
		Options: "        quorum majority;\n        on-no-quorum io-error;\n"})
	alpha, beta, gamma := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	if _, e, code := c.Adm(gamma, "create-md", "--force", c.Res); code == 0 || !strings.Contains(e, "diskless tiebreaker") {
		t.Fatalf("create-md on the tiebreaker: exit %d, %q", code, e)
	}
	c.StartAll()
	c.WaitFor("the tiebreaker connected to both", func() bool {
		s := c.Status(gamma)
		return len(s.Peers) == 2 && s.Peers[0].Connection == "Connected" && s.Peers[1].Connection == "Connected"
	})
	s := c.Status(gamma)
	if !s.Tiebreaker || !s.Quorum || s.Disk != "Diskless" || s.Role != "Secondary" {
		t.Fatalf("tiebreaker status: %+v", s)
	}
	if p := c.Peer(alpha, gamma); p.PeerDisk != "Diskless" {
		t.Fatalf("alpha sees the tiebreaker's disk as %s", p.PeerDisk)
	}
	if _, e, code := c.Adm(gamma, "primary", c.Res); code == 0 || !strings.Contains(e, "diskless tiebreaker") || strings.Count(strings.TrimSpace(e), "\n") > 0 {
		t.Fatalf("primary on the tiebreaker: exit %d, %q", code, e)
	}

	c.MustAdm(alpha, "primary", "--force", c.Res)
	c.WaitFor("beta in sync", func() bool {
		p := c.Peer(beta, alpha)
		return p.PeerDisk == "UpToDate" && c.Status(beta).Disk == "UpToDate"
	})
	if _, e, code := c.Adm(beta, "primary", c.Res); code == 0 {
		t.Fatal("beta promoted while alpha is Primary")
	} else if !strings.Contains(e, "Primary") {
		t.Fatalf("beta's refusal: %q", e)
	}

	c.Kill(alpha)
	c.WaitFor("beta and the tiebreaker lose alpha", func() bool {
		return c.Peer(beta, alpha).Connection != "Connected" && c.Peer(gamma, alpha).Connection != "Connected"
	})
	if !c.Status(beta).Quorum {
		t.Fatal("beta with the tiebreaker has no quorum")
	}
	c.MustAdm(beta, "primary", c.Res)

	c.Kill(gamma)
	c.WaitFor("beta loses quorum", func() bool { return !c.Status(beta).Quorum })
}
