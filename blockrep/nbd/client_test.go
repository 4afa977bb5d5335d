package nbd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blockrep/blockrep/blockrep"
)

// A minimal NBD client speaking raw bytes, so tests can send anything.

type testClient struct {
	t          testing.TB
	nc         net.Conn
	br         *bufio.Reader
	structured bool
	mu         sync.Mutex
	reads      map[uint64]uint32 // READ handles awaiting a simple reply, with their length
	partial    map[uint64]*reply
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

type reply struct {
	handle  uint64
	errno   uint32
	msg     string
	data    []byte   // READ payload
	ctxID   uint32   // BLOCK_STATUS context
	extents []uint32 // BLOCK_STATUS (length, flags) pairs
	chunks  []uint16 // structured chunk types, in order; nil for a simple reply
}

// socketPair returns both ends of a connected unix stream socket: kernel buffering
// lets a client pipeline without a reader goroutine.
func socketPair(t testing.TB) (net.Conn, net.Conn) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conv := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return conv(fds[0]), conv(fds[1])
}

// serve runs srv on one end of a socket pair; the channel closes when ServeConn returns.
func serve(t testing.TB, srv *Server) (*testClient, <-chan struct{}) {
	a, b := socketPair(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeConn(b)
	}()
	cl := newTestClient(t, a)
	t.Cleanup(func() {
		a.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("ServeConn did not return after the client closed")
		}
	})
	return cl, done
}

func newTestClient(t testing.TB, nc net.Conn) *testClient {
	return &testClient{t: t, nc: nc, br: bufio.NewReaderSize(nc, 1<<20),
		reads: map[uint64]uint32{}, partial: map[uint64]*reply{}}
}

func (c *testClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("client write: %v", err)
	}
}

func (c *testClient) readFull(n int) []byte {
	c.t.Helper()
	b := make([]byte, n)
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c.br, b); err != nil {
		c.t.Fatalf("client read %d bytes: %v", n, err)
	}
	return b
}

// greet reads the server's greeting and sends client flags.
func (c *testClient) greet(flags uint32) {
	c.t.Helper()
	g := c.readFull(18)
	if m := be.Uint64(g); m != nbdMagic {
		c.t.Fatalf("greeting magic %#x", m)
	}
	if m := be.Uint64(g[8:]); m != optMagic {
		c.t.Fatalf("greeting option magic %#x", m)
	}
	if f := be.Uint16(g[16:]); f != flagFixedNewstyle|flagNoZeroes {
		c.t.Fatalf("handshake flags %#x", f)
	}
	c.write(be.AppendUint32(nil, flags))
}

func (c *testClient) sendOpt(opt uint32, data []byte) {
	c.t.Helper()
	b := be.AppendUint64(nil, optMagic)
	b = be.AppendUint32(b, opt)
	b = be.AppendUint32(b, uint32(len(data)))
	c.write(append(b, data...))
}

func (c *testClient) readOptReply() optReply {
	c.t.Helper()
	h := c.readFull(20)
	if m := be.Uint64(h); m != optReplyMagic {
		c.t.Fatalf("option reply magic %#x", m)
	}
	return optReply{opt: be.Uint32(h[8:]), typ: be.Uint32(h[12:]), data: c.readFull(int(be.Uint32(h[16:])))}
}

// optReplies reads replies up to and including the final one (ACK or an error).
func (c *testClient) optReplies() []optReply {
	c.t.Helper()
	var rs []optReply
	for {
		r := c.readOptReply()
		rs = append(rs, r)
		if r.typ == repAck || r.typ&(1<<31) != 0 {
			return rs
		}
	}
}

func infoGoData(name string, infos ...uint16) []byte {
	b := be.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = be.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = be.AppendUint16(b, i)
	}
	return b
}

