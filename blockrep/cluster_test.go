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
	"sync/atomic"
	"testing"
	"time"

	"github.com/blockrep/blockrep/transport"
)

// testNode is one in-process node: a volume and the listener feeding it connections.
type testNode struct {
	t    testing.TB
	cfg  Config
	v    *Volume
	ln   net.Listener
	addr string
	wg   sync.WaitGroup
}

// testCluster builds n nodes with backing files of size bytes, fully meshed with the
// given protocol, and runs create-md on each.
func testCluster(t testing.TB, n int, size int64, proto Protocol) []*testNode {
	t.Helper()
	return testClusterWith(t, n, size, proto, nil)
}

// testClusterWith is testCluster with a hook to adjust each node's configuration.
func testClusterWith(t testing.TB, n int, size int64, proto Protocol, adjust func(i int, cfg *Config)) []*testNode {
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
		if adjust != nil {
			adjust(i, &a.cfg)
		}
		if _, err := CreateMD(a.cfg, 0, false); err != nil {
			t.Fatal(err)
		}
	}
	for _, nd := range nodes {
		nd.start()
	}
	stopWatch := watchUnsent(t)
	t.Cleanup(func() {
		stopWatch()
		for _, nd := range nodes {
			nd.stop()
		}
	})
	return nodes
}

// watchUnsent fails the test if a link holds output unsent for over a second: some
// goroutine queued a message and then blocked without sending it (nothing else
// would until a keepalive). Every cluster test runs under it.
func watchUnsent(t testing.TB) (stop func()) {
	transport.Watch()
	done := make(chan struct{})
	var worst time.Duration
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				worst = max(worst, transport.Stale())
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
		if worst > time.Second {
			t.Errorf("a link held unsent output for %v: a goroutine blocked with messages it had queued", worst.Round(time.Millisecond))
		}
	}
}

