package blockrep

import "sync"

// flusher performs local flushes off the submitting goroutine, so a FLUSH does not stall
// the pipeline behind it, and lets every flush that arrives during one fdatasync share
// the next one (group commit).
type flusher struct {
	v       *Volume
	mu      sync.Mutex
	cond    sync.Cond
	queue   []*Request
	spare   []*Request
	stopped bool
	done    chan struct{}
}

func newFlusher(v *Volume) *flusher {
	f := &flusher{v: v, done: make(chan struct{})}
	f.cond.L = &f.mu
	go f.run()
	return f
}

func (f *flusher) enqueue(r *Request) {
	f.mu.Lock()
	if f.stopped {
		f.mu.Unlock()
		var b Batch
		r.eng.partDone(ErrShuttingDown, &b)
		b.Flush()
		return
	}
	f.queue = append(f.queue, r)
	f.mu.Unlock()
	f.cond.Signal()
}

func (f *flusher) run() {
	defer close(f.done)
	var b Batch
	for {
		f.mu.Lock()
		for len(f.queue) == 0 && !f.stopped {
			f.cond.Wait()
		}
		if len(f.queue) == 0 && f.stopped {
			f.mu.Unlock()
			return
		}
		batch := f.queue
		f.queue = f.spare[:0]
		f.mu.Unlock()

		err := f.v.data.Flush()
		for i, r := range batch {
			r.eng.localDone(err, err == nil, &b)
			batch[i] = nil
		}
		b.Flush()
		f.mu.Lock()
		f.spare = batch[:0]
		f.mu.Unlock()
	}
}

// stop finishes queued flushes and ends the goroutine.
func (f *flusher) stop() {
	f.mu.Lock()
	f.stopped = true
	f.mu.Unlock()
	f.cond.Signal()
	<-f.done
}
