package iscsi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blockrep/blockrep/fence/scsi"
)

// conn is one TCP connection of a session in full feature phase. It has three
// goroutines: the reader dispatches target PDUs, the writer drains the send queue (so
// neither the reader nor a caller ever blocks on a socket write while holding the
// session lock), and the keepalive pings the target when the connection is idle.
type conn struct {
	s      *Session
	nc     net.Conn
	params Params
	id     uint64 // for logs: 1 for the first login, +1 per reconnect

	expStatSN atomic.Uint32 // written by the reader, read by the writer
	lastRecv  atomic.Int64  // unix nanoseconds of the last PDU received

	qmu   sync.Mutex
	qcond *sync.Cond
	queue []outItem
	dead  bool

	failOnce sync.Once
	done     chan struct{} // closed when the connection has failed
	err      error         // why; set before done is closed
}

// outItem is one entry of the send queue.
type outItem struct {
	pdu *pdu // control PDU or SCSI Command header
	// For a SCSI Command, the task whose first immLen bytes go along as immediate data;
	// for a Data-Out sequence, the task whose data is sent.
	task   *task
	itt    uint32
	immLen uint32
	seq    *dataSeq
}

// dataSeq is a Data-Out sequence: unsolicited (ttt reserved) or answering one R2T.
type dataSeq struct {
	ttt, off, n uint32
}

func newConn(s *Session, nc net.Conn, p Params, id uint64) *conn {
	c := &conn{s: s, nc: nc, params: p, id: id, done: make(chan struct{})}
	c.qcond = sync.NewCond(&c.qmu)
	c.lastRecv.Store(time.Now().UnixNano())
	return c
}

func (c *conn) start() {
	c.s.wg.Add(3)
	go func() { defer c.s.wg.Done(); c.readLoop() }()
	go func() { defer c.s.wg.Done(); c.writeLoop() }()
	go func() { defer c.s.wg.Done(); c.keepalive() }()
}

func (c *conn) enqueue(it outItem) {
	c.qmu.Lock()
	if !c.dead {
		c.queue = append(c.queue, it)
		c.qcond.Signal()
	}
	c.qmu.Unlock()
}

// fail tears the connection down once and hands its tasks back to the session.
func (c *conn) fail(err error) {
	c.failOnce.Do(func() {
		c.err = err
		c.nc.Close()
		c.qmu.Lock()
		c.dead = true
		c.queue = nil
		c.qcond.Broadcast()
		c.qmu.Unlock()
		close(c.done)
		c.s.connLost(c, err)
	})
}

// writeLoop sends queued PDUs. It batches through a buffered writer and flushes when
// the queue runs empty, so a burst of small PDUs costs one syscall.
func (c *conn) writeLoop() {
	bw := bufio.NewWriterSize(c.nc, 256<<10)
	for {
		c.qmu.Lock()
		for len(c.queue) == 0 && !c.dead && bw.Buffered() == 0 {
			c.qcond.Wait()
		}
		if c.dead {
			c.qmu.Unlock()
			return
		}
		if len(c.queue) == 0 {
			c.qmu.Unlock()
			if err := c.flush(bw); err != nil {
				c.fail(fmt.Errorf("write: %w", err))
				return
			}
			continue
		}
		it := c.queue[0]
		c.queue[0] = outItem{}
		c.queue = c.queue[1:]
		c.qmu.Unlock()
		c.nc.SetWriteDeadline(time.Now().Add(c.s.opts.Timeout))
		if err := c.writeItem(bw, it); err != nil {
			c.fail(fmt.Errorf("write: %w", err))
			return
		}
	}
}

func (c *conn) flush(bw *bufio.Writer) error {
	c.nc.SetWriteDeadline(time.Now().Add(c.s.opts.Timeout))
	return bw.Flush()
}