type testWriter struct{ t testing.TB }

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
	v.writable.Store(false)
	for _, p := range v.peersNow() {
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

func waitFor(t testing.TB, what string, cond func() bool) {
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

func waitSynced(t testing.TB, a, b *testNode) {
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
	if got := b.v.peersNow()[0].rs.bytes.Load(); got < a.v.Size() {
		t.Errorf("full sync moved %d bytes to the target, want %d", got, a.v.Size())
	}
	data := randBytes(1 << 20)
	write(t, a.v, 4096, data)
	if dataSum(t, a) != dataSum(t, b) {
		t.Fatal("replicas differ after a protocol C write")
	}
}

// upToDatePair returns a connected, synced two-node cluster with node 0 Primary.
func upToDatePair(t testing.TB, size int64, proto Protocol) (a, b *testNode) {
	t.Helper()
	return promotedPair(t, testCluster(t, 2, size, proto))
}

// promotedPair connects a two-node cluster, forces node 0 Primary and waits for the sync.
func promotedPair(t testing.TB, n []*testNode) (a, b *testNode) {
	t.Helper()
	a, b = n[0], n[1]
	for _, nd := range n {
		nd.v.Connect(-1, false)
	}
	waitFor(t, "connected", func() bool { return connected(a, b) })
	if err := a.v.Promote(true); err != nil {
		t.Fatal(err)
	}
	waitSynced(t, a, b)
	return a, b
}

// faultyDisk gives node i a FaultyDevice over its file, stored in *f.
func faultyDisk(i int, f **FaultyDevice) func(int, *Config) {
	return func(j int, cfg *Config) {
		if j == i {
			cfg.OpenDevice = func(path string) (Device, error) {
				d, err := OpenFile(path, 0, false)
				if err != nil {
					return nil, err
				}
				*f = &FaultyDevice{Device: d}
				return *f, nil
			}
		}
	}
}

func TestDisconnectedWritesResyncOnlyDirtyBlocks(t *testing.T) {
	a, b := upToDatePair(t, 64<<20, ProtocolC)
	if err := b.v.Disconnect(-1); err != nil {
		t.Fatal(err)
	}
	if d := b.v.State().Disk; d != Outdated {
		t.Fatalf("Secondary after a deliberate disconnect from its Primary: %s, want Outdated", d)
	}
	if err := b.v.Promote(false); !errors.Is(err, ErrNotUpToDate) {
		t.Fatalf("promoting an Outdated node without force: %v, want refusal", err)
	}
	write(t, a.v, 16<<20, randBytes(8<<20))
	_, ps := a.v.Status()
	if ps[0].OutOfSyncBytes != 8<<20 {
		t.Fatalf("out of sync after 8 MiB written disconnected: %d", ps[0].OutOfSyncBytes)
	}
	b.v.Connect(-1, false)
	waitSynced(t, a, b)
	_, ps = a.v.Status()
	if got := ps[0].ResyncBytes; got < 8<<20 || got > 8<<20*105/100 {
		t.Fatalf("resync moved %d bytes, want 8 MiB (+5%%)", got)
	}
	if ps[0].OutOfSyncBytes != 0 {
		t.Fatalf("out of sync after resync: %d", ps[0].OutOfSyncBytes)
	}
	if dataSum(t, a) != dataSum(t, b) {
		t.Fatal("replicas differ after resync")
	}
}

func TestSplitBrainIsDetectedAndResolvedByDiscardMyData(t *testing.T) {
	a, b := upToDatePair(t, 32<<20, ProtocolC)
	a.v.Disconnect(-1)
	b.v.Disconnect(-1)
	write(t, a.v, 0, randBytes(1<<20))
	if err := b.v.Promote(true); err != nil {
		t.Fatal(err)
	}
	write(t, b.v, 4<<20, randBytes(1<<20))
	a.v.Connect(-1, false)
	b.v.Connect(-1, false)
	waitFor(t, "split brain on both sides", func() bool {
		return a.peer(1).SplitBrain && b.peer(0).SplitBrain
	})
	if a.peer(1).Conn != StandAlone || b.peer(0).Conn != StandAlone {
		t.Fatalf("after split brain: %s/%s, want StandAlone on both", a.peer(1).Conn, b.peer(0).Conn)
	}
	if err := b.v.Demote(); err != nil {
		t.Fatal(err)
	}
	b.v.Connect(-1, true)
	a.v.Connect(-1, false)
	waitSynced(t, a, b)
	if dataSum(t, a) != dataSum(t, b) {
		t.Fatal("victim's data differs from the survivor's after resolution")
	}
	_, ps := a.v.Status()
	if ps[0].ResyncBytes > 2<<20*105/100 {
		t.Errorf("resolution moved %d bytes; both sides' 1 MiB of changes should suffice", ps[0].ResyncBytes)
	}
}

func TestPromoteRefusedWhileConnectedPeerIsPrimary(t *testing.T) {
	_, b := upToDatePair(t, 8<<20, ProtocolC)
	err := b.v.Promote(false)
	if !errors.Is(err, ErrPeerIsPrimary) {
		t.Fatalf("promote with a Primary peer: %v, want ErrPeerIsPrimary", err)
	}
	if err := b.v.Promote(true); !errors.Is(err, ErrPeerIsPrimary) {
		t.Fatalf("forced promote with a Primary peer: %v, want ErrPeerIsPrimary", err)
	}
}

func TestConcurrentOverlappingWritesLandIdenticallyOnReplicas(t *testing.T) {
	for _, proto := range []Protocol{ProtocolA, ProtocolB, ProtocolC} {
		t.Run("protocol "+proto.String(), func(t *testing.T) {
			a, b := upToDatePair(t, 8<<20, proto)
			var wg sync.WaitGroup
			for g := 0; g < 16; g++ {
				wg.Add(1)
				go func(g int) {
					defer wg.Done()
					for i := 0; i < 200; i++ {
						// A 1 MiB hot zone with unaligned, overlapping writes.
						off := int64((g*7919 + i*104729) % (1 << 20))
						n := 512 + (g*i)%40000
						if i%8 == 0 { // large enough for the overlapped local write
							n = overlapMin + (g*i*4099)%(300<<10)
						}
						if err := submit(t, a.v, OpWrite, off, bytes.Repeat([]byte{byte(g), byte(i)}, n/2), 0, 0); err != nil {
							t.Error(err)
							return
						}
					}
				}(g)
			}
			wg.Wait()
			if err := submit(t, a.v, OpFlush, 0, nil, 0, 0); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "peer caught up", func() bool {
				a.v.peersNow()[0].pendMu.Lock()
				defer a.v.peersNow()[0].pendMu.Unlock()
				return len(a.v.peersNow()[0].pending) == 0
			})
			if dataSum(t, a) != dataSum(t, b) {
				t.Fatal("replicas differ after concurrent overlapping writes")
			}
		})
	}
}

func TestTrimAndZeroReplicateAsSuch(t *testing.T) {
	a, b := upToDatePair(t, 8<<20, ProtocolC)
	write(t, a.v, 0, bytes.Repeat([]byte{0xAB}, 2<<20))
	if err := submit(t, a.v, OpTrim, 0, nil, 1<<20, 0); err != nil {
		t.Fatal(err)
	}
	if err := submit(t, a.v, OpZero, 1<<20, nil, 4096, FlagNoHole); err != nil {
		t.Fatal(err)
	}
	if dataSum(t, a) != dataSum(t, b) {
		t.Fatal("replicas differ after trim and zero")
	}
	buf := make([]byte, 4096)
	if err := b.v.data.ReadAt(buf, 512<<10); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, make([]byte, 4096)) {
		t.Fatal("trimmed range does not read back as zeroes on the peer")
	}
}

