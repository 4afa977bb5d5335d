package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
)

// Client is a minimal NBD client (fixed newstyle, NBD_OPT_GO, simple replies) for tests
// and tools: any number of goroutines may issue requests at once; they are pipelined
// on one connection.
type Client struct {
	nc    net.Conn
	size  int64
	flags uint16

	wmu sync.Mutex
	w   *bufio.Writer

	mu      sync.Mutex
	next    uint64
	waiting map[uint64]*call
	err     error // set once the connection failed; every later call gets it
	done    chan struct{}
}

type call struct {
	buf  []byte // READ destination
	errc chan error
}

// ErrClientClosed is returned by calls on a closed or failed client.
var ErrClientClosed = errors.New("nbd client closed")

// Dial connects to an NBD server ("unix" + path or "tcp" + host:port) and attaches to
// export.
func Dial(ctx context.Context, network, addr, export string) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c := &Client{nc: nc, w: bufio.NewWriterSize(nc, 256<<10), waiting: map[uint64]*call{}, done: make(chan struct{})}
	if err := c.handshake(export); err != nil {
		nc.Close()
		return nil, err
	}
	go c.readLoop()
	return c, nil
}

func (c *Client) handshake(export string) error {
	r := bufio.NewReader(c.nc)
	var hdr [18]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return fmt.Errorf("nbd handshake: %w", err)
	}
	be := binary.BigEndian
	if be.Uint64(hdr[0:]) != nbdMagic || be.Uint64(hdr[8:]) != optMagic {
		return errors.New("nbd handshake: not a newstyle NBD server")
	}
	if be.Uint16(hdr[16:])&flagFixedNewstyle == 0 {
		return errors.New("nbd handshake: server is not fixed-newstyle")
	}
	cflags := make([]byte, 4)
	be.PutUint32(cflags, clientFixedNewstyle|clientNoZeroes)
	opt := make([]byte, 0, 64)
	opt = be.AppendUint64(opt, optMagic)
	opt = be.AppendUint32(opt, optGo)
	opt = be.AppendUint32(opt, uint32(4+len(export)+2))
	opt = be.AppendUint32(opt, uint32(len(export)))
	opt = append(opt, export...)
	opt = be.AppendUint16(opt, 0)
	if _, err := c.nc.Write(append(cflags, opt...)); err != nil {
		return err
	}
	for {
		var rh [20]byte
		if _, err := io.ReadFull(r, rh[:]); err != nil {
			return fmt.Errorf("nbd handshake: %w", err)
		}
		typ, n := be.Uint32(rh[12:]), be.Uint32(rh[16:])
		if n > 1<<20 {
			return errors.New("nbd handshake: oversized option reply")
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			return err
		}
		switch {
		case typ == repAck:
			if c.size == 0 && c.flags == 0 {
				return errors.New("nbd handshake: no export information")
			}
			if r.Buffered() > 0 {
				return errors.New("nbd handshake: unexpected data after the option phase")
			}
			return nil
		case typ == repInfo && len(body) >= 12 && be.Uint16(body) == infoExport:
			c.size = int64(be.Uint64(body[2:]))
			c.flags = be.Uint16(body[10:])
		case typ&(1<<31) != 0:
			return fmt.Errorf("nbd server refused %q: %s", export, body)
		}
	}
}

// Size is the export's size in bytes.
func (c *Client) Size() int64 { return c.size }

func (c *Client) readLoop() {
	r := bufio.NewReaderSize(c.nc, 256<<10)
	var hdr [16]byte
	var err error
	for {
		if _, err = io.ReadFull(r, hdr[:]); err != nil {
			break
		}
		if binary.BigEndian.Uint32(hdr[0:]) != simpleReplyMagic {
			err = errors.New("nbd client: bad reply magic")
			break
		}
		code := binary.BigEndian.Uint32(hdr[4:])
		handle := binary.BigEndian.Uint64(hdr[8:])
		c.mu.Lock()
		cl := c.waiting[handle]
		delete(c.waiting, handle)
		c.mu.Unlock()
		if cl == nil {
			err = fmt.Errorf("nbd client: reply for unknown handle %d", handle)
			break
		}
		if code == 0 && cl.buf != nil {
			if _, err = io.ReadFull(r, cl.buf); err != nil {
				cl.errc <- err
				break
			}
		}
		if code != 0 {
			cl.errc <- fmt.Errorf("nbd server error %d (%w)", code, syscall.Errno(code))
		} else {
			cl.errc <- nil
		}
	}
	c.mu.Lock()
	if c.err == nil {
		c.err = fmt.Errorf("%w: %v", ErrClientClosed, err)
	}
	for h, cl := range c.waiting {
		cl.errc <- c.err
		delete(c.waiting, h)
	}
	c.mu.Unlock()
	close(c.done)
}

func (c *Client) do(cmd uint16, flags uint16, off int64, length uint32, data, into []byte) error {
	cl := &call{buf: into, errc: make(chan error, 1)}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	c.next++
	h := c.next
	c.waiting[h] = cl
	c.mu.Unlock()
	var req [28]byte
	be := binary.BigEndian
	be.PutUint32(req[0:], requestMagic)
	be.PutUint16(req[4:], flags)
	be.PutUint16(req[6:], cmd)
	be.PutUint64(req[8:], h)
	be.PutUint64(req[16:], uint64(off))
	be.PutUint32(req[24:], length)
	c.wmu.Lock()
	c.w.Write(req[:])
	c.w.Write(data)
	err := c.w.Flush()
	c.wmu.Unlock()
	if err != nil {
		c.nc.Close()
	}
	return <-cl.errc
}

// ReadAt reads len(p) bytes at off.
func (c *Client) ReadAt(p []byte, off int64) error {
	return c.do(cmdRead, 0, off, uint32(len(p)), nil, p)
}

// WriteAt writes p at off; fua asks for it to be durable on return.
func (c *Client) WriteAt(p []byte, off int64, fua bool) error {
	var f uint16
	if fua {
		f = cmdFlagFUA
	}
	return c.do(cmdWrite, f, off, uint32(len(p)), p, nil)
}

// Flush makes every completed write durable.
func (c *Client) Flush() error { return c.do(cmdFlush, 0, 0, 0, nil, nil) }

// Trim discards a range.
func (c *Client) Trim(off, n int64) error { return c.do(cmdTrim, 0, off, uint32(n), nil, nil) }

// Close ends the session (NBD_CMD_DISC) and the connection.
func (c *Client) Close() error {
	var req [28]byte
	binary.BigEndian.PutUint32(req[0:], requestMagic)
	binary.BigEndian.PutUint16(req[6:], cmdDisc)
	c.wmu.Lock()
	c.w.Write(req[:])
	c.w.Flush()
	c.wmu.Unlock()
	err := c.nc.Close()
	<-c.done
	return err
}
