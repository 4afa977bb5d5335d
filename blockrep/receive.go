package blockrep

import (
	"errors"
	"fmt"
	"time"

	"github.com/blockrep/blockrep/transport"
)

// receive is a session's only reader. As the data-receiving side it applies writes and
// resync data in stream order and acknowledges them (acks are batched and flushed when
// the input drains); as the data-sending side it consumes acknowledgements. It never
// blocks on sending a control message: those go through the session's ctl goroutine.
func (p *Peer) receive(c *transport.Conn) error {
	var b Batch
	defer b.Flush()
	fl := newPeerFlusher(p, c)
	defer fl.stop()
	for {
		if !c.Buffered() {
			b.Flush()
			p.lastRecv.Store(time.Now().UnixNano())
		}
		t, payload, err := c.ReadMsg()
		if err != nil {
			return err
		}
		if err := p.handle(c, t, payload, &b, fl); err != nil {
			if !errors.As(err, new(errGraceful)) {
				p.log.Warn("closing connection", "reason", err)
			}
			return err
		}
	}
}

func (p *Peer) handle(c *transport.Conn, t transport.MsgType, payload []byte, b *Batch, fl *groupCommit[uint64]) error {
	switch t {
	case transport.MsgWrite, transport.MsgTrim, transport.MsgZero:
		return p.applyData(c, t, payload, b)
	case transport.MsgRSData, transport.MsgRSZero:
		return p.applyResync(c, t, payload, b)
	case transport.MsgFlush:
		a, err := transport.DecodeAck(payload)
		if err != nil {
			return err
		}
		if c.Buffered() {
			fl.enqueue(a.ID) // more is queued: do not stall it behind an fdatasync
			return nil
		}
		b.Flush()
		p.flushNow(c, []uint64{a.ID}, b)
		return nil
	case transport.MsgRecvAck, transport.MsgWriteAck, transport.MsgNegAck, transport.MsgFlushAck, transport.MsgRSAck:
		return p.gotAck(t, payload, b)
	case transport.MsgRSDone:
		g, err := transport.DecodeGeneration(payload)
		if err != nil {
			return err
		}
		return p.resyncFinishedAsTarget(g.Current, g.History)
	case transport.MsgNewUUID:
		g, err := transport.DecodeGeneration(payload)
		if err != nil {
			return err
		}
		return p.adoptGeneration(g)
	case transport.MsgState:
		s, err := transport.DecodeState(payload)
		if err != nil {
			return err
		}
		return p.peerStateChanged(Role(s.Role), DiskState(s.Disk))
	case transport.MsgPromoteReq:
		a, err := transport.DecodeAck(payload)
		if err != nil {
			return err
		}
		p.answerPromote(a.ID)
		return nil
	case transport.MsgSyncRequest:
		r, err := transport.DecodeSyncRequest(payload)
		if err != nil {
			return err
		}
		p.answerSyncRequest(c, r)
		return nil
	case transport.MsgPromoteReply, transport.MsgSyncReply:
		r, err := transport.DecodeReply(payload)
		if err != nil {
			return err
		}
		if t == transport.MsgSyncReply && r.OK {
			p.syncAccepted(c, r.ID)
		}
		if !p.deliverReply(r) {
			p.log.Debug("reply to no request", "id", r.ID)
		}
		return nil
	case transport.MsgOutOfSync:
		d, _, err := transport.DecodeData(payload, false)
		if err != nil {
			return err
		}
		if err := p.checkRange(d.Off, d.Len); err != nil {
			return err
		}
		p.bm.SetRange(int64(d.Off), int64(d.Len))
		return nil
	case transport.MsgReadReq:
		return p.serveRead(c, payload)
	case transport.MsgReadReply:
		return p.gotReadReply(payload)
	case transport.MsgPing:
		p.queueCtl(transport.MsgPingAck, nil)
		return nil
	case transport.MsgPingAck:
		return nil
	case transport.MsgDisconnect:
		d, err := transport.DecodeDisconnect(payload)
		if err != nil {
			return err
		}
		return errGraceful{d.Reason}
	}
	return fmt.Errorf("%w: unexpected message %s", transport.ErrProtocol, t)
}