// ackHistory records, per block, the last acknowledged write and the one in flight (which
// may or may not have reached a replica); check accepts either on the survivor.
type ackHistory struct {
	mu       sync.Mutex
	acked    map[int64][32]byte
	inFlight map[int64][32]byte
}

func newAckHistory() *ackHistory {
	return &ackHistory{acked: map[int64][32]byte{}, inFlight: map[int64][32]byte{}}
}

func (h *ackHistory) issue(off int64, data []byte) {
	h.mu.Lock()
	h.inFlight[off] = sha256.Sum256(data)
	h.mu.Unlock()
}

func (h *ackHistory) ack(off int64, data []byte) {
	h.mu.Lock()
	h.acked[off] = sha256.Sum256(data)
	delete(h.inFlight, off)
	h.mu.Unlock()
}

// check reads every acknowledged block on v; at least min must have been acknowledged.
func (h *ackHistory) check(t *testing.T, v *Volume, min int) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.acked) < min {
		t.Fatalf("only %d writes acknowledged before the fault", len(h.acked))
	}
	buf := make([]byte, 4096)
	for off, sum := range h.acked {
		if err := v.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
		if got := sha256.Sum256(buf); got != sum && got != h.inFlight[off] {
			t.Fatalf("write at %d was acknowledged but is not on the survivor", off)
		}
	}
}

func TestPrimaryCrashLosesNoAcknowledgedWrite(t *testing.T) {
	a, b := upToDatePair(t, 32<<20, ProtocolC)
	h := newAckHistory()
	var crashed atomic.Bool
	stop := make(chan struct{})
	var wg sync.WaitGroup
	av := a.v
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				off := int64(g*512+i%512) * 4096
				data := randBytes(4096)
				h.issue(off, data)
				c := make(syncCompleter, 1)
				r := &Request{Op: OpWrite, Off: off, Data: data, Len: 4096, Owner: c}
				var bt Batch
				av.Submit(r, &bt)
				bt.Flush()
				err := <-c
				// A real kill -9 acknowledges nothing after the crash; this in-process
				// crash still completes what it drains, so those count as in flight.
				if err != nil || crashed.Load() {
					return
				}
				h.ack(off, data)
			}
		}(g)
	}
	time.Sleep(300 * time.Millisecond)
	crashed.Store(true)
	a.crash()
	close(stop)
	wg.Wait()
	waitFor(t, "survivor noticed", func() bool { return b.peer(0).Conn != Connected })
	if err := b.v.Promote(false); err != nil {
		t.Fatalf("promoting the UpToDate survivor: %v", err)
	}
	h.check(t, b.v, 100)
}

