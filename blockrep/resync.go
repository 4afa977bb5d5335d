package blockrep

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blockrep/blockrep/internal/clock"
	"github.com/blockrep/blockrep/transport"
)

const resyncChunk = 1 << 20

// resyncStats tracks one resync (either side) for status, and the source's window of
// bytes in flight. Times are the engine clock's.
type resyncStats struct {
	mu       sync.Mutex
	cond     sync.Cond
	active   bool
	total    int64 // blocks out of sync when it began (plus any added since)
	start    time.Duration
	inflight int64
	bytes    atomic.Int64 // moved by the current or last resync
	finished time.Duration
}

func (r *resyncStats) begin(now time.Duration, blocks int64) {
	r.mu.Lock()
	r.active, r.total, r.start, r.inflight = true, blocks, now, 0
	r.bytes.Store(0)
	r.mu.Unlock()
}

func (r *resyncStats) end(now time.Duration) {
	r.mu.Lock()
	if r.active {
		r.active, r.finished = false, now
	}
	r.cond.Broadcast()
	r.mu.Unlock()
}

// wake makes a resync loop waiting for its window look at its stop channel.
func (r *resyncStats) wake() {
	r.mu.Lock()
	r.cond.Broadcast()
	r.mu.Unlock()
}

func (r *resyncStats) elapsed(now time.Duration) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.active {
		return now - r.start
	}
	return r.finished - r.start
}

func (r *resyncStats) addInflight(n int64) {
	r.mu.Lock()
	r.inflight += n
	r.mu.Unlock()
}

func (r *resyncStats) acked(n int64, ok bool) {
	if ok {
		r.bytes.Add(n)
	}
	r.mu.Lock()
	r.inflight -= n
	r.cond.Broadcast()
	r.mu.Unlock()
}

// waitBelow blocks until fewer than limit bytes are in flight; false if stopped.
func (r *resyncStats) waitBelow(limit int64, stop chan struct{}) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for r.inflight > 0 && r.inflight+1 > limit {
		select {
		case <-stop:
			return false
		default:
		}
		r.cond.Wait()
	}
	select {
	case <-stop:
		return false
	default:
		return true
	}
}

// progress returns done %, ETA and rate for status.
func (r *resyncStats) progress(now time.Duration, remaining int64, syncing bool) (float64, time.Duration, float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !syncing || !r.active {
		if syncing {
			return 0, 0, 0
		}
		return 100, 0, 0
	}
	if remaining > r.total {
		r.total = remaining
	}
	pct := 100.0
	if r.total > 0 {
		pct = 100 * float64(r.total-remaining) / float64(r.total)
	}
	el := (now - r.start).Seconds()
	rate := 0.0
	if el > 0 {
		rate = float64(r.bytes.Load()) / el
	}
	var eta time.Duration
	if rate > 0 {
		eta = time.Duration(float64(remaining*BlockSize) / rate * float64(time.Second))
	}
	return pct, eta, rate
}

// rateLimiter is a token bucket: bytes/s with one second of burst. Rate 0 = unlimited.
type rateLimiter struct {
	rate    float64
	tokens  float64
	last    time.Duration
	started bool
}

// delay reserves n bytes at now and returns how long to wait before sending them.
func (l *rateLimiter) delay(now time.Duration, n int64) time.Duration {
	if l.rate <= 0 {
		return 0
	}
	if !l.started {
		l.last, l.tokens, l.started = now, l.rate/10, true
	}
	l.tokens = min(l.tokens+(now-l.last).Seconds()*l.rate, l.rate)
	l.last = now
	l.tokens -= float64(n)
	if l.tokens >= 0 {
		return 0
	}
	return time.Duration(-l.tokens / l.rate * float64(time.Second))
}

// resyncPace derives the limiter and in-flight window from the configuration: a fixed
// rate (c-plan-ahead 0), or a window of c-fill-target capped at c-max-rate.
func resyncPace(c ResyncConfig) (rateLimiter, int64) {
	if c.PlanAhead == 0 {
		rate := c.Rate
		if rate <= 0 {
			rate = 250 << 10
		}
		return rateLimiter{rate: float64(rate)}, max(min(rate/10, 8*resyncChunk), BlockSize)
	}
	return rateLimiter{rate: float64(c.MaxRate)}, max(c.FillTarget, 4*resyncChunk)
}

