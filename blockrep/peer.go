package blockrep

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blockrep/blockrep/internal/clock"
	"github.com/blockrep/blockrep/transport"
)

// Peer is the replication link to one peer node: a manager goroutine that (re)connects
// and runs sessions (session.go), the send side of the write path (send.go), and the
// receive loop (receive.go). What the link's events mean is the core's to decide.
type Peer struct {
	v    *Volume
	cfg  PeerConfig
	slot int
	bm   *Bitmap
	log  *slog.Logger

	kick     chan struct{}
	incoming chan *transport.Conn
	quit     chan struct{}
	done     chan struct{}

	// The link of the current session, and what is in flight on it. Under pendMu.
	pendMu      sync.Mutex
	pendCond    sync.Cond
	link        *transport.Conn
	replicating bool // application writes flow to the peer
	sessionNo   uint64
	nextID      uint64
	pending     map[uint64]pendEntry
	maxPending  int
	pendWaiters int // writers blocked on a full window
	waiters     map[uint64]chan transport.Reply
	syncAsked   map[uint64]bool // our SyncRequests in flight: whether we are the source
	sessStop    chan struct{}
	sessWG      *sync.WaitGroup
	recvDone    chan struct{} // closed when the live session's receive loop has returned

	lastRecv atomic.Int64 // clock time (ns) of the last input

	wentLive bool   // the current session got past its handshake (manager goroutine only)
	zbuf     []byte // receive loop scratch for resync zero ranges

	rs resyncStats
}

type pendKind uint8

const (
	pendData pendKind = iota
	pendFlush
	pendRS
	pendRead
)

type pendEntry struct {
	kind     pendKind
	off, n   int64
	req      *Request      // nil when nobody waits for the peer
	waitRecv bool          // protocol B: RecvAck finishes the request's part
	rbuf     []byte        // pendRead: where the data goes
	rdone    chan error    // pendRead: the reader waits here
	sent     time.Duration // pendData: engine clock at send, when AckLatency is set
}

// errGraceful is a connection closed on purpose by the peer.
type errGraceful struct{ reason string }

func (e errGraceful) Error() string { return "disconnected: " + e.reason }

// peerDefaults fills in what the configuration left unset.
func peerDefaults(cfg PeerConfig) PeerConfig {
	if cfg.MaxBuffers <= 0 {
		cfg.MaxBuffers = 2048
	}
	if cfg.ConnectInt <= 0 {
		cfg.ConnectInt = 10 * time.Second
	}
	if cfg.PingInt <= 0 {
		cfg.PingInt = 10 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 6 * time.Second
	}
	if cfg.PingTimeout <= 0 {
		cfg.PingTimeout = cfg.Timeout
	}
	return cfg
}

func newPeer(v *Volume, cfg PeerConfig, slot int) *Peer {
	cfg = peerDefaults(cfg)
	p := &Peer{
		v: v, cfg: cfg, slot: slot, bm: v.meta.Bitmap(slot),
		log:      v.log.With("peer", cfg.Name),
		kick:     make(chan struct{}, 1),
		incoming: make(chan *transport.Conn, 1),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
		pending:  make(map[uint64]pendEntry),
		waiters:  make(map[uint64]chan transport.Reply),

		syncAsked: make(map[uint64]bool),
	}
	p.maxPending = cfg.MaxBuffers
	p.pendCond.L = &p.pendMu
	p.rs.cond.L = &p.rs.mu
	return p // the caller starts p.run once the peer is in the volume's list
}

// NodeID returns the peer's node id.
func (p *Peer) NodeID() int { return p.cfg.NodeID }

func (p *Peer) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// shutdown ends the manager goroutine, closing any session.
func (p *Peer) shutdown() {
	select {
	case <-p.quit:
	default:
		close(p.quit)
	}
	p.dropLink("shutting down")
	<-p.done
	for {
		select {
		case c := <-p.incoming:
			c.Close()
		default:
			return
		}
	}
}

// currentLink returns the live link, or nil.
func (p *Peer) currentLink() *transport.Conn {
	p.pendMu.Lock()
	defer p.pendMu.Unlock()
	return p.link
}

// dropLink closes the current link, if any, at once; the session ends and cleans up.
func (p *Peer) dropLink(why string) {
	if c := p.currentLink(); c != nil {
		p.log.Info("closing connection", "reason", why)
		c.Close()
	}
}

// closeLink closes the current link after sending what is queued on it (a Disconnect
// the core just sent, say), without blocking the caller.
func (p *Peer) closeLink(why string) {
	if c := p.currentLink(); c != nil {
		p.log.Info("closing connection", "reason", why)
		c.CloseAfter(2 * time.Second)
	}
}

