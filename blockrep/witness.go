package blockrep

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blockrep/blockrep/internal/clock"
	"github.com/blockrep/blockrep/transport"
)

// WitnessConfig configures a diskless tiebreaker: a node configured "disk none" that
// stores and replicates nothing, connects to every data node, and counts for quorum.
type WitnessConfig struct {
	Resource string
	NodeID   int
	NodeName string
	Logger   *slog.Logger
	// Peers are the data nodes (tiebreakers do not connect to each other).
	Peers  []PeerConfig
	Quorum QuorumPolicy
	Clock  clock.Clock
	Dial   transport.DialFunc
	// OnChange is called after every change of a peer's connection, role or disk; it
	// must not block.
	OnChange func()
}

// Witness is a running tiebreaker. Besides its vote it arbitrates promotions: it
// refuses one while another node it sees is Primary, and for data older than the last
// Primary's generation it saw — so a node cut off from a Primary that went on writing
// cannot take over with stale data once that Primary dies.
type Witness struct {
	cfg   WitnessConfig
	log   *slog.Logger
	clock clock.Clock
	links []*witnessLink

	mu sync.Mutex
	// latest is the generation of the most recent Primary seen (0: none yet);
	// latestFrom names it.
	latest     uint64
	latestFrom string
	// grant is the node last granted a promotion, until its state arrives, its link
	// drops or grantTTL passes: two data nodes that cannot see each other must not
	// both be granted.
	grant   int
	grantAt time.Duration
	closed  atomic.Bool
}

// grantTTL matches how long a promoting node waits for its peers' answers.
const grantTTL = 10 * time.Second

// witnessLink is the tiebreaker's connection to one data node.
type witnessLink struct {
	w     *Witness
	cfg   PeerConfig
	rules linkRules

	kick, quit, done chan struct{}
	incoming         chan *transport.Conn
	lastRecv         atomic.Int64

	// Under w.mu.
	view witnessPeer
	link *transport.Conn
}

// witnessPeer is what the tiebreaker knows of one data node.
type witnessPeer struct {
	NodeID  int
	Name    string
	Conn    ConnState
	Role    Role
	Disk    DiskState
	Current uint64
	History [HistoryLen]uint64
}

// OpenWitness starts the tiebreaker's connections.
func OpenWitness(cfg WitnessConfig) *Witness {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	w := &Witness{cfg: cfg, log: cfg.Logger.With("resource", cfg.Resource), clock: cfg.Clock, grant: -1}
	if w.clock == nil {
		w.clock = clock.System()
	}
	for _, pc := range cfg.Peers {
		if pc.Tiebreaker {
			continue
		}
		pc = peerDefaults(pc)
		l := &witnessLink{w: w, cfg: pc, kick: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{}),
			incoming: make(chan *transport.Conn, 1),
			view:     witnessPeer{NodeID: pc.NodeID, Name: pc.Name, Conn: Connecting, Role: RoleUnknown, Disk: DUnknown}}
		log := w.log.With("peer", pc.Name)
		l.rules = linkRules{cfg: &l.cfg, dials: cfg.NodeID > pc.NodeID, dial: cfg.Dial, clock: w.clock, log: log,
			quit: l.quit, kick: l.kick, incoming: l.incoming, wanted: func() bool { return !w.closed.Load() },
			id: transport.Identity{Resource: cfg.Resource, LocalID: cfg.NodeID, PeerID: pc.NodeID,
				Secret: pc.Secret, Alg: pc.HMACAlg, TLS: pc.TLS, PeerName: pc.Name}}
		w.links = append(w.links, l)
	}
	for _, l := range w.links {
		go l.run()
	}
	w.log.Info("tiebreaker up (diskless)", "peers", len(w.links))
	return w
}

// Incoming hands an authenticated connection to the link it belongs to; one from a
// lower node id is a wake-up call (the higher node id dials), as between data nodes.
func (w *Witness) Incoming(c *transport.Conn) {
	for _, l := range w.links {
		if l.cfg.NodeID != c.PeerID || w.closed.Load() {
			continue
		}
		handIncoming(c, w.cfg.NodeID, l.incoming, func() {
			select {
			case l.kick <- struct{}{}:
			default:
			}
		})
		return
	}
	c.Close()
}

// Close says goodbye to every data node and stops.
func (w *Witness) Close() {
	if w.closed.Swap(true) {
		return
	}
	for _, l := range w.links {
		w.mu.Lock()
		c := l.link
		w.mu.Unlock()
		if c != nil {
			m := transport.Disconnect{Reason: "tiebreaker going down"}
			c.Post(transport.MsgDisconnect, m.Encode())
			c.CloseAfter(time.Second)
		}
		close(l.quit)
	}
	for _, l := range w.links {
		<-l.done
	}
}

