package blockrep

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/blockrep/blockrep/transport"
)

// sessionEnd is how a session ended: standalone outcomes are not retried automatically.
type sessionEnd struct {
	standalone, splitBrain bool
	graceful               bool // the peer said goodbye (Disconnect)
	reason                 string
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

func retry(err error) sessionEnd { return sessionEnd{reason: err.Error()} }

// session runs one connection: handshake, bitmap exchange, then replication until the
// link breaks.
func (p *Peer) session(c *transport.Conn) sessionEnd {
	v := p.v
	c.SetBuffers(p.cfg.SndBuf, p.cfg.RcvBuf)
	// One handshake at a time per volume, and a bounded wait for it: each handshake
	// holds the gate while it waits for its peer, so three nodes connecting to each
	// other at once could otherwise wait on each other in a cycle.
	wait := v.clock.NewTimer(handshakeWait + time.Duration(rand.Int64N(int64(handshakeWait))))
	select {
	case v.handshaking <- struct{}{}:
		wait.Stop()
	case <-wait.C():
		return sessionEnd{reason: "another handshake is in progress; retrying"}
	}
	// Writes pause on this node until the decision is taken and replication is live, so
	// the generations and bitmaps we decide on are the ones the data matches.
	v.gate.Lock()
	gateHeld := true
	defer func() {
		if gateHeld {
			v.gate.Unlock()
			<-v.handshaking
		}
	}()
	watchdog := v.clock.AfterFunc(handshakeTimeout, func() { c.Close() })
	defer watchdog.Stop()

	self := query(v, func(core *Core) HandshakeSide { return core.HandshakeSide(p.cfg.NodeID, uint64(p.bm.Count())) })
	if err := c.Send(transport.MsgHandshake, toWire(self, v.size, p.cfg.Protocol, p.cfg.Settings).Encode(), nil); err != nil {
		return retry(err)
	}
	payload, err := readExpect(c, transport.MsgHandshake)
	if err != nil {
		return retry(err)
	}
	w, err := transport.DecodeHandshake(payload)
	if err != nil {
		return retry(err)
	}
	refuse := func(format string, a ...any) sessionEnd {
		return sessionEnd{standalone: true, reason: fmt.Sprintf(format, a...)}
	}
	switch {
	case int(w.NodeID) != p.cfg.NodeID:
		return refuse("peer claims node-id %d, expected %d", w.NodeID, p.cfg.NodeID)
	case p.cfg.Tiebreaker && DiskState(w.Disk) != Diskless:
		return refuse("%s is configured as a diskless tiebreaker (disk none) but has a disk", p.cfg.Name)
	case !p.cfg.Tiebreaker && int64(w.Size) != v.size:
		return refuse("disk size mismatch: ours %d bytes, peer's %d bytes", v.size, w.Size)
	case Protocol(w.Protocol) != p.cfg.Protocol:
		return refuse("protocol mismatch: ours %s, peer's %s", p.cfg.Protocol, Protocol(w.Protocol))
	case w.Settings != p.cfg.Settings:
		return refuse("incompatible net settings: ours %q, peer's %q", p.cfg.Settings, w.Settings)
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
			return sessionEnd{standalone: true, splitBrain: true, reason: "split-brain"}
		}
		return sessionEnd{standalone: !res.Retry, reason: res.Reason}
	}

	// One resync source at a time: the Primary takes precedence, anyone else waits.
	if res.Repl == SyncTarget {
		if id := query(v, func(core *Core) int { return core.SyncTargetOf(p.cfg.NodeID) }); id >= 0 {
			other := v.peerByID(id)
			if peer.Role != Primary {
				return sessionEnd{reason: fmt.Sprintf("already SyncTarget from %s; retrying later", other.cfg.Name)}
			}
			// Whatever the old source's receive loop still holds must land before the
			// Primary's resync writes the same blocks.
			if !other.stopLink(fmt.Sprintf("resync from the Primary %s takes precedence", p.cfg.Name), 5*time.Second) {
				return sessionEnd{reason: fmt.Sprintf("the resync from %s did not stop; retrying later", other.cfg.Name)}
			}
		}
	}
	if res.Bits == BitsMerge {
		if err := p.exchangeBitmaps(c); err != nil {
			return retry(err)
		}
	}
	// The core settles the bitmap and persists what must hold before the peer may send.
	if err := v.step(EvHandshake{Peer: p.cfg.NodeID, Self: self, PeerSide: peer, Result: res}); err != nil {
		return retry(err)
	}
	if err := c.Send(transport.MsgSyncReady, nil, nil); err != nil {
		return retry(err)
	}
	if _, err := readExpect(c, transport.MsgSyncReady); err != nil {
		return retry(err)
	}
	watchdog.Stop()

	// Live: the write path opens to the peer when the core commits the connection (its
	// effects — the state message, a resync — need the link).
	stop := make(chan struct{})
	var wg sync.WaitGroup
	recvDone := make(chan struct{})
	p.pendMu.Lock()
	p.link, p.replicating = c, !p.cfg.Tiebreaker
	p.sessionNo++
	p.recvDone, p.sessStop, p.sessWG = recvDone, stop, &wg
	p.pendMu.Unlock()
	p.heard()
	if err := v.step(EvSessionUp{Peer: p.cfg.NodeID, Self: self, PeerSide: peer, Result: res}); err != nil {
		p.pendMu.Lock()
		p.link, p.replicating = nil, false
		p.pendMu.Unlock()
		close(stop)
		close(recvDone)
		return sessionEnd{standalone: true, reason: err.Error()}
	}
	p.wentLive = true
	v.gate.Unlock()
	<-v.handshaking
	gateHeld = false

	wg.Add(1)
	go func() { defer wg.Done(); p.keepalive(c, stop) }()
	err = p.receive(c)
	close(recvDone)
	// The core decides what losing the link means (a fencing freeze) before the link's
	// pending writes complete in teardown.
	var g errGraceful
	graceful := errors.As(err, &g)
	v.stepLogged(EvLinkDown{Peer: p.cfg.NodeID, Graceful: graceful, Reason: err.Error()})
	close(stop)
	c.Close()
	p.rs.wake()   // a resync loop waiting for its window
	v.conf.wake() // or for a range held by a write that waits for this peer's ack
	if graceful {
		return sessionEnd{graceful: true, reason: "peer: " + g.reason}
	}
	return sessionEnd{reason: err.Error()}
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
// waiting requests complete (the peer is no longer part of the replica set; a freeze the
// core decided at EvLinkDown holds their completions). Then, under the I/O gate, the
// core hears how the session ended (a Primary starts a new generation there).
func (p *Peer) teardown(c *transport.Conn, out sessionEnd) {
	v := p.v
	p.pendMu.Lock()
	if p.link == c {
		p.replicating, p.link = false, nil
	}
	entries := p.pending
	p.pending = make(map[uint64]pendEntry)
	waiters := p.waiters
	p.waiters = make(map[uint64]chan transport.Reply)
	wg := p.sessWG
	p.sessWG, p.sessStop = nil, nil
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
	if wg != nil {
		wg.Wait() // keepalive, resync loop
	}

	hot := 0
	if v.cfg.ALUpdates {
		hot = v.al.Hot()
	}
	v.gate.Lock()
	v.stepLogged(EvSessionEnded{Peer: p.cfg.NodeID, StandAlone: out.standalone, SplitBrain: out.splitBrain,
		Reason: out.reason, HotExtents: hot})
	v.gate.Unlock()
}

// bits carries out a whole-bitmap operation of the core on this peer's bitmap.
func (p *Peer) bits(op BitsOp, from int) {
	v := p.v
	switch op {
	case BitsSetAll:
		p.bm.SetAll()
	case BitsClearAll:
		p.bm.ClearAll()
	case BitsCopy:
		sb := v.meta.Superblock()
		if s := sb.Slot(from); s >= 0 {
			p.bm.Merge(v.meta.Bitmap(s))
		} else {
			p.bm.SetAll()
		}
	case BitsMarkHot:
		if !v.cfg.ALUpdates {
			p.bm.SetAll() // without activity-log updates any block may differ
			return
		}
		for _, e := range v.al.HotExtents() {
			if off := int64(e) << alExtentShift; off < v.size {
				p.bm.SetRange(off, min(ALExtentSize, v.size-off))
			}
		}
	}
}
