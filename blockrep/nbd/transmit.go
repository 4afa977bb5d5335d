package nbd

import (
	"fmt"
	"io"
	"time"

	"github.com/blockrep/blockrep/blockrep"
)

// transmit executes requests inline until the client sends NBD_CMD_DISC (disc), the
// connection fails or the client is dropped. Replies are buffered and flushed only
// when the next read would block, so one syscall carries many of them.
func (c *conn) transmit() (disc bool, err error) {
	for {
		if c.br.Buffered() < headerLen {
			c.batch.Flush() // about to block on input
		}
		hdr, err := c.br.Peek(headerLen)
		if c.dropping.Load() { // checked after the read: data can beat the deadline
			return false, nil
		}
		if err != nil {
			return false, err
		}
		magic := be.Uint32(hdr[0:])
		flags := be.Uint16(hdr[4:])
		typ := be.Uint16(hdr[6:])
		h := be.Uint64(hdr[8:])
		off := be.Uint64(hdr[16:])
		n := be.Uint32(hdr[24:])
		c.br.Discard(headerLen)
		if magic != requestMagic {
			// Framing is lost: nothing after this can be trusted.
			return false, fmt.Errorf("bad request magic %#x", magic)
		}
		switch typ {
		case cmdRead:
			c.read(h, flags, off, n)
		case cmdWrite:
			if err := c.write(h, flags, off, n); err != nil {
				return false, err
			}
		case cmdDisc:
			return true, nil
		case cmdFlush:
			c.flush(h, flags, off, n)
		case cmdTrim:
			c.trim(h, flags, off, n)
		case cmdWriteZeroes:
			c.writeZeroes(h, flags, off, n)
		case cmdCache:
			c.cache(h, flags, off, n)
		case cmdBlockStatus:
			c.blockStatus(h, flags, off, n)
		default:
			// Assumed to carry no payload; if it did, the next header's magic is wrong
			// and the connection is dropped.
			c.refuse(typ, h, off, n, errInval, "unknown command")
		}
	}
}

// badFlags reports flags proto.md does not allow for the command as negotiated.
func (c *conn) badFlags(typ, flags uint16) bool {
	var ok uint16
	if c.tflags&tfSendFUA != 0 {
		ok |= cmdFlagFUA // valid on every command once advertised
	}
	switch typ {
	case cmdRead:
		if c.tflags&tfSendDF != 0 {
			ok |= cmdFlagDF
		}
	case cmdWriteZeroes:
		ok |= cmdFlagNoHole
		if c.tflags&tfSendFastZero != 0 {
			ok |= cmdFlagFastZero
		}
	case cmdBlockStatus:
		ok |= cmdFlagReqOne
	}
	return flags&^ok != 0
}

func (c *conn) inRange(off uint64, n uint32) bool {
	return off <= c.size && uint64(n) <= c.size-off
}

func (c *conn) readOnly() bool { return c.tflags&tfReadOnly != 0 }

// write consumes the payload in every case that keeps the connection; an error return
// means the stream cannot be followed any more.
func (c *conn) write(h uint64, flags uint16, off uint64, n uint32) error {
	size := int(n)
	if size > c.maxReq {
		// proto.md: payloads under 32 MiB must not be treated as an attack.
		if size > c.discard {
			return fmt.Errorf("WRITE payload of %d bytes exceeds %d", n, c.discard)
		}
		if _, err := c.br.Discard(size); err != nil {
			return err
		}
		c.refuse(cmdWrite, h, off, n, errInval, "WRITE longer than the maximum block size")
		return nil
	}
	var errno uint32
	var msg string
	switch {
	case c.badFlags(cmdWrite, flags):
		errno, msg = errInval, "invalid flags for WRITE"
	case c.readOnly():
		errno, msg = errPerm, "the export is read-only"
	case !c.inRange(off, n):
		errno, msg = errNoSpc, "WRITE beyond the end of the export"
	}
	if errno != 0 {
		if _, err := c.br.Discard(size); err != nil {
			return err
		}
		c.refuse(cmdWrite, h, off, n, errno, msg)
		return nil
	}
	// A payload that fits the read buffer is handed over in place: the backend copies
	// it before Submit returns.
	var data []byte
	var err error
	if c.br.Buffered() < size {
		// The payload is still arriving: replies must not wait for it.
		c.batch.Flush()
	}
	inPlace := size <= c.br.Size()
	if inPlace {
		data, err = c.br.Peek(size)
	} else {
		if cap(c.wbuf) < size {
			c.wbuf = make([]byte, size)
		}
		data = c.wbuf[:size]
		_, err = io.ReadFull(c.br, data)
	}
	if err != nil {
		return err
	}
	if size == 0 {
		c.reply(h, 0, "") // nothing to write
	} else {
		rest := 0 // of this request, still in the read buffer
		if inPlace {
			rest = size
		}
		c.submit(blockrep.OpWrite, fuaOf(flags), off, n, data, h, rest)
	}
	if inPlace {
		c.br.Discard(size)
	}
	return nil
}