// checkRange rejects data outside the device before anything is written.
func (p *Peer) checkRange(off uint64, n uint32) error {
	if off > uint64(p.v.size) || uint64(n) > uint64(p.v.size)-off {
		return fmt.Errorf("%w: data at %d+%d beyond the end of the device (%d bytes)", transport.ErrProtocol, off, n, p.v.size)
	}
	return nil
}

func (p *Peer) applyData(c *transport.Conn, t transport.MsgType, payload []byte, b *Batch) error {
	d, data, err := transport.DecodeData(payload, t == transport.MsgWrite)
	if err != nil {
		return err
	}
	if err := p.checkRange(d.Off, d.Len); err != nil {
		return err
	}
	if p.v.primary.Load() {
		return fmt.Errorf("%w: peer sent %s to a Primary", transport.ErrProtocol, t)
	}
	if p.cfg.Protocol == ProtocolB && d.Flags&transport.DataFUA == 0 {
		p.ack(c, transport.MsgRecvAck, d.ID, 0, b)
	}
	off, n := int64(d.Off), int64(d.Len)
	var flags ReqFlags
	if d.Flags&transport.DataFUA != 0 {
		flags |= FlagFUA
	}
	if d.Flags&transport.DataNoHole != 0 {
		flags |= FlagNoHole
	}
	v := p.v
	if v.cfg.ALUpdates {
		err = v.al.Begin(off, n)
	}
	if err == nil {
		switch t {
		case transport.MsgWrite:
			err = v.data.WriteAt(data, off, flags)
		case transport.MsgTrim:
			err = v.data.Trim(off, n)
		case transport.MsgZero:
			err = v.data.Zero(off, n, flags&FlagNoHole)
		}
		if err == nil && flags&FlagFUA != 0 && t != transport.MsgWrite {
			err = v.data.Flush()
		}
		if v.cfg.ALUpdates {
			v.al.End(off, n)
		}
	}
	if err != nil {
		p.log.Error("applying peer write failed", "offset", off, "length", n, "err", err)
		v.localIOError("peer write", off, err)
		p.ack(c, transport.MsgNegAck, d.ID, 1, b)
		return nil
	}
	v.writtenBytes.Add(n)
	if d.Flags&transport.DataNotLocal != 0 {
		p.bm.SetRange(off, n) // the sender's own disk misses this
	} else {
		p.bm.ClearRange(off, n)
	}
	p.ack(c, transport.MsgWriteAck, d.ID, 0, b)
	return nil
}

func (p *Peer) applyResync(c *transport.Conn, t transport.MsgType, payload []byte, b *Batch) error {
	d, data, err := transport.DecodeData(payload, t == transport.MsgRSData)
	if err != nil {
		return err
	}
	if err := p.checkRange(d.Off, d.Len); err != nil {
		return err
	}
	v := p.v
	v.mu.Lock()
	disk := v.state.Disk
	v.mu.Unlock()
	if disk != Inconsistent {
		return fmt.Errorf("%w: resync data for a %s disk", transport.ErrProtocol, disk)
	}
	off, n := int64(d.Off), int64(d.Len)
	if t == transport.MsgRSZero {
		err = p.zeroForResync(off, n)
	} else {
		err = v.data.WriteAt(data, off, 0)
	}
	if err != nil {
		p.log.Error("writing resync data failed", "offset", off, "err", err)
		p.ack(c, transport.MsgNegAck, d.ID, 1, b)
		return nil
	}
	p.bm.ClearRange(off, n)
	p.rs.bytes.Add(n)
	p.ack(c, transport.MsgRSAck, d.ID, 0, b)
	return nil
}

func (p *Peer) ack(c *transport.Conn, t transport.MsgType, id uint64, code uint32, b *Batch) {
	a := transport.Ack{ID: id, Code: code}
	c.Lock()
	c.WriteAckLocked(t, &a)
	c.Unlock()
	b.Add(c)
}

