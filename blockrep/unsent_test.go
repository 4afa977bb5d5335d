package blockrep

// Waits that depend on a peer acknowledging what a goroutine queued on a link but did
// not send yet: each must send it first.

import (
	"testing"
	"time"
)

// TestQueueDeeperThanMaxBuffers: one goroutine submits more requests than max-buffers
// without its input draining (the NBD loop does that with a deep queue). The writes
// queued to the peer but not yet sent must go out before the submitter waits for the
// window, or nothing is ever acknowledged.
func TestQueueDeeperThanMaxBuffers(t *testing.T) {
	for _, proto := range []Protocol{ProtocolA, ProtocolC} {
		t.Run(proto.String(), func(t *testing.T) {
			n := testClusterWith(t, 2, 16<<20, proto, func(_ int, cfg *Config) {
				for i := range cfg.Peers {
					cfg.Peers[i].MaxBuffers = 32
					// No keepalive during the test: it would flush the link and hide a stall.
					cfg.Peers[i].PingInt = time.Minute
				}
			})
			a, _ := promotedPair(t, n)
			const depth = 100
			done := make(chan error, depth)
			c := chanCompleter(done)
			var b Batch
			submitted := make(chan struct{})
			go func() {
				defer close(submitted)
				for i := 0; i < depth; i++ {
					// TRIMs: small messages, so the link's buffer never fills and flushes itself.
					r := &Request{Op: OpTrim, Off: int64(i) * 4096, Len: 4096, Owner: c}
					a.v.Submit(r, &b)
				}
				b.Flush()
			}()
			start := time.Now()
			select {
			case <-submitted:
				t.Logf("submitted in %v", time.Since(start))
			case <-time.After(3 * time.Second):
				// Takes milliseconds; a stall lasts until some timer flushes the link.
				t.Fatalf("submitting %d requests with max-buffers 32 stalled", depth)
			}
			for i := 0; i < depth; i++ {
				select {
				case err := <-done:
					if err != nil {
						t.Fatal(err)
					}
				case <-time.After(20 * time.Second):
					t.Fatalf("%d of %d writes completed", i, depth)
				}
			}
		})
	}
}

// TestOverlappingWriteQueuedBehindAnUnsentOne: a goroutine submits a write and then, in
// the same burst (nothing flushed in between), a write overlapping it. The second waits
// for the first, which waits for the peer's acknowledgement: the first must have been
// sent, or both wait until some timer flushes the link.
func TestOverlappingWriteQueuedBehindAnUnsentOne(t *testing.T) {
	n := testClusterWith(t, 2, 16<<20, ProtocolC, func(_ int, cfg *Config) {
		for i := range cfg.Peers {
			cfg.Peers[i].PingInt = time.Minute
		}
	})
	a, _ := promotedPair(t, n)
	done := make(chan error, 2)
	c := chanCompleter(done)
	var b Batch
	submitted := make(chan struct{})
	go func() {
		defer close(submitted)
		a.v.Submit(&Request{Op: OpWrite, Off: 0, Data: randBytes(4096), Len: 4096, Owner: c}, &b)
		a.v.Submit(&Request{Op: OpWrite, Off: 0, Data: randBytes(4096), Len: 4096, Owner: c, Idle: true}, &b)
		b.Flush()
	}()
	start := time.Now()
	select {
	case <-submitted:
		t.Logf("submitted in %v", time.Since(start))
	case <-time.After(time.Second):
		// Takes milliseconds; a stall lasts until some timer flushes the link.
		t.Fatal("the overlapping write stalled behind one that was never sent")
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// TestDemoteWithAWriteQueuedButUnsent: an NBD goroutine queued a write on the peer link
// and blocked (on the gate the demotion holds) before flushing it. The demotion waits
// for in-flight writes, so it must send the queued one itself.
func TestDemoteWithAWriteQueuedButUnsent(t *testing.T) {
	n := testClusterWith(t, 2, 16<<20, ProtocolC, func(_ int, cfg *Config) {
		for i := range cfg.Peers {
			cfg.Peers[i].PingInt = time.Minute
			cfg.Peers[i].Timeout = 10 * time.Second // the keepalive would flush after 5 s
		}
	})
	a, _ := promotedPair(t, n)
	done := make(chan error, 1)
	var b Batch // never flushed before the demotion: its goroutine is "blocked"
	a.v.Submit(&Request{Op: OpWrite, Off: 0, Data: randBytes(4096), Len: 4096, Owner: chanCompleter(done)}, &b)
	demoted := make(chan error, 1)
	start := time.Now()
	go func() { demoted <- a.v.Demote() }()
	select {
	case err := <-demoted:
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("demoted in %v", time.Since(start))
	case <-time.After(2 * time.Second):
		t.Fatal("the demotion waits for a write that sits unsent on the link")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	b.Flush()
}
