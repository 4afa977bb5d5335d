package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// pair runs Accept on one end of a TCP connection and Dial on the other.
func pair(t *testing.T, dialID Identity, lookup Lookup) (*Conn, *Conn, error, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   *Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			ch <- res{nil, err}
			return
		}
		c, err := Accept(nc, lookup)
		ch <- res{c, err}
	}()
	d, derr := Dial(context.Background(), ln.Addr().String(), "", dialID)
	a := <-ch
	return d, a.c, derr, a.err
}

func fixed(secret string) Lookup {
	return func(h Hello) (Identity, error) {
		if h.Resource != "r0" {
			return Identity{}, errors.New("unknown resource")
		}
		return Identity{Resource: "r0", LocalID: h.LocalID, PeerID: h.PeerID, Secret: secret}, nil
	}
}

func TestHelloAuthenticatesBothSides(t *testing.T) {
	for _, tc := range []struct {
		name       string
		dialSecret string
		alg        string
		acceptSec  string
		resource   string
		ok         bool
		why        string
	}{
		{"same secret", "s3cret", "", "s3cret", "r0", true, ""},
		{"same secret, sha512", "s3cret", "sha512", "s3cret", "r0", false, "does not know"}, // acceptor uses sha256
		{"wrong secret", "guess", "", "s3cret", "r0", false, "does not know the shared secret"},
		{"unknown resource", "s3cret", "", "s3cret", "r9", false, "unknown resource"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, a, derr, aerr := pair(t, Identity{Resource: tc.resource, LocalID: 1, PeerID: 0, Secret: tc.dialSecret, Alg: tc.alg}, fixed(tc.acceptSec))
			if tc.ok {
				if derr != nil || aerr != nil {
					t.Fatalf("dial %v, accept %v", derr, aerr)
				}
				if d.PeerID != 0 || a.PeerID != 1 || a.Resource != "r0" {
					t.Fatalf("identities: dialer sees %d, acceptor sees %d/%s", d.PeerID, a.PeerID, a.Resource)
				}
				// Messages flow both ways.
				if err := d.Send(MsgPing, []byte("x"), nil); err != nil {
					t.Fatal(err)
				}
				if mt, p, err := a.ReadMsg(); err != nil || mt != MsgPing || string(p) != "x" {
					t.Fatalf("got %v %q %v", mt, p, err)
				}
				d.Close()
				a.Close()
				return
			}
			if derr == nil {
				d.Close()
				t.Fatal("dial succeeded")
			}
			if !errors.Is(derr, ErrAuth) && !strings.Contains(derr.Error(), tc.why) {
				t.Fatalf("dial error %v, want %q", derr, tc.why)
			}
			if aerr == nil {
				a.Close()
				if tc.why != "does not know the shared secret" && tc.name != "same secret, sha512" {
					t.Fatal("accept succeeded")
				}
			}
		})
	}
}

func TestAcceptorRefusesADialerThatFailsItsProof(t *testing.T) {
	// A dialer that got the acceptor's proof but answers with garbage.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	errc := make(chan error, 1)
	go func() {
		nc, _ := ln.Accept()
		_, err := Accept(nc, fixed("s3cret"))
		errc <- err
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := newConn(nc)
	var e Enc
	e.U32(ProtocolVersion)
	e.Str("r0")
	e.U32(1)
	e.U32(0)
	e.B = append(e.B, make([]byte, nonceSize)...)
	c.Send(MsgHello, e.B, nil)
	c.ReadMsg()
	c.Send(MsgAuth, bytes.Repeat([]byte{1}, 32), nil)
	if err := <-errc; err == nil || !errors.Is(err, ErrAuth) {
		t.Fatalf("acceptor: %v, want an authentication error", err)
	}
	nc.Close()
}

func TestReadMsgRejectsBadFrames(t *testing.T) {
	for _, tc := range []struct {
		name string
		raw  []byte
	}{
		{"bad magic", []byte{0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"oversized", []byte{0x42, 0x52, 0x45, 0x50, 0, 1, 0, 0, 0xff, 0xff, 0xff, 0xff}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe()
			go func() { a.Write(tc.raw); a.Close() }()
			_, _, err := newConn(b).ReadMsg()
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("got %v, want ErrProtocol", err)
			}
		})
	}
}

