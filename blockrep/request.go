package blockrep

import (
	"errors"
	"sync"
)

// Sentinel errors, errors.Is-able by callers (control socket, NBD server, tests).
var (
	ErrNotPrimary    = errors.New("not Primary")
	ErrReadOnly      = errors.New("device is read-only")
	ErrOutOfRange    = errors.New("request out of range")
	ErrNoSpace       = errors.New("no space")
	ErrIO            = errors.New("I/O error")
	ErrNotSupported  = errors.New("operation not supported")
	ErrSplitBrain    = errors.New("split brain")
	ErrFenced        = errors.New("fenced")
	ErrDiskless      = errors.New("no local disk")
	ErrClosed        = errors.New("closed")
	ErrShuttingDown  = errors.New("shutting down")
	ErrNotUpToDate   = errors.New("need access to UpToDate data")
	ErrPeerIsPrimary = errors.New("a peer is Primary")
	ErrNoQuorum      = errors.New("no quorum")
)

// Op is the kind of a write-class request.
type Op uint8

const (
	OpWrite Op = iota
	OpTrim     // discard: contents afterwards unspecified (we make them read as zeroes)
	OpZero     // write zeroes
	OpFlush    // make every previously completed write durable
)

var opNames = [...]string{"write", "trim", "zero", "flush"}

func (o Op) String() string { return enumName(opNames[:], int(o)) }

// ReqFlags modify a request.
type ReqFlags uint8

const (
	FlagFUA      ReqFlags = 1 << iota // durable before completion
	FlagNoHole                        // OpZero: must allocate (no hole punching)
	FlagFastZero                      // OpZero: fail with ErrNotSupported unless zeroing is fast
)

// Completer receives the completion of a Request. Complete is called exactly once per
// submitted request, from whichever goroutine finishes it last; b is that goroutine's
// output batch (never nil).
type Completer interface {
	Complete(r *Request, err error, b *Batch)
}

// Request is one write-class I/O (write, trim, zero, flush) handed to a Backend.
//
// Data is only borrowed for the duration of Submit: the backend copies what it needs
// before Submit returns, so a caller may reuse one buffer for every request. The Request
// itself belongs to the backend until Complete is called.
type Request struct {
	Op     Op
	Flags  ReqFlags
	Off    int64
	Len    int64  // bytes covered; len(Data) for OpWrite
	Data   []byte // OpWrite payload
	Handle uint64 // opaque to the backend (the NBD cookie)
	// Arrived is opaque to the backend too: the submitter's timestamp, for its latency
	// accounting.
	Arrived int64
	Owner   Completer
	// Idle hints that no other request waits behind this one on its connection: a
	// backend may then do slow work (a FLUSH's fdatasync) inline rather than hand it
	// to another goroutine, saving a wake-up without stalling a pipeline.
	Idle bool

	eng reqEngine // backend-private bookkeeping, reused with the Request
}

// Flusher is a buffered output that a goroutine flushes once its own input has drained,
// so that many replies or messages share one syscall.
type Flusher interface {
	FlushOut()
}

// Batch collects the outputs a goroutine wrote to but did not flush yet. It is owned by
// one goroutine; Flush runs when that goroutine is about to block on input.
type Batch struct {
	pending []Flusher
}

// Add remembers f for the next Flush.
func (b *Batch) Add(f Flusher) {
	for _, p := range b.pending {
		if p == f {
			return
		}
	}
	b.pending = append(b.pending, f)
}

// Wait waits on c (c.L held) after sending what this goroutine queued: nothing it
// queued may wait for its wake-up. Like sync.Cond.Wait it may return early; callers
// loop on their condition.
func (b *Batch) Wait(c *sync.Cond) {
	if len(b.pending) > 0 {
		c.L.Unlock()
		b.Flush()
		c.L.Lock()
		return
	}
	c.Wait()
}

// RLock takes m shared, sending what this goroutine queued first if it must wait.
func (b *Batch) RLock(m *sync.RWMutex) {
	if m.TryRLock() {
		return
	}
	b.Flush()
	m.RLock()
}

// Recv receives from ch, sending what this goroutine queued first if it must wait.
func (b *Batch) Recv(ch <-chan error) error {
	select {
	case err := <-ch:
		return err
	default:
	}
	b.Flush()
	return <-ch
}

// Flush flushes every remembered output and forgets them.
func (b *Batch) Flush() {
	for i, f := range b.pending {
		f.FlushOut()
		b.pending[i] = nil
	}
	b.pending = b.pending[:0]
}

// Caps are what a backend can do; the NBD server advertises them.
type Caps struct {
	Flush      bool // FLUSH is meaningful (writes are cached)
	FUA        bool
	Trim       bool
	Zero       bool // efficient WRITE_ZEROES
	FastZero   bool // zeroing never falls back to writing
	MultiConn  bool // a FLUSH on any connection covers writes completed on all of them
	Cache      bool
	ReadOnly   bool
	Rotational bool
}

// Backend is what the NBD server exports. ReadAt runs inline in the caller's goroutine.
// Submit starts a write-class request and returns once Data is no longer needed; the
// request completes through r.Owner.Complete, possibly before Submit returns (then with
// the caller's batch b).
type Backend interface {
	Size() int64
	Caps() Caps
	ReadAt(p []byte, off int64) error
	Submit(r *Request, b *Batch)
}
