package clustertest

import (
	"fmt"
	"net"
	"sync"
	"time"
)

// proxyNet is the Proxied network: one listener per host and connection, forwarding to
// that host's peer listener, so that every byte between two daemons passes through this
// process and can be held (a cut), delayed and rate-limited (a slow link).
//
// A cut holds bytes instead of dropping them: the daemons' TCP streams are terminated
// here, so dropping would corrupt them, while holding is what a partition does to TCP
// (the sender retransmits until the link heals or a timeout closes the connection).
type proxyNet struct {
	mu      sync.Mutex
	cut     map[[2]int]bool // from → to
	shape   map[int]Shape   // by sending node
	addrs   map[[2]int]string
	lns     []net.Listener
	conns   map[net.Conn]bool
	closing bool
	wg      sync.WaitGroup
}

// setupProxied gives node i the address 127.0.0.(10+i) and, for every connection, a
// proxy on each host's side.
func (c *Cluster) setupProxied() error {
	pn := &proxyNet{cut: map[[2]int]bool{}, shape: map[int]Shape{}, addrs: map[[2]int]string{}, conns: map[net.Conn]bool{}}
	c.net = &network{mode: Proxied, proxy: pn}
	for i, n := range c.Nodes {
		n.Addr = fmt.Sprintf("127.0.0.%d", 10+i)
		n.Port = freePortOn(c.T, n.Addr)
	}
	for i, n := range c.Nodes {
		for j := range c.Nodes {
			if i == j {
				continue
			}
			// Host i's address in its connection with j: j dials it to reach i.
			ln, err := net.Listen("tcp", net.JoinHostPort(n.Addr, "0"))
			if err != nil {
				return err
			}
			pn.lns = append(pn.lns, ln)
			pn.addrs[[2]int{i, j}] = ln.Addr().String()
			target := net.JoinHostPort(n.Addr, fmt.Sprint(n.Port))
			pn.wg.Add(1)
			go pn.serve(ln, target, j, i)
		}
	}
	return nil
}

func (pn *proxyNet) addressOf(i, j int) string { return pn.addrs[[2]int{i, j}] }

// serve accepts the connections that node dialer opens to node listener.
func (pn *proxyNet) serve(ln net.Listener, target string, dialer, listener int) {
	defer pn.wg.Done()
	for {
		in, err := ln.Accept()
		if err != nil {
			return
		}
		out, err := net.DialTimeout("tcp", target, 5*time.Second)
		if err != nil {
			in.Close() // the node is down: refused, as without the proxy
			continue
		}
		if !pn.track(in, out) {
			return
		}
		var once sync.Once
		closeBoth := func() {
			once.Do(func() {
				in.Close()
				out.Close()
				pn.untrack(in, out)
			})
		}
		pn.wg.Add(2)
		go pn.pipe(out, in, dialer, listener, closeBoth)
		go pn.pipe(in, out, listener, dialer, closeBoth)
	}
}

func (pn *proxyNet) track(cs ...net.Conn) bool {
	pn.mu.Lock()
	defer pn.mu.Unlock()
	if pn.closing {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		pn.conns[c] = true
	}
	return true
}

func (pn *proxyNet) untrack(cs ...net.Conn) {
	pn.mu.Lock()
	defer pn.mu.Unlock()
	for _, c := range cs {
		delete(pn.conns, c)
	}
}

type chunk struct {
	at   time.Time
	data []byte
}

// pipe copies src (node from) to dst (node to). A reader goroutine timestamps chunks
// into a bounded queue (its fullness is the back-pressure a slow or cut link exerts);
// the writer releases each chunk once the link is not cut, its delay has passed and
// the rate allows.
func (pn *proxyNet) pipe(dst, src net.Conn, from, to int, closeBoth func()) {
	defer pn.wg.Done()
	q := make(chan chunk, 16)
	go func() {
		defer close(q) // the end of the source, queued behind its data
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				q <- chunk{time.Now(), buf[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	var free time.Time // when the rate limit lets the next byte go
	ended := true      // the source ended (and its end is held like data while cut)
	for ch := range q {
		if !pn.waitOpen(from, to) {
			ended = false
			break
		}
		s := pn.shapeOf(from)
		if d := time.Until(ch.at.Add(s.Delay)); d > 0 {
			time.Sleep(d)
		}
		if s.Rate > 0 {
			free = later(free, time.Now()).Add(time.Duration(int64(len(ch.data)) * int64(time.Second) / s.Rate))
			time.Sleep(time.Until(free))
		}
		if _, err := dst.Write(ch.data); err != nil {
			ended = false
			break
		}
	}
	if ended {
		pn.waitOpen(from, to)
	}
	closeBoth()
	// The reader ends once src is closed; let it go if it waits to queue.
	go func() {
		for range q {
		}
	}()
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// waitOpen blocks while from → to is cut; false once the network is torn down.
func (pn *proxyNet) waitOpen(from, to int) bool {
	for {
		pn.mu.Lock()
		cut, closing := pn.cut[[2]int{from, to}], pn.closing
		pn.mu.Unlock()
		if closing {
			return false
		}
		if !cut {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (pn *proxyNet) shapeOf(n int) Shape {
	pn.mu.Lock()
	defer pn.mu.Unlock()
	return pn.shape[n]
}

func (pn *proxyNet) setCut(from, to int, cut bool) {
	pn.mu.Lock()
	pn.cut[[2]int{from, to}] = cut
	pn.mu.Unlock()
}

func (pn *proxyNet) setShape(n int, s Shape) {
	pn.mu.Lock()
	pn.shape[n] = s
	pn.mu.Unlock()
}

func (pn *proxyNet) close() {
	pn.mu.Lock()
	pn.closing = true
	for _, l := range pn.lns {
		l.Close()
	}
	for c := range pn.conns {
		c.Close()
	}
	pn.mu.Unlock()
	pn.wg.Wait()
}
