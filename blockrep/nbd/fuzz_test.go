package nbd

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/blockrep/blockrep/blockrep"
)

// Seed corpora live in testdata/fuzz/Fuzz*; run with
//
//	go test -run '^$' -fuzz FuzzRequest -fuzztime 30s ./blockrep/nbd/

const fuzzSize = 256 << 10

func fuzzServer(b blockrep.Backend) *Server {
	s := testServer(b)
	s.MaxRequest = 4096 // keeps the interesting limits within reach of the fuzzer
	return s
}

// feed writes data to the server as a client, then leaves; the server must neither
// crash nor hang.
func feed(t *testing.T, cs net.Conn, done <-chan struct{}, data []byte) {
	drained := make(chan struct{})
	go func() {
		io.Copy(io.Discard, cs)
		close(drained)
	}()
	cs.SetWriteDeadline(time.Now().Add(10 * time.Second))
	cs.Write(data) // fails once the server hangs up; that is fine
	cs.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("server hung on input %q", data)
	}
	<-drained
}

// FuzzRequest feeds arbitrary transmission-phase bytes. The first byte picks the
// negotiation: bit 0 structured replies, bit 1 base:allocation, bit 2 a read-only
// export, bit 3 an ExtentMapper with holes.
func FuzzRequest(f *testing.F) {
	f.Add([]byte{0x03, 0x25, 0x60, 0x95, 0x13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		mode := data[0]
		rec, _ := newRec(fuzzSize)
		if mode&4 != 0 {
			rec.caps = &blockrep.Caps{ReadOnly: true, Flush: true, Cache: true}
		}
		var b blockrep.Backend = rec
		if mode&8 != 0 {
			b = &mappedBackend{recBackend: rec, holes: [][2]int64{{4096, 8192}, {65536, fuzzSize}}}
		}
		cs, ss := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			fuzzServer(b).ServeConn(ss)
		}()
		c := newTestClient(t, cs)
		c.handshake("disk", mode&1 != 0, mode&3 == 3)
		feed(t, cs, done, data[1:])
		subs, _ := rec.touched()
		for _, s := range subs {
			if s.op != blockrep.OpFlush && blockrep.CheckRange(s.off, s.len, fuzzSize) != nil {
				t.Fatalf("out-of-range %v reached the backend: %+v", s.op, s)
			}
			if mode&4 != 0 && s.op != blockrep.OpFlush {
				t.Fatalf("%v reached a read-only backend", s.op)
			}
		}
	})
}

// FuzzHandshake feeds arbitrary bytes from the client's first one (client flags, then
// options, possibly requests).
func FuzzHandshake(f *testing.F) {
	f.Add(append([]byte{0, 0, 0, 3}, optHeaderBytes(optGo, infoGoData("disk"))...))
	f.Fuzz(func(t *testing.T, data []byte) {
		rec, _ := newRec(fuzzSize)
		cs, ss := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			fuzzServer(rec).ServeConn(ss)
		}()
		feed(t, cs, done, data)
	})
}

func optHeaderBytes(opt uint32, data []byte) []byte {
	b := be.AppendUint64(nil, optMagic)
	b = be.AppendUint32(b, opt)
	b = be.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}
