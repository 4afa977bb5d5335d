package blockrep

import "sync"

// groupCommit runs a flush function off the callers' goroutines: items queue while one
// flush runs, and every item queued meanwhile shares the next flush. Both the Primary's
// FLUSH path and a peer's Flush handling use it, so a FLUSH never stalls the pipeline
// that sent it.
type groupCommit[T any] struct {
	flush func() error
	done  func(batch []T, err error) // called after each flush, on the flusher goroutine

	mu      sync.Mutex
	cond    sync.Cond
	queue   []T
	spare   []T
	stopped bool
	exited  chan struct{}
}

func newGroupCommit[T any](flush func() error, done func([]T, error)) *groupCommit[T] {
	g := &groupCommit[T]{flush: flush, done: done, exited: make(chan struct{})}
	g.cond.L = &g.mu
	go g.run()
	return g
}

// enqueue adds an item; false means the committer was stopped.
func (g *groupCommit[T]) enqueue(it T) bool {
	g.mu.Lock()
	if g.stopped {
		g.mu.Unlock()
		return false
	}
	g.queue = append(g.queue, it)
	g.mu.Unlock()
	g.cond.Signal()
	return true
}

func (g *groupCommit[T]) run() {
	defer close(g.exited)
	for {
		g.mu.Lock()
		for len(g.queue) == 0 && !g.stopped {
			g.cond.Wait()
		}
		if len(g.queue) == 0 {
			g.mu.Unlock()
			return
		}
		batch := g.queue
		g.queue = g.spare[:0]
		g.mu.Unlock()

		g.done(batch, g.flush())

		clear(batch)
		g.mu.Lock()
		g.spare = batch[:0]
		g.mu.Unlock()
	}
}

// stop finishes what is queued and ends the goroutine.
func (g *groupCommit[T]) stop() {
	g.mu.Lock()
	g.stopped = true
	g.mu.Unlock()
	g.cond.Signal()
	<-g.exited
}

// newFlusher is the Primary's local flush path: each queued FLUSH request's local part
// completes with the flush's result.
func newFlusher(v *Volume) *groupCommit[*Request] {
	var b Batch
	return newGroupCommit(v.data.Flush, func(batch []*Request, err error) {
		for _, r := range batch {
			r.eng.localDone(err, err == nil, &b)
		}
		b.Flush()
	})
}

// submitLocalFlush queues a FLUSH request's local part.
func (v *Volume) submitLocalFlush(r *Request) {
	if !v.flusher.enqueue(r) {
		var b Batch
		r.eng.partDone(ErrShuttingDown, &b)
		b.Flush()
	}
}
