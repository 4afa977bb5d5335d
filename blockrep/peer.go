package blockrep

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blockrep/blockrep/transport"
)

// Peer is the replication link to one peer node: a manager goroutine that (re)connects
// and runs sessions, the send side of the write path, and the receive loop.
type Peer struct {
	v    *Volume
	cfg  PeerConfig
	slot int
	bm   *Bitmap
	log  *slog.Logger

	// Under v.mu.
	want          bool
	discardMyData bool

	kick     chan struct{}
	incoming chan *transport.Conn
	quit     chan struct{}
	done     chan struct{}

	// The link of the current session, and what is in flight on it. Under pendMu.
	pendMu      sync.Mutex
	pendCond    sync.Cond
	link        *transport.Conn
	replicating bool // application writes flow to the peer
	nextID      uint64
	pending     map[uint64]pendEntry
	maxPending  int
	pendWaiters int // writers blocked on a full window
	waiters     map[uint64]chan transport.Reply
	ctl         chan ctlMsg // receiver-originated control messages, sent by the session's ctl goroutine
	sessStop    chan struct{}
	sessWG      *sync.WaitGroup
	recvDone    chan struct{} // closed when the live session's receive loop has returned

	lastRecv atomic.Int64 // unix nanoseconds of the last input

	wentLive bool   // the current session got past its handshake (manager goroutine only)
	zbuf     []byte // receive loop scratch for resync zero ranges
	// deferred: this session's resync was deferred because a Primary was connected or
	// both disks were Inconsistent (under v.mu); it re-handshakes once that changes.
	// bothInconsistent tells the second cause.
	deferred, bothInconsistent bool

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
	req      *Request   // nil when nobody waits for the peer
	waitRecv bool       // protocol B: RecvAck finishes the request's part
	rbuf     []byte     // pendRead: where the data goes
	rdone    chan error // pendRead: the reader waits here
}

type ctlMsg struct {
	t       transport.MsgType
	payload []byte
	sent    chan struct{} // closed once sent, if non-nil
}

// errGraceful is a connection closed on purpose by one side.
type errGraceful struct{ reason string }

func (e errGraceful) Error() string { return "disconnected: " + e.reason }

