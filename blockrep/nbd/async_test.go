package nbd

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/blockrep/blockrep/blockrep"
)

// asyncBackend completes write-class requests from its own goroutine, in random order
// and in batches, as a replication ack receiver would. With hold set, completions wait
// for release.
type asyncBackend struct {
	dev *blockrep.MemDevice

	mu      sync.Mutex
	cond    *sync.Cond
	queue   []*blockrep.Request
	hold    bool
	stopped bool
	seen    int
	wg      sync.WaitGroup
}

func newAsync(size int64, hold bool) *asyncBackend {
	a := &asyncBackend{dev: blockrep.NewMemDevice(size), hold: hold}
	a.cond = sync.NewCond(&a.mu)
	a.wg.Add(1)
	go a.complete()
	return a
}

func (a *asyncBackend) Size() int64                      { return a.dev.Size() }
func (a *asyncBackend) Caps() blockrep.Caps              { return a.dev.Caps() }
func (a *asyncBackend) ReadAt(p []byte, off int64) error { return a.dev.ReadAt(p, off) }

func (a *asyncBackend) Submit(r *blockrep.Request, _ *blockrep.Batch) {
	r.Data = bytes.Clone(r.Data) // borrowed only until Submit returns
	a.mu.Lock()
	a.queue = append(a.queue, r)
	a.seen++
	a.cond.Broadcast()
	a.mu.Unlock()
}

func (a *asyncBackend) release() {
	a.mu.Lock()
	a.hold = false
	a.cond.Broadcast()
	a.mu.Unlock()
}

func (a *asyncBackend) submitted() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seen
}

func (a *asyncBackend) stop() {
	a.mu.Lock()
	a.stopped = true
	a.cond.Broadcast()
	a.mu.Unlock()
	a.wg.Wait()
}

func (a *asyncBackend) complete() {
	defer a.wg.Done()
	var b blockrep.Batch
	rnd := rand.New(rand.NewPCG(7, 7))
	for {
		a.mu.Lock()
		for !a.stopped && (len(a.queue) == 0 || a.hold) {
			a.cond.Wait()
		}
		if a.stopped {
			a.mu.Unlock()
			return
		}
		q := a.queue
		a.queue = nil
		a.mu.Unlock()
		rnd.Shuffle(len(q), func(i, j int) { q[i], q[j] = q[j], q[i] })
		for _, r := range q {
			r.Owner.Complete(r, blockrep.ApplyTo(a.dev, r), &b)
		}
		if rnd.IntN(4) == 0 {
			time.Sleep(time.Duration(rnd.IntN(200)) * time.Microsecond) // let more pile up
		}
		a.mu.Lock()
		drained := len(a.queue) == 0
		a.mu.Unlock()
		if drained {
			b.Flush()
		}
	}
}

