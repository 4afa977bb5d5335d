package soak

import (
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blockrep/blockrep/blockrep/nbd"
)

// Workload drives a Primary's export with the Go NBD client and records everything in
// a History: several writers issue 4 KiB writes of unique content at random blocks of a
// span (some with FUA), a flusher sends a FLUSH every few hundred milliseconds, and a
// reader checks random blocks against the history as it goes. Each goroutine has its
// own connection; when one fails (the Primary died, was demoted or lost its disk) the
// goroutine records the failure and dials the current target again until it answers.
type Workload struct {
	hist     *History
	resource string
	seed     uint64
	spanOff  int64
	blocks   int64
	writers  int

	mu      sync.Mutex
	cond    sync.Cond
	target  string // export socket of the Primary
	paused  bool
	stopped bool
	total   int // goroutines
	parked  int // goroutines waiting out a pause with their connection closed
	wg      sync.WaitGroup

	// Counters since the start; errors are counted per kind of request.
	writeErrs, readErrs, reads atomic.Int64
	// violations are online read checks that failed.
	vmu        sync.Mutex
	violations []string
	lastErr    atomic.Pointer[string]
}

// WorkloadConfig shapes a workload.
type WorkloadConfig struct {
	Resource string
	Seed     uint64
	SpanOff  int64 // first byte of the span (block-aligned)
	SpanLen  int64
	Writers  int
}

// StartWorkload starts the goroutines against the export at target.
func StartWorkload(cfg WorkloadConfig, h *History, target string) *Workload {
	w := &Workload{hist: h, resource: cfg.Resource, seed: cfg.Seed, spanOff: cfg.SpanOff, blocks: cfg.SpanLen / BlockSize,
		writers: cfg.Writers, target: target}
	w.cond.L = &w.mu
	for i := 0; i < w.writers; i++ {
		w.spawn(w.write)
	}
	w.spawn(w.flush)
	w.spawn(w.read)
	return w
}

// session is one goroutine's connection to the current target.
type session struct {
	w   *Workload
	cl  *nbd.Client
	rng *rand.Rand
}

func (w *Workload) spawn(body func(s *session)) {
	w.total++
	// Each goroutine draws from its own generator derived from the trial seed.
	s := &session{w: w, rng: rand.New(rand.NewPCG(w.seed, uint64(1000+w.total)))}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		for w.enter(s) {
			if s.cl == nil && !s.dial() {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			body(s)
		}
		if s.cl != nil {
			s.cl.Close()
		}
	}()
}

// enter waits while the workload is paused, with the goroutine's connection closed
// (an export with clients cannot be demoted); false once stopped.
func (w *Workload) enter(s *session) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.paused && !w.stopped {
		if s.cl != nil {
			s.cl.Close()
			s.cl = nil
		}
		w.parked++
		w.cond.Broadcast()
		for w.paused && !w.stopped {
			w.cond.Wait()
		}
		w.parked--
	}
	return !w.stopped
}

func (s *session) dial() bool {
	s.w.mu.Lock()
	target := s.w.target
	s.w.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	cl, err := nbd.Dial(ctx, "unix", target, s.w.resource)
	if err != nil {
		return false
	}
	s.cl = cl
	return true
}

// drop closes a failed connection; the next round dials again.
func (s *session) drop(err error) {
	msg := err.Error()
	s.w.lastErr.Store(&msg)
	s.cl.Close()
	s.cl = nil
}

// write issues one write of new content at a random block.
func (w *Workload) write(s *session) {
	off := w.spanOff + s.rng.Int64N(w.blocks)*BlockSize
	id := w.hist.NextID()
	data := Content(id, w.hist.Lineage, off)
	rec := w.hist.Issue(id, off, sha256.Sum256(data))
	err := s.cl.WriteAt(data, off, s.rng.IntN(16) == 0)
	if err != nil {
		w.hist.Fail(rec)
		w.writeErrs.Add(1)
		s.drop(err)
		return
	}
	w.hist.Ack(rec)
}

// flush sends a FLUSH every 100–300 ms.
func (w *Workload) flush(s *session) {
	time.Sleep(time.Duration(100+s.rng.IntN(200)) * time.Millisecond)
	start := w.hist.FlushStart()
	if err := s.cl.Flush(); err != nil {
		s.drop(err)
		return
	}
	w.hist.FlushDone(start)
}

// read reads a random written block and checks it against the history.
func (w *Workload) read(s *session) {
	time.Sleep(time.Duration(s.rng.IntN(10)) * time.Millisecond)
	off := w.spanOff + s.rng.Int64N(w.blocks)*BlockSize
	buf := make([]byte, BlockSize)
	from := w.hist.Tick()
	if err := s.cl.ReadAt(buf, off); err != nil {
		w.readErrs.Add(1)
		s.drop(err)
		return
	}
	to := w.hist.Tick()
	w.reads.Add(1)
	if err := w.hist.Check(off, buf, from, to); err != nil {
		w.vmu.Lock()
		w.violations = append(w.violations, "read during the trial: "+err.Error())
		w.vmu.Unlock()
	}
}

// SetTarget points the workload at another Primary's export.
func (w *Workload) SetTarget(target string) {
	w.mu.Lock()
	w.target = target
	w.mu.Unlock()
}

// Pause waits, at most timeout, until every goroutine has finished its request and
// closed its connection; the workload stays paused until Resume.
func (w *Workload) Pause(timeout time.Duration) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return nil // nothing runs any more
	}
	w.paused = true
	w.cond.Broadcast()
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, w.cond.Broadcast)
	defer timer.Stop()
	for w.parked < w.total {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d workload goroutines still in a request after %s", w.total-w.parked, w.total, timeout)
		}
		w.cond.Wait()
	}
	return nil
}

// Resume undoes Pause.
func (w *Workload) Resume() {
	w.mu.Lock()
	w.paused = false
	w.mu.Unlock()
	w.cond.Broadcast()
}

// Stop ends the workload; the goroutines close their connections.
func (w *Workload) Stop(timeout time.Duration) error {
	err := w.Pause(timeout)
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
	w.cond.Broadcast()
	if err != nil {
		return err // a goroutine is stuck in a request; it ends when its daemon does
	}
	w.wg.Wait()
	return nil
}

// Errors returns the write and read errors so far.
func (w *Workload) Errors() (writes, reads int64) { return w.writeErrs.Load(), w.readErrs.Load() }

// LastError is the last request error seen, for the transcript.
func (w *Workload) LastError() string {
	if p := w.lastErr.Load(); p != nil {
		return *p
	}
	return ""
}

// Reads is the number of reads checked online.
func (w *Workload) Reads() int64 { return w.reads.Load() }

// Violations are the failed online read checks.
func (w *Workload) Violations() []string {
	w.vmu.Lock()
	defer w.vmu.Unlock()
	return append([]string(nil), w.violations...)
}

// History is the workload's history.
func (w *Workload) History() *History { return w.hist }
