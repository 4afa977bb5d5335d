package blockrep

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockrep/blockrep/internal/clock"
	"github.com/blockrep/blockrep/transport"
)

// memCluster is two or more in-process nodes on an in-memory network, all reading one
// fake clock: tests advance time instead of sleeping, and partition links without TCP.
type memCluster struct {
	t     *testing.T
	net   *transport.Network
	clock *clock.Fake
	vols  []*Volume
	cfgs  []Config
}

func newMemCluster(t *testing.T, n int, size int64, proto Protocol) *memCluster {
	return newMemClusterWith(t, n, size, proto, nil)
}

func newMemClusterWith(t *testing.T, n int, size int64, proto Protocol, adjust func(cfg *Config)) *memCluster {
	m := &memCluster{t: t, net: transport.NewNetwork(), clock: clock.NewFake(time.Hour)}
	dir := t.TempDir()
	for i := 0; i < n; i++ {
		disk := filepath.Join(dir, fmt.Sprintf("disk%d", i))
		if err := os.WriteFile(disk, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(disk, size); err != nil {
			t.Fatal(err)
		}
		cfg := Config{Resource: "r0", NodeID: i, NodeName: nodeName(i), Disk: disk, MetaDisk: "internal",
			ALExtents: 1237, ALUpdates: true, Clock: m.clock, Dial: m.net.Dial,
			Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", i)}
		for j := 0; j < n; j++ {
			if j == i {
				continue
			}
			cfg.Peers = append(cfg.Peers, PeerConfig{NodeID: j, Name: nodeName(j), Address: nodeName(j), LocalAddress: nodeName(i),
				Protocol: proto, Secret: "s3cret", ConnectInt: time.Second, PingInt: time.Second, Timeout: 2 * time.Second,
				Settings: "p", Resync: ResyncConfig{PlanAhead: 2 * time.Second, FillTarget: 4 << 20}})
		}
		if adjust != nil {
			adjust(&cfg)
		}
		if _, err := CreateMD(cfg, 0, false); err != nil {
			t.Fatal(err)
		}
		m.cfgs = append(m.cfgs, cfg)
	}
	for i := range m.cfgs {
		v, err := Open(m.cfgs[i])
		if err != nil {
			t.Fatal(err)
		}
		m.vols = append(m.vols, v)
		id := i
		m.net.Listen(nodeName(i), func(nc net.Conn) {
			tc, err := transport.Accept(nc, func(h transport.Hello) (transport.Identity, error) {
				if h.LocalID != id {
					return transport.Identity{}, errors.New("wrong node")
				}
				return transport.Identity{Resource: "r0", LocalID: id, PeerID: h.PeerID, Secret: "s3cret"}, nil
			})
			if err == nil {
				v.Incoming(tc)
			}
		})
	}
	stop := watchUnsent(t)
	t.Cleanup(func() {
		stop()
		for _, v := range m.vols {
			// Close waits for the connection managers, whose timers are the fake clock's.
			done := make(chan struct{})
			go func() {
				v.Disconnect(-1)
				if v.State().Role == Primary {
					v.Demote()
				}
				v.Close()
				close(done)
			}()
			m.advanceUntil("shutdown", func() bool {
				select {
				case <-done:
					return true
				default:
					return false
				}
			})
		}
	})
	for _, v := range m.vols {
		if err := v.Connect(-1, false); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// advanceUntil moves the fake clock in 100 ms steps until cond holds (at most 5 minutes
// of fake time), giving the goroutines a moment of real time at each step.
func (m *memCluster) advanceUntil(what string, cond func() bool) time.Duration {
	m.t.Helper()
	start := m.clock.Now()
	for i := 0; i < 3000; i++ {
		if cond() {
			return m.clock.Now() - start
		}
		m.clock.Advance(100 * time.Millisecond)
		time.Sleep(2 * time.Millisecond)
	}
	m.t.Fatalf("%s: not reached after %v of engine time", what, m.clock.Now()-start)
	return 0
}

func (m *memCluster) conn(a, b int) ConnState {
	st := m.vols[a].State()
	return st.Peer(b).Conn
}

func (m *memCluster) inSync(a, b int) bool {
	st := m.vols[a].State()
	ps := st.Peer(b)
	return ps.Conn == Connected && ps.Repl == Established && ps.Disk == UpToDate
}

// TestKeepaliveOnTheEngineClock: a link that goes silent is dropped after ping-int +
// timeout of engine time — not of wall time — and the nodes find each other again
// once the partition heals; the writes made meanwhile resync.
func TestKeepaliveOnTheEngineClock(t *testing.T) {
	m := newMemCluster(t, 2, 16<<20, ProtocolC)
	m.advanceUntil("connected", func() bool { return m.conn(0, 1) == Connected && m.conn(1, 0) == Connected })
	if err := m.vols[0].Promote(true); err != nil {
		t.Fatal(err)
	}
	m.advanceUntil("initial sync", func() bool { return m.inSync(0, 1) })

	// Wall time passing does nothing to a healthy link with a still clock.
	time.Sleep(300 * time.Millisecond)
	if m.conn(0, 1) != Connected {
		t.Fatal("the link dropped while the engine clock stood still")
	}

	m.net.Partition("alpha", "beta")
	// Writes go on: the Primary does not wait for an unreachable peer beyond its timeout.
	errc := make(chan error, 1)
	go func() { errc <- submit(t, m.vols[0], OpWrite, 0, randBytes(64<<10), 0, 0) }()
	// Real time alone never drops it: the keepalive reads the engine clock.
	time.Sleep(500 * time.Millisecond)
	if m.conn(0, 1) != Connected {
		t.Fatal("the keepalive dropped the link on wall time")
	}
	took := m.advanceUntil("the silent peer is dropped", func() bool { return m.conn(0, 1) != Connected })
	if took < 2*time.Second || took > 4*time.Second {
		t.Fatalf("the silent link was dropped after %v of engine time, want timeout 2 s (with writes pending) to ping-int+timeout 3 s", took)
	}
	if err := <-errc; err != nil {
		t.Fatalf("the write across the partition failed: %v", err)
	}
	if n := m.vols[0].peersNow()[0].bm.Count(); n == 0 {
		t.Fatal("the write the peer missed is not in its bitmap")
	}
	m.net.Heal("alpha", "beta")
	m.advanceUntil("resynced after healing", func() bool { return m.inSync(0, 1) && m.inSync(1, 0) })
	if n := m.vols[0].peersNow()[0].bm.Count(); n != 0 {
		t.Fatalf("%d blocks still out of sync", n)
	}
}

// TestIsolatedPrimaryLosesQuorum: three nodes, quorum majority, on-no-quorum io-error.
// A Primary cut off from both peers fails new writes once the keepalive notices (the
// majority may never see them), and takes writes again when a peer is back.
func TestIsolatedPrimaryLosesQuorum(t *testing.T) {
	m := newMemClusterWith(t, 3, 16<<20, ProtocolC, func(cfg *Config) {
		cfg.Quorum = QuorumPolicy{Need: QuorumMajority, IOError: true}
	})
	m.advanceUntil("connected", func() bool {
		return m.conn(0, 1) == Connected && m.conn(0, 2) == Connected && m.conn(1, 2) == Connected
	})
	if err := m.vols[0].Promote(true); err != nil {
		t.Fatal(err)
	}
	m.advanceUntil("in sync", func() bool { return m.inSync(0, 1) && m.inSync(0, 2) })
	if err := submit(t, m.vols[0], OpWrite, 0, randBytes(4096), 0, 0); err != nil {
		t.Fatal(err)
	}
	m.net.Partition("alpha", "beta")
	m.net.Partition("alpha", "gamma")
	m.advanceUntil("quorum lost", func() bool { return m.vols[0].State().NoQuorum && m.vols[0].noQuorum.Load() })
	if err := submit(t, m.vols[0], OpWrite, 0, randBytes(4096), 0, 0); !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("write without quorum: %v, want ErrNoQuorum", err)
	}
	// The two others still see each other (after re-deciding what the lost Primary's
	// last writes touched): they have quorum.
	m.advanceUntil("beta with gamma has quorum", func() bool { return !m.vols[1].State().NoQuorum && m.conn(1, 2) == Connected })
	m.net.Heal("alpha", "beta")
	m.advanceUntil("quorum back", func() bool { return !m.vols[0].State().NoQuorum && !m.vols[0].noQuorum.Load() })
	if err := submit(t, m.vols[0], OpWrite, 0, randBytes(4096), 0, 0); err != nil {
		t.Fatalf("write with quorum back: %v", err)
	}
}

// TestReconfigurePeer: adjust's engine side. The peer's link is made again with the
// new settings while the Primary writes on; the writes reach the peer (through the
// bitmap for those made while the link was down), and a change the core keeps
// (protocol) is refused.
func TestReconfigurePeer(t *testing.T) {
	m := newMemCluster(t, 2, 16<<20, ProtocolC)
	m.advanceUntil("connected", func() bool { return m.conn(0, 1) == Connected })
	a, b := m.vols[0], m.vols[1]
	if err := a.Promote(true); err != nil {
		t.Fatal(err)
	}
	m.advanceUntil("initial sync", func() bool { return m.inSync(0, 1) })
	pc := m.cfgs[0].Peers[0]
	pc.PingInt, pc.Timeout = 3*time.Second, 4*time.Second
	if err := a.Reconfigure(pc); err != nil {
		t.Fatal(err)
	}
	data := randBytes(256 << 10)
	if err := submit(t, a, OpWrite, 1<<20, data, 0, 0); err != nil {
		t.Fatal(err)
	}
	m.advanceUntil("reconnected and in sync", func() bool { return m.inSync(0, 1) && m.inSync(1, 0) })
	if got := a.peersNow()[0].cfg.PingInt; got != 3*time.Second {
		t.Fatalf("ping-int after Reconfigure: %v", got)
	}
	got := make([]byte, len(data))
	if err := b.data.ReadAt(got, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("the peer lacks the write made across the reconfiguration")
	}
	pc.Protocol = ProtocolA
	if err := a.Reconfigure(pc); err == nil || !strings.Contains(err.Error(), "needs down and up") {
		t.Fatalf("protocol change through Reconfigure: %v", err)
	}
}
