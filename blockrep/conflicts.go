package blockrep

import "sync"

// conflicts orders overlapping writes: a write (or resync read) may start only when no
// in-flight write overlaps it, so overlapping writes reach every replica in the same
// order. Overlaps are rare; the common path is one short critical section and a scan
// of the (queue-depth sized) active list.
type conflicts struct {
	mu      sync.Mutex
	cond    sync.Cond
	active  []span
	waiters int
}

type span struct {
	off, end int64
	owner    any
}

func newConflicts() *conflicts {
	c := &conflicts{}
	c.cond.L = &c.mu
	return c
}

func (c *conflicts) overlaps(off, end int64) bool {
	for i := range c.active {
		if a := &c.active[i]; a.off < end && off < a.end {
			return true
		}
	}
	return false
}

// acquire waits until [off, off+n) overlaps no active span, then claims it for owner.
// It waits through b: the write it waits for may be this goroutine's own, queued to the
// peers, which must be sent to be acknowledged.
func (c *conflicts) acquire(off, n int64, owner any, b *Batch) {
	end := off + max(n, 1)
	c.mu.Lock()
	for c.overlaps(off, end) {
		c.waiters++
		b.Wait(&c.cond)
		c.waiters--
	}
	c.active = append(c.active, span{off, end, owner})
	c.mu.Unlock()
}

// acquireUnless is acquire that gives up (false) once stopped is closed; wake makes
// waiters look at it. The resync loop uses it: the application writes it waits for may
// be waiting for the very peer whose session is ending.
func (c *conflicts) acquireUnless(off, n int64, owner any, stopped <-chan struct{}) bool {
	end := off + max(n, 1)
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.overlaps(off, end) {
		select {
		case <-stopped:
			return false
		default:
		}
		c.waiters++
		c.cond.Wait()
		c.waiters--
	}
	c.active = append(c.active, span{off, end, owner})
	return true
}

// wake wakes every waiter, to re-check its stop condition.
func (c *conflicts) wake() {
	c.mu.Lock()
	c.cond.Broadcast()
	c.mu.Unlock()
}

// release gives up owner's span.
func (c *conflicts) release(owner any) {
	c.mu.Lock()
	for i := range c.active {
		if c.active[i].owner == owner {
			last := len(c.active) - 1
			c.active[i] = c.active[last]
			c.active[last] = span{}
			c.active = c.active[:last]
			break
		}
	}
	if c.waiters > 0 {
		c.cond.Broadcast()
	}
	c.mu.Unlock()
}

// drain waits until no span is active (the gate keeps new ones out).
func (c *conflicts) drain() {
	c.mu.Lock()
	for len(c.active) > 0 {
		c.waiters++
		c.cond.Wait()
		c.waiters--
	}
	c.mu.Unlock()
}
