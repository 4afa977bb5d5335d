package resource_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/blockrep/blockrep/internal/clustertest"
	"github.com/blockrep/blockrep/internal/testcerts"
)

// TestTLSPeers: two daemons with net { tls yes; } replicate; a node whose certificate
// comes from another CA is refused, with the reason in the refusing node's log.
func TestTLSPeers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real daemons")
	}
	dir := t.TempDir()
	ca, other := testcerts.NewCA(t, "blockrep test CA"), testcerts.NewCA(t, "another CA")
	caFile := ca.WriteCA(t, dir)
	on := func(ca *testcerts.CA, host string) string {
		d := dir + "/" + host + fmt.Sprint(time.Now().UnixNano())
		os.Mkdir(d, 0o700)
		cert, key := ca.WriteIssued(t, d, host)
		return fmt.Sprintf("        tls-certificate %s;\n        tls-key %s;\n", cert, key)
	}
	netOpts := fmt.Sprintf("        tls yes;\n        tls-ca %s;\n", caFile)

	c := clustertest.New(t, clustertest.Options{Size: 32 << 20, Net: netOpts,
		On: map[int]string{0: on(ca, "alpha"), 1: on(ca, "beta")}})
	alpha, beta := c.Nodes[0], c.Nodes[1]
	c.StartAll()
	c.WaitFor("connection over TLS", func() bool { return c.Peer(alpha, beta).Connection == "Connected" })
	c.MustAdm(alpha, "primary", "--force", c.Res)
	c.WaitInSync()

	bad := clustertest.New(t, clustertest.Options{Size: 32 << 20, Net: netOpts,
		On: map[int]string{0: on(ca, "alpha"), 1: on(other, "beta")}})
	bad.StartAll()
	time.Sleep(3 * time.Second)
	if st := bad.Peer(bad.Nodes[0], bad.Nodes[1]).Connection; st == "Connected" {
		t.Fatal("a node with a certificate from another CA connected")
	}
	// beta (node-id 1) dials alpha: alpha's log says why it refused.
	logs, _ := os.ReadFile(bad.Nodes[0].LogFile())
	if !strings.Contains(string(logs), "peer connection refused") || !strings.Contains(string(logs), "TLS") {
		t.Fatalf("alpha's log does not say why beta was refused:\n%s", logs)
	}
}