func metaData(name string, queries ...string) []byte {
	b := be.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = be.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = be.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// exportInfo is what NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE said.
type exportInfo struct {
	size                 uint64
	flags                uint16
	name, desc           string
	minBS, prefBS, maxBS uint32
}

func parseInfos(t testing.TB, rs []optReply) exportInfo {
	t.Helper()
	var ei exportInfo
	for _, r := range rs {
		if r.typ != repInfo {
			continue
		}
		switch be.Uint16(r.data) {
		case infoExport:
			if len(r.data) != 12 {
				t.Fatalf("NBD_INFO_EXPORT of %d bytes", len(r.data))
			}
			ei.size, ei.flags = be.Uint64(r.data[2:]), be.Uint16(r.data[10:])
		case infoName:
			ei.name = string(r.data[2:])
		case infoDescription:
			ei.desc = string(r.data[2:])
		case infoBlockSize:
			ei.minBS, ei.prefBS, ei.maxBS = be.Uint32(r.data[2:]), be.Uint32(r.data[6:]), be.Uint32(r.data[10:])
		}
	}
	return ei
}

// handshake negotiates: structured replies and base:allocation if asked, then GO.
func (c *testClient) handshake(name string, structured, meta bool) exportInfo {
	c.t.Helper()
	c.greet(clientFixedNewstyle | clientNoZeroes)
	if structured {
		c.sendOpt(optStructuredReply, nil)
		if r := c.readOptReply(); r.typ != repAck {
			c.t.Fatalf("STRUCTURED_REPLY: reply %#x", r.typ)
		}
		c.structured = true
	}
	if meta {
		c.sendOpt(optSetMetaContext, metaData(name, metaContext))
		rs := c.optReplies()
		if len(rs) != 2 || rs[0].typ != repMetaContext || rs[1].typ != repAck {
			c.t.Fatalf("SET_META_CONTEXT replies %+v", rs)
		}
	}
	c.sendOpt(optGo, infoGoData(name, infoBlockSize))
	rs := c.optReplies()
	if last := rs[len(rs)-1]; last.typ != repAck {
		c.t.Fatalf("GO %q: reply %#x %q", name, last.typ, last.data)
	}
	return parseInfos(c.t, rs)
}

func request(flags, typ uint16, h, off uint64, n uint32) []byte {
	return appendRequest(make([]byte, 0, 28), flags, typ, h, off, n)
}

func appendRequest(b []byte, flags, typ uint16, h, off uint64, n uint32) []byte {
	b = be.AppendUint32(b, requestMagic)
	b = be.AppendUint16(b, flags)
	b = be.AppendUint16(b, typ)
	b = be.AppendUint64(b, h)
	b = be.AppendUint64(b, off)
	return be.AppendUint32(b, n)
}

// send writes one request (with payload for WRITE).
func (c *testClient) send(flags, typ uint16, h, off uint64, n uint32, payload []byte) {
	c.t.Helper()
	if typ == cmdRead {
		c.mu.Lock()
		c.reads[h] = n
		c.mu.Unlock()
	}
	c.write(append(request(flags, typ, h, off, n), payload...))
}

// recv reads until one reply is complete.
func (c *testClient) recv() (*reply, error) {
	for {
		c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		var m [4]byte
		if _, err := io.ReadFull(c.br, m[:]); err != nil {
			return nil, err
		}
		switch be.Uint32(m[:]) {
		case simpleReplyMagic:
			var h [12]byte
			if _, err := io.ReadFull(c.br, h[:]); err != nil {
				return nil, err
			}
			r := &reply{errno: be.Uint32(h[:]), handle: be.Uint64(h[4:])}
			c.mu.Lock()
			n, isRead := c.reads[r.handle]
			delete(c.reads, r.handle)
			c.mu.Unlock()
			if c.structured && isRead {
				return nil, fmt.Errorf("simple reply to READ %#x with structured replies", r.handle)
			}
			if isRead && r.errno == 0 {
				r.data = make([]byte, n)
				if _, err := io.ReadFull(c.br, r.data); err != nil {
					return nil, err
				}
			}
			return r, nil
		case chunkReplyMagic:
			if !c.structured {
				return nil, errors.New("structured reply chunk without negotiation")
			}
			var h [16]byte
			if _, err := io.ReadFull(c.br, h[:]); err != nil {
				return nil, err
			}
			flags, typ, handle, n := be.Uint16(h[:]), be.Uint16(h[2:]), be.Uint64(h[4:]), be.Uint32(h[12:])
			p := make([]byte, n)
			if _, err := io.ReadFull(c.br, p); err != nil {
				return nil, err
			}
			r := c.partial[handle]
			if r == nil {
				r = &reply{handle: handle}
				c.partial[handle] = r
			}
			r.chunks = append(r.chunks, typ)
			switch typ {
			case replyTypeNone:
				if n != 0 {
					return nil, fmt.Errorf("NONE chunk of %d bytes", n)
				}
			case replyTypeOffsetData:
				if n < 9 {
					return nil, fmt.Errorf("OFFSET_DATA chunk of %d bytes", n)
				}
				r.data = append(r.data, p[8:]...) // single chunk per reply from our server
			case replyTypeBlockStatus:
				if n < 12 || (n-4)%8 != 0 {
					return nil, fmt.Errorf("BLOCK_STATUS chunk of %d bytes", n)
				}
				r.ctxID = be.Uint32(p)
				for i := 4; i < len(p); i += 4 {
					r.extents = append(r.extents, be.Uint32(p[i:]))
				}
			case replyTypeError:
				if n < 6 || int(be.Uint16(p[4:])) > int(n)-6 {
					return nil, fmt.Errorf("ERROR chunk malformed (%d bytes)", n)
				}
				r.errno = be.Uint32(p)
				if r.errno == 0 {
					return nil, errors.New("ERROR chunk with error 0")
				}
				r.msg = string(p[6 : 6+be.Uint16(p[4:])])
			default:
				return nil, fmt.Errorf("unexpected chunk type %d", typ)
			}
			if flags&replyFlagDone != 0 {
				delete(c.partial, handle)
				c.mu.Lock()
				delete(c.reads, handle)
				c.mu.Unlock()
				return r, nil
			}
		default:
			return nil, fmt.Errorf("bad reply magic %#x", be.Uint32(m[:]))
		}
	}
}

func (c *testClient) mustRecv() *reply {
	c.t.Helper()
	r, err := c.recv()
	if err != nil {
		c.t.Fatalf("reading reply: %v", err)
	}
	return r
}

// do sends one request and waits for its reply.
func (c *testClient) do(flags, typ uint16, off uint64, n uint32, payload []byte) *reply {
	c.t.Helper()
	h := uint64(0xc0ffee00) + uint64(typ)
	c.send(flags, typ, h, off, n, payload)
	r := c.mustRecv()
	if r.handle != h {
		c.t.Fatalf("reply handle %#x, want %#x", r.handle, h)
	}
	return r
}

// expectHangUp asserts the server closes the connection without sending anything more.
func (c *testClient) expectHangUp(done <-chan struct{}) {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c.br)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		c.t.Fatalf("waiting for hang-up: %v (after %d bytes)", err, len(b))
	}
	if len(b) != 0 {
		c.t.Fatalf("server sent %d unexpected bytes before hanging up: %x", len(b), b[:min(len(b), 64)])
	}
	if done != nil {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			c.t.Fatal("ServeConn still running after hang-up")
		}
	}
}