func TestDecodersRejectTruncatedAndTrailingBytes(t *testing.T) {
	h := Handshake{NodeID: 3, Name: "beta", Settings: "x"}
	enc := h.Encode()
	for n := 0; n < len(enc); n++ {
		if _, err := DecodeHandshake(enc[:n]); err == nil {
			t.Fatalf("handshake truncated to %d bytes decoded", n)
		}
	}
	if _, err := DecodeHandshake(append(enc, 0)); err == nil {
		t.Fatal("handshake with a trailing byte decoded")
	}
	if got, err := DecodeHandshake(enc); err != nil || got.Name != "beta" || got.NodeID != 3 {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	bad := h
	bad.NodeID = 99
	if _, err := DecodeHandshake(bad.Encode()); err == nil {
		t.Fatal("node id 99 accepted")
	}
	d := Data{ID: 1, Off: 4096, Len: 8}
	buf := make([]byte, DataSize+8)
	d.Put(buf)
	if _, _, err := DecodeData(buf, true); err != nil {
		t.Fatal(err)
	}
	if _, _, err := DecodeData(buf[:DataSize+7], true); err == nil {
		t.Fatal("short write payload accepted")
	}
	if _, _, err := DecodeData(buf, false); err == nil {
		t.Fatal("trim with a payload accepted")
	}
	d.Flags = 1 << 9
	d.Put(buf)
	if _, _, err := DecodeData(buf, true); err == nil {
		t.Fatal("unknown data flags accepted")
	}
}

// FuzzDecode feeds arbitrary payloads to every decoder: errors, never panics.
func FuzzDecode(f *testing.F) {
	h := Handshake{NodeID: 1, Name: "alpha", Settings: "s"}
	f.Add(uint16(MsgHandshake), h.Encode())
	f.Add(uint16(MsgWrite), make([]byte, DataSize+4))
	ch := BitmapChunk{Last: true, Data: []byte{1, 2, 3}}
	f.Add(uint16(MsgBitmap), ch.Encode())
	r := Reply{ID: 7, OK: true, Reason: "ok"}
	f.Add(uint16(MsgPromoteReply), r.Encode())
	f.Fuzz(func(t *testing.T, typ uint16, p []byte) {
		switch MsgType(typ % uint16(msgMax)) {
		case MsgHandshake:
			DecodeHandshake(p)
		case MsgWrite, MsgRSData, MsgReadReply:
			DecodeData(p, true)
		case MsgTrim, MsgZero, MsgRSZero, MsgReadReq, MsgOutOfSync:
			DecodeData(p, false)
		case MsgBitmap:
			DecodeBitmapChunk(p)
		case MsgRSDone, MsgNewUUID:
			DecodeGeneration(p)
		case MsgState:
			DecodeState(p)
		case MsgPromoteReply, MsgSyncReply:
			DecodeReply(p)
		case MsgSyncRequest:
			DecodeSyncRequest(p)
		case MsgDisconnect:
			DecodeDisconnect(p)
		default:
			DecodeAck(p)
		}
		// The frame reader too.
		a, b := net.Pipe()
		go func() { a.Write(p); a.Close() }()
		newConn(b).ReadMsg()
	})
}

// TestBufferedMeansAWholeMessage: a reader defers flushing its acknowledgements while
// Buffered is true, so part of the next message must not count — the acks would wait
// for the rest of it to arrive.
func TestBufferedMeansAWholeMessage(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	send, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer send.Close()
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	recv := newConn(nc)
	defer recv.Close()
	frame := func(payload int) []byte {
		b := binary.BigEndian.AppendUint32(nil, frameMagic)
		b = binary.BigEndian.AppendUint16(b, uint16(MsgPing))
		b = binary.BigEndian.AppendUint16(b, 0)
		b = binary.BigEndian.AppendUint32(b, uint32(payload))
		return append(b, make([]byte, payload)...)
	}
	second, third := frame(5000), frame(5000)
	step := func(what string, data []byte, reads int, want bool) {
		t.Helper()
		if _, err := send.Write(data); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // all of it arrives, so one read takes it
		for range reads {
			if _, _, err := recv.ReadMsg(); err != nil {
				t.Fatal(err)
			}
		}
		if got := recv.Buffered(); got != want {
			t.Fatalf("%s: Buffered %v, want %v", what, got, want)
		}
	}
	step("next header cut", append(frame(100), second[:6]...), 1, false)
	step("a whole message next", append(append(second[6:], frame(0)...), third[:2000]...), 1, true)
	step("next payload cut", nil, 1, false)
	step("nothing next", third[2000:], 1, false)
}

// TestUnauthenticatedDialerLearnsNothing: before a dialer proves the secret, the
// acceptor reads at most a small message and answers every refusal with the same line,
// whatever the reason (wrong resource, node id or secret).
func TestUnauthenticatedDialerLearnsNothing(t *testing.T) {
	lookup := func(h Hello) (Identity, error) {
		if h.LocalID != 0 {
			return Identity{}, errors.New("node-id 5 is not this node (0)")
		}
		return Identity{Resource: "r0", LocalID: 0, PeerID: h.PeerID, Secret: "right"}, nil
	}
	for _, id := range []Identity{
		{Resource: "r0", LocalID: 1, PeerID: 5, Secret: "right"}, // wrong node id
		{Resource: "r0", LocalID: 1, PeerID: 0, Secret: "wrong"}, // wrong secret
	} {
		a, b := net.Pipe()
		errc := make(chan error, 1)
		go func() { _, err := Accept(b, lookup); errc <- err }()
		_, err := clientHello(a, id)
		a.Close()
		if err == nil || strings.Contains(err.Error(), "node-id") || id.Secret == "right" && !strings.Contains(err.Error(), refusedLine) {
			t.Errorf("dialer %+v was told %v; want only %q", id, err, refusedLine)
		}
		if aerr := <-errc; aerr == nil {
			t.Errorf("acceptor took dialer %+v", id)
		}
	}
	// A huge Hello is refused from its header, before any allocation of its size.
	a, b := net.Pipe()
	errc := make(chan error, 1)
	go func() { _, err := Accept(b, lookup); errc <- err }()
	hdr := make([]byte, headerSize)
	binary.BigEndian.PutUint32(hdr[0:], frameMagic)
	binary.BigEndian.PutUint16(hdr[4:], uint16(MsgHello))
	binary.BigEndian.PutUint32(hdr[8:], 30<<20)
	go a.Write(hdr)
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "exceeds 1024") {
		t.Fatalf("a 30 MiB Hello: %v", err)
	}
	a.Close()
}