func TestAsyncOutOfOrderCompletions(t *testing.T) {
	const (
		blocks = 256
		bs     = 4096
		depth  = 64
		rounds = 40
	)
	for _, structured := range []bool{false, true} {
		a := newAsync(blocks*bs, false)
		defer a.stop()
		c, _ := serve(t, testServer(a))
		c.handshake("disk", structured, false)
		model := make([]byte, blocks*bs)
		rnd := rand.New(rand.NewPCG(1, uint64(len(model))))

		type req struct {
			typ   uint16
			flags uint16
			off   uint64
			n     uint32
			data  []byte
		}
		for round := range rounds {
			// depth requests on distinct blocks, so their order does not matter.
			perm := rnd.Perm(blocks)[:depth]
			reqs := map[uint64]req{}
			var wire []byte
			for i, blk := range perm {
				h := rnd.Uint64()
				r := req{typ: cmdWrite, off: uint64(blk * bs), n: bs}
				switch i % 8 {
				case 5:
					r.typ = cmdTrim
				case 6:
					r.typ, r.flags = cmdWriteZeroes, cmdFlagNoHole
				case 7:
					r.typ, r.off, r.n = cmdFlush, 0, 0
				default:
					r.data = make([]byte, bs)
					for j := range r.data {
						r.data[j] = byte(rnd.Uint32())
					}
					if i%3 == 0 {
						r.flags = cmdFlagFUA
					}
				}
				reqs[h] = r
				wire = append(wire, request(r.flags, r.typ, h, r.off, r.n)...)
				wire = append(wire, r.data...)
				switch r.typ {
				case cmdWrite:
					copy(model[r.off:], r.data)
				case cmdTrim, cmdWriteZeroes:
					clear(model[r.off : r.off+uint64(r.n)])
				}
			}
			go c.nc.Write(wire) // pipelined; replies are read meanwhile
			for range depth {
				r := c.mustRecv()
				if _, ok := reqs[r.handle]; !ok {
					t.Fatalf("round %d: reply for unknown or repeated handle %#x", round, r.handle)
				}
				if r.errno != 0 {
					t.Fatalf("round %d: %s failed with %d", round, cmdName(reqs[r.handle].typ), r.errno)
				}
				delete(reqs, r.handle)
			}
			// Read back the same blocks, pipelined.
			wire = nil // the previous one may still be in the writer goroutine
			want := map[uint64]uint64{}
			for _, blk := range perm {
				h := rnd.Uint64()
				want[h] = uint64(blk * bs)
				c.mu.Lock()
				c.reads[h] = bs
				c.mu.Unlock()
				wire = append(wire, request(0, cmdRead, h, uint64(blk*bs), bs)...)
			}
			go c.nc.Write(wire)
			for range depth {
				r := c.mustRecv()
				off, ok := want[r.handle]
				if !ok || r.errno != 0 {
					t.Fatalf("round %d: read reply handle %#x errno %d", round, r.handle, r.errno)
				}
				if !bytes.Equal(r.data, model[off:off+bs]) {
					t.Fatalf("round %d: block at %d differs", round, off)
				}
				delete(want, r.handle)
			}
		}
		if !bytes.Equal(a.dev.Bytes(), model) {
			t.Fatal("device differs from the model")
		}
	}
}

func TestDiscWaitsForInflightRequests(t *testing.T) {
	a := newAsync(testSize, true)
	defer a.stop()
	c, done := serve(t, testServer(a))
	c.handshake("disk", false, false)
	const n = 16
	for i := range n {
		c.send(0, cmdWrite, uint64(i), uint64(i*4096), 4096, bytes.Repeat([]byte{byte(i + 1)}, 4096))
	}
	c.send(0, cmdDisc, 99, 0, 0, nil)
	waitFor(t, func() bool { return a.submitted() == n })
	select {
	case <-done:
		t.Fatal("connection closed with requests in flight")
	case <-time.After(50 * time.Millisecond):
	}
	a.release()
	got := map[uint64]bool{}
	for range n {
		r := c.mustRecv()
		if r.errno != 0 || got[r.handle] {
			t.Fatalf("reply %#x errno %d", r.handle, r.errno)
		}
		got[r.handle] = true
	}
	c.expectHangUp(done)
	for i := range n {
		if a.dev.Bytes()[i*4096] != byte(i+1) {
			t.Fatalf("write %d not applied", i)
		}
	}
}

func TestDisconnectAnswersInflightThenDrops(t *testing.T) {
	a := newAsync(testSize, true)
	defer a.stop()
	srv := testServer(a)
	c, done := serve(t, srv)
	c.handshake("disk", true, false)
	c.send(0, cmdWrite, 1, 0, 4096, make([]byte, 4096))
	c.send(0, cmdWrite, 2, 4096, 4096, make([]byte, 4096))
	waitFor(t, func() bool { return a.submitted() == 2 })
	if n := srv.Clients("disk"); n != 1 {
		t.Fatalf("Clients = %d, want 1", n)
	}
	srv.Disconnect("disk")
	if n := srv.Clients("disk"); n != 1 {
		t.Fatalf("Clients = %d while requests are in flight, want 1", n)
	}
	c.send(0, cmdWrite, 3, 8192, 4096, make([]byte, 4096)) // must not be executed
	time.Sleep(20 * time.Millisecond)
	a.release()
	for range 2 {
		if r := c.mustRecv(); r.errno != 0 || r.handle > 2 {
			t.Fatalf("reply %d errno %d", r.handle, r.errno)
		}
	}
	c.expectHangUp(done)
	if n := a.submitted(); n != 2 {
		t.Fatalf("backend saw %d writes after Disconnect, want 2", n)
	}
	if n := srv.Clients("disk"); n != 0 {
		t.Fatalf("Clients = %d after the drop", n)
	}
}

