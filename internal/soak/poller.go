package soak

import (
	"fmt"
	"sync"
	"time"

	"github.com/blockrep/blockrep/internal/clustertest"
)

// poller watches every node's status throughout a trial for states that must never
// be seen, whatever the faults:
//   - a Primary whose disk is not UpToDate (Diskless is allowed: on-io-error detach);
//     a forced promotion declares the disk UpToDate, so not even that is exempt;
//   - two Primaries connected to each other;
//   - the two sides of an unresolved split brain connected (merged silently).
type poller struct {
	c     *clustertest.Cluster
	nodes []*clustertest.Node
	stop  chan struct{}
	done  chan struct{}

	mu         sync.Mutex
	forbidden  map[[2]string]bool
	violations []string
	seen       map[string]bool
}

func startPoller(tr *trial) *poller {
	p := &poller{c: tr.c, nodes: tr.c.Nodes, stop: make(chan struct{}), done: make(chan struct{}),
		forbidden: map[[2]string]bool{}, seen: map[string]bool{}}
	go p.run()
	return p
}

func (p *poller) run() {
	defer close(p.done)
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		for _, n := range p.nodes {
			p.check(n)
		}
	}
}

func (p *poller) check(n *clustertest.Node) {
	s, err := p.c.TryStatus(n, time.Second)
	if err != nil {
		return // down or busy: nothing to see
	}
	if s.Role == "Primary" && s.Disk != "UpToDate" && s.Disk != "Diskless" {
		p.report("%s was Primary with a %s disk", n.Name, s.Disk)
	}
	var suspects []string
	p.mu.Lock()
	for _, ps := range s.Peers {
		if ps.Connection != "Connected" {
			continue
		}
		if s.Role == "Primary" && ps.PeerRole == "Primary" {
			p.reportLocked("%s and %s were both Primary while connected", n.Name, ps.Node)
		}
		if p.forbidden[[2]string{n.Name, ps.Node}] {
			suspects = append(suspects, ps.Node)
		}
	}
	p.mu.Unlock()
	// One side alone may still show a connection the other side already dropped (it
	// has not timed out yet); a merge needs a handshake, after which both sides show it.
	for _, name := range suspects {
		if p.connectedTo(name, n.Name) {
			p.mu.Lock()
			if p.forbidden[[2]string{n.Name, name}] {
				p.reportLocked("%s connected to %s before their split brain was resolved: the data was merged silently", n.Name, name)
			}
			p.mu.Unlock()
		}
	}
}

// connectedTo reports whether node from shows a connection to node to right now.
func (p *poller) connectedTo(from, to string) bool {
	for _, n := range p.nodes {
		if n.Name != from {
			continue
		}
		s, err := p.c.TryStatus(n, time.Second)
		if err != nil {
			return false
		}
		for _, ps := range s.Peers {
			if ps.Node == to {
				return ps.Connection == "Connected"
			}
		}
	}
	return false
}

func (p *poller) report(format string, a ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reportLocked(format, a...)
}

func (p *poller) reportLocked(format string, a ...any) {
	msg := "invariant: " + fmt.Sprintf(format, a...)
	if !p.seen[msg] {
		p.seen[msg] = true
		p.violations = append(p.violations, msg)
	}
}

// forbid: a and b must not be connected until allow.
func (p *poller) forbid(a, b *clustertest.Node) { p.setForbidden(a, b, true) }

func (p *poller) allow(a, b *clustertest.Node) { p.setForbidden(a, b, false) }

func (p *poller) setForbidden(a, b *clustertest.Node, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.forbidden[[2]string{a.Name, b.Name}] = on
	p.forbidden[[2]string{b.Name, a.Name}] = on
}

func (p *poller) halt() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

func (p *poller) found() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.violations...)
}
