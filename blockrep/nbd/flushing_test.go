package nbd

import (
	"fmt"
	"testing"

	"github.com/blockrep/blockrep/blockrep"
)

// idleRec records the Idle flag of every request; a FLUSH can be held until released,
// so a test can queue requests while the server is not reading.
type idleRec struct {
	*recBackend
	idle    []string
	flushIn chan struct{}
	release chan struct{}
}

func (r *idleRec) Submit(q *blockrep.Request, b *blockrep.Batch) {
	if q.Op == blockrep.OpFlush && r.flushIn != nil {
		r.flushIn <- struct{}{}
		<-r.release
	}
	r.mu.Lock()
	r.idle = append(r.idle, fmt.Sprintf("%v@%d:%v", q.Op, q.Off, q.Idle))
	r.mu.Unlock()
	r.recBackend.Submit(q, b)
}

// heldServer serves an idleRec and holds a FLUSH (handle 1) in it: the server stops
// reading until unhold, so what the client sends meanwhile arrives at once.
func heldServer(t *testing.T) (*testClient, *idleRec) {
	rec, _ := newRec(testSize)
	be := &idleRec{recBackend: rec, flushIn: make(chan struct{}), release: make(chan struct{})}
	c, _ := serve(t, testServer(be))
	c.handshake("disk", false, false)
	c.send(0, cmdFlush, 1, 0, 0, nil)
	<-be.flushIn
	return c, be
}

func (r *idleRec) unhold() {
	r.flushIn = nil
	close(r.release)
}

// TestIdleMarksTheLastQueuedRequest: Idle (the backend flushes its peer streams before
// the local write) is set on a request with nothing queued behind it — for a WRITE
// although its own payload is still in the read buffer while it is submitted — and
// only there.
func TestIdleMarksTheLastQueuedRequest(t *testing.T) {
	c, be := heldServer(t)
	var wire []byte
	for i, typ := range []uint16{cmdWrite, cmdTrim, cmdWrite, cmdWrite} {
		var payload []byte
		n := uint32(4096)
		if typ == cmdWrite {
			payload = make([]byte, n)
		}
		wire = append(wire, request(0, typ, uint64(10+i), uint64(i)*4096, n)...)
		wire = append(wire, payload...)
	}
	c.write(wire)
	be.unhold()
	for range 5 {
		if r := c.mustRecv(); r.errno != 0 {
			t.Fatalf("request %d: errno %d", r.handle, r.errno)
		}
	}
	// One at a time: each is the last.
	if r := c.do(0, cmdWrite, 65536, 4096, make([]byte, 4096)); r.errno != 0 {
		t.Fatal(r.errno)
	}
	be.mu.Lock()
	got := fmt.Sprint(be.idle)
	be.mu.Unlock()
	want := "[flush@0:true write@0:false trim@4096:false write@8192:false write@12288:true write@65536:true]"
	if got != want {
		t.Fatalf("backend saw %s\nwant           %s", got, want)
	}
}

// TestRepliesDoNotWaitForAPayloadStillArriving: replies already due go out before the
// server blocks for the rest of a request, whether the header or the payload is cut.
func TestRepliesDoNotWaitForAPayloadStillArriving(t *testing.T) {
	for _, cut := range []int{headerLen / 2, headerLen + 1000} {
		t.Run(fmt.Sprintf("cut at %d", cut), func(t *testing.T) {
			c, be := heldServer(t)
			wire := append(request(0, cmdWrite, 2, 0, 4096), make([]byte, 4096)...)
			second := append(request(0, cmdWrite, 3, 4096, 4096), make([]byte, 4096)...)
			c.write(append(wire, second[:cut]...))
			be.unhold()
			for _, h := range []uint64{1, 2} { // before the rest of the second write is sent
				if r := c.mustRecv(); r.handle != h || r.errno != 0 {
					t.Fatalf("reply %+v, want handle %d", r, h)
				}
			}
			c.write(second[cut:])
			if r := c.mustRecv(); r.handle != 3 || r.errno != 0 {
				t.Fatalf("reply %+v, want handle 3", r)
			}
		})
	}
}
