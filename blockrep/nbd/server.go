package nbd

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/blockrep/blockrep/blockrep"
)

// Export is what a client can attach to.
type Export struct {
	Name, Description string
	Backend           blockrep.Backend
}

// Kind is the kind of an observed request.
type Kind uint8

const (
	KindRead Kind = iota
	KindWrite
	KindTrim
	KindZero
	KindFlush
	NumKinds // how many kinds there are, to size arrays indexed by Kind
)

var kindNames = [NumKinds]string{"read", "write", "trim", "zero", "flush"}

func (k Kind) String() string { return kindNames[k] }

// kindOf maps a write-class Op; the Ops follow read in the same order.
func kindOf(op blockrep.Op) Kind { return Kind(op) + 1 }

// Observer is told of each READ, WRITE, TRIM, WRITE_ZEROES and FLUSH the backend
// answered: n bytes covered (0 for FLUSH), d from its arrival (with a WRITE's payload)
// until it was answered, failed when the reply is an error. Requests refused before reaching the
// backend are not observed. It runs on the request path, from any goroutine: it must
// be cheap and must not block.
type Observer interface {
	Observe(k Kind, n int64, d time.Duration, failed bool)
}

// epoch is the origin of Request.Arrived (monotonic: time.Since reads the monotonic clock).
var epoch = time.Now()

// ErrUnknownExport is returned by Lookup for a name it does not serve; the client gets
// NBD_REP_ERR_UNKNOWN. Any other Lookup error becomes NBD_REP_ERR_POLICY. The error's
// text is sent to the client (nbdinfo prints it).
var ErrUnknownExport = errors.New("unknown export")

// DefaultMaxRequest is the default largest READ/WRITE payload; proto.md asks servers
// to accept at least this much.
const DefaultMaxRequest = 32 << 20

// Server serves NBD clients. Set the fields before the first Serve or ServeConn and do
// not change them afterwards.
type Server struct {
	// Lookup resolves an export name ("" is the default export). It is called for
	// NBD_OPT_GO, NBD_OPT_INFO and NBD_OPT_EXPORT_NAME; nil serves nothing.
	Lookup func(name string) (*Export, error)
	// List names the exports for NBD_OPT_LIST; nil refuses to list.
	List func() []string
	// Logger gets connection events; nil means slog.Default().
	Logger *slog.Logger
	// MaxRequest bounds the payload of one request (default 32 MiB, at least 4096).
	MaxRequest int
	// HandshakeTimeout bounds the option phase of a connection (default 30 s; < 0 none),
	// so a client that stalls mid-option cannot hold a goroutine forever.
	HandshakeTimeout time.Duration
	// Observer, when set, sees every request the backend answers (metrics); nil costs
	// nothing on the request path.
	Observer Observer

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	active    int        // running ServeConn calls
	idle      *sync.Cond // signalled when active drops to 0
	seq       uint64     // Disconnect calls so far
	dropped   map[string]uint64
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Server) maxRequest() int {
	switch n := s.MaxRequest; {
	case n <= 0:
		return DefaultMaxRequest
	case n < 4096:
		return 4096 // proto.md: maximum at least the preferred block size
	case n > 1<<30:
		return 1 << 30
	default:
		return n
	}
}

func (s *Server) handshakeTimeout() time.Duration {
	if s.HandshakeTimeout == 0 {
		return 30 * time.Second
	}
	return s.HandshakeTimeout
}

// initLocked lazily sets up the zero Server.
func (s *Server) initLocked() {
	if s.conns == nil {
		s.listeners = make(map[net.Listener]struct{})
		s.conns = make(map[*conn]struct{})
		s.dropped = make(map[string]uint64)
		s.idle = sync.NewCond(&s.mu)
	}
}

// Serve accepts clients on l until Close; it returns nil after Close, else the accept
// error. Transient errors (out of file descriptors) are retried.
func (s *Server) Serve(l net.Listener) error { return s.ServeTLS(l, TLSPolicy{}) }

// TLSPolicy is what a listener offers of NBD_OPT_STARTTLS: nothing (Config nil), TLS on
// request, or TLS required before any other option (Require).
type TLSPolicy struct {
	Config  *tls.Config
	Require bool
}

// ServeTLS is Serve with a TLS policy for the listener's clients.
func (s *Server) ServeTLS(l net.Listener, tp TLSPolicy) error {
	s.mu.Lock()
	s.initLocked()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()

	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			if temporary(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.logger().Warn("nbd: accept", "err", err, "retry_in", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		go s.serveConn(nc, tp)
	}
}

func temporary(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS) ||
		errors.Is(err, syscall.ENOMEM)
}

// ServeConn serves one client and blocks until it is gone and every request it
// submitted has completed. It closes nc.
func (s *Server) ServeConn(nc net.Conn) { s.serveConn(nc, TLSPolicy{}) }

func (s *Server) serveConn(nc net.Conn, tp TLSPolicy) {
	c := newConn(s, nc)
	c.tls = tp
	s.mu.Lock()
	s.initLocked()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.active++
	s.conns[c] = struct{}{}
	s.mu.Unlock()

	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.active--
		if s.active == 0 {
			s.idle.Broadcast()
		}
		s.mu.Unlock()
	}()
	c.serve()
}

// Close stops every listener and drops every client: clients in the option phase at
// once; in the transmission phase, no further requests are read, in-flight ones are
// completed and answered, then the connection is closed. Close returns when all of that
// is done, so the caller may close the backends afterwards. It must not be called from
// a goroutine that completes requests.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.initLocked()
	s.closed = true
	var err error
	for l := range s.listeners {
		if e := l.Close(); e != nil && err == nil && !errors.Is(e, net.ErrClosed) {
			err = e
		}
	}
	for c := range s.conns {
		c.drop()
	}
	for s.active > 0 {
		s.idle.Wait()
	}
	return err
}

// Clients counts the clients in the transmission phase on export (its canonical name),
// including dropped ones whose in-flight requests have not completed yet: zero means no
// client can reach the export's backend any more.
func (s *Server) Clients(export string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.conns {
		if c.transmitting && c.name == export {
			n++
		}
	}
	return n
}

// Disconnect drops the clients attached to export, as Close does, without waiting:
// poll Clients until it reports zero. A client that was just looking the export up is
// refused rather than attached.
func (s *Server) Disconnect(export string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.initLocked()
	s.seq++
	s.dropped[export] = s.seq
	for c := range s.conns {
		if c.transmitting && c.name == export {
			c.drop()
		}
	}
}

// lookup resolves name; seq lets attach detect a Disconnect that raced with it.
func (s *Server) lookup(name string) (exp *Export, seq uint64, err error) {
	s.mu.Lock()
	seq = s.seq
	s.mu.Unlock()
	if s.Lookup == nil {
		return nil, 0, ErrUnknownExport
	}
	exp, err = s.Lookup(name)
	if err == nil && (exp == nil || exp.Backend == nil) {
		err = ErrUnknownExport
	}
	return exp, seq, err
}

var errDisconnected = errors.New("export was disconnected by the operator")

// attach moves c into the transmission phase on export, unless the server is closing
// or the export was disconnected since lookup.
func (s *Server) attach(c *conn, export string, seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return blockrep.ErrShuttingDown
	}
	if s.dropped[export] > seq {
		return errDisconnected
	}
	c.transmitting = true
	c.name = export
	c.nc.SetDeadline(time.Time{})
	return nil
}