func fuaOf(flags uint16) blockrep.ReqFlags {
	if flags&cmdFlagFUA != 0 {
		return blockrep.FlagFUA
	}
	return 0
}

func (c *conn) flush(h uint64, flags uint16, off uint64, n uint32) {
	switch {
	case c.badFlags(cmdFlush, flags):
		c.refuse(cmdFlush, h, off, n, errInval, "invalid flags for FLUSH")
	case c.tflags&tfSendFlush == 0:
		c.refuse(cmdFlush, h, off, n, errInval, "FLUSH was not negotiated")
	case off != 0 || n != 0:
		c.refuse(cmdFlush, h, off, n, errInval, "FLUSH with nonzero offset or length")
	default:
		c.submit(blockrep.OpFlush, 0, 0, 0, nil, h, 0)
	}
}

func (c *conn) trim(h uint64, flags uint16, off uint64, n uint32) {
	switch {
	case c.badFlags(cmdTrim, flags):
		c.refuse(cmdTrim, h, off, n, errInval, "invalid flags for TRIM")
	case c.readOnly():
		c.refuse(cmdTrim, h, off, n, errPerm, "the export is read-only")
	case c.tflags&tfSendTrim == 0:
		c.refuse(cmdTrim, h, off, n, errInval, "TRIM was not negotiated")
	case !c.inRange(off, n):
		c.refuse(cmdTrim, h, off, n, errInval, "TRIM beyond the end of the export")
	case n == 0:
		c.reply(h, 0, "")
	default:
		c.submit(blockrep.OpTrim, fuaOf(flags), off, n, nil, h, 0)
	}
}

// writeZeroes, like TRIM and CACHE, is not bounded by MaxRequest: nothing is buffered
// for it, and nbdcopy 1.14 sends zeroes longer than the advertised maximum.
func (c *conn) writeZeroes(h uint64, flags uint16, off uint64, n uint32) {
	switch {
	case c.badFlags(cmdWriteZeroes, flags):
		c.refuse(cmdWriteZeroes, h, off, n, errInval, "invalid flags for WRITE_ZEROES")
	case c.readOnly():
		c.refuse(cmdWriteZeroes, h, off, n, errPerm, "the export is read-only")
	case c.tflags&tfSendWriteZeroes == 0:
		c.refuse(cmdWriteZeroes, h, off, n, errInval, "WRITE_ZEROES was not negotiated")
	case !c.inRange(off, n):
		c.refuse(cmdWriteZeroes, h, off, n, errNoSpc, "WRITE_ZEROES beyond the end of the export")
	case n == 0:
		c.reply(h, 0, "")
	default:
		fl := fuaOf(flags)
		if flags&cmdFlagNoHole != 0 {
			fl |= blockrep.FlagNoHole
		}
		if flags&cmdFlagFastZero != 0 {
			fl |= blockrep.FlagFastZero
		}
		c.submit(blockrep.OpZero, fl, off, n, nil, h, 0)
	}
}

// cache only validates: Backend has no readahead hook, and success promises nothing.
func (c *conn) cache(h uint64, flags uint16, off uint64, n uint32) {
	switch {
	case c.badFlags(cmdCache, flags):
		c.refuse(cmdCache, h, off, n, errInval, "invalid flags for CACHE")
	case !c.inRange(off, n):
		c.refuse(cmdCache, h, off, n, errInval, "CACHE beyond the end of the export")
	default:
		c.reply(h, 0, "")
	}
}