func TestCloseStopsServeAndDropsClients(t *testing.T) {
	rec, _ := newRec(testSize)
	srv := testServer(rec)
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	attached := newTestClient(t, nc)
	attached.handshake("disk", false, false)
	nc2, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	negotiating := newTestClient(t, nc2)
	negotiating.greet(clientFixedNewstyle)
	waitFor(t, func() bool { return srv.Clients("disk") == 1 })

	if err := srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve after Close = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
	attached.expectHangUp(nil)
	negotiating.expectHangUp(nil)
	if n := srv.Clients("disk"); n != 0 {
		t.Fatalf("Clients = %d after Close", n)
	}
	if _, err := net.Dial("unix", sock); err == nil {
		t.Fatal("listener still accepting after Close")
	}
	if err := srv.Serve(&deadListener{}); err != nil {
		t.Fatalf("Serve after Close = %v, want nil", err)
	}
}

type deadListener struct{ net.Listener }

func (*deadListener) Close() error { return nil }

func TestServeReturnsAcceptError(t *testing.T) {
	srv := testServer(nil)
	boom := errors.New("boom")
	if err := srv.Serve(failListener{boom}); !errors.Is(err, boom) {
		t.Fatalf("Serve = %v, want %v", err, boom)
	}
}

type failListener struct{ err error }

func (l failListener) Accept() (net.Conn, error) { return nil, l.err }
func (failListener) Close() error                { return nil }
func (failListener) Addr() net.Addr              { return &net.UnixAddr{} }

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}

// slowReads makes every ReadAt take a while, like a disk seek or a read from the peer,
// and records how many overlapped.
type slowReads struct {
	*recBackend
	mu        sync.Mutex
	cur, peak int
}

func (s *slowReads) ReadAt(p []byte, off int64) error {
	s.mu.Lock()
	s.cur++
	s.peak = max(s.peak, s.cur)
	s.mu.Unlock()
	time.Sleep(2 * time.Millisecond)
	err := s.recBackend.ReadAt(p, off)
	s.mu.Lock()
	s.cur--
	s.mu.Unlock()
	return err
}

func TestSlowReadsAreServedInParallel(t *testing.T) {
	for _, structured := range []bool{false, true} {
		rec, m := newRec(testSize)
		content := make([]byte, testSize)
		for i := range content {
			content[i] = byte(i/4096 + i)
		}
		m.WriteAt(content, 0, 0)
		sr := &slowReads{recBackend: rec}
		c, done := serve(t, testServer(sr))
		c.handshake("disk", structured, false)
		const n = 64
		var wire []byte
		c.mu.Lock()
		for i := range n {
			c.reads[uint64(i)] = 4096
			wire = appendRequest(wire, 0, cmdRead, uint64(i), uint64(i*8192), 4096)
		}
		c.mu.Unlock()
		wire = appendRequest(wire, 0, cmdDisc, 0, 0, 0)
		c.write(wire)
		seen := map[uint64]bool{}
		for range n {
			r := c.mustRecv()
			off := r.handle * 8192
			if r.errno != 0 || seen[r.handle] || !bytes.Equal(r.data, content[off:off+4096]) {
				t.Fatalf("structured=%v: reply %d errno %d: wrong or repeated", structured, r.handle, r.errno)
			}
			seen[r.handle] = true
		}
		c.expectHangUp(done) // DISC waited for the offloaded reads
		if sr.peak < 2 {
			t.Errorf("structured=%v: slow reads never overlapped (peak %d)", structured, sr.peak)
		}
	}
}