func TestCrashedPrimaryReturnsAndResyncsOnlyItsActivityLog(t *testing.T) {
	a, b := upToDatePair(t, 64<<20, ProtocolC)
	write(t, a.v, 40<<20, randBytes(1<<20))
	a.crash()
	waitFor(t, "survivor noticed", func() bool { return b.peer(0).Conn != Connected })
	a.restart()
	if f := a.v.meta.Superblock().Peers[0].Flags; f&PeerCrashedPrimary == 0 {
		t.Fatalf("restarted crashed primary's peer slot flags %b lack PeerCrashedPrimary", f)
	}
	a.v.Connect(-1, false)
	waitSynced(t, a, b)
	_, ps := a.v.Status()
	if got := ps[0].ResyncBytes; got == 0 || got > 8*ALExtentSize {
		t.Fatalf("crash recovery resynced %d bytes; want the few hot 4 MiB extents", got)
	}
	if dataSum(t, a) != dataSum(t, b) {
		t.Fatal("replicas differ after crash recovery")
	}
}

func TestCleanRestartNeedsNoResync(t *testing.T) {
	a, b := upToDatePair(t, 16<<20, ProtocolC)
	write(t, a.v, 0, randBytes(1<<20))
	if err := a.v.Demote(); err != nil {
		t.Fatal(err)
	}
	a.stop()
	b.stop()
	a.restart()
	b.restart()
	for _, nd := range []*testNode{a, b} {
		if d := nd.v.State().Disk; d != UpToDate {
			t.Fatalf("%s after a clean restart: %s, want UpToDate", nd.cfg.NodeName, d)
		}
		nd.v.Connect(-1, false)
	}
	waitSynced(t, a, b)
	_, ps := a.v.Status()
	if ps[0].ResyncBytes != 0 || ps[0].Repl != Established {
		t.Fatalf("clean restart resynced %d bytes (%s)", ps[0].ResyncBytes, ps[0].Repl)
	}
}

func TestInvalidateResyncsEverythingFromThePeer(t *testing.T) {
	a, b := upToDatePair(t, 16<<20, ProtocolC)
	// Corrupt the Secondary's disk behind blockrep's back, then invalidate it.
	f, err := os.OpenFile(b.cfg.Disk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(randBytes(4096), 5<<20)
	f.Close()
	if err := b.v.Invalidate(); err != nil {
		t.Fatal(err)
	}
	waitSynced(t, a, b)
	if dataSum(t, a) != dataSum(t, b) {
		t.Fatal("invalidated replica differs after its full resync")
	}
}

func TestLocalWriteErrorDetachesTheDiskAndServesThroughThePeer(t *testing.T) {
	var faulty *FaultyDevice
	a, b := promotedPair(t, testClusterWith(t, 2, 32<<20, ProtocolC, faultyDisk(0, &faulty)))
	before := randBytes(1 << 20)
	write(t, a.v, 0, before)

	faulty.SetRules(FaultRule{Ops: "write read"})
	after := randBytes(1 << 20)
	write(t, a.v, 4<<20, after) // the local write fails; the peer has it: success
	waitFor(t, "disk detached", func() bool { return a.v.State().Disk == Diskless })
	if !a.v.DiskFailed() {
		t.Fatal("DiskFailed is false after detach")
	}
	write(t, a.v, 8<<20, after)
	buf := make([]byte, 1<<20)
	for _, c := range []struct {
		off  int64
		want []byte
	}{{0, before}, {4 << 20, after}, {8 << 20, after}} {
		if err := a.v.ReadAt(buf, c.off); err != nil {
			t.Fatalf("read at %d through the peer: %v", c.off, err)
		}
		if !bytes.Equal(buf, c.want) {
			t.Fatalf("read at %d through the peer returned other data", c.off)
		}
	}
	if got := b.v.peersNow()[0].bm.Count() * BlockSize; got < 1<<20 {
		t.Fatalf("the peer recorded %d bytes the diskless Primary misses, want at least the 1 MiB written after detach", got)
	}
	if err := submit(t, a.v, OpFlush, 0, nil, 0, 0); err != nil {
		t.Fatalf("flush of a diskless Primary with a connected peer: %v", err)
	}

	// The disk comes back healthy after a restart: it is resynced from the peer.
	a.crash()
	faulty.SetRules()
	a.restart()
	a.v.Connect(-1, false)
	waitSynced(t, a, b)
	if dataSum(t, a) != dataSum(t, b) {
		t.Fatal("the re-attached disk differs from the peer after resync")
	}
}

func TestLocalWriteErrorWithPassOnFailsTheWrite(t *testing.T) {
	var faulty *FaultyDevice
	n := testClusterWith(t, 1, 8<<20, ProtocolC, func(i int, cfg *Config) {
		cfg.OnIOError = IOErrorPassOn
		cfg.OpenDevice = func(path string) (Device, error) {
			d, err := OpenFile(path, 0, false)
			faulty = &FaultyDevice{Device: d}
			return faulty, err
		}
	})
	a := n[0]
	if err := a.v.Promote(true); err != nil {
		t.Fatal(err)
	}
	faulty.SetRules(FaultRule{Ops: "write", Off: 1 << 20, Len: 4096})
	if err := submit(t, a.v, OpWrite, 1<<20, make([]byte, 4096), 0, 0); !errors.Is(err, ErrIO) {
		t.Fatalf("write with an injected error under pass_on: %v, want ErrIO", err)
	}
	if a.v.DiskFailed() || a.v.State().Disk != UpToDate {
		t.Fatal("pass_on detached the disk")
	}
	write(t, a.v, 2<<20, make([]byte, 4096))
}

// linkProxy sits between two nodes; Cut drops everything from then on, like a network
// partition: nothing in flight is delivered, nothing is refused.
type linkProxy struct {
	ln     net.Listener
	target string
	cut    atomic.Bool
}

func newLinkProxy(t *testing.T, target string) *linkProxy {
	p := &linkProxy{target: target}
	p.ln = serveLocal(t, p.serve)
	return p
}

// serveLocal listens on a loopback port and serves every connection on its own
// goroutine until the test ends.
func serveLocal(t *testing.T, serve func(net.Conn)) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
	return ln
}

