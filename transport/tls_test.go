package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockrep/blockrep/internal/testcerts"
)

// recorder is a TCP proxy that keeps every byte it forwards.
type recorder struct {
	ln   net.Listener
	mu   sync.Mutex
	seen bytes.Buffer
}

func newRecorder(t *testing.T, target string) *recorder {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			cp := func(dst, src net.Conn) {
				io.Copy(io.MultiWriter(dst, r), src)
				dst.Close()
			}
			go cp(s, c)
			go cp(c, s)
		}
	}()
	return r
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen.Write(p)
}

func (r *recorder) contains(p []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Contains(r.seen.Bytes(), p)
}

// tlsLink dials beta from alpha through a recorder, both with TLS, and returns the
// dialer's error and the acceptor's.
func tlsLink(t *testing.T, ca *testcerts.CA, dialCert tls.Certificate, serverCert tls.Certificate, payload []byte) (*recorder, error, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	server := &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientCAs: ca.Pool}
	acc := make(chan error, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			acc <- err
			return
		}
		c, err := AcceptTLS(nc, server, func(h Hello) (Identity, error) {
			return Identity{Resource: "r0", LocalID: 1, PeerID: 0, Secret: "s", PeerName: "alpha"}, nil
		})
		if err == nil {
			_, p, rerr := c.ReadMsg()
			if rerr == nil && !bytes.Equal(p, payload) {
				rerr = io.ErrUnexpectedEOF
			}
			err = rerr
			c.Close()
		}
		acc <- err
	}()
	rec := newRecorder(t, ln.Addr().String())
	client := &tls.Config{Certificates: []tls.Certificate{dialCert}, RootCAs: ca.Pool}
	id := Identity{Resource: "r0", LocalID: 0, PeerID: 1, Secret: "s", TLS: client, PeerName: "beta"}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := DialWith(ctx, nil, rec.ln.Addr().String(), "", id)
	if err == nil {
		c.Send(MsgWrite, payload, nil)
		defer c.Close()
	}
	return rec, err, <-acc
}

// TestTLSLinks: both sides present certificates of the configured CA and each must name
// the node it claims to be; data never crosses in clear.
func TestTLSLinks(t *testing.T) {
	ca, other := testcerts.NewCA(t, "blockrep test CA"), testcerts.NewCA(t, "another CA")
	alpha, beta := ca.Issue(t, "alpha"), ca.Issue(t, "beta")
	payload := bytes.Repeat([]byte("PLAINTEXT-PATTERN-"), 1000)

	rec, derr, aerr := tlsLink(t, ca, alpha, beta, payload)
	if derr != nil || aerr != nil {
		t.Fatalf("alpha to beta over TLS: dial %v, accept %v", derr, aerr)
	}
	if rec.contains([]byte("PLAINTEXT-PATTERN")) {
		t.Fatal("the link carried data in clear")
	}

	// A dialer with a certificate from another CA is refused by the acceptor.
	_, derr, aerr = tlsLink(t, ca, other.Issue(t, "alpha"), beta, payload)
	if aerr == nil || !strings.Contains(aerr.Error(), "TLS") {
		t.Errorf("a certificate from another CA: accept %v, want a TLS refusal", aerr)
	}
	// A valid certificate for another node (gamma claims to be alpha) is refused.
	_, derr, aerr = tlsLink(t, ca, ca.Issue(t, "gamma"), beta, payload)
	if aerr == nil || !strings.Contains(aerr.Error(), "not for that host") {
		t.Errorf("gamma's certificate presented as alpha: accept %v, want refused", aerr)
	}
	// An acceptor whose certificate names another host is refused by the dialer.
	_, derr, _ = tlsLink(t, ca, alpha, ca.Issue(t, "gamma"), payload)
	if derr == nil || !strings.Contains(derr.Error(), "beta") {
		t.Errorf("beta presenting gamma's certificate: dial %v, want refused", derr)
	}
	// Without TLS the same pattern is visible on the wire: the check above can fail.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		if c, err := Accept(nc, func(h Hello) (Identity, error) {
			return Identity{Resource: "r0", LocalID: 1, PeerID: 0, Secret: "s"}, nil
		}); err == nil {
			c.ReadMsg()
			c.Close()
		}
	}()
	plain := newRecorder(t, ln.Addr().String())
	c, err := Dial(context.Background(), plain.ln.Addr().String(), "", Identity{Resource: "r0", LocalID: 0, PeerID: 1, Secret: "s"})
	if err != nil {
		t.Fatal(err)
	}
	c.Send(MsgWrite, payload, nil)
	c.Close()
	deadline := time.Now().Add(2 * time.Second)
	for !plain.contains([]byte("PLAINTEXT-PATTERN")) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !plain.contains([]byte("PLAINTEXT-PATTERN")) {
		t.Fatal("the recorder saw no plaintext without TLS: it records nothing")
	}
}
