package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// Network is an in-memory network for tests (like hashicorp/raft's InmemTransport):
// listeners by address, connections as buffered pipes, and partitions that black-hole
// the traffic between two addresses — bytes sent into a cut vanish, as on a real network
// whose cable was pulled, so only keepalives notice.
type Network struct {
	mu        sync.Mutex
	listeners map[string]func(net.Conn)
	cut       map[[2]string]bool
	conns     []*memConn
}

// NewNetwork returns an empty network.
func NewNetwork() *Network {
	return &Network{listeners: map[string]func(net.Conn){}, cut: map[[2]string]bool{}}
}

// Listen has accept called, in its own goroutine, with the server side of every
// connection dialled to addr.
func (n *Network) Listen(addr string, accept func(net.Conn)) {
	n.mu.Lock()
	n.listeners[addr] = accept
	n.mu.Unlock()
}

// Unlisten removes addr's listener: dials to it are refused.
func (n *Network) Unlisten(addr string) {
	n.mu.Lock()
	delete(n.listeners, addr)
	n.mu.Unlock()
}

func linkKey(a, b string) [2]string {
	if a > b {
		a, b = b, a
	}
	return [2]string{a, b}
}

// Dial connects local to addr (a DialFunc). Across a partition it fails as a dial into
// a black hole does: after the context's deadline.
func (n *Network) Dial(ctx context.Context, addr, local string) (net.Conn, error) {
	n.mu.Lock()
	accept, ok := n.listeners[addr]
	cut := n.cut[linkKey(local, addr)]
	n.mu.Unlock()
	if cut {
		<-ctx.Done()
		return nil, fmt.Errorf("dial %s: %w", addr, os.ErrDeadlineExceeded)
	}
	if !ok {
		return nil, fmt.Errorf("dial %s: connection refused", addr)
	}
	client, server := newMemPipe(n, local, addr)
	n.mu.Lock()
	n.conns = append(n.conns, client, server)
	n.mu.Unlock()
	go accept(server)
	return client, nil
}

// Partition black-holes every connection between a and b, and makes dials between them
// time out, until Heal.
func (n *Network) Partition(a, b string) {
	n.mu.Lock()
	n.cut[linkKey(a, b)] = true
	n.mu.Unlock()
}

// Heal undoes Partition. Connections that lived through it stay as they are (what was
// sent into the cut is lost); new dials succeed.
func (n *Network) Heal(a, b string) {
	n.mu.Lock()
	delete(n.cut, linkKey(a, b))
	n.mu.Unlock()
}

func (n *Network) isCut(a, b string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cut[linkKey(a, b)]
}

// pipeBuf is one direction of a connection.
type pipeBuf struct {
	mu       sync.Mutex
	cond     sync.Cond
	data     []byte
	closed   bool
	deadline time.Time
	timer    *time.Timer
}

func newPipeBuf() *pipeBuf {
	p := &pipeBuf{}
	p.cond.L = &p.mu
	return p
}

type memConn struct {
	net         *Network
	local, peer string
	in, out     *pipeBuf
	once        sync.Once
}

func newMemPipe(n *Network, a, b string) (*memConn, *memConn) {
	ab, ba := newPipeBuf(), newPipeBuf()
	return &memConn{net: n, local: a, peer: b, in: ba, out: ab}, &memConn{net: n, local: b, peer: a, in: ab, out: ba}
}

func (c *memConn) Read(p []byte) (int, error) {
	b := c.in
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.data) == 0 {
		if b.closed {
			return 0, errors.New("use of closed network connection")
		}
		if !b.deadline.IsZero() && !time.Now().Before(b.deadline) {
			return 0, os.ErrDeadlineExceeded
		}
		b.cond.Wait()
	}
	n := copy(p, b.data)
	b.data = b.data[n:]
	return n, nil
}

func (c *memConn) Write(p []byte) (int, error) {
	b := c.out
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, errors.New("use of closed network connection")
	}
	if c.net.isCut(c.local, c.peer) {
		return len(p), nil // into the black hole
	}
	b.data = append(b.data, p...)
	b.cond.Broadcast()
	return len(p), nil
}

func (c *memConn) Close() error {
	c.once.Do(func() {
		for _, b := range []*pipeBuf{c.in, c.out} {
			b.mu.Lock()
			b.closed = true
			b.cond.Broadcast()
			b.mu.Unlock()
		}
	})
	return nil
}

type memAddr string

func (a memAddr) Network() string { return "mem" }
func (a memAddr) String() string  { return string(a) }

func (c *memConn) LocalAddr() net.Addr  { return memAddr(c.local) }
func (c *memConn) RemoteAddr() net.Addr { return memAddr(c.peer) }

func (c *memConn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return nil
}

// SetReadDeadline wakes a blocked Read at t. Writes never block, so write deadlines
// are accepted and ignored.
func (c *memConn) SetReadDeadline(t time.Time) error {
	b := c.in
	b.mu.Lock()
	defer b.mu.Unlock()
	b.deadline = t
	if b.timer != nil {
		b.timer.Stop()
	}
	if !t.IsZero() {
		b.timer = time.AfterFunc(time.Until(t), func() {
			b.mu.Lock()
			b.cond.Broadcast()
			b.mu.Unlock()
		})
	}
	b.cond.Broadcast()
	return nil
}

func (c *memConn) SetWriteDeadline(time.Time) error { return nil }