func (p *linkProxy) serve(c net.Conn) {
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			if err != nil {
				dst.Close()
				return
			}
			if !p.cut.Load() {
				dst.Write(buf[:n])
			}
		}
	}
	go pipe(s, c)
	pipe(c, s)
}

// TestPartitionThenPrimaryCrashLosesNoAcknowledgedWrite: the link is cut (writes in
// flight never arrive) and then the Primary dies. Under protocol C no write may have
// been acknowledged without the survivor having it.
func TestPartitionThenPrimaryCrashLosesNoAcknowledgedWrite(t *testing.T) {
	var proxy *linkProxy
	n := testClusterWith(t, 2, 16<<20, ProtocolC, func(i int, cfg *Config) {
		if i == 1 {
			// beta (the higher id) dials alpha through the proxy.
			proxy = newLinkProxy(t, cfg.Peers[0].Address)
			cfg.Peers[0].Address = proxy.ln.Addr().String()
			cfg.Peers[0].Timeout = time.Hour // the partition must not be detected
			cfg.Peers[0].PingInt = time.Hour
		} else {
			cfg.Peers[0].Timeout = time.Hour
			cfg.Peers[0].PingInt = time.Hour
		}
	})
	a, b := promotedPair(t, n)
	// A block's next write may land on the survivor without its acknowledgement coming
	// back (the cut drops it): then the survivor holds that one instead.
	h := newAckHistory()
	var crashed atomic.Bool
	av := a.v
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 100000; i++ {
				off := int64(g*1024+i%1024) * 4096
				data := randBytes(4096)
				h.issue(off, data)
				c := make(syncCompleter, 1)
				var bt Batch
				av.Submit(&Request{Op: OpWrite, Off: off, Data: data, Len: 4096, Owner: c}, &bt)
				bt.Flush()
				select {
				case err := <-c:
					if err != nil || crashed.Load() {
						return
					}
				case <-time.After(2 * time.Second):
					return // blocked by the partition, as protocol C must be
				}
				h.ack(off, data)
			}
		}(g)
	}
	time.Sleep(200 * time.Millisecond)
	proxy.cut.Store(true)
	time.Sleep(500 * time.Millisecond)
	crashed.Store(true)
	a.crash()
	wg.Wait()
	b.v.Disconnect(-1)
	if err := b.v.Promote(false); err != nil {
		t.Fatal(err)
	}
	h.check(t, b.v, 50)
}

