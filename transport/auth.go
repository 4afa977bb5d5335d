package transport

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"errors"
	"fmt"
	"hash"
	"net"
	"time"
)

// ProtocolVersion is bumped on any incompatible wire change.
const ProtocolVersion = 1

const nonceSize = 32

// ErrAuth is returned when the peer fails (or refuses) authentication.
var ErrAuth = errors.New("peer authentication failed")

// Identity is what a connection is for: which resource, between which nodes, and the
// secret both must know.
type Identity struct {
	Resource string
	LocalID  int
	PeerID   int
	Secret   string
	Alg      string // cram-hmac-alg: "" (= sha256), sha1, sha256, sha512
	// TLS, when set, runs the link over TLS (1.3, both sides present certificates signed
	// by its CA): for Dial, the client configuration; the peer's certificate must name
	// PeerName (its on section's host name). The HMAC exchange still runs inside.
	TLS      *tls.Config
	PeerName string
}

func macFunc(alg string) (func() hash.Hash, error) {
	switch alg {
	case "", "sha256":
		return sha256.New, nil
	case "sha1":
		return sha1.New, nil
	case "sha512":
		return sha512.New, nil
	}
	return nil, fmt.Errorf("unsupported cram-hmac-alg %q", alg)
}

func proof(alg, secret, role, resource string, dialer, acceptor int, n1, n2 []byte) []byte {
	h, _ := macFunc(alg)
	m := hmac.New(h, []byte(secret))
	var e Enc
	e.Str(role)
	e.Str(resource)
	e.U32(uint32(dialer))
	e.U32(uint32(acceptor))
	e.B = append(e.B, n1...)
	e.B = append(e.B, n2...)
	m.Write(e.B)
	return m.Sum(nil)
}

func nonce() []byte {
	b := make([]byte, nonceSize)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}

// preAuthMax bounds a message from a peer that has not authenticated yet.
const preAuthMax = 1024

// refusedLine is all an unauthenticated dialer is told when it is refused.
const refusedLine = "refused (wrong resource, node ids or shared-secret: see the peer's log)"

// HandshakeTimeout bounds the hello exchange.
var HandshakeTimeout = 5 * time.Second

// DialFunc opens a connection to addr from local (the local address may be ignored).
type DialFunc func(ctx context.Context, addr, local string) (net.Conn, error)

// Dial connects to addr over TCP and authenticates as id.LocalID towards id.PeerID.
func Dial(ctx context.Context, addr string, localAddr string, id Identity) (*Conn, error) {
	return DialWith(ctx, nil, addr, localAddr, id)
}

// DialWith is Dial through dial (nil: TCP).
func DialWith(ctx context.Context, dial DialFunc, addr, localAddr string, id Identity) (*Conn, error) {
	if _, err := macFunc(id.Alg); err != nil {
		return nil, err
	}
	if dial == nil {
		dial = dialTCP
	}
	nc, err := dial(ctx, addr, localAddr)
	if err != nil {
		return nil, err
	}
	if id.TLS != nil {
		cfg := id.TLS.Clone()
		cfg.ServerName = id.PeerName // the peer's certificate must name the peer's host
		cfg.MinVersion = tls.VersionTLS13
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("%w: TLS with %s: %v", ErrAuth, id.PeerName, err)
		}
		nc = tc
	}
	c, err := clientHello(nc, id)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

func dialTCP(ctx context.Context, addr, localAddr string) (net.Conn, error) {
	d := net.Dialer{Timeout: HandshakeTimeout}
	if localAddr != "" {
		if la, err := net.ResolveTCPAddr("tcp", localAddr); err == nil {
			la.Port = 0
			d.LocalAddr = la
		}
	}
	return d.DialContext(ctx, "tcp", addr)
}

func clientHello(nc net.Conn, id Identity) (*Conn, error) {
	c := newConn(nc)
	nc.SetDeadline(time.Now().Add(HandshakeTimeout))
	defer nc.SetDeadline(time.Time{})
	nd := nonce()
	var e Enc
	e.U32(ProtocolVersion)
	e.Str(id.Resource)
	e.U32(uint32(id.LocalID))
	e.U32(uint32(id.PeerID))
	e.B = append(e.B, nd...)
	if err := c.Send(MsgHello, e.B, nil); err != nil {
		return nil, err
	}
	t, p, err := c.readMsgMax(preAuthMax)
	if err != nil {
		return nil, err
	}
	if t == MsgAuthResult {
		return nil, fmt.Errorf("%w: peer refused: %s", ErrAuth, decodeRefusal(p))
	}
	if t != MsgHelloAck {
		return nil, protoErr("expected HelloAck, got %s", t)
	}
	d := Dec{B: p}
	ver := d.U32()
	na := append([]byte(nil), d.take(nonceSize)...)
	mac := append([]byte(nil), d.Rest()...)
	if d.Err != nil {
		return nil, d.Err
	}
	if ver != ProtocolVersion {
		return nil, fmt.Errorf("peer speaks protocol version %d, we speak %d", ver, ProtocolVersion)
	}
	if !hmac.Equal(mac, proof(id.Alg, id.Secret, "acceptor", id.Resource, id.LocalID, id.PeerID, nd, na)) {
		return nil, fmt.Errorf("%w: peer does not know the shared secret", ErrAuth)
	}
	if err := c.Send(MsgAuth, proof(id.Alg, id.Secret, "dialer", id.Resource, id.LocalID, id.PeerID, na, nd), nil); err != nil {
		return nil, err
	}
	t, p, err = c.readMsgMax(preAuthMax)
	if err != nil {
		return nil, err
	}
	if t != MsgAuthResult {
		return nil, protoErr("expected AuthResult, got %s", t)
	}
	if r := decodeRefusal(p); r != "" {
		return nil, fmt.Errorf("%w: peer refused: %s", ErrAuth, r)
	}
	c.LocalID, c.PeerID, c.Resource = id.LocalID, id.PeerID, id.Resource
	return c, nil
}