// gotAck matches an acknowledgement to what we sent.
func (p *Peer) gotAck(t transport.MsgType, payload []byte, b *Batch) error {
	a, err := transport.DecodeAck(payload)
	if err != nil {
		return err
	}
	p.pendMu.Lock()
	e, ok := p.pending[a.ID]
	if !ok {
		p.pendMu.Unlock()
		return fmt.Errorf("%w: %s for unknown id %d", transport.ErrProtocol, t, a.ID)
	}
	if t == transport.MsgRecvAck {
		if e.kind != pendData {
			p.pendMu.Unlock()
			return fmt.Errorf("%w: RecvAck for a non-write", transport.ErrProtocol)
		}
		var req *Request
		if e.waitRecv {
			req = e.req
			e.req, e.waitRecv = nil, false
			p.pending[a.ID] = e
		}
		p.pendMu.Unlock()
		if req != nil {
			req.eng.peerDone(true, b)
		}
		return nil
	}
	delete(p.pending, a.ID)
	// Wake blocked writers only once a quarter of the window is free, not on every ack.
	if p.pendWaiters > 0 && len(p.pending) <= p.maxPending*3/4 {
		p.pendCond.Broadcast()
	}
	p.pendMu.Unlock()

	switch {
	case t == transport.MsgNegAck:
		if e.kind == pendData || e.kind == pendRS {
			p.bm.SetRange(e.off, e.n)
		}
		if e.kind == pendRS {
			p.rs.acked(e.n, false)
		}
		p.log.Warn("peer failed to write; blocks marked out of sync", "offset", e.off, "length", e.n)
	case e.kind == pendData && t == transport.MsgWriteAck:
		p.bm.ClearRange(e.off, e.n)
	case e.kind == pendRS && t == transport.MsgRSAck:
		p.bm.ClearRange(e.off, e.n)
		p.rs.acked(e.n, true)
	case e.kind == pendFlush && t == transport.MsgFlushAck:
	case e.kind == pendRead && t == transport.MsgNegAck:
	default:
		return fmt.Errorf("%w: %s does not answer that request", transport.ErrProtocol, t)
	}
	if e.kind == pendRead {
		// Only a NegAck answers a read this way.
		e.rdone <- fmt.Errorf("%w: the peer could not read", ErrIO)
		return nil
	}
	if e.req != nil {
		e.req.eng.peerDone(t != transport.MsgNegAck, b)
	}
	return nil
}

// submitData sends an application write to the peer, or records it in the bitmap when
// the peer does not receive writes now. Called from Submit with the gate held shared.
func (p *Peer) submitData(r *Request, b *Batch, diskless bool) {
	p.pendMu.Lock()
	for p.replicating && len(p.pending) >= p.maxPending {
		// What we queued but did not send yet cannot be acknowledged: send it first,
		// or the window opens only when a keepalive happens to flush the link.
		p.pendMu.Unlock()
		b.Flush()
		p.pendMu.Lock()
		if !p.replicating || len(p.pending) < p.maxPending {
			break
		}
		p.pendWaiters++
		p.pendCond.Wait()
		p.pendWaiters--
	}
	if !p.replicating {
		p.pendMu.Unlock()
		p.bm.SetRange(r.Off, r.Len)
		return
	}
	p.nextID++
	id := p.nextID
	e := pendEntry{kind: pendData, off: r.Off, n: r.Len}
	// Without a local disk every peer is a replica the request must wait for.
	if p.cfg.Protocol != ProtocolA || diskless {
		e.req = r
		e.waitRecv = p.cfg.Protocol == ProtocolB && r.Flags&FlagFUA == 0 && !diskless
		r.eng.parts.Add(1)
	}
	p.pending[id] = e
	c := p.link
	p.pendMu.Unlock()

	d := transport.Data{ID: id, Off: uint64(r.Off), Len: uint32(r.Len)}
	if r.Flags&FlagFUA != 0 {
		d.Flags |= transport.DataFUA
	}
	if r.Flags&FlagNoHole != 0 {
		d.Flags |= transport.DataNoHole
	}
	if diskless {
		d.Flags |= transport.DataNotLocal
	}
	var t transport.MsgType
	var data []byte
	switch r.Op {
	case OpWrite:
		t, data = transport.MsgWrite, r.Data
	case OpTrim:
		t = transport.MsgTrim
	case OpZero:
		t = transport.MsgZero
	}
	c.Lock()
	c.WriteDataLocked(t, &d, data)
	c.Unlock()
	b.Add(c)
}

