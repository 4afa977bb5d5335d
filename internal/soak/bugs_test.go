package soak

import (
	"context"
	"testing"
	"time"

	"github.com/blockrep/blockrep/blockrep/nbd"
	"github.com/blockrep/blockrep/internal/clustertest"
)

// Engine bugs the soak found, each pinned by a test of the correct behaviour. All three
// are fixed (blockrep/receive.go and peer.go: every peer hears a role/disk change, a
// resync target adopts its source's history, Secondaries defer resyncing each other
// while a Primary is connected); each test failed before its fix.

// TestPeerDiskViewAfterResync: in a three-node resource every node must see every
// peer's disk as that peer reports it. The bug: a SyncTarget that finished told only its
// SyncSource, so after the initial sync beta and gamma each showed the other Inconsistent;
// promoted later, beta would not let gamma adopt its new generation nor read from it.
func TestPeerDiskViewAfterResync(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real daemons")
	}
	c := clustertest.New(t, clustertest.Options{Nodes: 3, Size: 16 << 20})
	alpha, beta, gamma := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	c.StartAll()
	c.WaitAllConnected()
	c.MustAdm(alpha, "primary", "--force", c.Res)
	c.WaitFor("both Secondaries UpToDate", func() bool {
		return c.Status(beta).Disk == "UpToDate" && c.Status(gamma).Disk == "UpToDate"
	})
	c.MustAdm(alpha, "secondary", c.Res)
	c.MustAdm(beta, "primary", c.Res)
	c.WaitFor("beta to see gamma UpToDate", func() bool { return c.Peer(beta, gamma).PeerDisk == "UpToDate" })
}

// TestNoResyncBetweenSecondariesWhileAPrimaryWrites: in a three-node resource a
// Secondary that restarts after kill -9 must not resync its activity-log extents from
// the other Secondary while the Primary writes to both. The bug: resync blocks read on
// the source travel on a stream the Primary's writes do not, so a block the Primary
// wrote after the source read it was overwritten with older content, and the target
// reported UpToDate with acknowledged writes missing (soak seeds 1, 3, 8, 10, 13). Now
// the Secondaries defer that resync while a Primary is connected.
func TestNoResyncBetweenSecondariesWhileAPrimaryWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real daemons")
	}
	p := Plan{Seed: 1003, Nodes: 3, First: 0, SpanOff: 4 << 20, SpanLen: 8 << 20, Writers: 4, Final: 1,
		Steps: []Step{{Kind: KillSecondary, After: time.Second, Hold: 500 * time.Millisecond, seed: [2]uint64{1003, 1}}}}
	Run(t, p, Options{})
}

// TestNoFalseSplitBrainBetweenSecondaries: in a three-node resource, after the Primary
// lost its disk and handed over to another node, the old Primary comes back and resyncs
// from the new one; it must then connect to the third node without split brain, since
// neither wrote on its own. The bug: the third node never adopted the new Primary's
// generations (the stale view above), and a SyncTarget took over only its source's
// current generation, not its history, so the two looked like branches of one ancestor
// (soak seeds 40945930031258, 225408112087446).
func TestNoFalseSplitBrainBetweenSecondaries(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real daemons")
	}
	c := clustertest.New(t, clustertest.Options{Nodes: 3, Size: 16 << 20, FaultInjection: true})
	alpha, beta, gamma := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	c.StartAll()
	c.WaitAllConnected()
	c.MustAdm(alpha, "primary", "--force", c.Res)
	c.WaitFor("all UpToDate", func() bool {
		return c.Status(beta).Disk == "UpToDate" && c.Status(gamma).Disk == "UpToDate"
	})
	// alpha's disk fails under a write: it goes on diskless, then hands over to beta.
	if err := c.Fault(alpha, "ops=write"); err != nil {
		t.Fatal(err)
	}
	cl, err := nbd.Dial(context.Background(), "unix", alpha.ExportPath(), c.Res)
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.WriteAt(make([]byte, BlockSize), 0, false); err != nil {
		t.Fatalf("a write on the Primary whose disk failed, with peers connected: %v", err)
	}
	cl.Close()
	c.WaitFor("alpha's disk to fail", func() bool { return c.Status(alpha).DiskFailed })
	c.WaitFor("alpha's client to go", func() bool { return c.Status(alpha).Clients == 0 })
	c.MustAdm(alpha, "secondary", c.Res)
	c.MustAdm(beta, "primary", c.Res)
	// alpha comes back with a new disk (a daemon restart) and resyncs from beta.
	c.Fault(alpha, "")
	c.Kill(alpha)
	c.Start(alpha)
	c.MustAdm(alpha, "up", c.Res)
	c.WaitFor("alpha UpToDate", func() bool { return c.Status(alpha).Disk == "UpToDate" })
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if p := c.Peer(alpha, gamma); p.SplitBrain || p.Connection == "StandAlone" {
			t.Fatalf("alpha and gamma: connection %s, split brain %v; neither wrote on its own", p.Connection, p.SplitBrain)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