// stopLink closes the link and waits (at most timeout) until its receive loop has
// returned, so that nothing it received is applied afterwards.
func (p *Peer) stopLink(why string, timeout time.Duration) bool {
	p.pendMu.Lock()
	c, done := p.link, p.recvDone
	p.pendMu.Unlock()
	if c == nil || done == nil {
		return true
	}
	p.log.Info("closing connection", "reason", why)
	c.Close()
	t := p.v.clock.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C():
		return false
	}
}

func (p *Peer) quitting() bool {
	select {
	case <-p.quit:
		return true
	default:
		return false
	}
}

// wanted reports whether the core wants the connection now.
func (p *Peer) wanted() bool {
	return query(p.v, func(c *Core) bool { return c.Peers[c.peer(p.cfg.NodeID)].Want })
}

// Connect asks for the connection to be established (drbdadm connect); nodeID -1 is
// every peer.
func (v *Volume) Connect(nodeID int, discardMyData bool) error {
	return v.step(EvConnect{Peer: nodeID, DiscardMyData: discardMyData})
}

// Disconnect closes the connection on purpose and goes StandAlone (drbdadm
// disconnect), waiting until the sessions have ended.
func (v *Volume) Disconnect(nodeID int) error {
	if err := v.step(EvDisconnect{Peer: nodeID}); err != nil {
		return err
	}
	deadline := v.clock.Now() + 10*time.Second
	for _, p := range v.peersNow() {
		if nodeID >= 0 && p.cfg.NodeID != nodeID {
			continue
		}
		for v.clock.Now() < deadline && v.peerConn(p.cfg.NodeID) != StandAlone {
			time.Sleep(10 * time.Millisecond) // polls the outcome; the deadline is the engine clock's
		}
	}
	return nil
}

// Incoming hands an authenticated connection to the peer it comes from. A connection
// from a lower node id is a wake-up call: the higher node id always dials.
func (v *Volume) Incoming(c *transport.Conn) {
	if v.closed.Load() {
		c.Close()
		return
	}
	for _, p := range v.peersNow() {
		if p.cfg.NodeID != c.PeerID {
			continue
		}
		handIncoming(c, v.cfg.NodeID, p.incoming, func() {
			if p.wanted() {
				p.wake()
			}
		})
		return
	}
	c.Close()
}

// handIncoming gives a link manager a connection its peer dialed. One from a lower
// node id is a wake-up call (the higher node id dials); one that finds the manager
// with a connection already waiting is turned away.
func handIncoming(c *transport.Conn, selfID int, incoming chan *transport.Conn, wake func()) {
	if c.PeerID < selfID {
		c.Close()
		wake()
		return
	}
	select {
	case incoming <- c:
	default:
		m := transport.Disconnect{Reason: "already connecting"}
		c.Send(transport.MsgDisconnect, m.Encode(), nil)
		c.Close()
	}
}

func (p *Peer) dials() bool { return p.v.cfg.NodeID > p.cfg.NodeID }

// run is the connection manager: wait until wanted, obtain a link, run a session,
// report its end to the core, repeat.
func (p *Peer) run() {
	defer close(p.done)
	var delay time.Duration
	for {
		if !p.waitWanted() {
			return
		}
		if delay > 0 && !p.sleep(delay) {
			return
		}
		c := p.obtainLink()
		if c == nil {
			continue
		}
		p.wentLive = false
		out := p.session(c)
		// Retry a failing handshake with backoff; reconnect at once after a live session.
		if p.wentLive {
			delay = 0
		} else {
			delay = min(max(2*delay, 250*time.Millisecond), p.cfg.ConnectInt)
		}
		p.teardown(c, out)
		if out.standalone {
			p.log.Warn("connection dropped, StandAlone", "reason", out.reason)
		} else {
			p.log.Info("connection lost", "reason", out.reason)
		}
	}
}

// sleep waits d unless kicked; false means shut down.
func (p *Peer) sleep(d time.Duration) bool {
	t := p.v.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.quit:
		return false
	case <-p.kick:
	case <-t.C():
	}
	return true
}

// waitWanted blocks until the connection is wanted; false means shut down.
func (p *Peer) waitWanted() bool {
	for {
		if p.quitting() {
			return false
		}
		if p.wanted() {
			return true
		}
		// Refuse connections while StandAlone.
		select {
		case <-p.quit:
			return false
		case <-p.kick:
		case c := <-p.incoming:
			m := transport.Disconnect{Reason: "peer is StandAlone"}
			c.Send(transport.MsgDisconnect, m.Encode(), nil)
			c.Close()
		}
	}
}

