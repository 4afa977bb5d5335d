package blockrep

// overlapMin is the smallest write whose local part runs on another goroutine while
// the submitting one sends it to the peers. Below it the hand-off (a wake-up on another
// core) costs more than the overlap saves.
const overlapMin = 256 << 10

// overlapper writes large payloads to the local disk in parallel with their sending:
// for a 1 MiB write the two copies (into the page cache, into the peer's socket) are
// each as long as the rest of the request's handling, and done in turn they serialize
// the connection's goroutine.
type overlapper struct {
	reqs chan *Request
	stop chan struct{}
	done chan struct{}
}

func newOverlapper(dev Device, workers int) *overlapper {
	o := &overlapper{reqs: make(chan *Request), stop: make(chan struct{}), done: make(chan struct{}, workers)}
	for range workers {
		go func() {
			defer func() { o.done <- struct{}{} }()
			for {
				select {
				case r := <-o.reqs:
					r.eng.applied <- ApplyTo(dev, r)
				case <-o.stop:
					return
				}
			}
		}()
	}
	return o
}

// start hands r's local write to a worker; false means none is free (or they stopped)
// and the caller writes inline.
func (o *overlapper) start(r *Request) bool {
	if r.eng.applied == nil {
		r.eng.applied = make(chan error, 1) // once per Request: they are reused
	}
	select {
	case o.reqs <- r:
		return true
	default:
		return false
	}
}

func (o *overlapper) close() {
	close(o.stop)
	for range cap(o.done) {
		<-o.done
	}
}
