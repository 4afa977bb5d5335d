package blockrep

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/blockrep/blockrep/transport"
)

// withTiebreaker is two data nodes (alpha, beta) and a diskless tiebreaker (gamma,
// node id 2) on the in-memory network, quorum majority with on-no-quorum io-error.
func withTiebreaker(t *testing.T) (*memCluster, *Witness) {
	quorum := QuorumPolicy{Need: QuorumMajority, IOError: true}
	peer := func(id, self int) PeerConfig {
		return PeerConfig{NodeID: id, Name: nodeName(id), Address: nodeName(id), LocalAddress: nodeName(self),
			Protocol: ProtocolC, Secret: "s3cret", ConnectInt: time.Second, PingInt: time.Second, Timeout: 2 * time.Second,
			Settings: "p", Tiebreaker: id == 2}
	}
	m := newMemClusterWith(t, 2, 16<<20, ProtocolC, func(cfg *Config) {
		cfg.Quorum = quorum
		cfg.Peers = append(cfg.Peers, peer(2, cfg.NodeID))
	})
	w := OpenWitness(WitnessConfig{Resource: "r0", NodeID: 2, NodeName: "gamma", Quorum: quorum, Clock: m.clock, Dial: m.net.Dial,
		Peers:  []PeerConfig{peer(0, 2), peer(1, 2)},
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", 2)})
	m.net.Listen("gamma", func(nc net.Conn) {
		tc, err := transport.Accept(nc, func(h transport.Hello) (transport.Identity, error) {
			if h.LocalID != 2 {
				return transport.Identity{}, errors.New("wrong node")
			}
			return transport.Identity{Resource: "r0", LocalID: 2, PeerID: h.PeerID, Secret: "s3cret"}, nil
		})
		if err == nil {
			w.Incoming(tc)
		}
	})
	// Registered after the cluster's cleanup, so it runs first: the data nodes' own
	// shutdown then does not wait for a tiebreaker that is gone.
	t.Cleanup(func() {
		done := make(chan struct{})
		go func() { w.Close(); close(done) }()
		m.advanceUntil("tiebreaker shutdown", func() bool {
			select {
			case <-done:
				return true
			default:
				return false
			}
		})
	})
	m.advanceUntil("all connected", func() bool {
		ws := w.State()
		return m.conn(0, 1) == Connected && m.conn(0, 2) == Connected && m.conn(1, 2) == Connected &&
			ws.Peers[0].Conn == Connected && ws.Peers[1].Conn == Connected
	})
	return m, w
}

func promoteAsync(v *Volume) chan error {
	c := make(chan error, 1)
	go func() { c <- v.Promote(false) }()
	return c
}

func (m *memCluster) wait(what string, c chan error) error {
	var err error
	m.advanceUntil(what, func() bool {
		select {
		case err = <-c:
			return true
		default:
			return false
		}
	})
	return err
}

// TestTiebreakerQuorumAndArbitration: the tiebreaker counts for quorum and holds no
// data; with alpha cut off from beta alone, alpha keeps quorum and goes on writing, and
// the tiebreaker refuses beta's promotion, first because it sees alpha as Primary and
// then, with alpha isolated too, because beta's data is older than alpha's last
// generation. Alpha, isolated, fails writes; demoted without quorum it is Outdated,
// and after healing it rejoins beta's data as the split brain's victim.
func TestTiebreakerQuorumAndArbitration(t *testing.T) {
	m, w := withTiebreaker(t)
	alpha, beta := m.vols[0], m.vols[1]
	if err := alpha.Promote(true); err != nil {
		t.Fatal(err)
	}
	m.advanceUntil("initial sync", func() bool { return m.inSync(0, 1) })
	st := alpha.State()
	if st.NoQuorum || st.Peer(2).Disk != Diskless {
		t.Fatalf("alpha with everyone connected: no-quorum %t, tiebreaker disk %s", st.NoQuorum, st.Peer(2).Disk)
	}
	if err := submit(t, alpha, OpWrite, 0, randBytes(64<<10), 0, 0); err != nil {
		t.Fatal(err)
	}
	_, peers := alpha.Status()
	for _, p := range peers {
		if p.NodeID == 2 && p.OutOfSyncBytes != 0 {
			t.Fatalf("writes were recorded out of sync for the tiebreaker: %d bytes", p.OutOfSyncBytes)
		}
	}
	if ws := w.State(); ws.NoQuorum || ws.Peers[0].Role != Primary {
		t.Fatalf("tiebreaker view: %+v", ws)
	}

	// alpha - beta cut: both keep quorum through gamma; alpha writes on.
	m.net.Partition("alpha", "beta")
	m.advanceUntil("alpha and beta lose each other", func() bool { return m.conn(0, 1) != Connected && m.conn(1, 0) != Connected })
	if alpha.State().NoQuorum {
		t.Fatal("alpha lost quorum with the tiebreaker connected")
	}
	newer := randBytes(64 << 10)
	if err := submit(t, alpha, OpWrite, 1<<20, newer, 0, 0); err != nil {
		t.Fatalf("alpha's write with quorum: %v", err)
	}
	err := m.wait("beta's promotion", promoteAsync(beta))
	if err == nil || !strings.Contains(err.Error(), "sees alpha as Primary") {
		t.Fatalf("beta promoted while the tiebreaker sees alpha Primary: %v", err)
	}

	// alpha isolated: it loses quorum and fails writes; beta's data is stale.
	m.net.Partition("alpha", "gamma")
	m.advanceUntil("alpha loses quorum", func() bool { return alpha.State().NoQuorum })
	if err := submit(t, alpha, OpWrite, 2<<20, randBytes(4096), 0, 0); !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("isolated Primary's write: %v, want ErrNoQuorum", err)
	}
	m.advanceUntil("gamma loses alpha", func() bool { return w.State().Peers[0].Conn != Connected })
	err = m.wait("beta's promotion", promoteAsync(beta))
	if err == nil || !strings.Contains(err.Error(), "older than the last Primary") {
		t.Fatalf("beta promoted with data older than alpha's: %v", err)
	}

	// alpha demoted without quorum is Outdated; healed, it rejoins and adopts beta's
	// data once beta is Primary (forced: beta's data is the operator's choice now).
	if err := alpha.Demote(); err != nil {
		t.Fatal(err)
	}
	if d := alpha.State().Disk; d != Outdated {
		t.Fatalf("alpha demoted without quorum: disk %s, want Outdated", d)
	}
	m.net.Heal("alpha", "gamma")
	m.net.Heal("alpha", "beta")
	m.advanceUntil("reconnected and resynced", func() bool { return m.inSync(1, 0) && m.inSync(0, 1) })
	if alpha.State().Disk != UpToDate {
		t.Fatalf("alpha after resync: %s", alpha.State().Disk)
	}
}

// TestTiebreakerGrantsAfterPrimaryDies: alpha vanishes at once (a node kill); beta,
// in sync until then, is granted the promotion once the tiebreaker has lost alpha too,
// and the rows alpha acknowledged are on beta.
func TestTiebreakerGrantsAfterPrimaryDies(t *testing.T) {
	m, w := withTiebreaker(t)
	alpha, beta := m.vols[0], m.vols[1]
	if err := alpha.Promote(true); err != nil {
		t.Fatal(err)
	}
	m.advanceUntil("initial sync", func() bool { return m.inSync(0, 1) })
	data := randBytes(128 << 10)
	if err := submit(t, alpha, OpWrite, 0, data, 0, 0); err != nil {
		t.Fatal(err)
	}
	m.net.Partition("alpha", "beta")
	m.net.Partition("alpha", "gamma")
	m.advanceUntil("beta and gamma lose alpha", func() bool {
		return m.conn(1, 0) != Connected && w.State().Peers[0].Conn != Connected
	})
	if beta.State().NoQuorum {
		t.Fatalf("beta with the tiebreaker has no quorum: %+v", beta.State())
	}
	if err := m.wait("beta's promotion", promoteAsync(beta)); err != nil {
		t.Fatalf("beta's promotion after alpha died: %v", err)
	}
	got := make([]byte, len(data))
	if err := beta.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("beta lacks the data alpha acknowledged")
	}
	// A second promotion elsewhere is refused while beta is Primary.
	if ok, why := GrantPromotion(0, 0, w.viewForTest(), -1, 0, ""); ok || !strings.Contains(why, "beta") {
		t.Fatalf("tiebreaker would grant alpha while beta is Primary: %t %q", ok, why)
	}
}

