package clustertest

import (
	"testing"
	"time"
)

// TestNetworkModes: in each mode the daemons connect across the links the mode
// builds, a full cut drops the connection (through the keepalive timeout, as on a real
// network), and mending it lets them reconnect.
func TestNetworkModes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real daemons")
	}
	for _, mode := range []NetMode{Netns, Proxied} {
		t.Run(string(mode), func(t *testing.T) {
			if mode == Netns {
				if err := NetnsAvailable(); err != nil {
					t.Skip(err)
				}
			}
			c := New(t, Options{Size: 16 << 20, Network: mode})
			a, b := c.Nodes[0], c.Nodes[1]
			c.StartAll()
			connected := func() bool { return c.Peer(a, b).Connection == "Connected" && c.Peer(b, a).Connection == "Connected" }
			c.WaitFor("connection", connected)
			if err := c.Cut(a, b); err != nil {
				t.Fatal(err)
			}
			if err := c.Cut(b, a); err != nil {
				t.Fatal(err)
			}
			c.WaitFor("the cut noticed", func() bool { return c.Peer(a, b).Connection != "Connected" })
			if err := c.MendAll(); err != nil {
				t.Fatal(err)
			}
			c.WaitFor("reconnection", connected)
			if err := c.Throttle(a, Shape{Rate: 1 << 20, Delay: 5 * time.Millisecond}); err != nil {
				t.Fatal(err)
			}
			if err := c.Unthrottle(a); err != nil {
				t.Fatal(err)
			}
		})
	}
}
