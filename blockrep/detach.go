package blockrep

import (
	"errors"
	"fmt"

	"github.com/blockrep/blockrep/transport"
)

// localIOError applies the on-io-error policy to a failed local operation. It reports
// whether the error is absorbed: under "detach" (the default) the disk is detached once,
// in the background, and the caller goes on as if it had no disk; under "pass_on" the
// caller returns the error.
func (v *Volume) localIOError(op string, off int64, err error) bool {
	if v.cfg.OnIOError == IOErrorPassOn {
		v.log.Error("local I/O error, passed on (on-io-error pass_on)", "op", op, "offset", off, "err", err)
		return false
	}
	if v.diskFailed.CompareAndSwap(false, true) {
		v.log.Error("local I/O error: detaching the disk (on-io-error detach)", "op", op, "offset", off, "err", err)
		v.meta.failed.Store(true) // from now on, not when the detach below gets the gate
		go v.detachFailedDisk()
	}
	return true
}

// detachFailedDisk stops using a failed disk; the core decides what that means.
func (v *Volume) detachFailedDisk() {
	v.gate.Lock()
	defer v.gate.Unlock()
	v.stepLogged(EvDiskFailed{})
}

// DiskFailed reports whether the local disk was detached after an I/O error.
func (v *Volume) DiskFailed() bool { return v.diskFailed.Load() }

var errNoReadSource = errors.New("no connected peer with UpToDate data to read from")

// remoteRead reads from a peer that has our data (the disk is detached).
func (v *Volume) remoteRead(buf []byte, off int64) error {
	for _, p := range v.peersNow() {
		if !p.readable() {
			continue
		}
		err := p.read(buf, off)
		if err == nil {
			return nil
		}
		v.log.Warn("remote read failed", "peer", p.cfg.Name, "offset", off, "err", err)
	}
	return fmt.Errorf("%w: %v", ErrIO, errNoReadSource)
}

func (p *Peer) readable() bool {
	p.pendMu.Lock()
	live := p.replicating
	p.pendMu.Unlock()
	return live && query(p.v, func(c *Core) bool { return c.Readable(p.cfg.NodeID) })
}

// read asks the peer for a range and waits for it.
func (p *Peer) read(buf []byte, off int64) error {
	done := make(chan error, 1)
	p.pendMu.Lock()
	if !p.replicating {
		p.pendMu.Unlock()
		return errors.New("not connected")
	}
	p.nextID++
	id := p.nextID
	p.pending[id] = pendEntry{kind: pendRead, off: off, n: int64(len(buf)), rbuf: buf, rdone: done}
	c := p.link
	p.pendMu.Unlock()
	d := transport.Data{ID: id, Off: uint64(off), Len: uint32(len(buf))}
	c.QueueData(transport.MsgReadReq, &d, nil)
	c.Flush()
	t := p.v.clock.NewTimer(p.cfg.Timeout + p.cfg.PingInt)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C():
		p.pendMu.Lock()
		delete(p.pending, id)
		p.pendMu.Unlock()
		return errors.New("timed out")
	}
}

// serveRead answers a diskless Primary's read from our disk (receive loop; the reply
// leaves with the loop's batch).
func (p *Peer) serveRead(c *transport.Conn, payload []byte, b *Batch) error {
	d, _, err := transport.DecodeData(payload, false)
	if err != nil {
		return err
	}
	if err := p.checkRange(d.Off, d.Len); err != nil {
		return err
	}
	if d.Len > transport.MaxPayload-transport.DataSize {
		return fmt.Errorf("%w: read of %d bytes", transport.ErrProtocol, d.Len)
	}
	v := p.v
	buf := make([]byte, d.Len)
	b.Add(c)
	if v.State().Disk != UpToDate || v.diskFailed.Load() {
		a := transport.Ack{ID: d.ID, Code: 2}
		c.QueueAck(transport.MsgNegAck, &a)
		return nil
	}
	if err := v.data.ReadAt(buf, int64(d.Off)); err != nil {
		v.localIOError("read", int64(d.Off), err)
		a := transport.Ack{ID: d.ID, Code: 1}
		c.QueueAck(transport.MsgNegAck, &a)
		return nil
	}
	c.QueueData(transport.MsgReadReply, &d, buf)
	return nil
}

// gotReadReply delivers read data to the waiting reader.
func (p *Peer) gotReadReply(payload []byte) error {
	d, data, err := transport.DecodeData(payload, true)
	if err != nil {
		return err
	}
	p.pendMu.Lock()
	e, ok := p.pending[d.ID]
	if ok && e.kind == pendRead {
		delete(p.pending, d.ID)
	}
	p.pendMu.Unlock()
	if !ok || e.kind != pendRead || int64(len(data)) != e.n || int64(d.Off) != e.off {
		return fmt.Errorf("%w: ReadReply %d does not answer a read", transport.ErrProtocol, d.ID)
	}
	copy(e.rbuf, data)
	e.rdone <- nil
	return nil
}
