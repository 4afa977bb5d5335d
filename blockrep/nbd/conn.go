package nbd

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blockrep/blockrep/blockrep"
)

const (
	bufSize = 256 << 10
	// drainTimeout bounds how long a dropped or departing client may take to accept
	// the replies to its in-flight requests.
	drainTimeout = 30 * time.Second
	// errBurst is the window in which only the first request error is logged.
	errBurst = 10 * time.Second
)

// conn is one client. The reading goroutine owns everything above mu; completions may
// arrive from any goroutine and only touch what mu guards.
type conn struct {
	s   *Server
	nc  net.Conn
	log *slog.Logger
	br  *bufio.Reader

	tls   TLSPolicy // what STARTTLS offers on this connection
	tlsOn bool      // the connection runs over TLS

	// Set by the handshake (transmitting and name are guarded by s.mu).
	fixed, noZeroes bool
	structured      bool
	meta            bool   // base:allocation selected
	metaExport      string // export name it was selected for
	opt             []byte
	transmitting    bool
	name            string

	be      blockrep.Backend
	mapper  blockrep.ExtentMapper
	size    uint64
	tflags  uint16
	maxReq  int
	discard int // larger WRITE payloads are dropped with the connection, smaller skipped

	batch    blockrep.Batch
	rbuf     []byte   // READ data
	wbuf     []byte   // WRITE payloads that do not fit br
	ext      []uint32 // BLOCK_STATUS descriptors
	extEnd   uint64   // reported so far
	extLimit uint64
	extOne   bool
	extFn    func(off, n int64, hole bool) bool
	dropping atomic.Bool

	// Slow reads (read.go).
	slowUntil atomic.Int64 // unix ns; READs go to the workers until then
	slowScore int
	readQ     chan readJob
	workers   int

	mu       sync.Mutex
	bw       *bufio.Writer
	flushes  atomic.Uint64 // for the unsent-output watch
	scratch  [32]byte
	free     []*blockrep.Request
	inflight int
	draining bool
	idle     sync.Cond
	failed   bool // reply stream broken; the connection is being torn down

	errMu      sync.Mutex
	errLast    time.Time
	errSkipped int
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{
		s:   s,
		nc:  nc,
		log: s.logger().With("remote", remoteAddr(nc)),
		br:  bufio.NewReaderSize(nc, bufSize),
		bw:  bufio.NewWriterSize(nc, bufSize),
	}
	c.idle.L = &c.mu
	c.extFn = c.addExtent
	c.maxReq = s.maxRequest()
	c.discard = max(c.maxReq, DefaultMaxRequest)
	return c
}

func remoteAddr(nc net.Conn) string {
	if a := nc.RemoteAddr(); a != nil && a.String() != "" {
		return a.String()
	}
	return "local"
}

func (c *conn) setExport(exp *Export, requested string) {
	if c.metaExport != requested {
		c.meta = false // contexts were selected for another export
	}
	c.be = exp.Backend
	c.mapper, _ = exp.Backend.(blockrep.ExtentMapper)
	c.size = uint64(exp.Backend.Size())
	c.tflags = transmissionFlags(exp.Backend.Caps(), c.structured)
	c.opt = nil
	c.log = c.log.With("export", canonical(exp, requested))
}

func (c *conn) serve() {
	if err := c.negotiate(); err != nil {
		if err != errHangUp && !isClosed(err) {
			c.log.Debug("nbd: handshake ended", "err", err)
		}
		c.nc.Close()
		return
	}
	c.log.Debug("nbd: client attached", "structured", c.structured)
	// Watched from the transmission phase on: replies are written under mu from here.
	watch(c)
	defer unwatch(c)
	disc, err := c.transmit()
	switch {
	case disc:
		c.log.Debug("nbd: client disconnected")
	case c.dropping.Load():
		c.log.Info("nbd: client dropped")
	case err != nil && !isClosed(err):
		c.log.Info("nbd: connection ended", "err", err)
	}
	c.finish()
}

func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, io.ErrClosedPipe) || errors.Is(err, io.ErrUnexpectedEOF)
}

// drop makes the client go away (the caller holds s.mu): in the option phase at once,
// in the transmission phase after its in-flight requests are answered.
func (c *conn) drop() {
	if !c.transmitting {
		c.nc.Close()
		return
	}
	c.dropping.Store(true)
	c.nc.SetReadDeadline(time.Unix(1, 0)) // wakes the reader
	c.nc.SetWriteDeadline(time.Now().Add(drainTimeout))
}

