package nbd

import (
	"bytes"
	"fmt"
	"slices"
	"testing"

	"github.com/blockrep/blockrep/blockrep"
)

// burstRec is a recBackend that also takes bursts; it records their shape and can hold
// a FLUSH until released, so a test can queue requests while the server is not reading.
type burstRec struct {
	*recBackend
	bursts  [][]burstItem
	flushIn chan struct{} // a FLUSH arrived
	release chan struct{} // let it complete
}

type burstItem struct {
	off  int64
	idle bool
}

func (r *burstRec) SubmitBurst(rs []*blockrep.Request, b *blockrep.Batch) {
	var items []burstItem
	for _, q := range rs {
		items = append(items, burstItem{q.Off, q.Idle})
	}
	r.mu.Lock()
	r.bursts = append(r.bursts, items)
	r.mu.Unlock()
	for _, q := range rs {
		r.recBackend.Submit(q, b)
	}
}

func (r *burstRec) Submit(q *blockrep.Request, b *blockrep.Batch) {
	if q.Op == blockrep.OpFlush && r.flushIn != nil {
		r.flushIn <- struct{}{}
		<-r.release
	}
	r.mu.Lock()
	r.bursts = append(r.bursts, []burstItem{{q.Off, q.Idle}})
	r.mu.Unlock()
	r.recBackend.Submit(q, b)
}

// TestWriteBursts: WRITEs that one read of the socket brings are handed to the backend
// together, payloads in place; anything else (an invalid request, another command, a
// large or incomplete write) ends the burst and is served as usual, and Idle marks the
// request with nothing queued behind it.
func TestWriteBursts(t *testing.T) {
	const k4 = 4096
	type rq struct {
		typ uint16
		off uint64
		n   uint32
	}
	w := func(off uint64) rq { return rq{cmdWrite, off, k4} }
	tests := []struct {
		name   string
		reqs   []rq
		bursts [][]burstItem // FLUSHes and single submissions appear as bursts of one
		errnos map[int]uint32
	}{
		{"five writes", []rq{w(0), w(8192), w(4096), w(65536), w(12288)},
			[][]burstItem{{{0, false}, {8192, false}, {4096, false}, {65536, false}, {12288, true}}}, nil},
		{"an invalid write splits the burst",
			[]rq{w(0), w(4096), {cmdWrite, testSize, k4}, w(8192), w(12288)},
			[][]burstItem{{{0, false}, {4096, false}}, {{8192, false}, {12288, true}}},
			map[int]uint32{2: errNoSpc}},
		{"a flush between writes", []rq{w(0), {cmdFlush, 0, 0}, w(4096), w(8192)},
			[][]burstItem{{{0, false}}, {{0, false}}, {{4096, false}, {8192, true}}}, nil},
		{"a large write between small ones", []rq{w(0), w(4096), {cmdWrite, 65536, 128 << 10}, w(8192)},
			[][]burstItem{{{0, false}, {4096, false}}, {{65536, false}}, {{8192, true}}}, nil},
		{"a zero-length write ends a burst", []rq{w(0), {cmdWrite, 4096, 0}, w(8192)},
			[][]burstItem{{{0, false}}, {{8192, true}}}, nil},
		{"the same block twice", []rq{w(4096), w(4096), w(4096)},
			[][]burstItem{{{4096, false}, {4096, false}, {4096, true}}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, m := newRec(testSize)
			be := &burstRec{recBackend: rec, flushIn: make(chan struct{}), release: make(chan struct{})}
			c, _ := serve(t, testServer(be))
			c.handshake("disk", false, false)
			// A FLUSH the backend holds stops the server reading; everything after it is
			// in the socket when it is released, so one read brings it all.
			c.send(0, cmdFlush, 1, 0, 0, nil)
			<-be.flushIn
			var wire []byte
			want := slices.Clone(m.Bytes())
			for i, q := range tt.reqs {
				var payload []byte
				if q.typ == cmdWrite {
					payload = bytes.Repeat([]byte{byte(i + 1)}, int(q.n))
					if _, bad := tt.errnos[i]; !bad {
						copy(want[q.off:], payload)
					}
				}
				wire = append(wire, request(0, q.typ, uint64(100+i), q.off, q.n)...)
				wire = append(wire, payload...)
			}
			c.write(wire)
			be.flushIn = nil
			close(be.release)
			if r := c.mustRecv(); r.handle != 1 || r.errno != 0 {
				t.Fatalf("held flush: %+v", r)
			}
			for range tt.reqs {
				r := c.mustRecv()
				if want := tt.errnos[int(r.handle)-100]; r.errno != want {
					t.Errorf("request %d: errno %d, want %d", r.handle-100, r.errno, want)
				}
			}
			rec.mu.Lock()
			got := slices.Clone(be.bursts[1:]) // [0] is the held flush
			rec.mu.Unlock()
			if fmt.Sprint(got) != fmt.Sprint(tt.bursts) {
				t.Errorf("backend saw %v, want %v", got, tt.bursts)
			}
			if !bytes.Equal(m.Bytes(), want) {
				t.Error("the device does not hold the writes in order")
			}
		})
	}
}

// TestSingleWriteIsIdle: a WRITE with nothing behind it is marked Idle although its own
// payload is still in the read buffer while it is submitted.
func TestSingleWriteIsIdle(t *testing.T) {
	rec, _ := newRec(testSize)
	be := &burstRec{recBackend: rec}
	c, _ := serve(t, testServer(be))
	c.handshake("disk", false, false)
	for i := range 3 {
		if r := c.do(0, cmdWrite, uint64(i)*4096, 4096, make([]byte, 4096)); r.errno != 0 {
			t.Fatal(r.errno)
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	want := [][]burstItem{{{0, true}}, {{4096, true}}, {{8192, true}}}
	if fmt.Sprint(be.bursts) != fmt.Sprint(want) {
		t.Fatalf("backend saw %v, want %v", be.bursts, want)
	}
}
