package transport

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
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

// Conn is one framed, authenticated connection to a peer.
type Conn struct {
	nc net.Conn
	r  *bufio.Reader

	wmu  sync.Mutex
	w    *bufio.Writer
	whdr [headerSize + DataSize]byte
	werr error

	rhdr [headerSize]byte
	rbuf []byte

	// Peer identity established by the hello exchange.
	PeerID   int
	LocalID  int
	Resource string
}

func newConn(nc net.Conn) *Conn {
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
		tc.SetKeepAlive(true)
		tc.SetKeepAlivePeriod(15 * time.Second)
	}
	return &Conn{nc: nc, r: bufio.NewReaderSize(nc, bufSize), w: bufio.NewWriterSize(nc, bufSize)}
}

// SetBuffers sets the kernel socket buffer sizes (0 leaves the kernel's autotuning).
func (c *Conn) SetBuffers(snd, rcv int) {
	tc, ok := c.nc.(*net.TCPConn)
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

// NetConn returns the underlying connection.
func (c *Conn) NetConn() net.Conn { return c.nc }

// Close closes the connection; blocked readers and writers return errors.
func (c *Conn) Close() error { return c.nc.Close() }

// SetReadDeadline bounds the next reads (the engine's ping timeout).
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
func (c *Conn) ReadMsg() (MsgType, []byte, error) {
	if _, err := io.ReadFull(c.r, c.rhdr[:]); err != nil {
		return 0, nil, err
	}
	if m := binary.BigEndian.Uint32(c.rhdr[0:]); m != frameMagic {
		return 0, nil, protoErr("bad frame magic %#x", m)
	}
	t := MsgType(binary.BigEndian.Uint16(c.rhdr[4:]))
	n := binary.BigEndian.Uint32(c.rhdr[8:])
	if n > MaxPayload {
		return 0, nil, protoErr("%s payload of %d bytes exceeds %d", t, n, MaxPayload)
	}
	if int(n) > cap(c.rbuf) {
		c.rbuf = make([]byte, n)
	}
	p := c.rbuf[:n]
	if _, err := io.ReadFull(c.r, p); err != nil {
		return 0, nil, err
	}
	return t, p, nil
}

// Lock takes the write lock; WriteLocked and FlushLocked need it held.
func (c *Conn) Lock()   { c.wmu.Lock() }
func (c *Conn) Unlock() { c.wmu.Unlock() }

// WriteLocked buffers one message made of a fixed part and optional data. Large data is
// written through without copying.
func (c *Conn) WriteLocked(t MsgType, fixed, data []byte) error {
	if c.werr != nil {
		return c.werr
	}
	n := len(fixed) + len(data)
	if n > MaxPayload {
		return fmt.Errorf("%s payload of %d bytes exceeds %d", t, n, MaxPayload)
	}
	binary.BigEndian.PutUint32(c.whdr[0:], frameMagic)
	binary.BigEndian.PutUint16(c.whdr[4:], uint16(t))
	binary.BigEndian.PutUint16(c.whdr[6:], 0)
	binary.BigEndian.PutUint32(c.whdr[8:], uint32(n))
	c.w.Write(c.whdr[:headerSize])
	c.w.Write(fixed)
	_, err := c.w.Write(data)
	if err != nil {
		c.werr = err
	}
	return err
}

// WriteDataLocked buffers a data message (Write, Trim, Zero, RSData) without allocating.
// Payloads of 64 KiB or more are flushed at once so the peer starts on them while we
// write locally.
func (c *Conn) WriteDataLocked(t MsgType, d *Data, payload []byte) error {
	if c.werr != nil {
		return c.werr
	}
	n := DataSize + len(payload)
	binary.BigEndian.PutUint32(c.whdr[0:], frameMagic)
	binary.BigEndian.PutUint16(c.whdr[4:], uint16(t))
	binary.BigEndian.PutUint16(c.whdr[6:], 0)
	binary.BigEndian.PutUint32(c.whdr[8:], uint32(n))
	d.Put(c.whdr[headerSize:])
	c.w.Write(c.whdr[:headerSize+DataSize])
	_, err := c.w.Write(payload)
	if err == nil && len(payload) >= 64<<10 {
		err = c.w.Flush()
	}
	if err != nil {
		c.werr = err
	}
	return err
}

// WriteAckLocked buffers an acknowledgement without allocating.
func (c *Conn) WriteAckLocked(t MsgType, a *Ack) error {
	if c.werr != nil {
		return c.werr
	}
	binary.BigEndian.PutUint32(c.whdr[0:], frameMagic)
	binary.BigEndian.PutUint16(c.whdr[4:], uint16(t))
	binary.BigEndian.PutUint16(c.whdr[6:], 0)
	binary.BigEndian.PutUint32(c.whdr[8:], AckSize)
	a.Put(c.whdr[headerSize:])
	_, err := c.w.Write(c.whdr[:headerSize+AckSize])
	if err != nil {
		c.werr = err
	}
	return err
}

// FlushLocked writes out buffered messages.
func (c *Conn) FlushLocked() error {
	if c.werr != nil {
		return c.werr
	}
	if err := c.w.Flush(); err != nil {
		c.werr = err
		return err
	}
	return nil
}

// Send writes one message and flushes it: for control messages off the hot path.
func (c *Conn) Send(t MsgType, fixed, data []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.WriteLocked(t, fixed, data); err != nil {
		return err
	}
	return c.FlushLocked()
}

// FlushOut implements blockrep.Flusher: errors surface at the next write or read.
func (c *Conn) FlushOut() {
	c.wmu.Lock()
	c.FlushLocked()
	c.wmu.Unlock()
}