func (w *Witness) viewForTest() []witnessPeer {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []witnessPeer
	for _, l := range w.links {
		out = append(out, l.view)
	}
	return out
}

func TestGrantPromotion(t *testing.T) {
	const g1, g2, g3 = 0x1110, 0x2220, 0x3330
	conn := func(id int, name string, role Role, cur uint64, hist ...uint64) witnessPeer {
		p := witnessPeer{NodeID: id, Name: name, Conn: Connected, Role: role, Disk: UpToDate, Current: cur}
		copy(p.History[:], hist)
		return p
	}
	gone := func(p witnessPeer) witnessPeer { p.Conn = Connecting; return p }
	tests := []struct {
		name      string
		requester int
		current   uint64
		peers     []witnessPeer
		pending   int
		latest    uint64
		ok        bool
		why       string
	}{
		{"nothing known grants", 1, g1, []witnessPeer{conn(0, "alpha", Secondary, g1), conn(1, "beta", Secondary, g1)}, -1, 0, true, ""},
		{"another Primary refuses", 1, g1, []witnessPeer{conn(0, "alpha", Primary, g1), conn(1, "beta", Secondary, g1)}, -1, g1, false, "sees alpha as Primary"},
		{"a gone Primary does not", 1, g1, []witnessPeer{gone(conn(0, "alpha", Primary, g1)), conn(1, "beta", Secondary, g1)}, -1, g1, true, ""},
		{"same generation as the last Primary", 1, g2 | UUIDPrimaryBit, []witnessPeer{gone(conn(0, "alpha", Secondary, g2))}, -1, g2, true, ""},
		{"older data refused", 1, g1, []witnessPeer{gone(conn(0, "alpha", Secondary, g2)), conn(1, "beta", Secondary, g1)}, -1, g2, false, "older than the last Primary"},
		{"newer data descends from latest", 1, g3, []witnessPeer{conn(1, "beta", Secondary, g3, g2, g1)}, -1, g2, true, ""},
		{"pending grant to another refuses", 1, g1, []witnessPeer{conn(0, "alpha", Secondary, g1), conn(1, "beta", Secondary, g1)}, 0, g1, false, "just granted alpha"},
		{"pending grant to itself", 1, g1, []witnessPeer{conn(0, "alpha", Secondary, g1), conn(1, "beta", Secondary, g1)}, 1, g1, true, ""},
		{"pending grant to a gone node", 1, g1, []witnessPeer{gone(conn(0, "alpha", Secondary, g1)), conn(1, "beta", Secondary, g1)}, 0, g1, true, ""},
	}
	for _, tt := range tests {
		ok, why := GrantPromotion(tt.requester, tt.current, tt.peers, tt.pending, tt.latest, "alpha")
		if ok != tt.ok || !strings.Contains(why, tt.why) || ok && why != "" {
			t.Errorf("%s: got %t %q, want %t %q", tt.name, ok, why, tt.ok, tt.why)
		}
	}
}