// recBackend records what reaches the backend, and can fail or map extents.
type recBackend struct {
	blockrep.DeviceBackend
	caps *blockrep.Caps // overrides the device's caps

	mu       sync.Mutex
	subs     []sub
	readsN   int
	failSub  error
	failRead error
}

func newRec(size int64) (*recBackend, *blockrep.MemDevice) {
	m := blockrep.NewMemDevice(size)
	return &recBackend{DeviceBackend: blockrep.DeviceBackend{Dev: m}}, m
}

func (r *recBackend) Caps() blockrep.Caps {
	if r.caps != nil {
		return *r.caps
	}
	return r.DeviceBackend.Caps()
}

func (r *recBackend) ReadAt(p []byte, off int64) error {
	r.mu.Lock()
	r.readsN++
	err := r.failRead
	r.mu.Unlock()
	if err != nil {
		return err
	}
	return r.DeviceBackend.ReadAt(p, off)
}

func (r *recBackend) Submit(q *blockrep.Request, b *blockrep.Batch) {
	r.mu.Lock()
	r.subs = append(r.subs, sub{q.Op, q.Flags, q.Off, q.Len})
	err := r.failSub
	r.mu.Unlock()
	if err != nil {
		q.Owner.Complete(q, err, b)
		return
	}
	r.DeviceBackend.Submit(q, b)
}

// sub is what the backend was asked to do.
type sub struct {
	op       blockrep.Op
	flags    blockrep.ReqFlags
	off, len int64
}

func (r *recBackend) touched() (subs []sub, reads int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.subs), r.readsN
}

// mappedBackend adds an ExtentMapper with fixed holes to a recBackend.
type mappedBackend struct {
	*recBackend
	holes [][2]int64 // sorted [off, end)
	err   error
}

func (m *mappedBackend) Extents(off, n int64, fn func(off, n int64, hole bool) bool) error {
	if m.err != nil {
		return m.err
	}
	end := off + n
	for off < end {
		next, hole := end, false
		for _, h := range m.holes {
			if off >= h[0] && off < h[1] {
				next, hole = min(h[1], end), true
				break
			}
			if h[0] > off {
				next = min(next, h[0])
				break
			}
		}
		if !fn(off, next-off, hole) {
			return nil
		}
		off = next
	}
	return nil
}

func testServer(b blockrep.Backend) *Server {
	return &Server{
		Logger: quietLogger(),
		Lookup: func(name string) (*Export, error) {
			switch name {
			case "", "disk":
				return &Export{Name: "disk", Description: "test disk", Backend: b}, nil
			case "secondary":
				return nil, errors.New("r0: this node is Secondary; the export is served by the Primary")
			}
			return nil, fmt.Errorf("%q: %w", name, ErrUnknownExport)
		},
		List: func() []string { return []string{"disk", "secondary"} },
	}
}

func quietLogger() *slog.Logger {
	if os.Getenv("NBD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// readBack reads [off, off+n) in pieces of at most step bytes.
func (c *testClient) readBack(off uint64, n, step uint32) []byte {
	c.t.Helper()
	var out []byte
	for n > 0 {
		k := min(n, step)
		r := c.do(0, cmdRead, off, k, nil)
		if r.errno != 0 {
			c.t.Fatalf("READ %d+%d: errno %d", off, k, r.errno)
		}
		out = append(out, r.data...)
		off, n = off+uint64(k), n-k
	}
	return out
}

// sparseFile creates a file of size bytes with random data only in the given
// (offset, length) ranges, and opens it as a FileDevice.
func sparseFile(t testing.TB, path string, size int64, data [][2]int64) *blockrep.FileDevice {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	for _, d := range data {
		b := make([]byte, d[1])
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		if _, err := f.WriteAt(b, d[0]); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	dev, err := blockrep.OpenFile(path, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	return dev
}
