package blockrep

import (
	"errors"
	"fmt"

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
			p.heard()
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
	v, id := p.v, p.cfg.NodeID
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
		p.ackFlushes(c, []uint64{a.ID}, v.data.Flush())
		return nil
	case transport.MsgRecvAck, transport.MsgWriteAck, transport.MsgNegAck, transport.MsgFlushAck, transport.MsgRSAck:
		return p.gotAck(t, payload, b)
	case transport.MsgRSDone:
		g, err := transport.DecodeGeneration(payload)
		if err != nil {
			return err
		}
		return v.step(EvResyncDone{Peer: id, Current: g.Current, History: g.History, Took: p.rs.elapsed(v.clock.Now())})
	case transport.MsgNewUUID:
		g, err := transport.DecodeGeneration(payload)
		if err != nil {
			return err
		}
		return v.step(EvPeerNewUUID{Peer: id, Gen: g})
	case transport.MsgState:
		s, err := transport.DecodeState(payload)
		if err != nil {
			return err
		}
		return v.step(EvPeerState{Peer: id, Role: Role(s.Role), Disk: DiskState(s.Disk)})
	case transport.MsgPromoteReq:
		a, err := transport.DecodePromoteRequest(payload)
		if err != nil {
			return err
		}
		return v.step(EvPromoteRequest{Peer: id, ID: a.ID})
	case transport.MsgSyncRequest:
		r, err := transport.DecodeSyncRequest(payload)
		if err != nil {
			return err
		}
		return v.step(EvSyncRequest{Peer: id, ID: r.ID, SenderIsSource: r.SenderIsSource})
	case transport.MsgPromoteReply, transport.MsgSyncReply:
		r, err := transport.DecodeReply(payload)
		if err != nil {
			return err
		}
		if t == transport.MsgSyncReply {
			if err := p.syncReply(r); err != nil {
				return err
			}
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
		return p.serveRead(c, payload, b)
	case transport.MsgReadReply:
		return p.gotReadReply(payload)
	case transport.MsgPing:
		c.Post(transport.MsgPingAck, nil)
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
	if p.v.writable.Load() {
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
	if disk := v.State().Disk; disk != Inconsistent {
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
	c.QueueAck(t, &a)
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
		if p.cfg.AckLatency != nil {
			p.cfg.AckLatency(p.v.clock.Now() - e.sent)
		}
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

// newPeerFlusher is the peer side of FLUSH: one fdatasync covers every write applied
// before the Flush arrived (the receive loop applies in order), so flush ids queue while
// the receive loop goes on, and the acks go out once the sync is done.
func newPeerFlusher(p *Peer, c *transport.Conn) *groupCommit[uint64] {
	return newGroupCommit(p.v.data.Flush, func(ids []uint64, err error) { p.ackFlushes(c, ids, err) })
}

func (p *Peer) ackFlushes(c *transport.Conn, ids []uint64, err error) {
	t, code := transport.MsgFlushAck, uint32(0)
	if err != nil {
		p.log.Error("flush failed", "err", err)
		p.v.localIOError("flush", 0, err)
		t, code = transport.MsgNegAck, 1
	}
	for _, id := range ids {
		a := transport.Ack{ID: id, Code: code}
		c.QueueAck(t, &a)
	}
	c.Flush()
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