func writePDU(w io.Writer, p *pdu, data []byte) error {
	p.bhs[4] = byte(len(p.ahs) / 4)
	p.setDataLen(len(data))
	if _, err := w.Write(p.bhs[:]); err != nil {
		return err
	}
	if len(p.ahs) > 0 {
		if _, err := w.Write(p.ahs); err != nil {
			return err
		}
	}
	if len(data) > 0 {
		if _, err := w.Write(data); err != nil {
			return err
		}
		var pad [3]byte
		if k := pad4(len(data)); k > 0 {
			if _, err := w.Write(pad[:k]); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *conn) writeItem(w io.Writer, it outItem) error {
	switch {
	case it.seq != nil:
		return c.writeDataOut(w, it)
	case it.task != nil:
		// SCSI Command; the immediate data is read from the caller's buffer under the
		// task's buffer lock, which an abandoning caller takes before returning.
		t := it.task
		it.pdu.setU32(28, c.expStatSN.Load())
		t.bufMu.Lock()
		defer t.bufMu.Unlock()
		if t.cur.Load() != c {
			return nil // this connection is being torn down; the task moved on
		}
		var imm []byte
		if it.immLen > 0 {
			imm = t.data[:it.immLen]
		}
		return writePDU(w, it.pdu, imm)
	default:
		it.pdu.setU32(28, c.expStatSN.Load())
		return writePDU(w, it.pdu, it.pdu.data)
	}
}

// writeDataOut sends one Data-Out sequence in PDUs no larger than the target's
// MaxRecvDataSegmentLength, with DataSN counting from 0 within the sequence (RFC 7143
// section 11.7.5).
func (c *conn) writeDataOut(w io.Writer, it outItem) error {
	t, seq := it.task, it.seq
	mrdsl := c.params.TargetMaxRecvDataSegmentLength
	var dataSN uint32
	for done := uint32(0); done < seq.n; dataSN++ {
		n := min(mrdsl, seq.n-done)
		p := &pdu{}
		p.bhs[0] = byte(opDataOut)
		if done+n == seq.n {
			p.bhs[1] = flagFinal
		}
		p.setLUN(t.lun)
		p.setU32(16, it.itt)
		p.setU32(20, seq.ttt)
		p.setU32(28, c.expStatSN.Load())
		p.setU32(36, dataSN)
		p.setU32(40, seq.off+done)
		t.bufMu.Lock()
		if t.cur.Load() != c {
			// Completed (the target may end a command before taking all its data) or
			// moved to another connection: send nothing more from this buffer.
			t.bufMu.Unlock()
			return nil
		}
		err := writePDU(w, p, t.data[seq.off+done:seq.off+done+n])
		t.bufMu.Unlock()
		if err != nil {
			return err
		}
		done += n
	}
	return nil
}

// readLoop reads and dispatches target PDUs until the connection fails.
func (c *conn) readLoop() {
	br := bufio.NewReaderSize(c.nc, 256<<10)
	for {
		var h pdu
		if err := readHeader(br, &h); err != nil {
			if errors.Is(err, errNotPDU) {
				err = fmt.Errorf("%w: %v", ErrProtocol, err)
			}
			c.fail(fmt.Errorf("read: %w", err))
			return
		}
		c.lastRecv.Store(time.Now().UnixNano())
		if err := c.dispatch(br, &h); err != nil {
			c.fail(err)
			return
		}
	}
}

var errStale = errors.New("connection replaced")

func (c *conn) dispatch(br *bufio.Reader, h *pdu) error {
	s := c.s
	if h.op() == opDataIn {
		return c.onDataIn(br, h)
	}
	n := h.dataLen()
	limit := max(int(c.params.MaxRecvDataSegmentLength), 1<<16)
	if n > limit {
		return fmt.Errorf("%w: %v with a %d-byte data segment (we accept %d)", ErrProtocol, h.op(), n, limit)
	}
	if n > 0 {
		h.data = make([]byte, n)
		if err := readData(br, h.data, n); err != nil {
			return fmt.Errorf("read: %w", err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c != c {
		return errStale
	}
	switch h.op() {
	case opSCSIResp:
		return s.onResponseLocked(c, h)
	case opR2T:
		return s.onR2TLocked(c, h)
	case opNOPIn:
		return s.onNOPInLocked(c, h)
	case opLogoutResp:
		s.statSNLocked(c, h.statSN(), true)
		s.windowLocked(h.expCmdSN(), h.maxCmdSN())
		if ch, ok := s.pings[h.itt()]; ok {
			delete(s.pings, h.itt())
			ch <- nil
		}
		return nil
	case opTextResp, opTaskResp:
		s.statSNLocked(c, h.statSN(), true)
		s.windowLocked(h.expCmdSN(), h.maxCmdSN())
		return nil
	case opAsync:
		return s.onAsyncLocked(c, h)
	case opReject:
		return s.onRejectLocked(c, h)
	}
	return fmt.Errorf("%w: unexpected %v", ErrProtocol, h.op())
}

// onDataIn places read data straight into the caller's buffer.
func (c *conn) onDataIn(br *bufio.Reader, h *pdu) error {
	s := c.s
	d, err := decodeDataIn(h)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	n := h.dataLen()
	itt := h.itt()
	s.mu.Lock()
	if s.c != c {
		s.mu.Unlock()
		return errStale
	}
	t := s.tasks[itt]
	if t != nil && (t.dir != scsi.In || uint64(d.offset)+uint64(n) > uint64(t.edtl)) {
		s.mu.Unlock()
		return fmt.Errorf("%w: Data-In of %d bytes at %d for a %v command expecting %d", ErrProtocol, n, d.offset, t.dir, t.edtl)
	}
	s.windowLocked(h.expCmdSN(), h.maxCmdSN())
	s.mu.Unlock()

	if t == nil {
		err = readData(br, nil, n) // the command was abandoned and is gone
	} else {
		t.bufMu.Lock()
		var dst []byte
		if t.data != nil && t.cur.Load() == c {
			dst = t.data[d.offset : d.offset+uint32(n)]
		}
		err = readData(br, dst, n)
		t.bufMu.Unlock()
	}
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !d.hasStatus {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c != c {
		return errStale
	}
	s.statSNLocked(c, h.statSN(), true)
	if t != nil && s.tasks[itt] == t {
		delete(s.tasks, itt)
		s.finishLocked(t, scsi.Result{Status: scsi.Status(d.status), Residual: d.residual}, nil)
	}
	return nil
}

// keepalive pings the target with NOP-Out when nothing arrived for KeepaliveInterval;
// no NOP-In within Timeout means the connection is dead (a half-open TCP connection
// would otherwise hang every command until the kernel gives up, which takes minutes).
func (c *conn) keepalive() {
	iv := c.s.opts.KeepaliveInterval
	if iv <= 0 {
		return
	}
	tick := time.NewTicker(max(iv/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-tick.C:
		}
		if time.Since(time.Unix(0, c.lastRecv.Load())) < iv {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.s.opts.Timeout)
		err := c.s.pingOn(ctx, c, nil)
		cancel()
		if err != nil {
			select {
			case <-c.done:
				return
			default:
			}
			c.s.log.Warn("iscsi: keepalive failed", "target", c.s.u.Target, "conn", c.id, "err", err)
			c.fail(fmt.Errorf("keepalive: %w", err))
			return
		}
	}
}