// State is the tiebreaker's view: always Secondary and Diskless, its peers, and
// whether it sees a quorum.
func (w *Witness) State() State {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := State{Role: Secondary, Disk: Diskless}
	present := 1
	for _, l := range w.links {
		v := l.view
		repl := ReplOff
		if v.Conn == Connected {
			present++
			repl = Established
		}
		st.Peers = append(st.Peers, PeerState{NodeID: v.NodeID, Name: v.Name, Conn: v.Conn, Role: v.Role, Disk: v.Disk, Repl: repl})
	}
	st.NoQuorum = !witnessQuorum(w.cfg.Quorum, present, len(w.cfg.Peers)+1)
	return st
}

// witnessQuorum: the tiebreaker keeps no peer flags, so every absent node counts.
func witnessQuorum(q QuorumPolicy, present, voters int) bool {
	switch q.Need {
	case QuorumOff:
		return true
	case QuorumMajority:
		return present >= voters/2+1
	case QuorumAll:
		return present >= voters
	}
	return present >= int(q.Need)
}

// GrantPromotion is the tiebreaker's answer to a promotion request from node id
// requester whose current generation is current: refused while another node is
// Primary or was just granted a promotion (pending, -1 for none), or when the
// requester's data is older than the last Primary's. latest 0 (no Primary seen since
// the tiebreaker started) grants.
func GrantPromotion(requester int, current uint64, peers []witnessPeer, pending int, latest uint64, latestFrom string) (bool, string) {
	var req *witnessPeer
	for i := range peers {
		p := &peers[i]
		if p.NodeID == requester {
			req = p
			continue
		}
		if p.Conn == Connected && p.Role == Primary {
			return false, fmt.Sprintf("the tiebreaker sees %s as Primary", p.Name)
		}
		if p.Conn == Connected && p.NodeID == pending {
			return false, fmt.Sprintf("the tiebreaker just granted %s's promotion", p.Name)
		}
	}
	if latest == 0 || mask(current) == mask(latest) {
		return true, ""
	}
	if req != nil {
		for _, h := range req.History {
			if h != 0 && mask(h) == mask(latest) {
				return true, "" // the requester's data descends from it
			}
		}
	}
	return false, fmt.Sprintf("data older than the last Primary's (%s had generation %016X, the requester has %016X)",
		latestFrom, mask(latest), mask(current))
}

func (l *witnessLink) run() {
	defer close(l.done)
	log := l.rules.log
	for !l.rules.quitting() {
		c := l.rules.obtain()
		if c == nil {
			continue
		}
		err := l.session(c)
		c.Close()
		l.w.mu.Lock()
		l.link = nil
		l.view.Conn, l.view.Role, l.view.Disk = Connecting, RoleUnknown, DUnknown
		if l.w.grant == l.cfg.NodeID {
			l.w.grant = -1
		}
		l.w.mu.Unlock()
		l.w.changed()
		if !l.rules.quitting() {
			log.Info("connection lost", "reason", err)
			clock.Sleep(l.w.clock, min(l.cfg.ConnectInt, 250*time.Millisecond), l.quit)
		}
	}
}

func (w *Witness) changed() {
	if w.cfg.OnChange != nil {
		w.cfg.OnChange()
	}
}

