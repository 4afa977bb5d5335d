package nbd

import (
	"bufio"
	"io"
	"testing"

	"github.com/blockrep/blockrep/blockrep"
)

// go test -run '^$' -bench . -benchmem ./blockrep/nbd/
//
// In-process, queue depth 32, over a unix socket pair: the client below allocates
// nothing either, so allocs/op is the server's.

func BenchmarkRead4K(b *testing.B)  { benchQD(b, cmdRead, 4096, 32) }
func BenchmarkWrite4K(b *testing.B) { benchQD(b, cmdWrite, 4096, 32) }

func benchQD(b *testing.B, typ uint16, bs, qd int) {
	const size = 64 << 20
	dev := blockrep.NewMemDevice(size)
	srv := testServer(blockrep.DeviceBackend{Dev: dev})
	cs, ss := socketPair(b)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeConn(ss)
	}()
	cl := newTestClient(b, cs)
	cl.handshake("disk", false, false)

	reqLen := headerLen
	if typ == cmdWrite {
		reqLen += bs
	}
	free := make(chan int, qd) // free request slots; a slot's index is its handle
	for i := range qd {
		free <- i
	}
	sent := make(chan struct{})
	b.SetBytes(int64(bs))
	b.ReportAllocs()
	b.ResetTimer()

	go func() { // sender: gathers every free slot into one write
		defer close(sent)
		wbuf := make([]byte, 0, qd*reqLen)
		payload := make([]byte, bs)
		var off uint64
		for n := 0; n < b.N; {
			wbuf = wbuf[:0]
			slot := <-free
			for {
				off = (off + 7919*4096) % (size - uint64(bs))
				wbuf = appendRequest(wbuf, 0, typ, uint64(slot), off&^4095, uint32(bs))
				if typ == cmdWrite {
					wbuf = append(wbuf, payload...)
				}
				n++
				if n == b.N {
					break
				}
				select {
				case slot = <-free:
					continue
				default:
				}
				break
			}
			if _, err := cs.Write(wbuf); err != nil {
				b.Error(err)
				return
			}
		}
	}()

	br := bufio.NewReaderSize(cs, 256<<10)
	var hdr [16]byte
	data := make([]byte, bs)
	for range b.N {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			b.Fatal(err)
		}
		if be.Uint32(hdr[:]) != simpleReplyMagic || be.Uint32(hdr[4:]) != 0 {
			b.Fatalf("bad reply %x", hdr)
		}
		if typ == cmdRead {
			if _, err := io.ReadFull(br, data); err != nil {
				b.Fatal(err)
			}
		}
		free <- int(be.Uint64(hdr[8:]))
	}
	b.StopTimer()
	<-sent
	cs.Write(request(0, cmdDisc, 0, 0, 0))
	<-done
}