func decodeRefusal(p []byte) string {
	d := Dec{B: p}
	s := d.Str()
	if d.Err != nil {
		return "malformed refusal"
	}
	return s
}

// Hello is what a dialing peer claims before it is authenticated.
type Hello struct {
	Resource string
	PeerID   int // the dialer
	LocalID  int // whom it wants
}

// Lookup resolves a claimed hello to our identity for it (with the secret), or refuses.
type Lookup func(h Hello) (Identity, error)

// Accept authenticates an incoming connection. On error the connection is closed and
// the error says why (for the log).
func Accept(nc net.Conn, lookup Lookup) (*Conn, error) { return AcceptTLS(nc, nil, lookup) }

// AcceptTLS is Accept for a listener whose links run over TLS (server: the server
// configuration, which must require and verify client certificates). The dialer's
// certificate must name the peer its hello claims to be (Identity.PeerName).
func AcceptTLS(nc net.Conn, server *tls.Config, lookup Lookup) (*Conn, error) {
	var tc *tls.Conn
	if server != nil {
		cfg := server.Clone()
		cfg.MinVersion = tls.VersionTLS13
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		tc = tls.Server(nc, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), HandshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("connection from %s refused: %w: TLS: %v", nc.RemoteAddr(), ErrAuth, err)
		}
		nc = tc
		inner := lookup
		lookup = func(h Hello) (Identity, error) {
			id, err := inner(h)
			if err != nil {
				return id, err
			}
			certs := tc.ConnectionState().PeerCertificates
			if len(certs) == 0 {
				return id, errors.New("no client certificate")
			}
			if err := certs[0].VerifyHostname(id.PeerName); err != nil {
				return id, fmt.Errorf("node-id %d is %s, but its certificate is not for that host: %v", h.PeerID, id.PeerName, err)
			}
			return id, nil
		}
	}
	c, err := serverHello(nc, lookup)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("connection from %s refused: %w", nc.RemoteAddr(), err)
	}
	return c, nil
}

func serverHello(nc net.Conn, lookup Lookup) (*Conn, error) {
	c := newConn(nc)
	nc.SetDeadline(time.Now().Add(HandshakeTimeout))
	defer nc.SetDeadline(time.Time{})
	// Until the dialer proves it knows the secret it gets a small buffer and learns
	// nothing: every refusal it sees is the same line; the reason goes to our log.
	t, p, err := c.readMsgMax(preAuthMax)
	if err != nil {
		return nil, err
	}
	if t != MsgHello {
		return nil, protoErr("expected Hello, got %s", t)
	}
	d := Dec{B: p}
	ver := d.U32()
	h := Hello{Resource: d.Str(), PeerID: int(d.U32()), LocalID: int(d.U32())}
	nd := append([]byte(nil), d.take(nonceSize)...)
	if err := d.End(); err != nil {
		return nil, err
	}
	refuse := func(msg string) error {
		var e Enc
		e.Str(refusedLine)
		c.Send(MsgAuthResult, e.B, nil)
		return fmt.Errorf("%w: %s", ErrAuth, msg)
	}
	if ver != ProtocolVersion {
		return nil, refuse(fmt.Sprintf("protocol version %d not supported (want %d)", ver, ProtocolVersion))
	}
	id, err := lookup(h)
	if err != nil {
		return nil, refuse(err.Error())
	}
	na := nonce()
	var e Enc
	e.U32(ProtocolVersion)
	e.B = append(e.B, na...)
	e.B = append(e.B, proof(id.Alg, id.Secret, "acceptor", id.Resource, h.PeerID, h.LocalID, nd, na)...)
	if err := c.Send(MsgHelloAck, e.B, nil); err != nil {
		return nil, err
	}
	t, p, err = c.readMsgMax(preAuthMax)
	if err != nil {
		return nil, err
	}
	if t != MsgAuth {
		return nil, protoErr("expected Auth, got %s", t)
	}
	if !hmac.Equal(p, proof(id.Alg, id.Secret, "dialer", id.Resource, h.PeerID, h.LocalID, na, nd)) {
		return nil, refuse(fmt.Sprintf("node %d of %s failed authentication (shared-secret mismatch?)", h.PeerID, h.Resource))
	}
	var ok Enc
	ok.Str("")
	if err := c.Send(MsgAuthResult, ok.B, nil); err != nil {
		return nil, err
	}
	c.LocalID, c.PeerID, c.Resource = id.LocalID, id.PeerID, id.Resource
	return c, nil
}