// session is the tiebreaker's side of a connection: the data node's handshake sees a
// Diskless Secondary of size 0 (nothing to sync), then pings, states, generations and
// promotion requests flow until the link breaks.
func (l *witnessLink) session(c *transport.Conn) error {
	w := l.w
	watchdog := w.clock.AfterFunc(handshakeTimeout, func() { c.Close() })
	defer watchdog.Stop()
	self := transport.Handshake{NodeID: uint32(w.cfg.NodeID), Name: w.cfg.NodeName, Role: uint8(Secondary), Disk: uint8(Diskless),
		Protocol: uint8(l.cfg.Protocol), Settings: l.cfg.Settings}
	if err := c.Send(transport.MsgHandshake, self.Encode(), nil); err != nil {
		return err
	}
	payload, err := readExpect(c, transport.MsgHandshake)
	if err != nil {
		return err
	}
	h, err := transport.DecodeHandshake(payload)
	if err != nil {
		return err
	}
	switch {
	case int(h.NodeID) != l.cfg.NodeID:
		return fmt.Errorf("peer claims node-id %d, expected %d", h.NodeID, l.cfg.NodeID)
	case Protocol(h.Protocol) != l.cfg.Protocol:
		return fmt.Errorf("protocol mismatch: ours %s, peer's %s", l.cfg.Protocol, Protocol(h.Protocol))
	case h.Settings != l.cfg.Settings:
		return fmt.Errorf("incompatible net settings: ours %q, peer's %q", l.cfg.Settings, h.Settings)
	}
	if err := c.Send(transport.MsgSyncReady, nil, nil); err != nil {
		return err
	}
	if _, err := readExpect(c, transport.MsgSyncReady); err != nil {
		return err
	}
	watchdog.Stop()
	l.lastRecv.Store(int64(w.clock.Now()))
	w.mu.Lock()
	l.link = c
	l.view.Conn, l.view.Role, l.view.Disk = Connected, Role(h.Role), DiskState(h.Disk)
	l.view.Current, l.view.History = h.Current, h.History
	w.notePrimaryLocked(&l.view)
	w.mu.Unlock()
	l.rules.log.Info("connected", "peer-role", Role(h.Role), "peer-disk", DiskState(h.Disk))
	w.changed()

	stop := make(chan struct{})
	defer close(stop)
	go l.rules.keepalive(c, stop, &l.lastRecv, func() bool { return false })
	for {
		t, payload, err := c.ReadMsg()
		if err != nil {
			return err
		}
		l.lastRecv.Store(int64(w.clock.Now()))
		if err := l.handle(c, t, payload); err != nil {
			return err
		}
	}
}

func (l *witnessLink) handle(c *transport.Conn, t transport.MsgType, payload []byte) error {
	w := l.w
	switch t {
	case transport.MsgPing:
		c.Post(transport.MsgPingAck, nil)
	case transport.MsgPingAck:
	case transport.MsgState:
		s, err := transport.DecodeState(payload)
		if err != nil {
			return err
		}
		w.mu.Lock()
		// No generation here: what we know of a Secondary's may be stale (a resync
		// changed it); a new Primary's is the one we granted, or its NewUUID follows.
		l.view.Role, l.view.Disk = Role(s.Role), DiskState(s.Disk)
		if w.grant == l.cfg.NodeID && l.view.Role == Primary {
			w.grant = -1 // the Primary rule takes over
		}
		w.mu.Unlock()
		w.changed()
	case transport.MsgNewUUID:
		g, err := transport.DecodeGeneration(payload)
		if err != nil {
			return err
		}
		w.mu.Lock()
		pushHistory(&l.view.History, l.view.Current)
		l.view.Current = g.Current
		// Only a Primary starts generations: this is the newest data there is.
		w.latest, w.latestFrom = g.Current, l.view.Name
		w.mu.Unlock()
	case transport.MsgPromoteReq:
		r, err := transport.DecodePromoteRequest(payload)
		if err != nil {
			return err
		}
		w.mu.Lock()
		var peers []witnessPeer
		for _, o := range w.links {
			peers = append(peers, o.view)
		}
		now := w.clock.Now()
		if w.grant >= 0 && now-w.grantAt > grantTTL {
			w.grant = -1
		}
		ok, why := GrantPromotion(l.cfg.NodeID, r.Current, peers, w.grant, w.latest, w.latestFrom)
		if ok {
			w.grant, w.grantAt = l.cfg.NodeID, now
			if r.Current != 0 {
				l.view.Current = r.Current
				w.latest, w.latestFrom = r.Current, l.view.Name
			}
		}
		w.mu.Unlock()
		if ok {
			l.rules.log.Info("promotion granted")
		} else {
			l.rules.log.Warn("promotion refused", "reason", why)
		}
		reply := transport.Reply{ID: r.ID, OK: ok, Reason: why}
		c.Post(transport.MsgPromoteReply, reply.Encode())
	case transport.MsgSyncRequest:
		r, err := transport.DecodeSyncRequest(payload)
		if err != nil {
			return err
		}
		reply := transport.Reply{ID: r.ID, Reason: "a diskless tiebreaker has no data"}
		c.Post(transport.MsgSyncReply, reply.Encode())
	case transport.MsgDisconnect:
		d, _ := transport.DecodeDisconnect(payload)
		return errGraceful{d.Reason}
	default:
		// A data node never sends data to a tiebreaker: a peer that does is confused.
		return fmt.Errorf("%w: %s sent to a diskless tiebreaker", transport.ErrProtocol, t)
	}
	return nil
}

// notePrimaryLocked records a Primary's generation, fresh from its handshake, as the
// newest.
func (w *Witness) notePrimaryLocked(p *witnessPeer) {
	if p.Conn == Connected && p.Role == Primary && p.Current != 0 {
		w.latest, w.latestFrom = p.Current, p.Name
	}
}
