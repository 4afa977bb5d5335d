package blockrep

import "github.com/blockrep/blockrep/transport"

// submitData sends an application write to the peer, or records it in the bitmap when
// the peer does not receive writes now. Called from Submit with the gate held shared.
func (p *Peer) submitData(r *Request, b *Batch, diskless bool) {
	p.pendMu.Lock()
	for p.replicating && len(p.pending) >= p.maxPending {
		// Through b: what we queued but did not send yet cannot be acknowledged.
		p.pendWaiters++
		b.Wait(&p.pendCond)
		p.pendWaiters--
	}
	if !p.replicating {
		p.pendMu.Unlock()
		if !p.cfg.Tiebreaker {
			p.bm.SetRange(r.Off, r.Len)
		}
		return
	}
	p.nextID++
	id := p.nextID
	e := pendEntry{kind: pendData, off: r.Off, n: r.Len}
	if p.cfg.AckLatency != nil {
		e.sent = p.v.clock.Now()
	}
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
	c.QueueData(t, &d, data)
	b.Add(c)
}

// flushLink sends whatever is queued on the current link.
func (p *Peer) flushLink() {
	if c := p.currentLink(); c != nil {
		c.Flush()
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
	c.QueueAck(transport.MsgFlush, &a)
	c.Flush()
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
	c.QueueData(transport.MsgOutOfSync, &d, nil)
	c.Flush()
}