// flushLink sends whatever is buffered on the current link.
func (p *Peer) flushLink() {
	p.pendMu.Lock()
	c := p.link
	p.pendMu.Unlock()
	if c != nil {
		c.FlushOut()
	}
}

// submitFlush sends a flush to a protocol B/C peer; the request waits for its ack.
func (p *Peer) submitFlush(r *Request, diskless bool) {
	if p.cfg.Protocol == ProtocolA && !diskless {
		return
	}
	p.pendMu.Lock()
	if !p.replicating {
		p.pendMu.Unlock()
		return
	}
	p.nextID++
	id := p.nextID
	p.pending[id] = pendEntry{kind: pendFlush, req: r}
	r.eng.parts.Add(1)
	c := p.link
	p.pendMu.Unlock()
	a := transport.Ack{ID: id}
	c.Lock()
	c.WriteAckLocked(transport.MsgFlush, &a)
	c.FlushLocked()
	c.Unlock()
}

// newPeerFlusher is the peer side of FLUSH: one fdatasync covers every write applied
// before the Flush arrived (the receive loop applies in order), so flush ids queue while
// the receive loop goes on, and the acks go out once the sync is done.
func newPeerFlusher(p *Peer, c *transport.Conn) *groupCommit[uint64] {
	return newGroupCommit(p.v.data.Flush, func(ids []uint64, err error) { p.ackFlushes(c, ids, err) })
}

// flushNow does a Flush inline in the receive loop (nothing else is queued) and acks it.
func (p *Peer) flushNow(c *transport.Conn, ids []uint64, b *Batch) {
	p.ackFlushes(c, ids, p.v.data.Flush())
}

func (p *Peer) ackFlushes(c *transport.Conn, ids []uint64, err error) {
	t, code := transport.MsgFlushAck, uint32(0)
	if err != nil {
		p.log.Error("flush failed", "err", err)
		p.v.localIOError("flush", 0, err)
		t, code = transport.MsgNegAck, 1
	}
	c.Lock()
	for _, id := range ids {
		a := transport.Ack{ID: id, Code: code}
		c.WriteAckLocked(t, &a)
	}
	c.FlushLocked()
	c.Unlock()
}

// adoptGeneration follows the Primary to a new current generation when we hold the
// generation it replaces (we have all its data).
func (p *Peer) adoptGeneration(g transport.Generation) error {
	v := p.v
	v.mu.Lock()
	defer v.mu.Unlock()
	sb := v.meta.Superblock()
	if mask(sb.Current) != mask(g.Prev) || v.state.Disk != UpToDate {
		p.log.Warn("not adopting the peer's new generation", "ours", fmt.Sprintf("%016X", sb.Current),
			"their-previous", fmt.Sprintf("%016X", g.Prev), "disk", v.state.Disk)
		return nil
	}
	diskless := g.Flags&transport.GenSenderDiskless != 0
	if diskless {
		// The sender lost its disk: its writes now carry DataNotLocal.
		v.changeLocked(func(s *State) { s.Peer(p.cfg.NodeID).Disk = Diskless })
	}
	return v.meta.Update(func(sb *Superblock) {
		pushHistory(&sb.History, sb.Current)
		sb.Current = g.Current
		if diskless && sb.Peers[p.slot].BitmapUUID == 0 {
			sb.Peers[p.slot].BitmapUUID = g.Prev
		}
	})
}

func (p *Peer) peerStateChanged(role Role, disk DiskState) error {
	v := p.v
	v.mu.Lock()
	defer v.mu.Unlock()
	if role == Primary && v.state.Role == Primary {
		return fmt.Errorf("%w: peer became Primary while we are Primary", transport.ErrProtocol)
	}
	wasPrimary := v.state.Peer(p.cfg.NodeID).Role == Primary
	if err := v.changeLocked(func(s *State) {
		sp := s.Peer(p.cfg.NodeID)
		sp.Role, sp.Disk = role, disk
	}); err != nil {
		return err
	}
	if role == Primary && !wasPrimary {
		p.primaryAppearedLocked()
	}
	if role != Primary && wasPrimary {
		v.rehandshakeLocked(func(o *Peer) bool { return o.deferred }, "the Primary stepped down: re-deciding the deferred resync")
	}
	if disk == UpToDate && p.bothInconsistent {
		v.rehandshakeLocked(func(o *Peer) bool { return o == p }, "the peer is UpToDate now: re-deciding the resync deferred while both disks were Inconsistent")
	}
	return nil
}