// submit hands one request to the backend; rest is how much of it (its payload) is
// still in the read buffer, so that Idle means "nothing else is queued behind it".
func (c *conn) submit(op blockrep.Op, fl blockrep.ReqFlags, off uint64, n uint32, data []byte, h uint64, rest int) {
	c.mu.Lock()
	var r *blockrep.Request
	if k := len(c.free); k > 0 {
		r = c.free[k-1]
		c.free = c.free[:k-1]
	}
	c.inflight++
	c.mu.Unlock()
	if r == nil {
		r = new(blockrep.Request) // only until the free list covers the queue depth
	}
	r.Op, r.Flags, r.Off, r.Len, r.Data, r.Handle, r.Owner = op, fl, int64(off), int64(n), data, h, c
	r.Idle = c.br.Buffered() == rest
	if c.s.Observer != nil {
		r.Arrived = int64(time.Since(epoch))
	}
	c.be.Submit(r, &c.batch)
}

func (c *conn) blockStatus(h uint64, flags uint16, off uint64, n uint32) {
	switch {
	case !c.meta:
		c.refuse(cmdBlockStatus, h, off, n, errInval, "no metadata context was negotiated")
		return
	case c.badFlags(cmdBlockStatus, flags):
		c.refuse(cmdBlockStatus, h, off, n, errInval, "invalid flags for BLOCK_STATUS")
		return
	case !c.inRange(off, n):
		c.refuse(cmdBlockStatus, h, off, n, errInval, "BLOCK_STATUS beyond the end of the export")
		return
	case n == 0:
		c.refuse(cmdBlockStatus, h, off, n, errInval, "BLOCK_STATUS of zero length")
		return
	}
	c.ext = c.ext[:0]
	c.extEnd, c.extLimit, c.extOne = off, off+uint64(n), flags&cmdFlagReqOne != 0
	var err error
	if c.mapper != nil {
		err = c.mapper.Extents(int64(off), int64(n), c.extFn)
	}
	if len(c.ext) == 0 {
		if err != nil {
			errno := errnoOf(err, false)
			c.logErr("block status", int64(off), int64(n), errno, err)
			c.reply(h, errno, err.Error())
			return
		}
		c.addExtent(int64(off), int64(n), false) // unknown: data is always a safe answer
	}
	// Fewer descriptors than the range needs are allowed; the client asks again.
	c.mu.Lock()
	b := c.scratch[:24]
	c.putChunkHeader(b, replyFlagDone, replyTypeBlockStatus, h, uint32(4+4*len(c.ext)))
	be.PutUint32(b[20:], metaID)
	c.bw.Write(b)
	var err2 error
	for _, v := range c.ext {
		be.PutUint32(b[:4], v)
		_, err2 = c.bw.Write(b[:4])
	}
	if err2 != nil {
		c.fail()
	}
	c.mu.Unlock()
	c.batch.Add(c)
}

// addExtent records a mapper's piece, clamped to the unreported rest of the request;
// it returns false once no more are wanted.
func (c *conn) addExtent(off, n int64, hole bool) bool {
	if off < 0 || n <= 0 {
		return c.extEnd < c.extLimit
	}
	start := min(uint64(off), c.extLimit)
	end := min(uint64(off)+uint64(n), c.extLimit)
	if start > c.extEnd && !c.appendExtent(start-c.extEnd, 0) { // a skipped gap: say data
		return false
	}
	if end > c.extEnd {
		var st uint32
		if hole {
			st = stateHole | stateZero
		}
		if !c.appendExtent(end-c.extEnd, st) {
			return false
		}
	}
	return c.extEnd < c.extLimit
}

// appendExtent adds n bytes of status st, merging with an equal predecessor.
func (c *conn) appendExtent(n uint64, st uint32) bool {
	if k := len(c.ext); k > 0 && c.ext[k-1] == st {
		c.ext[k-2] += uint32(n)
	} else {
		if k >= 2*maxExtents || c.extOne && k > 0 {
			return false
		}
		c.ext = append(c.ext, uint32(n), st)
	}
	c.extEnd += n
	return true
}
