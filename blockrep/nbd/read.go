package nbd

import (
	"time"

	"github.com/blockrep/blockrep/blockrep"
)

// READs run inline in the connection's goroutine: from the page cache that is the
// fastest way. Reads that miss (disk seeks, or a diskless node reading from its peer)
// would then hold up every request behind them and leave the device at queue depth 1,
// so once reads are slow, they are handed to a few per-connection workers until none
// has been slow for offloadWindow. A single slow read proves nothing (the goroutine may
// just have been preempted), so inline reads feed a leaky score: +slowCost when slow,
// -1 when fast; offloading starts at 2*slowCost, i.e. after two slow reads in a row or
// when more than a fifth of them are slow.
const (
	slowRead       = 50 * time.Microsecond // plus 1 ns per byte: slower than any cache hit
	slowCost       = 4
	offloadWindow  = 2 * time.Millisecond
	maxReadWorkers = 16
)

type readJob struct {
	h, off  uint64
	n       uint32
	arrived time.Time
}

func (c *conn) read(h uint64, flags uint16, off uint64, n uint32) {
	switch {
	case c.badFlags(cmdRead, flags):
		c.refuse(cmdRead, h, off, n, errInval, "invalid flags for READ")
		return
	case int64(n) > int64(c.maxReq):
		if flags&cmdFlagDF != 0 { // the one case proto.md documents EOVERFLOW for
			c.refuse(cmdRead, h, off, n, errOverflow, "READ too large to send unfragmented")
		} else {
			c.refuse(cmdRead, h, off, n, errInval, "READ longer than the maximum block size")
		}
		return
	case !c.inRange(off, n):
		c.refuse(cmdRead, h, off, n, errInval, "READ beyond the end of the export")
		return
	}
	start := time.Now()
	if start.UnixNano() < c.slowUntil.Load() {
		c.offload(readJob{h, off, n, start})
		return
	}
	if cap(c.rbuf) < int(n) {
		c.rbuf = make([]byte, max(int(n), 64<<10))
	}
	c.serveRead(c.rbuf[:n], h, off, &c.batch, false, start)
	if d := time.Since(start); d > slowRead+time.Duration(n) {
		if c.slowScore += slowCost; c.slowScore >= 2*slowCost {
			c.slowScore = 0
			c.slowUntil.Store(start.Add(d + offloadWindow).UnixNano())
		}
	} else if c.slowScore > 0 {
		c.slowScore--
	}
}

// serveRead reads into buf and answers into b; async reads also leave the in-flight
// count. The backend is called without mu, the reply is written under it. arrived is
// when the request was read, for the Observer.
func (c *conn) serveRead(buf []byte, h, off uint64, b *blockrep.Batch, async bool, arrived time.Time) {
	var errno uint32
	var msg string
	if len(buf) > 0 {
		if err := c.be.ReadAt(buf, int64(off)); err != nil {
			errno = errnoOf(err, false)
			msg = err.Error()
			c.logErr("read", int64(off), int64(len(buf)), errno, err)
		}
	}
	c.mu.Lock()
	switch {
	case errno != 0:
		c.putReply(h, errno, msg)
	case !c.structured:
		hdr := c.scratch[:16]
		be.PutUint32(hdr[0:], simpleReplyMagic)
		be.PutUint32(hdr[4:], 0)
		be.PutUint64(hdr[8:], h)
		c.putData(hdr, buf)
	case len(buf) == 0:
		hdr := c.scratch[:20]
		c.putChunkHeader(hdr, replyFlagDone, replyTypeNone, h, 0)
		c.putData(hdr, nil)
	default:
		hdr := c.scratch[:28]
		c.putChunkHeader(hdr, replyFlagDone, replyTypeOffsetData, h, 8+uint32(len(buf)))
		be.PutUint64(hdr[20:], off)
		c.putData(hdr, buf)
	}
	if async {
		c.inflight--
		if c.inflight == 0 && c.draining {
			c.idle.Broadcast()
		}
	}
	c.mu.Unlock()
	if o := c.s.Observer; o != nil {
		o.Observe(KindRead, int64(len(buf)), time.Since(arrived), errno != 0)
	}
	b.Add(c)
}

// putData writes a reply header and its payload (mu held).
func (c *conn) putData(hdr, data []byte) {
	c.bw.Write(hdr)
	if _, err := c.bw.Write(data); err != nil {
		c.fail()
	}
}

// offload queues a read for the workers, starting one more while all are busy.
func (c *conn) offload(j readJob) {
	c.mu.Lock()
	c.inflight++
	c.mu.Unlock()
	if c.readQ == nil {
		c.readQ = make(chan readJob, 2*maxReadWorkers)
	}
	if c.workers < maxReadWorkers && (c.workers == 0 || len(c.readQ) > 0) {
		c.workers++
		go c.readWorker()
	}
	c.readQ <- j
}

func (c *conn) readWorker() {
	var b blockrep.Batch
	var buf []byte
	for j := range c.readQ {
		if cap(buf) < int(j.n) {
			buf = make([]byte, max(int(j.n), 64<<10))
		}
		start := time.Now()
		c.serveRead(buf[:j.n], j.h, j.off, &b, true, j.arrived)
		if d := time.Since(start); d > slowRead+time.Duration(j.n) {
			c.slowUntil.Store(start.Add(d + offloadWindow).UnixNano()) // still slow: stay
		}
		if len(c.readQ) == 0 {
			b.Flush() // like the reader: flush once there is nothing more to do
		}
	}
	b.Flush()
}

// stopReadWorkers lets the workers finish what is queued and exit (reader only).
func (c *conn) stopReadWorkers() {
	if c.readQ != nil {
		close(c.readQ)
	}
}
