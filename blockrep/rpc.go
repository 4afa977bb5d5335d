package blockrep

import (
	"errors"
	"fmt"
	"time"

	"github.com/blockrep/blockrep/transport"
)

// post queues a control message on the live link (dropped without one); the link's
// writer sends it, so the caller never blocks on the peer.
func (p *Peer) post(t transport.MsgType, payload []byte) {
	if c := p.currentLink(); c != nil {
		c.Post(t, payload)
	}
}

// request sends a request by ID and waits for its reply. note, if set, runs with the id
// under pendMu before the request leaves.
func (p *Peer) request(t transport.MsgType, encode func(id uint64) []byte, timeout time.Duration, note func(id uint64)) (transport.Reply, error) {
	p.pendMu.Lock()
	c := p.link
	if c == nil {
		p.pendMu.Unlock()
		return transport.Reply{}, errors.New("not connected")
	}
	p.nextID++
	id := p.nextID
	ch := make(chan transport.Reply, 1)
	p.waiters[id] = ch
	if note != nil {
		note(id)
	}
	p.pendMu.Unlock()
	c.Post(t, encode(id))
	tm := p.v.clock.NewTimer(timeout)
	defer tm.Stop()
	select {
	case r := <-ch:
		return r, nil
	case <-tm.C():
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

// askPromote is phase one of a promotion: the connected peer must agree.
func (p *Peer) askPromote() error {
	current := query(p.v, func(c *Core) uint64 { return c.Meta.Current })
	r, err := p.request(transport.MsgPromoteReq, func(id uint64) []byte {
		m := transport.PromoteRequest{ID: id, Current: current}
		return m.Encode()
	}, 10*time.Second, nil)
	if err != nil {
		return fmt.Errorf("cannot confirm with peer %s: %w", p.cfg.Name, err)
	}
	if !r.OK {
		return refuse(ErrPeerIsPrimary, "peer %s refused: %s", p.cfg.Name, r.Reason)
	}
	return nil
}

// requestSync asks the peer for a full resync. The receive loop hands the answer to the
// core (EvSyncReply) before it reads anything the peer sent after it.
func (p *Peer) requestSync(senderIsSource bool) {
	_, err := p.request(transport.MsgSyncRequest, func(id uint64) []byte {
		s := transport.SyncRequest{ID: id, SenderIsSource: senderIsSource}
		return s.Encode()
	}, 30*time.Second, func(id uint64) { p.syncAsked[id] = senderIsSource })
	if err != nil {
		p.log.Warn("full resync request failed", "err", err)
	}
}

// syncReply hands the peer's answer to our sync request to the core.
func (p *Peer) syncReply(r transport.Reply) error {
	p.pendMu.Lock()
	source, ok := p.syncAsked[r.ID]
	delete(p.syncAsked, r.ID)
	p.pendMu.Unlock()
	if !ok {
		return nil // timed out meanwhile
	}
	return p.v.step(EvSyncReply{Peer: p.cfg.NodeID, Reply: r, SenderIsSource: source})
}

// PeerStatus is one peer for status output.
type PeerStatus struct {
	PeerState
	Protocol        Protocol
	OutOfSyncBytes  int64
	ResyncBytes     int64
	SyncDonePercent float64
	SyncETA         time.Duration // 0 if unknown
	RateBytes       float64       // current resync rate, bytes/s
	// InFlight is how many requests wait for the peer's ack, of at most MaxInFlight
	// (max-buffers): the fill of the send window.
	InFlight, MaxInFlight int
	// SentBytes and ReceivedBytes are the current session's link traffic; Pending counts
	// our requests the peer has not answered yet.
	SentBytes, ReceivedBytes int64
	Pending                  int
}

// Status returns the volume's state with per-peer figures.
func (v *Volume) Status() (State, []PeerStatus) {
	st := v.State()
	now := v.clock.Now()
	var out []PeerStatus
	for _, p := range v.peersNow() {
		ps := st.Peer(p.cfg.NodeID)
		s := PeerStatus{PeerState: *ps, Protocol: p.cfg.Protocol,
			OutOfSyncBytes: min(p.bm.Count()*BlockSize, v.size), ResyncBytes: p.rs.bytes.Load()}
		syncing := ps.Repl.IsSyncSource() || ps.Repl.IsSyncTarget()
		s.SyncDonePercent, s.SyncETA, s.RateBytes = p.rs.progress(now, p.bm.Count(), syncing)
		p.pendMu.Lock()
		s.InFlight, s.MaxInFlight = len(p.pending), p.maxPending
		if p.link != nil {
			s.SentBytes, s.ReceivedBytes = p.link.Traffic()
		}
		s.Pending = len(p.pending)
		p.pendMu.Unlock()
		out = append(out, s)
	}
	return st, out
}

// Counters returns the bytes read and written through the volume since it was attached.
func (v *Volume) Counters() (read, written int64) {
	return v.readBytes.Load(), v.writtenBytes.Load()
}

// MetaCounters returns the activity-log transactions and bitmap pages written since
// the disk was attached.
func (v *Volume) MetaCounters() (alWrites, bmWrites int64) {
	v.al.mu.Lock()
	alWrites = int64(v.al.Writes)
	v.al.mu.Unlock()
	return alWrites, v.meta.bmWrites.Load()
}
