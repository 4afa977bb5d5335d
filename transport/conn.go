package transport

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

const (
	frameMagic = 0x42524550 // "BREP"
	headerSize = 12
	// MaxPayload bounds one message: a 32 MiB write plus its fixed fields.
	MaxPayload = 32<<20 + 4096
	bufSize    = 256 << 10
)

// ErrProtocol wraps every violation of the wire protocol by the peer.
var ErrProtocol = errors.New("protocol error")

func protoErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, a...))
}

// Conn is one framed, authenticated connection to a peer. Its write side is the link's
// one outbox: every message to the peer — data, acknowledgements, control — is queued
// in one order, by any goroutine, without blocking on the socket. Queued messages leave
// when a goroutine that may block calls FlushOut (the write path does, before it waits
// for input or anything else), or, for Post, by the link's own writer goroutine, so a
// goroutine that must never block on the peer (a receive loop, the control plane) can
// still send in order.
type Conn struct {
	nc net.Conn
	r  *bufio.Reader

	omu   sync.Mutex // guards the queue below
	queue net.Buffers
	cur   []byte   // the owned chunk being filled; joins queue at a borrow or a flush
	owned [][]byte // owned chunks in queue, reused once written
	spare []byte
	hdr   [headerSize + DataSize]byte
	werr  error
	since time.Time // when the oldest unsent message was queued (zero: none)

	wmu   sync.Mutex // serializes socket writes
	kick  chan struct{}
	quit  chan struct{}
	qonce sync.Once

	rhdr [headerSize]byte
	rbuf []byte

	// sent and received count bytes framed and read (status --statistics).
	sent, received atomic.Int64

	// Peer identity established by the hello exchange.
	PeerID   int
	LocalID  int
	Resource string
}

// borrowMin is the payload size from which Queue references the caller's buffer instead
// of copying it; the caller flushes before reusing it (QueueData does it at once).
const borrowMin = 64 << 10

func newConn(nc net.Conn) *Conn {
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
		tc.SetKeepAlive(true)
		tc.SetKeepAlivePeriod(15 * time.Second)
	}
	c := &Conn{nc: nc, r: bufio.NewReaderSize(nc, bufSize), kick: make(chan struct{}, 1), quit: make(chan struct{}),
		cur: make([]byte, 0, bufSize), spare: make([]byte, 0, bufSize)}
	go c.writer()
	watch(c)
	return c
}

// writer sends what Post queued.
func (c *Conn) writer() {
	for {
		select {
		case <-c.kick:
			if c.Flush(); c.failed() {
				return
			}
		case <-c.quit:
			return
		}
	}
}

func (c *Conn) failed() bool {
	c.omu.Lock()
	defer c.omu.Unlock()
	return c.werr != nil
}

// SetBuffers sets the kernel socket buffer sizes (0 leaves the kernel's autotuning).
func (c *Conn) SetBuffers(snd, rcv int) {
	nc := c.nc
	if w, ok := nc.(interface{ NetConn() net.Conn }); ok { // TLS: the socket under it
		nc = w.NetConn()
	}
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return
	}
	if snd > 0 {
		tc.SetWriteBuffer(snd)
	}
	if rcv > 0 {
		tc.SetReadBuffer(rcv)
	}
}

// Traffic returns the bytes queued for sending and read on this connection so far,
// frame headers included.
func (c *Conn) Traffic() (sent, received int64) { return c.sent.Load(), c.received.Load() }

// NetConn returns the underlying connection.
func (c *Conn) NetConn() net.Conn { return c.nc }

// Close closes the connection; blocked readers and writers return errors.
func (c *Conn) Close() error {
	c.qonce.Do(func() { close(c.quit) })
	unwatch(c)
	return c.nc.Close()
}

// CloseAfter sends what is queued (waiting at most d for the peer to take it), then
// closes, without blocking the caller.
func (c *Conn) CloseAfter(d time.Duration) {
	go func() {
		c.nc.SetWriteDeadline(time.Now().Add(d))
		c.Flush()
		c.Close()
	}()
}

// SetReadDeadline bounds the next reads.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.nc.SetReadDeadline(t) }

// Buffered reports whether a whole message is already buffered, so that the next
// ReadMsg will not block: while it is, a reader defers flushing its outputs. Part of a
// message does not count, or acknowledgements would wait for the rest to arrive.
func (c *Conn) Buffered() bool {
	n := c.r.Buffered()
	if n < headerSize {
		return false
	}
	h, _ := c.r.Peek(headerSize) // buffered already: does not read
	return n-headerSize >= int(binary.BigEndian.Uint32(h[8:]))
}

// ReadMsg reads the next message. The payload aliases an internal buffer that the next
// ReadMsg reuses. Only one goroutine may read.
func (c *Conn) ReadMsg() (MsgType, []byte, error) { return c.readMsgMax(MaxPayload) }