// finish waits for in-flight requests, sends what replies it can and closes.
func (c *conn) finish() {
	c.stopReadWorkers()
	c.batch.Flush()
	c.nc.SetWriteDeadline(time.Now().Add(drainTimeout))
	c.mu.Lock()
	c.draining = true
	for c.inflight > 0 {
		c.idle.Wait()
	}
	c.bw.Flush()
	c.mu.Unlock()
	c.nc.Close()
	c.errMu.Lock()
	if c.errSkipped > 0 {
		c.log.Warn("nbd: further request errors were not logged", "count", c.errSkipped)
	}
	c.errMu.Unlock()
}

// fail tears the connection down after a reply could not be written (mu held).
func (c *conn) fail() {
	if !c.failed {
		c.failed = true
		c.nc.Close() // the reader stops at its next read
	}
}

// FlushOut sends buffered replies; a Batch calls it once its goroutine's input drained.
func (c *conn) FlushOut() {
	c.flushes.Add(1)
	c.mu.Lock()
	if c.bw.Flush() != nil {
		c.fail()
	}
	c.mu.Unlock()
}

// Complete answers a write-class request; any goroutine may call it.
func (c *conn) Complete(r *blockrep.Request, err error, b *blockrep.Batch) {
	h := r.Handle
	if o := c.s.Observer; o != nil {
		o.Observe(kindOf(r.Op), r.Len, time.Since(epoch)-time.Duration(r.Arrived), err != nil)
	}
	var errno uint32
	var msg string
	if err != nil {
		errno = errnoOf(err, r.Op == blockrep.OpZero && r.Flags&blockrep.FlagFastZero != 0)
		if c.structured {
			msg = err.Error()
		}
		c.logErr(r.Op.String(), r.Off, r.Len, errno, err)
	}
	r.Data = nil
	c.mu.Lock()
	c.putReply(h, errno, msg)
	c.free = append(c.free, r)
	c.inflight--
	if c.inflight == 0 && c.draining {
		c.idle.Broadcast()
	}
	c.mu.Unlock()
	if b != nil {
		b.Add(c)
	} else {
		c.FlushOut()
	}
}

// logErr logs the first request error of a burst and counts the rest.
func (c *conn) logErr(what string, off int64, n int64, errno uint32, err error) {
	now := time.Now()
	c.errMu.Lock()
	if now.Sub(c.errLast) < errBurst {
		c.errSkipped++
		c.errMu.Unlock()
		return
	}
	skipped := c.errSkipped
	c.errLast, c.errSkipped = now, 0
	c.errMu.Unlock()
	c.log.Warn("nbd: request failed", "cmd", what, "off", off, "len", n, "errno", errno,
		"err", err, "not_logged_before", skipped)
}

// putReply writes a reply without payload (mu held): simple on success, a structured
// error chunk carrying msg when structured replies were negotiated.
func (c *conn) putReply(h uint64, errno uint32, msg string) {
	var err error
	if errno == 0 || !c.structured {
		b := c.scratch[:16]
		be.PutUint32(b[0:], simpleReplyMagic)
		be.PutUint32(b[4:], errno)
		be.PutUint64(b[8:], h)
		_, err = c.bw.Write(b)
	} else {
		msg = truncate(msg)
		b := c.scratch[:26]
		c.putChunkHeader(b, replyFlagDone, replyTypeError, h, uint32(6+len(msg)))
		be.PutUint32(b[20:], errno)
		be.PutUint16(b[24:], uint16(len(msg)))
		c.bw.Write(b)
		_, err = c.bw.WriteString(msg)
	}
	if err != nil {
		c.fail()
	}
}

func (c *conn) putChunkHeader(b []byte, flags, typ uint16, h uint64, n uint32) {
	be.PutUint32(b[0:], chunkReplyMagic)
	be.PutUint16(b[4:], flags)
	be.PutUint16(b[6:], typ)
	be.PutUint64(b[8:], h)
	be.PutUint32(b[16:], n)
}

// reply answers a request from the reading goroutine.
func (c *conn) reply(h uint64, errno uint32, msg string) {
	c.mu.Lock()
	c.putReply(h, errno, msg)
	c.mu.Unlock()
	c.batch.Add(c)
}

// refuse answers a malformed or refused request, never reaching the backend.
func (c *conn) refuse(typ uint16, h, off uint64, n uint32, errno uint32, msg string) {
	c.logErr(cmdName(typ), int64(off), int64(n), errno, errors.New(msg))
	c.reply(h, errno, msg)
}

var _ blockrep.Completer = (*conn)(nil)
var _ blockrep.Flusher = (*conn)(nil)