// TestSurvivorsOfAPrimaryCrashConverge: the Primary's last write reaches one Secondary
// and not the other (its link to that one is cut), then the Primary dies. The write was
// never acknowledged, so either content is allowed — but the two survivors must end
// identical: each marks the blocks of its activity log towards the other when the
// Primary goes away, and they resync those before one of them is promoted.
func TestSurvivorsOfAPrimaryCrashConverge(t *testing.T) {
	var proxy *linkProxy
	n := testClusterWith(t, 3, 16<<20, ProtocolC, func(i int, cfg *Config) {
		if i == 1 {
			// beta dials alpha through the proxy; a cut drops alpha's writes to beta.
			proxy = newLinkProxy(t, cfg.Peers[0].Address)
			cfg.Peers[0].Address = proxy.ln.Addr().String()
		}
		for j := range cfg.Peers {
			cfg.Peers[j].Timeout, cfg.Peers[j].PingInt = time.Hour, time.Hour
		}
	})
	a, b, c := n[0], n[1], n[2]
	for _, nd := range n {
		nd.v.Connect(-1, false)
	}
	waitFor(t, "connected", func() bool { return connected(a, b) && connected(a, c) && connected(b, c) })
	if err := a.v.Promote(true); err != nil {
		t.Fatal(err)
	}
	waitSynced(t, a, b)
	waitSynced(t, a, c)
	waitSynced(t, b, c)
	write(t, a.v, 5<<20, randBytes(64<<10))

	proxy.cut.Store(true)
	done := make(syncCompleter, 1)
	var bt Batch
	a.v.Submit(&Request{Op: OpWrite, Off: 5 << 20, Data: randBytes(4096), Len: 4096, Owner: done}, &bt)
	bt.Flush()
	buf := make([]byte, 4096)
	waitFor(t, "gamma to apply the last write", func() bool {
		c.v.data.ReadAt(buf, 5<<20)
		b2 := make([]byte, 4096)
		b.v.data.ReadAt(b2, 5<<20)
		return !bytes.Equal(buf, b2)
	})
	a.crash()
	<-done // fails or never counted: the Primary is gone

	waitFor(t, "the survivors to notice", func() bool {
		return b.peer(0).Conn != Connected && c.peer(0).Conn != Connected
	})
	// Promotion asks the peers; a link re-handshaking at that moment refuses it.
	err := errors.New("not tried")
	for try := 0; err != nil && try < 50; try++ {
		waitFor(t, "the survivors to settle", func() bool {
			return connected(b, c) && b.v.State().Disk == UpToDate && c.v.State().Disk == UpToDate
		})
		if err = b.v.Promote(false); err != nil {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the survivors in sync", func() bool {
		return connected(b, c) && c.v.State().Disk == UpToDate && b.v.peersNow()[1].bm.Count() == 0
	})
	if dataSum(t, b) != dataSum(t, c) {
		t.Fatal("the survivors of the Primary's crash differ")
	}
}

// TestDisklessPrimaryWithoutReplicaCanStepDown: a Primary whose disk failed while no
// peer was connected can neither write nor read; it must still be able to step down
// (there is nothing to flush), or the operator could not recover it.
func TestDisklessPrimaryWithoutReplicaCanStepDown(t *testing.T) {
	var faulty *FaultyDevice
	a, b := promotedPair(t, testClusterWith(t, 2, 8<<20, ProtocolC, faultyDisk(0, &faulty)))
	b.v.Disconnect(-1)
	waitFor(t, "alpha alone", func() bool { return a.peer(1).Conn != Connected })
	faulty.SetRules(FaultRule{Ops: "write read"})
	if err := submit(t, a.v, OpWrite, 0, make([]byte, 4096), 0, 0); !errors.Is(err, ErrIO) {
		t.Fatalf("a write with neither disk nor peer: %v, want ErrIO", err)
	}
	waitFor(t, "disk detached", func() bool { return a.v.DiskFailed() })
	if err := a.v.Demote(); err != nil {
		t.Fatalf("the diskless Primary without a replica cannot step down: %v", err)
	}
}