// readMsgMax is ReadMsg with a smaller bound on the payload.
func (c *Conn) readMsgMax(max uint32) (MsgType, []byte, error) {
	if _, err := io.ReadFull(c.r, c.rhdr[:]); err != nil {
		return 0, nil, err
	}
	if m := binary.BigEndian.Uint32(c.rhdr[0:]); m != frameMagic {
		return 0, nil, protoErr("bad frame magic %#x", m)
	}
	t := MsgType(binary.BigEndian.Uint16(c.rhdr[4:]))
	n := binary.BigEndian.Uint32(c.rhdr[8:])
	if n > max {
		return 0, nil, protoErr("%s payload of %d bytes exceeds %d", t, n, max)
	}
	if int(n) > cap(c.rbuf) {
		c.rbuf = make([]byte, n)
	}
	p := c.rbuf[:n]
	if _, err := io.ReadFull(c.r, p); err != nil {
		return 0, nil, err
	}
	c.received.Add(int64(headerSize + n))
	return t, p, nil
}

// frame appends a message header to the current chunk. omu held.
func (c *Conn) frame(t MsgType, n int) {
	binary.BigEndian.PutUint32(c.hdr[0:], frameMagic)
	binary.BigEndian.PutUint16(c.hdr[4:], uint16(t))
	binary.BigEndian.PutUint16(c.hdr[6:], 0)
	binary.BigEndian.PutUint32(c.hdr[8:], uint32(n))
	c.cur = append(c.cur, c.hdr[:headerSize]...)
	c.sent.Add(int64(headerSize + n))
	if c.since.IsZero() {
		c.since = time.Now()
	}
}

// payload appends data: copied if small, else borrowed (the chunk so far and the data
// become separate segments). omu held.
func (c *Conn) payload(data []byte) {
	if len(data) < borrowMin {
		c.cur = append(c.cur, data...)
		return
	}
	c.queue = append(c.queue, c.cur, data)
	c.owned = append(c.owned, c.cur)
	c.cur = c.spare[:0]
	c.spare = nil
}

// Queue adds one message made of a fixed part and optional data. Data of 64 KiB or more
// is borrowed, not copied: the caller must FlushOut before reusing it.
func (c *Conn) Queue(t MsgType, fixed, data []byte) error {
	n := len(fixed) + len(data)
	if n > MaxPayload {
		return fmt.Errorf("%s payload of %d bytes exceeds %d", t, n, MaxPayload)
	}
	c.omu.Lock()
	defer c.omu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	c.frame(t, n)
	c.cur = append(c.cur, fixed...)
	c.payload(data)
	return nil
}

// QueueData adds a data message (Write, Trim, Zero, RSData, ...) without allocating.
// A payload of 64 KiB or more is sent at once (the peer starts on it while we write
// locally, and the borrowed buffer is free when this returns).
func (c *Conn) QueueData(t MsgType, d *Data, payload []byte) error {
	c.omu.Lock()
	if c.werr != nil {
		err := c.werr
		c.omu.Unlock()
		return err
	}
	c.frame(t, DataSize+len(payload))
	d.Put(c.hdr[headerSize:])
	c.cur = append(c.cur, c.hdr[headerSize:headerSize+DataSize]...)
	c.payload(payload)
	c.omu.Unlock()
	if len(payload) >= borrowMin {
		return c.Flush()
	}
	return nil
}

// QueueAck adds an acknowledgement without allocating.
func (c *Conn) QueueAck(t MsgType, a *Ack) error {
	c.omu.Lock()
	defer c.omu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	c.frame(t, AckSize)
	a.Put(c.hdr[headerSize:])
	c.cur = append(c.cur, c.hdr[headerSize:headerSize+AckSize]...)
	return nil
}

// Post queues a message and has the link's writer send it: for goroutines that must not
// block on the peer. Order with every other queued message is kept.
func (c *Conn) Post(t MsgType, payload []byte) error {
	if err := c.Queue(t, payload, nil); err != nil {
		return err
	}
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return nil
}

// Send queues one message and flushes: for the handshake and other blocking callers.
func (c *Conn) Send(t MsgType, fixed, data []byte) error {
	if err := c.Queue(t, fixed, data); err != nil {
		return err
	}
	return c.Flush()
}

// FlushOut is Flush for a blockrep.Batch: errors surface at the next write or read.
func (c *Conn) FlushOut() { c.Flush() }

// Flush writes out everything queued so far (by any goroutine) and returns the link's
// error, if any. It may block on the socket.
func (c *Conn) Flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.omu.Lock()
	if c.werr != nil {
		err := c.werr
		c.omu.Unlock()
		return err
	}
	if len(c.cur) > 0 {
		c.queue = append(c.queue, c.cur)
		c.owned = append(c.owned, c.cur)
		c.cur = c.spare[:0]
		c.spare = nil
	}
	q, owned := c.queue, c.owned
	c.queue, c.owned = nil, nil
	c.since = time.Time{}
	c.omu.Unlock()
	if len(q) == 0 {
		return nil
	}
	_, err := q.WriteTo(c.nc)
	c.omu.Lock()
	if err != nil && c.werr == nil {
		c.werr = err
	}
	// Written chunks are free again: one becomes the spare, one the next chunk.
	for _, b := range owned {
		switch {
		case c.spare == nil:
			c.spare = b[:0]
		case c.cur == nil:
			c.cur = b[:0]
		}
	}
	c.omu.Unlock()
	return err
}

// Unsent reports how long the oldest queued message has waited (0: nothing queued). A
// test helper uses it to catch a goroutine that blocked with output it never sent.
func (c *Conn) Unsent() time.Duration {
	c.omu.Lock()
	defer c.omu.Unlock()
	if c.since.IsZero() || c.werr != nil {
		return 0
	}
	return time.Since(c.since)
}