// primaryAppearedLocked: a peer became Primary. A resync between us and another
// Secondary would now race the Primary's writes: stop it; the Primary resyncs instead.
func (p *Peer) primaryAppearedLocked() {
	v := p.v
	if v.state.Role == Primary {
		return
	}
	v.rehandshakeLocked(func(o *Peer) bool {
		ps := v.state.Peer(o.cfg.NodeID)
		return o != p && ps.Role != Primary && (ps.Repl.IsSyncSource() || ps.Repl.IsSyncTarget())
	}, "a Primary appeared: a resync between Secondaries would race its writes")
}

// answerPromote grants a peer's promotion unless we are (or are becoming) Primary; of two
// concurrent promotions the lower node id wins.
func (p *Peer) answerPromote(id uint64) {
	v := p.v
	v.mu.Lock()
	r := transport.Reply{ID: id, OK: true}
	switch {
	case v.state.Role == Primary:
		r.OK, r.Reason = false, fmt.Sprintf("%s is Primary", v.cfg.NodeName)
	case v.promoting && v.cfg.NodeID < p.cfg.NodeID:
		r.OK, r.Reason = false, fmt.Sprintf("%s is becoming Primary", v.cfg.NodeName)
	default:
		// Until it tells us otherwise, treat the peer as Primary so we do not promote too.
		v.changeLocked(func(s *State) { s.Peer(p.cfg.NodeID).Role = Primary })
		p.primaryAppearedLocked()
	}
	v.mu.Unlock()
	p.queueCtl(transport.MsgPromoteReply, r.Encode())
}

// answerSyncRequest handles a peer's request for a full resync.
func (p *Peer) answerSyncRequest(c *transport.Conn, req transport.SyncRequest) {
	v := p.v
	reply := transport.Reply{ID: req.ID, OK: true}
	v.mu.Lock()
	ps := v.state.Peer(p.cfg.NodeID)
	switch {
	case ps.Repl != Established:
		reply.OK, reply.Reason = false, fmt.Sprintf("replication is %s", ps.Repl)
	case req.SenderIsSource && v.state.Role == Primary:
		reply.OK, reply.Reason = false, fmt.Sprintf("%s is Primary", v.cfg.NodeName)
	case req.SenderIsSource && p.syncTargetOfAnotherLocked():
		reply.OK, reply.Reason = false, fmt.Sprintf("%s is already SyncTarget of another peer", v.cfg.NodeName)
	case req.SenderIsSource:
		// We become SyncTarget: persist Inconsistent before the first block can arrive.
		p.bm.SetAll()
		if err := v.markInconsistentLocked(false); err != nil {
			reply.OK, reply.Reason = false, err.Error()
			break
		}
		v.meta.WriteBitmaps()
		v.changeLocked(func(s *State) {
			sp := s.Peer(p.cfg.NodeID)
			sp.Repl = SyncTarget
		})
		p.rs.begin(p.bm.Count())
	case v.state.Disk != UpToDate:
		reply.OK, reply.Reason = false, fmt.Sprintf("%s is %s", v.cfg.NodeName, v.state.Disk)
	default:
		// The peer invalidated itself: we become SyncSource of everything.
		p.bm.SetAll()
		v.meta.WriteBitmaps()
		v.changeLocked(func(s *State) {
			sp := s.Peer(p.cfg.NodeID)
			sp.Repl, sp.Disk = SyncSource, Inconsistent
		})
	}
	startSource := reply.OK && !req.SenderIsSource
	v.mu.Unlock()
	p.queueCtl(transport.MsgSyncReply, reply.Encode())
	if startSource {
		p.startResyncLater(c)
	}
}