// startResync starts the SyncSource loop on the live session (the core's StartResync);
// a session that ended meanwhile starts nothing.
func (p *Peer) startResync(session uint64) {
	p.pendMu.Lock()
	c, stop, wg := p.link, p.sessStop, p.sessWG
	live := c != nil && stop != nil && p.sessionNo == session
	if live {
		wg.Add(1)
	}
	p.pendMu.Unlock()
	if !live {
		return
	}
	go func() {
		defer wg.Done()
		p.resyncLoop(c, stop, session)
	}()
}

// resyncLoop is the SyncSource: it sends every out-of-sync block, paced, and declares
// the resync done once the bitmap is empty and everything was acknowledged. Each chunk
// is read and queued while holding its range against application writes, so the two
// reach the target in the order they happened here.
func (p *Peer) resyncLoop(c *transport.Conn, stop chan struct{}, session uint64) {
	v := p.v
	clk := v.clock
	p.rs.begin(clk.Now(), p.bm.Count())
	p.log.Info("resync started", "as", "SyncSource", "out-of-sync-bytes", p.bm.Count()*BlockSize)
	lim, window := resyncPace(p.cfg.Resync)
	buf := make([]byte, resyncChunk)
	token := new(int)
	var cursor int64
	lastApp := v.writtenBytes.Load()
	lastCheck := clk.Now()
	for {
		select {
		case <-stop:
			return
		default:
		}
		blk := p.bm.NextSet(cursor)
		if blk < 0 {
			if !p.rs.waitBelow(1, stop) {
				return
			}
			if p.bm.Count() == 0 {
				p.log.Info("resync sent everything", "bytes", p.rs.bytes.Load())
				if err := v.step(EvResyncFinished{Peer: p.cfg.NodeID, Session: session, Took: p.rs.elapsed(clk.Now())}); err != nil {
					c.Close()
				}
				return
			}
			cursor = 0
			continue
		}
		nblk := min(p.bm.NextClear(blk)-blk, resyncChunk/BlockSize)
		off := blk * BlockSize
		n := min(nblk*BlockSize, v.size-off)

		// Yield to the application: while it writes, keep one chunk in flight.
		w := window
		if now := clk.Now(); now-lastCheck > 100*time.Millisecond {
			app := v.writtenBytes.Load()
			if app != lastApp && p.cfg.Resync.MinRate >= 0 {
				w = resyncChunk
			}
			lastApp, lastCheck = app, now
		}
		if !p.rs.waitBelow(w, stop) {
			return
		}
		if d := lim.delay(clk.Now(), n); d > 0 && !clock.Sleep(clk, d, stop) {
			return
		}

		if !v.conf.acquireUnless(off, n, token, stop) {
			return
		}
		err := v.data.ReadAt(buf[:n], off)
		if err != nil {
			v.conf.release(token)
			p.log.Error("resync read failed", "offset", off, "err", err)
			c.Close()
			return
		}
		p.pendMu.Lock()
		if p.link != c {
			p.pendMu.Unlock()
			v.conf.release(token)
			return
		}
		p.nextID++
		d := transport.Data{ID: p.nextID, Off: uint64(off), Len: uint32(n)}
		p.pending[d.ID] = pendEntry{kind: pendRS, off: off, n: n}
		p.pendMu.Unlock()
		p.rs.addInflight(n)
		// Zeroes (a fresh or trimmed device) travel as a range, not as data.
		t, payload := transport.MsgRSData, buf[:n]
		if isZero(payload) {
			t, payload = transport.MsgRSZero, nil
		}
		c.QueueData(t, &d, payload)
		c.Flush()
		v.conf.release(token)
		cursor = blk + nblk
	}
}

// isZero reports whether b holds only zero bytes.
func isZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
