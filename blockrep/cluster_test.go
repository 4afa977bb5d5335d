package blockrep

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/blockrep/blockrep/transport"
)

// testNode is one in-process node: a volume and the listener feeding it connections.
type testNode struct {
	t    *testing.T
	cfg  Config
	v    *Volume
	ln   net.Listener
	addr string
	wg   sync.WaitGroup
}

// testCluster builds n nodes with backing files of size bytes, fully meshed with the
// given protocol, and runs create-md on each.
func testCluster(t *testing.T, n int, size int64, proto Protocol) []*testNode {
	t.Helper()
	dir := t.TempDir()
	nodes := make([]*testNode, n)
	for i := range nodes {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		disk := filepath.Join(dir, fmt.Sprintf("disk%d", i))
		if err := os.WriteFile(disk, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(disk, size); err != nil {
			t.Fatal(err)
		}
		nodes[i] = &testNode{t: t, ln: ln, addr: ln.Addr().String(), cfg: Config{
			Resource: "r0", NodeID: i, NodeName: fmt.Sprintf("n%d", i), Disk: disk, MetaDisk: "internal",
			ALExtents: 1237, ALUpdates: true,
			Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", i),
		}}
	}
	for i, a := range nodes {
		for j, b := range nodes {
			if i == j {
				continue
			}
			a.cfg.Peers = append(a.cfg.Peers, PeerConfig{NodeID: j, Name: b.cfg.NodeName, Address: b.addr,
				LocalAddress: a.addr, Protocol: proto, Secret: "s3cret", ConnectInt: 200 * time.Millisecond,
				PingInt: time.Second, Timeout: 2 * time.Second, Settings: "p=" + proto.String(),
				Resync: ResyncConfig{PlanAhead: 2 * time.Second, FillTarget: 4 << 20}})
		}
		if _, err := CreateMD(a.cfg, 0, false); err != nil {
			t.Fatal(err)
		}
	}
	for _, nd := range nodes {
		nd.start()
	}
	t.Cleanup(func() {
		for _, nd := range nodes {
			nd.stop()
		}
	})
	return nodes
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	if testing.Verbose() {
		w.t.Logf("%s", bytes.TrimRight(p, "\n"))
	}
	return len(p), nil
}

func (nd *testNode) start() {
	v, err := Open(nd.cfg)
	if err != nil {
		nd.t.Fatal(err)
	}
	nd.v = v
	nd.wg.Add(1)
	ln := nd.ln
	go func() {
		defer nd.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				tc, err := transport.Accept(c, func(h transport.Hello) (transport.Identity, error) {
					if h.Resource != "r0" || h.LocalID != nd.cfg.NodeID {
						return transport.Identity{}, errors.New("no such resource")
					}
					return transport.Identity{Resource: "r0", LocalID: nd.cfg.NodeID, PeerID: h.PeerID, Secret: "s3cret"}, nil
				})
				if err == nil {
					v.Incoming(tc)
				}
			}()
		}
	}()
}

func (nd *testNode) stop() {
	if nd.v != nil {
		nd.v.Disconnect(-1)
		if nd.v.State().Role == Primary {
			nd.v.Demote()
		}
		nd.v.Close()
		nd.v = nil
	}
	nd.ln.Close()
	nd.wg.Wait()
}

// crash simulates kill -9: connections drop, nothing is cleaned up or flushed.
func (nd *testNode) crash() {
	v := nd.v
	nd.v = nil
	nd.ln.Close()
	nd.wg.Wait()
	v.closed.Store(true)
	v.primary.Store(false)
	for _, p := range v.peers {
		select {
		case <-p.quit:
		default:
			close(p.quit)
		}
		p.dropLink("crash")
		<-p.done
	}
	v.dev.Close()
}

func (nd *testNode) restart() {
	ln, err := net.Listen("tcp", nd.addr)
	if err != nil {
		nd.t.Fatal(err)
	}
	nd.ln = ln
	nd.start()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (nd *testNode) peer(id int) PeerState {
	st := nd.v.State()
	return *st.Peer(id)
}

func connected(a, b *testNode) bool {
	pa, pb := a.peer(b.cfg.NodeID), b.peer(a.cfg.NodeID)
	return pa.Conn == Connected && pb.Conn == Connected && pa.Repl == Established && pb.Repl == Established
}

func waitSynced(t *testing.T, a, b *testNode) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s and %s connected and in sync", a.cfg.NodeName, b.cfg.NodeName), func() bool {
		return connected(a, b) && a.v.State().Disk == UpToDate && b.v.State().Disk == UpToDate
	})
}

// syncCompleter collects one completion.
type syncCompleter chan error

func (c syncCompleter) Complete(_ *Request, err error, b *Batch) {
	b.Flush()
	c <- err
}

func submit(t *testing.T, v *Volume, op Op, off int64, data []byte, n int64, flags ReqFlags) error {
	t.Helper()
	done := make(syncCompleter, 1)
	r := &Request{Op: op, Off: off, Data: data, Len: n, Flags: flags, Owner: done}
	if op == OpWrite {
		r.Len = int64(len(data))
	}
	var b Batch
	v.Submit(r, &b)
	b.Flush()
	select {
	case err := <-done:
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("%s at %d did not complete", op, off)
		return nil
	}
}

func write(t *testing.T, v *Volume, off int64, data []byte) {
	t.Helper()
	if err := submit(t, v, OpWrite, off, data, 0, 0); err != nil {
		t.Fatalf("write at %d: %v", off, err)
	}
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// dataSum hashes a node's data region straight from its backing file.
func dataSum(t *testing.T, nd *testNode) [32]byte {
	t.Helper()
	f, err := os.Open(nd.cfg.Disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, nd.v.Size())); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

func TestFreshResourceNeedsForcedPrimaryThenFullSync(t *testing.T) {
	n := testCluster(t, 2, 16<<20, ProtocolC)
	a, b := n[0], n[1]
	for _, nd := range n {
		if err := nd.v.Connect(-1, false); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "connected", func() bool { return connected(a, b) })
	if a.v.State().Disk != Inconsistent || b.v.State().Disk != Inconsistent {
		t.Fatalf("fresh disks: %s/%s, want Inconsistent", a.v.State().Disk, b.v.State().Disk)
	}
	if err := a.v.Promote(false); !errors.Is(err, ErrNotUpToDate) {
		t.Fatalf("promote without force on Inconsistent data: %v, want ErrNotUpToDate", err)
	}
	if err := submit(t, a.v, OpWrite, 0, make([]byte, 4096), 0, 0); !errors.Is(err, ErrNotPrimary) {
		t.Fatalf("write on a Secondary: %v, want ErrNotPrimary", err)
	}
	if err := a.v.Promote(true); err != nil {
		t.Fatal(err)
	}
	waitSynced(t, a, b)
	if got := b.v.peers[0].rs.bytes.Load(); got < a.v.Size() {
		t.Errorf("full sync moved %d bytes to the target, want %d", got, a.v.Size())
	}
	data := randBytes(1 << 20)
	write(t, a.v, 4096, data)
	if dataSum(t, a) != dataSum(t, b) {
		t.Fatal("replicas differ after a protocol C write")
	}
}