// syncAccepted runs in the receiver when the peer accepted our SyncRequest.
func (p *Peer) syncAccepted(c *transport.Conn, id uint64) {
	v := p.v
	v.mu.Lock()
	ps := v.state.Peer(p.cfg.NodeID)
	if ps.Repl != Established {
		v.mu.Unlock()
		return
	}
	source := v.state.Disk == UpToDate
	if source {
		p.bm.SetAll()
		v.meta.WriteBitmaps()
	}
	v.changeLocked(func(s *State) {
		sp := s.Peer(p.cfg.NodeID)
		if source {
			sp.Repl, sp.Disk = SyncSource, Inconsistent
		} else {
			sp.Repl = SyncTarget
		}
	})
	if !source {
		p.rs.begin(p.bm.Count())
	}
	v.mu.Unlock()
	if source {
		p.startResyncLater(c)
	}
}

// resyncFinishedAsTarget: every block arrived; take over the source's generation.
func (p *Peer) resyncFinishedAsTarget(current uint64, history [HistoryLen]uint64) error {
	v := p.v
	v.mu.Lock()
	defer v.mu.Unlock()
	ps := v.state.Peer(p.cfg.NodeID)
	if !ps.Repl.IsSyncTarget() {
		return fmt.Errorf("%w: RSDone while %s", transport.ErrProtocol, ps.Repl)
	}
	p.bm.ClearAll()
	if err := v.meta.WriteBitmaps(); err != nil {
		return err
	}
	err := v.meta.Update(func(sb *Superblock) {
		// Our data is now the source's: so is its lineage. Keeping our own history
		// instead would make us look like a branch of it to a third node.
		sb.History = history
		sb.Current = current
		sb.Peers[p.slot].BitmapUUID = 0
		sb.Peers[p.slot].Flags &^= PeerOutdated
		// Whatever a crash left uncertain on our disk is now the source's data: no peer
		// needs a crash resync from us any more (generations say whether one differs).
		for i := range sb.Peers {
			sb.Peers[i].Flags &^= PeerResyncPending | PeerCrashedPrimary
		}
		sb.Flags |= MDConsistent | MDWasUpToDate
		sb.Flags &^= MDOutdated
	})
	if err != nil {
		return err
	}
	p.log.Info("resync done", "as", "SyncTarget", "bytes", p.rs.bytes.Load(), "took", p.rs.elapsed().Round(time.Millisecond))
	p.rs.end()
	if err := v.changeLocked(func(s *State) {
		s.Disk = UpToDate
		s.Peer(p.cfg.NodeID).Repl = Established
	}); err != nil {
		return err
	}
	v.rehandshakeLocked(func(o *Peer) bool { return o.bothInconsistent }, "UpToDate now: re-deciding the resync deferred while both disks were Inconsistent")
	return nil
}

func (p *Peer) syncTargetOfAnotherLocked() bool {
	for _, o := range p.v.peers {
		if o != p && p.v.state.Peer(o.cfg.NodeID).Repl.IsSyncTarget() {
			return true
		}
	}
	return false
}

// sendOutOfSync tells the peer that our own disk misses a range we sent it (the local
// write failed after the data went out). It precedes any later write to the range.
func (p *Peer) sendOutOfSync(off, n int64) {
	p.pendMu.Lock()
	c := p.link
	live := p.replicating
	p.pendMu.Unlock()
	if !live {
		return
	}
	d := transport.Data{Off: uint64(off), Len: uint32(n)}
	c.Lock()
	c.WriteDataLocked(transport.MsgOutOfSync, &d, nil)
	c.FlushLocked()
	c.Unlock()
}

// zeroForResync makes a range read as zeroes without disturbing its allocation: a range
// that already reads as zeroes (a hole, or a fresh preallocated disk) is left alone, so
// a sparse disk stays sparse and a preallocated one stays allocated.
func (p *Peer) zeroForResync(off, n int64) error {
	v := p.v
	if m, ok := v.dev.(ExtentMapper); ok {
		allHole := true
		m.Extents(off, n, func(_, _ int64, hole bool) bool {
			allHole = allHole && hole
			return allHole
		})
		if allHole {
			return nil
		}
	}
	if cap(p.zbuf) < int(n) {
		p.zbuf = make([]byte, n)
	}
	buf := p.zbuf[:n]
	if err := v.data.ReadAt(buf, off); err == nil && isZero(buf) {
		return nil
	}
	return v.data.Zero(off, n, FlagNoHole)
}
