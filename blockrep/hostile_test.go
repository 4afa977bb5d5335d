package blockrep

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/blockrep/blockrep/internal/syncbuf"
	"github.com/blockrep/blockrep/transport"
)

// frameProxy forwards a peer link; towards the dialer it forwards whole frames, so
// that a test can slip a frame of its own between two of the acceptor's.
type frameProxy struct {
	ln     net.Listener
	target string

	mu  sync.Mutex
	out net.Conn // the current connection towards the dialer
}

func newFrameProxy(t *testing.T, target string) *frameProxy {
	p := &frameProxy{target: target}
	p.ln = serveLocal(t, p.serve)
	return p
}

func (p *frameProxy) serve(c net.Conn) {
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.out = c
	p.mu.Unlock()
	go func() { io.Copy(s, c); s.Close() }()
	hdr := make([]byte, 12)
	for {
		if _, err := io.ReadFull(s, hdr); err != nil {
			break
		}
		body := make([]byte, binary.BigEndian.Uint32(hdr[8:]))
		if _, err := io.ReadFull(s, body); err != nil {
			break
		}
		p.mu.Lock()
		c.Write(hdr)
		c.Write(body)
		p.mu.Unlock()
	}
	c.Close()
}

// inject writes raw bytes towards the dialer between two frames.
func (p *frameProxy) inject(raw []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.out.Write(raw)
}

func frame(magic uint32, t transport.MsgType, body []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, magic)
	b = binary.BigEndian.AppendUint16(b, uint16(t))
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(body)))
	return append(b, body...)
}

func dataMsg(off uint64, n uint32, payload []byte) []byte {
	d := transport.Data{ID: 1 << 40, Off: off, Len: n}
	b := make([]byte, transport.DataSize, transport.DataSize+len(payload))
	d.Put(b)
	return append(b, payload...)
}

// TestMalformedPeerMessageClosesTheLinkAndTouchesNoData: an authenticated peer that
// sends a malformed or misplaced message loses its connection, with the reason logged,
// and the receiver's disk is left exactly as it was; the link then comes back.
func TestMalformedPeerMessageClosesTheLinkAndTouchesNoData(t *testing.T) {
	const size = 8 << 20
	var proxy *frameProxy
	var log syncbuf.Buffer
	n := testClusterWith(t, 2, size, ProtocolC, func(i int, cfg *Config) {
		if i == 1 {
			// beta dials alpha through the proxy; the proxy injects towards beta.
			proxy = newFrameProxy(t, cfg.Peers[0].Address)
			cfg.Peers[0].Address = proxy.ln.Addr().String()
			cfg.Logger = slog.New(slog.NewTextHandler(&log, nil))
		}
	})
	a, b := promotedPair(t, n)
	dataSize := b.v.Size()
	page := bytes.Repeat([]byte{0xEE}, 4096)
	for _, tc := range []struct {
		name, reason string
		raw          []byte
	}{
		{"write beyond the end", "beyond the end", frame(0x42524550, transport.MsgWrite, dataMsg(uint64(dataSize), 4096, page))},
		{"write straddling the end", "beyond the end", frame(0x42524550, transport.MsgWrite, dataMsg(uint64(dataSize)-2048, 4096, page))},
		{"length does not match the payload", "does not match", frame(0x42524550, transport.MsgWrite, dataMsg(0, 8192, page))},
		{"truncated data header", "data message of", frame(0x42524550, transport.MsgWrite, []byte{1, 2, 3})},
		{"unknown data flags", "unknown data flags", frame(0x42524550, transport.MsgTrim, func() []byte {
			m := dataMsg(0, 4096, nil)
			m[23] = 0x80
			return m
		}())},
		{"resync data for an UpToDate disk", "resync data for a UpToDate disk", frame(0x42524550, transport.MsgRSData, dataMsg(0, 4096, page))},
		{"unknown message type", "unexpected message", frame(0x42524550, 0x7fff, nil)},
		{"bad frame magic", "bad frame magic", frame(0xdeadbeef, transport.MsgWrite, dataMsg(0, 4096, page))},
		{"oversized frame", "exceeds", frame(0x42524550, transport.MsgWrite, nil)[:8:8]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := tc.raw
			if tc.name == "oversized frame" {
				raw = binary.BigEndian.AppendUint32(raw, transport.MaxPayload+1)
			}
			write(t, a.v, 0, randBytes(64<<10))
			waitFor(t, "peer caught up", func() bool {
				a.v.peersNow()[0].pendMu.Lock()
				defer a.v.peersNow()[0].pendMu.Unlock()
				return len(a.v.peersNow()[0].pending) == 0
			})
			before := dataSum(t, b)
			mark := len(log.String())
			proxy.inject(raw)
			// The link goes down with the reason logged: "closing connection" for a
			// message the receive loop refused, "connection lost" for a broken frame.
			waitFor(t, "beta to close the link, saying why", func() bool {
				for _, line := range strings.Split(log.String()[mark:], "\n") {
					if strings.Contains(line, tc.reason) && (strings.Contains(line, "closing connection") || strings.Contains(line, "connection lost")) {
						return true
					}
				}
				return false
			})
			if dataSum(t, b) != before {
				t.Fatal("a malformed message changed beta's disk")
			}
			waitFor(t, "the link back", func() bool { return connected(a, b) })
			waitSynced(t, a, b)
		})
	}
	if dataSum(t, a) != dataSum(t, b) {
		t.Fatal("replicas differ after the malformed messages")
	}
}