// obtainLink dials (higher node id) or waits for the peer to dial (lower node id, which
// pokes the peer so that it dials at once). nil means: re-check whether still wanted.
func (p *Peer) obtainLink() *transport.Conn {
	return linkRules{cfg: &p.cfg, id: p.identity(), dials: p.dials(), dial: p.v.cfg.Dial, clock: p.v.clock, log: p.log,
		quit: p.quit, kick: p.kick, incoming: p.incoming, wanted: p.wanted}.obtain()
}

// linkRules is how a node obtains the link to one peer; a data node's Peer and a
// tiebreaker's link follow the same rules, so either may meet the other.
type linkRules struct {
	cfg      *PeerConfig
	id       transport.Identity
	dials    bool
	dial     transport.DialFunc
	clock    clock.Clock
	log      *slog.Logger
	quit     chan struct{}
	kick     chan struct{}
	incoming chan *transport.Conn
	wanted   func() bool
}

func (l linkRules) quitting() bool {
	select {
	case <-l.quit:
		return true
	default:
		return false
	}
}

func (l linkRules) obtain() *transport.Conn {
	for attempt := 0; ; attempt++ {
		if l.quitting() || !l.wanted() {
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), transport.HandshakeTimeout)
		// Shutting down does not wait for a dial into a dead network.
		go func() {
			select {
			case <-l.quit:
				cancel()
			case <-ctx.Done():
			}
		}()
		c, err := transport.DialWith(ctx, l.dial, l.cfg.Address, l.cfg.LocalAddress, l.id)
		cancel()
		if l.dials {
			if err == nil {
				return c
			}
			if attempt == 0 || attempt%30 == 0 {
				l.log.Info("cannot connect yet", "address", l.cfg.Address, "err", err)
			}
		} else if err == nil {
			c.Close() // the poke: the peer now dials us
		} else if errors.Is(err, transport.ErrAuth) {
			l.log.Warn("peer refused us", "err", err)
		}
		wait := min(l.cfg.ConnectInt, time.Duration(attempt+1)*250*time.Millisecond)
		t := l.clock.NewTimer(wait)
		select {
		case <-l.quit:
			t.Stop()
			return nil
		case <-l.kick:
			t.Stop()
		case c := <-l.incoming:
			t.Stop()
			if !l.wanted() {
				c.Close()
				return nil
			}
			return c
		case <-t.C():
		}
	}
}

// keepalive pings the peer and declares it dead when it has been silent too long
// (busy: requests to it are in flight). It reads the engine clock: a step of the wall
// clock neither drops nor keeps a link.
func (l linkRules) keepalive(c *transport.Conn, stop chan struct{}, lastRecv *atomic.Int64, busy func() bool) {
	cfg := l.cfg
	lastPing := l.clock.Now()
	// The tick bounds how late a death is noticed: a tenth of the shortest deadline.
	tick := min(cfg.PingInt, cfg.PingTimeout, cfg.Timeout, time.Second) / 10
	for clock.Sleep(l.clock, tick, stop) {
		now := l.clock.Now()
		silent := now - time.Duration(lastRecv.Load())
		b := busy()
		if silent > cfg.PingInt+cfg.PingTimeout || b && silent > cfg.Timeout {
			l.log.Warn("peer timed out", "silent", silent.Round(time.Millisecond))
			c.Close()
			return
		}
		if now-lastPing >= cfg.PingInt || b && silent > cfg.Timeout/2 {
			c.Post(transport.MsgPing, nil)
			lastPing = now
		}
	}
}

func (p *Peer) identity() transport.Identity {
	return transport.Identity{Resource: p.v.cfg.Resource, LocalID: p.v.cfg.NodeID, PeerID: p.cfg.NodeID,
		Secret: p.cfg.Secret, Alg: p.cfg.HMACAlg, TLS: p.cfg.TLS, PeerName: p.cfg.Name}
}

func (p *Peer) keepalive(c *transport.Conn, stop chan struct{}) {
	linkRules{cfg: &p.cfg, clock: p.v.clock, log: p.log}.keepalive(c, stop, &p.lastRecv, func() bool {
		p.pendMu.Lock()
		defer p.pendMu.Unlock()
		return len(p.pending) > 0
	})
}

// heard records input from the peer (the keepalive's reference).
func (p *Peer) heard() { p.lastRecv.Store(int64(p.v.clock.Now())) }

func (v *Volume) peerConn(nodeID int) ConnState {
	return query(v, func(c *Core) ConnState { return c.State.Peer(nodeID).Conn })
}