func newPeer(v *Volume, cfg PeerConfig, slot int) *Peer {
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
	p := &Peer{
		v: v, cfg: cfg, slot: slot, bm: v.meta.Bitmap(slot),
		log:      v.log.With("peer", cfg.Name),
		kick:     make(chan struct{}, 1),
		incoming: make(chan *transport.Conn, 1),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
		pending:  make(map[uint64]pendEntry),
		waiters:  make(map[uint64]chan transport.Reply),
	}
	p.maxPending = cfg.MaxBuffers
	p.pendCond.L = &p.pendMu
	p.rs.cond.L = &p.rs.mu
	go p.run()
	return p
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

// dropLink closes the current link, if any; the session ends and cleans up.
func (p *Peer) dropLink(why string) {
	p.pendMu.Lock()
	c := p.link
	p.pendMu.Unlock()
	if c != nil {
		p.log.Info("closing connection", "reason", why)
		c.Close()
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
	select {
	case <-done:
		return true
	case <-time.After(timeout):
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

// Connect asks for the connection to be established (drbdadm connect).
func (v *Volume) Connect(nodeID int, discardMyData bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, p := range v.peers {
		if nodeID >= 0 && p.cfg.NodeID != nodeID {
			continue
		}
		ps := v.state.Peer(p.cfg.NodeID)
		if discardMyData && v.state.Role == Primary {
			return refuse(nil, "--discard-my-data on a Primary: demote it first")
		}
		p.want = true
		p.discardMyData = discardMyData
		if ps.Conn == StandAlone {
			v.changeLocked(func(s *State) {
				sp := s.Peer(p.cfg.NodeID)
				sp.Conn, sp.SplitBrain, sp.Reason = Connecting, false, ""
			})
		}
		p.wake()
	}
	return nil
}

// Disconnect closes the connection on purpose and goes StandAlone (drbdadm disconnect).
func (v *Volume) Disconnect(nodeID int) error {
	v.mu.Lock()
	var links []*Peer
	for _, p := range v.peers {
		if nodeID >= 0 && p.cfg.NodeID != nodeID {
			continue
		}
		p.want = false
		links = append(links, p)
		if ps := v.state.Peer(p.cfg.NodeID); ps.Conn != Connected {
			v.changeLocked(func(s *State) { s.Peer(p.cfg.NodeID).Conn = StandAlone })
		}
	}
	v.mu.Unlock()
	for _, p := range links {
		p.wake()
		p.closeGracefully("disconnected by operator")
	}
	// Wait until every session has ended so the caller sees StandAlone.
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range links {
		for time.Now().Before(deadline) {
			if st := v.State(); st.Peer(p.cfg.NodeID).Conn == StandAlone {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil
}

// closeGracefully tells the peer why and closes the link.
func (p *Peer) closeGracefully(reason string) {
	p.pendMu.Lock()
	c := p.link
	p.pendMu.Unlock()
	if c == nil {
		return
	}
	m := transport.Disconnect{Reason: reason}
	p.v.mu.Lock()
	p.noteGracefulLocked()
	p.v.mu.Unlock()
	// Through the control queue, so that state updates queued before arrive first.
	sent := make(chan struct{})
	p.pendMu.Lock()
	ended := p.sessStop
	p.pendMu.Unlock()
	if p.queueCtlMsg(ctlMsg{t: transport.MsgDisconnect, payload: m.Encode(), sent: sent}) {
		select {
		case <-sent:
		case <-ended:
		case <-time.After(2 * time.Second):
		}
	}
	c.Close()
}

// noteGracefulLocked records what a deliberate disconnect means for data: a Secondary
// that leaves its Primary is Outdated from now on.
func (p *Peer) noteGracefulLocked() {
	v := p.v
	ps := v.state.Peer(p.cfg.NodeID)
	if ps == nil || ps.Conn != Connected {
		return
	}
	if v.state.Role == Secondary && ps.Role == Primary {
		if err := v.markOutdatedLocked(); err != nil {
			p.log.Error("cannot mark disk Outdated", "err", err)
		}
	}
	if v.state.Role == Primary && ps.Role == Secondary {
		v.meta.Update(func(sb *Superblock) { sb.Peers[p.slot].Flags |= PeerOutdated })
	}
}

// Incoming hands an authenticated connection to the peer it comes from. A connection
// from a lower node id is a wake-up call: the higher node id always dials.
func (v *Volume) Incoming(c *transport.Conn) {
	if v.closed.Load() {
		c.Close()
		return
	}
	for _, p := range v.peers {
		if p.cfg.NodeID != c.PeerID {
			continue
		}
		if c.PeerID < v.cfg.NodeID {
			c.Close()
			v.mu.Lock()
			want := p.want
			v.mu.Unlock()
			if want {
				p.wake()
			}
			return
		}
		select {
		case p.incoming <- c:
		default:
			m := transport.Disconnect{Reason: "already connecting"}
			c.Send(transport.MsgDisconnect, m.Encode(), nil)
			c.Close()
		}
		return
	}
	c.Close()
}

func (p *Peer) dials() bool { return p.v.cfg.NodeID > p.cfg.NodeID }

// run is the connection manager: wait until wanted, obtain a link, run a session,
// clean up, repeat.
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
		standalone, reason, splitBrain := p.session(c)
		// Retry a failing handshake with backoff; reconnect at once after a live session.
		if p.wentLive {
			delay = 0
		} else {
			delay = min(max(2*delay, 250*time.Millisecond), p.cfg.ConnectInt)
		}
		p.teardown(c)
		p.v.mu.Lock()
		if standalone {
			p.want = false
		}
		p.v.changeLocked(func(s *State) {
			sp := s.Peer(p.cfg.NodeID)
			sp.Conn = Connecting
			if !p.want {
				sp.Conn, sp.SplitBrain = StandAlone, splitBrain
				if standalone {
					sp.Reason = reason
				} else {
					sp.Reason = "" // the operator disconnected: nothing to explain
				}
			}
		})
		p.v.mu.Unlock()
		if standalone {
			p.log.Warn("connection dropped, StandAlone", "reason", reason)
		} else {
			p.log.Info("connection lost", "reason", reason)
		}
	}
}

// sleep waits d unless kicked; false means shut down.
func (p *Peer) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.quit:
		return false
	case <-p.kick:
	case <-t.C:
	}
	return true
}

// waitWanted blocks until the connection is wanted; false means shut down.
func (p *Peer) waitWanted() bool {
	for {
		p.v.mu.Lock()
		want := p.want
		p.v.mu.Unlock()
		if p.quitting() {
			return false
		}
		if want {
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
	wantedNow := func() bool {
		p.v.mu.Lock()
		defer p.v.mu.Unlock()
		return p.want
	}
	id := p.identity()
	for attempt := 0; ; attempt++ {
		if p.quitting() || !wantedNow() {
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), transport.HandshakeTimeout)
		c, err := transport.Dial(ctx, p.cfg.Address, p.cfg.LocalAddress, id)
		cancel()
		if p.dials() {
			if err == nil {
				return c
			}
			if attempt == 0 || attempt%30 == 0 {
				p.log.Info("cannot connect yet", "address", p.cfg.Address, "err", err)
			}
		} else if err == nil {
			c.Close() // the poke: the peer now dials us
		} else if errors.Is(err, transport.ErrAuth) {
			p.log.Warn("peer refused us", "err", err)
		}
		wait := min(p.cfg.ConnectInt, time.Duration(attempt+1)*250*time.Millisecond)
		t := time.NewTimer(wait)
		select {
		case <-p.quit:
			t.Stop()
			return nil
		case <-p.kick:
			t.Stop()
		case c := <-p.incoming:
			t.Stop()
			if !wantedNow() {
				c.Close()
				return nil
			}
			return c
		case <-t.C:
		}
	}
}

func (p *Peer) identity() transport.Identity {
	return transport.Identity{Resource: p.v.cfg.Resource, LocalID: p.v.cfg.NodeID, PeerID: p.cfg.NodeID,
		Secret: p.cfg.Secret, Alg: p.cfg.HMACAlg}
}

// handshakeSideLocked is what we tell the peer about ourselves.
func (p *Peer) handshakeSideLocked() HandshakeSide {
	v := p.v
	sb := v.meta.Superblock()
	g := Generations{Current: sb.Current, History: sb.History}
	for i := 0; i < sb.MaxPeers; i++ {
		if id := sb.Peers[i].NodeID; id >= 0 {
			g.Bitmap[id] = sb.Peers[i].BitmapUUID
		}
	}
	if f := sb.Peers[p.slot].Flags; f&PeerResyncPending != 0 {
		if f&PeerCrashedPrimary != 0 {
			g.Flags |= GenCrashedPrimary
		} else {
			g.Flags |= GenUnclean
		}
	}
	if p.discardMyData {
		g.Flags |= GenDiscardMyData
	}
	primary := false
	for _, o := range v.peers {
		if ps := v.state.Peer(o.cfg.NodeID); o != p && ps.Conn == Connected && ps.Role == Primary {
			primary = true
		}
	}
	return HandshakeSide{NodeID: v.cfg.NodeID, Name: v.cfg.NodeName, Gen: g, Role: v.state.Role,
		Disk: v.state.Disk, Dirty: uint64(p.bm.Count()), PrimaryConnected: primary}
}

func toWire(h HandshakeSide, size int64, proto Protocol, settings string) *transport.Handshake {
	w := &transport.Handshake{NodeID: uint32(h.NodeID), Name: h.Name, Role: uint8(h.Role), Disk: uint8(h.Disk),
		Current: h.Gen.Current, Bitmap: h.Gen.Bitmap, History: h.Gen.History, GenFlags: uint32(h.Gen.Flags),
		Dirty: h.Dirty, Size: uint64(size), Protocol: uint8(proto), Settings: settings}
	if h.PrimaryConnected {
		w.Flags |= transport.HandshakePrimaryConnected
	}
	return w
}

func fromWire(w *transport.Handshake) HandshakeSide {
	return HandshakeSide{NodeID: int(w.NodeID), Name: w.Name, Role: Role(w.Role), Disk: DiskState(w.Disk),
		Gen:   Generations{Current: w.Current, Bitmap: w.Bitmap, History: w.History, Flags: GenFlags(w.GenFlags)},
		Dirty: w.Dirty, PrimaryConnected: w.Flags&transport.HandshakePrimaryConnected != 0}
}

// readExpect reads the next message, which must be of type want (a Disconnect ends the
// session with the peer's reason).
func readExpect(c *transport.Conn, want transport.MsgType) ([]byte, error) {
	t, payload, err := c.ReadMsg()
	if err != nil {
		return nil, err
	}
	if t == transport.MsgDisconnect {
		d, _ := transport.DecodeDisconnect(payload)
		return nil, errGraceful{d.Reason}
	}
	if t != want {
		return nil, fmt.Errorf("%w: expected %s, got %s", transport.ErrProtocol, want, t)
	}
	return payload, nil
}

var handshakeTimeout = 30 * time.Second

// handshakeWait is how long (plus up to as much again, at random) a connection waits
// for another handshake of the same volume before it gives up and retries.
const handshakeWait = 500 * time.Millisecond

// session runs one connection: handshake, bitmap exchange, then replication until the
// link breaks. standalone reports an outcome that must not be retried automatically.
func (p *Peer) session(c *transport.Conn) (standalone bool, reason string, splitBrain bool) {
	v := p.v
	// Writes pause on this node until the decision is taken and replication is live, so
	// the generations and bitmaps we decide on are the ones the data matches.
	c.SetBuffers(p.cfg.SndBuf, p.cfg.RcvBuf)
	// One handshake at a time per volume, and a bounded wait for it: each handshake
	// holds the gate while it waits for its peer, so three nodes connecting to each
	// other at once could otherwise wait on each other in a cycle.
	select {
	case v.handshaking <- struct{}{}:
	case <-time.After(handshakeWait + time.Duration(rand.Int64N(int64(handshakeWait)))):
		return false, "another handshake is in progress; retrying", false
	}
	v.gate.Lock()
	gateHeld := true
	defer func() {
		if gateHeld {
			v.gate.Unlock()
			<-v.handshaking
		}
	}()
	c.SetReadDeadline(time.Now().Add(handshakeTimeout))

	v.mu.Lock()
	self := p.handshakeSideLocked()
	v.mu.Unlock()
	if err := c.Send(transport.MsgHandshake, toWire(self, v.size, p.cfg.Protocol, p.cfg.Settings).Encode(), nil); err != nil {
		return false, err.Error(), false
	}
	payload, err := readExpect(c, transport.MsgHandshake)
	if err != nil {
		return false, err.Error(), false
	}
	w, err := transport.DecodeHandshake(payload)
	if err != nil {
		return false, err.Error(), false
	}
	switch {
	case int(w.NodeID) != p.cfg.NodeID:
		return true, fmt.Sprintf("peer claims node-id %d, expected %d", w.NodeID, p.cfg.NodeID), false
	case int64(w.Size) != v.size:
		return true, fmt.Sprintf("disk size mismatch: ours %d bytes, peer's %d bytes", v.size, w.Size), false
	case Protocol(w.Protocol) != p.cfg.Protocol:
		return true, fmt.Sprintf("protocol mismatch: ours %s, peer's %s", p.cfg.Protocol, Protocol(w.Protocol)), false
	case w.Settings != p.cfg.Settings:
		return true, fmt.Sprintf("incompatible net settings: ours %q, peer's %q", p.cfg.Settings, w.Settings), false
	}
	peer := fromWire(&w)
	res := DecideHandshake(self, peer, p.cfg.Policy)
	p.log.Info("handshake", "decision", res.Comparison.String(), "replication", res.Repl, "bits", res.Bits,
		"peer-role", peer.Role, "peer-disk", peer.Disk)
	if res.Reason != "" {
		p.log.Warn(res.Reason)
	}
	if res.Drop() {
		if res.SplitBrain {
			return true, "split-brain", true
		}
		return !res.Retry, res.Reason, false
	}

	// One resync source at a time: the Primary takes precedence, anyone else waits.
	if res.Repl == SyncTarget {
		if other := p.currentSourceOtherThanMe(); other != nil {
			if peer.Role == Primary {
				// Whatever the old source's receive loop still holds must land before
				// the Primary's resync writes the same blocks.
				if !other.stopLink(fmt.Sprintf("resync from the Primary %s takes precedence", p.cfg.Name), 5*time.Second) {
					return false, fmt.Sprintf("the resync from %s did not stop; retrying later", other.cfg.Name), false
				}
			} else {
				return false, fmt.Sprintf("already SyncTarget from %s; retrying later", other.cfg.Name), false
			}
		}
	}

	// Bitmaps: agree on what the resync moves.
	switch res.Bits {
	case BitsMerge:
		if err := p.exchangeBitmaps(c); err != nil {
			return false, err.Error(), false
		}
	case BitsAll:
		p.bm.SetAll()
	case BitsOther:
		if res.Repl == SyncSource {
			sb := v.meta.Superblock()
			if s := sb.Slot(res.Other); s >= 0 {
				p.bm.Merge(v.meta.Bitmap(s))
			} else {
				p.bm.SetAll()
			}
		} else {
			p.bm.ClearAll()
		}
	}
	v.mu.Lock()
	if res.Repl == SyncTarget {
		err = v.markInconsistentLocked(false)
	}
	if err == nil {
		err = v.meta.WriteBitmaps()
	}
	v.mu.Unlock()
	if err != nil {
		return false, "metadata write failed: " + err.Error(), false
	}
	if err := c.Send(transport.MsgSyncReady, nil, nil); err != nil {
		return false, err.Error(), false
	}
	if _, err := readExpect(c, transport.MsgSyncReady); err != nil {
		return false, err.Error(), false
	}
	c.SetReadDeadline(time.Time{})

	// Live: commit the connection state and open the write path to the peer.
	v.mu.Lock()
	if !p.want {
		v.mu.Unlock()
		return true, "disconnected by operator", false
	}
	p.discardMyData = false
	p.deferred = res.Deferred
	p.bothInconsistent = res.Deferred && self.Disk <= Inconsistent && peer.Disk <= Inconsistent
	if res.Repl == Established && !res.Deferred {
		p.settleNoSyncLocked(self, peer)
	}
	err = v.changeLocked(func(s *State) {
		sp := s.Peer(p.cfg.NodeID)
		sp.Conn, sp.Repl, sp.Role, sp.Disk = Connected, res.Repl, peer.Role, peer.Disk
		if res.Repl == Established && peer.Disk == Outdated && s.Disk == UpToDate && self.Gen.Current == peer.Gen.Current {
			sp.Disk = UpToDate // it settles itself the same way
		}
		if res.Repl == SyncSource {
			sp.Disk = Inconsistent
		}
	})
	v.mu.Unlock()
	if err != nil {
		return true, err.Error(), false
	}
	ctl := make(chan ctlMsg, 64)
	p.pendMu.Lock()
	p.ctl = ctl
	p.link, p.replicating = c, true
	recvDone := make(chan struct{})
	p.recvDone = recvDone
	p.pendMu.Unlock()
	v.mu.Lock()
	p.sendStateLocked() // whatever changed since our handshake was sent
	v.mu.Unlock()
	p.lastRecv.Store(time.Now().UnixNano())
	p.wentLive = true
	v.gate.Unlock()
	<-v.handshaking
	gateHeld = false

	stop := make(chan struct{})
	var wg sync.WaitGroup
	p.pendMu.Lock()
	p.sessStop, p.sessWG = stop, &wg
	p.pendMu.Unlock()
	wg.Add(2)
	go func() { defer wg.Done(); p.keepalive(c, stop) }()
	go func() { defer wg.Done(); p.sendCtl(c, stop) }()
	if res.Repl == SyncSource {
		p.startResync(c, stop, &wg)
	} else if res.Repl == SyncTarget {
		p.rs.begin(p.bm.Count())
	}
	err = p.receive(c)
	close(recvDone)
	close(stop)
	c.Close()
	p.rs.end()    // wakes a resync loop waiting for its window
	v.conf.wake() // or for a range held by a write that waits for this peer's ack
	wg.Wait()
	var g errGraceful
	if errors.As(err, &g) {
		p.v.mu.Lock()
		p.noteGracefulLocked()
		p.v.mu.Unlock()
		return false, "peer: " + g.reason, false
	}
	return false, err.Error(), false
}

// currentSourceOtherThanMe returns the peer we are SyncTarget of, if any.
func (p *Peer) currentSourceOtherThanMe() *Peer {
	v := p.v
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, o := range v.peers {
		if o != p && v.state.Peer(o.cfg.NodeID).Repl.IsSyncTarget() {
			return o
		}
	}
	return nil
}

// settleNoSyncLocked: with no resync needed and the same generation, an Outdated or
// Consistent disk next to an UpToDate one is UpToDate too.
func (p *Peer) settleNoSyncLocked(self, peer HandshakeSide) {
	if mask(self.Gen.Current) != mask(peer.Gen.Current) || peer.Disk != UpToDate {
		return
	}
	if self.Disk == Outdated || self.Disk == Consistent {
		if err := p.v.markUpToDateLocked(); err != nil {
			p.log.Error("cannot mark disk UpToDate", "err", err)
		}
	}
}

const bitmapChunk = 1 << 20

// exchangeBitmaps sends our bitmap for the peer and merges theirs for us.
func (p *Peer) exchangeBitmaps(c *transport.Conn) error {
	img := p.bm.EncodeRLE()
	sent := make(chan error, 1)
	go func() {
		for off := 0; ; {
			end := min(off+bitmapChunk, len(img))
			ch := transport.BitmapChunk{Last: end == len(img), Data: img[off:end]}
			if err := c.Send(transport.MsgBitmap, ch.Encode(), nil); err != nil {
				sent <- err
				return
			}
			if ch.Last {
				sent <- nil
				return
			}
			off = end
		}
	}()
	var theirs []byte
	for {
		payload, err := readExpect(c, transport.MsgBitmap)
		if err != nil {
			return err
		}
		ch, err := transport.DecodeBitmapChunk(payload)
		if err != nil {
			return err
		}
		if len(theirs)+len(ch.Data) > 64<<20 {
			return fmt.Errorf("%w: bitmap larger than 64 MiB", transport.ErrProtocol)
		}
		theirs = append(theirs, ch.Data...)
		if ch.Last {
			break
		}
	}
	if err := p.bm.MergeRLE(theirs); err != nil {
		return fmt.Errorf("%w: peer's bitmap: %v", transport.ErrProtocol, err)
	}
	return <-sent
}

// teardown ends a session: writes the peer never confirmed become out-of-sync bits, and
// waiting requests complete (the peer is no longer part of the replica set). A Primary
// then starts a new generation, so the next handshake sees that it wrote without the peer.
func (p *Peer) teardown(c *transport.Conn) {
	v := p.v
	// Fencing: losing an UpToDate peer while Primary. With resource-and-stonith the write
	// path freezes before the peer's unconfirmed writes are completed below.
	v.mu.Lock()
	fence := p.cfg.Fencing != "" && p.cfg.Fencing != FencingDontCare && v.state.Role == Primary && p.inSyncLocked()
	freeze := fence && p.cfg.Fencing == FencingResourceAndStonith && !v.otherInSyncLocked(p)
	v.mu.Unlock()
	if freeze {
		p.log.Warn("lost the last UpToDate peer: I/O frozen until the fence-peer handler confirms it is fenced")
		v.susp.freeze("fencing")
	}
	p.pendMu.Lock()
	wasReplicating := p.replicating && p.link == c
	p.replicating, p.link = false, nil
	entries := p.pending
	p.pending = make(map[uint64]pendEntry)
	waiters := p.waiters
	p.waiters = make(map[uint64]chan transport.Reply)
	p.pendCond.Broadcast()
	p.pendMu.Unlock()
	c.Close()

	var b Batch
	for _, e := range entries {
		if e.kind == pendData {
			p.bm.SetRange(e.off, e.n)
		}
		if e.kind == pendRead {
			e.rdone <- errors.New("connection lost")
			continue
		}
		if e.req != nil {
			e.req.eng.peerDone(false, &b)
		}
	}
	b.Flush()
	for _, w := range waiters {
		w <- transport.Reply{OK: false, Reason: "connection lost"}
	}
	p.rs.end()

	v.gate.Lock()
	v.mu.Lock()
	lostPrimary := v.state.Peer(p.cfg.NodeID).Role == Primary
	p.deferred, p.bothInconsistent = false, false
	v.changeLocked(func(s *State) {
		if sp := s.Peer(p.cfg.NodeID); sp.Conn == Connected {
			sp.Conn = Connecting
		}
	})
	if lostPrimary {
		marked := v.state.Role == Secondary && v.markPrimaryLossLocked(p)
		v.rehandshakeLocked(func(o *Peer) bool { return o.deferred || marked && o != p },
			"the Primary is gone: re-deciding with the blocks its last writes touched")
	}
	// A new generation marks writes this peer misses. A diskless Primary left without
	// any replica writes nothing, so its generation stays and the peer may rejoin it.
	if wasReplicating && v.state.Role == Primary && (!v.diskFailed.Load() || v.otherInSyncLocked(p)) {
		if err := v.newGenerationLocked(false, v.diskFailed.Load()); err != nil {
			p.log.Error("cannot start a new generation", "err", err)
		}
	}
	v.mu.Unlock()
	v.gate.Unlock()
	if fence {
		go p.fencePeer(freeze)
	}
}

// markPrimaryLossLocked: the Primary (peer lost) went away without stepping down. Its
// last writes may have reached some Secondaries and not others, and nothing says which,
// so every block our activity log covers is marked out of sync towards the other peers
// and their slots flagged (as after a crash of ours): the survivors resync those blocks
// from one of them, or from whichever becomes Primary. Reports whether it marked any.
func (v *Volume) markPrimaryLossLocked(lost *Peer) bool {
	var hot []uint32
	if v.cfg.ALUpdates {
		hot = v.al.HotExtents()
	}
	var slots []int
	for _, o := range v.peers {
		if o == lost {
			continue
		}
		if !v.cfg.ALUpdates {
			o.bm.SetAll() // without activity-log updates any block may differ
		}
		for _, e := range hot {
			if off := int64(e) << alExtentShift; off < v.size {
				o.bm.SetRange(off, min(ALExtentSize, v.size-off))
			}
		}
		slots = append(slots, o.slot)
	}
	if len(slots) == 0 || v.cfg.ALUpdates && len(hot) == 0 {
		return false
	}
	err := v.meta.WriteBitmaps()
	if err == nil {
		err = v.meta.Update(func(sb *Superblock) {
			for _, s := range slots {
				sb.Peers[s].Flags |= PeerResyncPending
			}
		})
	}
	if err != nil {
		v.log.Error("cannot record the blocks the lost Primary's last writes touched", "err", err)
		return false
	}
	v.log.Warn("the Primary went away without stepping down: activity-log extents marked out of sync towards the other peers",
		"primary", lost.cfg.Name, "extents", len(hot), "al-updates", v.cfg.ALUpdates)
	return true
}

// rehandshakeLocked drops the links of peers selected by which, so that they reconnect
// and decide again with the current state.
func (v *Volume) rehandshakeLocked(which func(o *Peer) bool, why string) {
	for _, o := range v.peers {
		if which(o) && v.state.Peer(o.cfg.NodeID).Conn == Connected {
			o.deferred, o.bothInconsistent = false, false
			go o.dropLink(why)
		}
	}
}

// otherInSyncLocked reports whether a peer other than p is connected with our data.
func (v *Volume) otherInSyncLocked(p *Peer) bool {
	for _, o := range v.peers {
		if o != p && o.inSyncLocked() {
			return true
		}
	}
	return false
}

// inSyncLocked reports whether the peer receives our writes and has all our data.
func (p *Peer) inSyncLocked() bool {
	ps := p.v.state.Peer(p.cfg.NodeID)
	return ps != nil && ps.Conn == Connected && ps.Repl == Established && ps.Disk == UpToDate
}

// keepalive pings the peer and declares it dead when it has been silent too long.
func (p *Peer) keepalive(c *transport.Conn, stop chan struct{}) {
	tick := time.NewTicker(min(p.cfg.PingInt, time.Second))
	defer tick.Stop()
	lastPing := time.Now()
	for {
		select {
		case <-stop:
			return
		case now := <-tick.C:
			silent := now.Sub(time.Unix(0, p.lastRecv.Load()))
			p.pendMu.Lock()
			busy := len(p.pending) > 0
			p.pendMu.Unlock()
			if silent > p.cfg.PingInt+p.cfg.Timeout || busy && silent > p.cfg.Timeout {
				p.log.Warn("peer timed out", "silent", silent.Round(time.Millisecond))
				c.Close()
				return
			}
			if now.Sub(lastPing) >= p.cfg.PingInt || busy && silent > p.cfg.Timeout/2 {
				p.queueCtl(transport.MsgPing, nil)
				lastPing = now
			}
		}
	}
}

// queueCtl sends a control message from any goroutine without blocking it on the link.
func (p *Peer) queueCtl(t transport.MsgType, payload []byte) {
	p.queueCtlMsg(ctlMsg{t: t, payload: payload})
}

func (p *Peer) queueCtlMsg(m ctlMsg) bool {
	p.pendMu.Lock()
	ch := p.ctl
	live := p.link != nil
	p.pendMu.Unlock()
	if !live || ch == nil {
		return false
	}
	select {
	case ch <- m:
		return true
	default:
		p.log.Warn("control queue full, dropping connection")
		p.dropLink("control queue overflow")
		return false
	}
}

func (p *Peer) sendCtl(c *transport.Conn, stop chan struct{}) {
	ch := p.ctl
	for {
		select {
		case <-stop:
			return
		case m := <-ch:
			err := c.Send(m.t, m.payload, nil)
			if m.sent != nil {
				close(m.sent)
			}
			if err != nil {
				c.Close()
				return
			}
		}
	}
}

// request sends a request by ID and waits for its reply.
func (p *Peer) request(t transport.MsgType, encode func(id uint64) []byte, timeout time.Duration) (transport.Reply, error) {
	p.pendMu.Lock()
	if p.link == nil {
		p.pendMu.Unlock()
		return transport.Reply{}, errors.New("not connected")
	}
	p.nextID++
	id := p.nextID
	ch := make(chan transport.Reply, 1)
	p.waiters[id] = ch
	p.pendMu.Unlock()
	p.queueCtl(t, encode(id))
	select {
	case r := <-ch:
		return r, nil
	case <-time.After(timeout):
		p.pendMu.Lock()
		delete(p.waiters, id)
		p.pendMu.Unlock()
		return transport.Reply{}, fmt.Errorf("no answer from %s within %s", p.cfg.Name, timeout)
	}
}

func (p *Peer) deliverReply(r transport.Reply) bool {
	p.pendMu.Lock()
	ch, ok := p.waiters[r.ID]
	delete(p.waiters, r.ID)
	p.pendMu.Unlock()
	if ok {
		ch <- r
	}
	return ok
}

// askPromote is phase one of a promotion: a connected peer must not be Primary.
func (p *Peer) askPromote() error {
	p.v.mu.Lock()
	ps := *p.v.state.Peer(p.cfg.NodeID)
	p.v.mu.Unlock()
	if ps.Conn != Connected {
		return nil
	}
	if ps.Role == Primary {
		return refuse(ErrPeerIsPrimary, "peer %s is Primary (only one Primary per resource)", p.cfg.Name)
	}
	r, err := p.request(transport.MsgPromoteReq, func(id uint64) []byte {
		a := transport.Ack{ID: id}
		b := make([]byte, transport.AckSize)
		a.Put(b)
		return b
	}, 10*time.Second)
	if err != nil {
		return fmt.Errorf("cannot confirm with peer %s: %w", p.cfg.Name, err)
	}
	if !r.OK {
		return refuse(ErrPeerIsPrimary, "peer %s refused: %s", p.cfg.Name, r.Reason)
	}
	return nil
}

// sendStateLocked tells the peer our role and disk state (v.mu held).
func (p *Peer) sendStateLocked() {
	s := transport.State{Role: uint8(p.v.state.Role), Disk: uint8(p.v.state.Disk)}
	p.queueCtl(transport.MsgState, s.Encode())
}

func (p *Peer) sendNewUUID(cur, prev uint64, flags uint32) {
	// NewUUID must precede the writes that follow it: send it on the data path.
	p.pendMu.Lock()
	c := p.link
	p.pendMu.Unlock()
	if c == nil {
		return
	}
	g := transport.Generation{Current: cur, Prev: prev, Flags: flags}
	c.Send(transport.MsgNewUUID, g.Encode(), nil)
}

// startFullSyncAsSourceLocked asks a connected peer whose data is not ours to become
// SyncTarget of a full resync (after a forced promotion).
func (p *Peer) startFullSyncAsSourceLocked() {
	ps := p.v.state.Peer(p.cfg.NodeID)
	if ps.Conn != Connected || ps.Repl != Established || ps.Disk == UpToDate {
		return
	}
	go p.syncRequest(true)
}

// requestFullSyncAsTargetLocked asks an UpToDate peer to resync everything to us.
func (p *Peer) requestFullSyncAsTargetLocked() { go p.syncRequest(false) }

func (p *Peer) syncRequest(senderIsSource bool) {
	r, err := p.request(transport.MsgSyncRequest, func(id uint64) []byte {
		s := transport.SyncRequest{ID: id, SenderIsSource: senderIsSource}
		return s.Encode()
	}, 30*time.Second)
	if err != nil {
		p.log.Warn("full resync request failed", "err", err)
		return
	}
	if !r.OK {
		p.log.Warn("peer refused a full resync", "reason", r.Reason)
	}
}

// Status of one peer for status output.
type PeerStatus struct {
	PeerState
	Protocol        Protocol
	OutOfSyncBytes  int64
	ResyncBytes     int64
	SyncDonePercent float64
	SyncETA         time.Duration // 0 if unknown
	RateBytes       float64       // current resync rate, bytes/s
}

// Status returns the volume's state with per-peer figures.
func (v *Volume) Status() (State, []PeerStatus) {
	st := v.State()
	var out []PeerStatus
	for _, p := range v.peers {
		ps := st.Peer(p.cfg.NodeID)
		s := PeerStatus{PeerState: *ps, Protocol: p.cfg.Protocol,
			OutOfSyncBytes: min(p.bm.Count()*BlockSize, v.size), ResyncBytes: p.rs.bytes.Load()}
		syncing := ps.Repl.IsSyncSource() || ps.Repl.IsSyncTarget()
		s.SyncDonePercent, s.SyncETA, s.RateBytes = p.rs.progress(p.bm.Count(), syncing)
		out = append(out, s)
	}
	return st, out
}
