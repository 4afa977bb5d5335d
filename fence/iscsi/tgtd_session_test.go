package iscsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/blockrep/blockrep/internal/tgtdtest"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blockrep/blockrep/blockrep"
	"github.com/blockrep/blockrep/fence/scsi"
)

func TestLoginWithoutCHAPAndReadCapacity(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, targetOpts{Size: 48 << 20})
	s := dial(t, tg, 1, testOpts(t, "plain"))
	buf := make([]byte, 32)
	n, err := scsi.Exec(ctxT(t, 5*time.Second), s, scsi.ReadCapacity16(32), scsi.In, buf, 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := scsi.ParseReadCapacity16(buf[:n])
	if err != nil {
		t.Fatal(err)
	}
	if c.BlockSize != 512 || c.Bytes() != 48<<20 {
		t.Fatalf("capacity %+v, want 48 MiB of 512-byte blocks", c)
	}
	p := s.Params()
	// tgtd's limits; our offers are larger, so these show the target's values won.
	if p.TargetMaxRecvDataSegmentLength != 8192 || p.MaxBurstLength > 16<<20 || p.HeaderDigest != "None" || p.ErrorRecoveryLevel != 0 {
		t.Fatalf("negotiated %+v", p)
	}
	if p.TargetPortalGroupTag != 1 {
		t.Errorf("TargetPortalGroupTag %d, tgtd sends 1", p.TargetPortalGroupTag)
	}
	if err := s.Ping(ctxT(t, 5*time.Second)); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

func TestCHAP(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, targetOpts{User: "blockrep", Pass: "s3cret-passw0rd"})
	t.Run("credentials in the URL log in", func(t *testing.T) {
		s, err := Dial(ctxT(t, 10*time.Second), tg.chapURL("blockrep", "s3cret-passw0rd", 1), testOpts(t, "chap-url"))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := newDisk(t, s).Size(), s.Ping(ctxT(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("credentials in Options log in", func(t *testing.T) {
		o := testOpts(t, "chap-opts")
		o.User, o.Secret = "blockrep", "s3cret-passw0rd"
		s, err := Dial(ctxT(t, 10*time.Second), tg.url(1), o)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	})
	t.Run("a wrong password is refused with a clear error", func(t *testing.T) {
		_, err := Dial(ctxT(t, 10*time.Second), tg.chapURL("blockrep", "wrong-password", 1), testOpts(t, "chap-wrong"))
		if !errors.Is(err, ErrAuthFailed) {
			t.Fatalf("err %v, want ErrAuthFailed", err)
		}
		checkOneLine(t, err, "authentication failed", tg.IQN())
		if strings.Contains(err.Error(), "wrong-password") {
			t.Fatalf("error shows the password: %v", err)
		}
	})
	t.Run("no credentials where CHAP is required is refused with a clear error", func(t *testing.T) {
		_, err := Dial(ctxT(t, 10*time.Second), tg.url(1), testOpts(t, "chap-none"))
		if !errors.Is(err, ErrAuthFailed) {
			t.Fatalf("err %v, want ErrAuthFailed", err)
		}
		checkOneLine(t, err, "CHAP")
	})
}

func checkOneLine(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") {
		t.Errorf("error spans lines: %q", msg)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q does not mention %q", msg, w)
		}
	}
	t.Logf("error: %v", msg)
}

func TestDialErrors(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, targetOpts{})
	closed := freePort(t)
	tests := []struct {
		name    string
		url     string
		is      error
		mention []string
	}{
		{"closed port", fmt.Sprintf("iscsi://127.0.0.1:%d/%s/1", closed, tg.IQN()), nil, []string{"connection refused", tg.IQN()}},
		{"wrong IQN", fmt.Sprintf("iscsi://%s/iqn.2024-01.io.blockrep.test:nosuch/1", tg.addr()), ErrTargetNotFound, []string{"target not found", "nosuch"}},
		{"wrong LUN", tg.url(7), ErrNoSuchLUN, []string{"LUN", "has LUNs 0, 1"}},
		{"malformed URL", "iscsi://127.0.0.1/" + tg.IQN(), nil, []string{"missing LUN"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Dial(ctxT(t, 10*time.Second), tc.url, testOpts(t, "errors"))
			if err == nil {
				s.Close()
				t.Fatal("Dial succeeded")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("err %v, want %v", err, tc.is)
			}
			checkOneLine(t, err, tc.mention...)
		})
	}
}

func TestDiscover(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, targetOpts{})
	targets, err := Discover(ctxT(t, 10*time.Second), tg.addr(), testOpts(t, "discovery"))
	if err != nil {
		t.Fatal(err)
	}
	if len(targets) != 1 || targets[0].Name != tg.IQN() {
		t.Fatalf("discovered %+v", targets)
	}
	if len(targets[0].Portals) == 0 || !strings.HasPrefix(targets[0].Portals[0], tg.addr()) {
		t.Fatalf("portals %v", targets[0].Portals)
	}
	if _, err := Discover(ctxT(t, 10*time.Second), fmt.Sprintf("127.0.0.1:%d", freePort(t))); err == nil {
		t.Fatal("discovery on a closed port succeeded")
	}
}

// TestDiskPattern writes patterns through Disk at aligned and unaligned offsets,
// including single 32 MiB requests, and checks them by reading back and in the LUN's
// backing file.
func TestDiskPattern(t *testing.T) {
	t.Parallel()
	const size = 96 << 20
	tg := startTarget(t, targetOpts{Size: size})
	s := dial(t, tg, 1, testOpts(t, "pattern"))
	d := newDisk(t, s)
	if d.Size() != size || d.BlockSize() != 512 {
		t.Fatalf("size %d block %d", d.Size(), d.BlockSize())
	}
	model := make([]byte, size)
	src := rand.NewChaCha8([32]byte{1, 2})
	rng := rand.New(src)
	write := func(off int64, n int, flags blockrep.ReqFlags) {
		t.Helper()
		p := make([]byte, n)
		src.Read(p)
		if err := d.WriteAt(p, off, flags); err != nil {
			t.Fatalf("WriteAt(%d bytes at %d): %v", n, off, err)
		}
		copy(model[off:], p)
		got := make([]byte, n)
		if err := d.ReadAt(got, off); err != nil {
			t.Fatalf("ReadAt(%d bytes at %d): %v", n, off, err)
		}
		if !bytes.Equal(got, p) {
			t.Fatalf("read back of %d bytes at %d differs at byte %d", n, off, firstDiff(got, p))
		}
	}
	write(0, 4096, 0)
	write(512*3+17, 1, 0)        // one byte in the middle of a block
	write(511, 2, 0)             // across a block boundary
	write(1000, 100000, 0)       // unaligned both ends
	write(1<<20, 32<<20, 0)      // 32 MiB aligned
	write(40<<20+333, 32<<20, 0) // 32 MiB unaligned
	write(size-700, 700, blockrep.FlagFUA)
	for i := 0; i < 200; i++ {
		n := 1 + rng.IntN(20000)
		write(rng.Int64N(size-int64(n)), n, 0)
	}
	if err := d.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if err := d.ReadAt(make([]byte, 10), size-5); !errors.Is(err, blockrep.ErrOutOfRange) {
		t.Fatalf("read past the end: %v", err)
	}
	all := make([]byte, size)
	if err := d.ReadAt(all, 0); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(all, model); i >= 0 {
		t.Fatalf("device differs from the model at %d", i)
	}
	if i := firstDiff(tg.lunFile(1), model); i >= 0 {
		t.Fatalf("LUN file differs from the model at %d", i)
	}
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// TestLargeCommands sends single 32 MiB WRITE(16) and READ(16) commands: many R2T
// bursts of MaxBurstLength and Data-Out PDUs of the target's MaxRecvDataSegmentLength
// one way, many Data-In PDUs the other.
func TestLargeCommands(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, targetOpts{Size: 64 << 20})
	for _, tc := range []struct {
		name string
		opts func(*Options)
	}{
		{"immediate data and R2T", func(*Options) {}},
		{"R2T only", func(o *Options) { o.NoImmediateData = true; o.InitialR2T = true }},
		{"small segments", func(o *Options) { o.MaxRecvDataSegmentLength = 4096; o.MaxBurstLength = 65536 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := testOpts(t, "large-"+tgtdtest.Sanitize(tc.name))
			tc.opts(&o)
			s := dial(t, tg, 1, o)
			data := make([]byte, 32<<20)
			for i := 0; i < len(data); i += 8 {
				binary.BigEndian.PutUint64(data[i:], uint64(i)^0x5a5a5a5a)
			}
			ctx := ctxT(t, 60*time.Second)
			if _, err := scsi.Exec(ctx, s, scsi.Write16(2048, uint32(len(data)/512), true), scsi.Out, data, 3, nil); err != nil {
				t.Fatalf("WRITE(16) of 32 MiB: %v", err)
			}
			got := make([]byte, len(data))
			if _, err := scsi.Exec(ctx, s, scsi.Read16(2048, uint32(len(data)/512), false), scsi.In, got, 3, nil); err != nil {
				t.Fatalf("READ(16) of 32 MiB: %v", err)
			}
			if i := firstDiff(got, data); i >= 0 {
				t.Fatalf("read back differs at %d", i)
			}
			if i := firstDiff(tg.lunFile(1)[2048*512:2048*512+len(data)], data); i >= 0 {
				t.Fatalf("LUN file differs at %d", i)
			}
		})
	}
}

// TestConcurrentCommands keeps many commands outstanding at once: the CmdSN window,
// ITT allocation and the interleaving of Data-In, R2T and responses of different tasks.
func TestConcurrentCommands(t *testing.T) {
	t.Parallel()
	const size = 64 << 20
	tg := startTarget(t, targetOpts{Size: size})
	s := dial(t, tg, 1, testOpts(t, "concurrent"))
	d := newDisk(t, s)
	const workers, ops = 48, 60
	region := int64(size / workers)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src := rand.NewChaCha8([32]byte{byte(w), 7})
			rng := rand.New(src)
			base := int64(w) * region
			shadow := make([]byte, region)
			for i := 0; i < ops; i++ {
				n := 1 + rng.IntN(64<<10)
				off := rng.Int64N(region - int64(n))
				if rng.IntN(3) == 0 {
					got := make([]byte, n)
					if err := d.ReadAt(got, base+off); err != nil {
						errs <- err
						return
					}
					if !bytes.Equal(got, shadow[off:off+int64(n)]) {
						errs <- fmt.Errorf("worker %d: read %d bytes at %d differs", w, n, base+off)
						return
					}
					continue
				}
				p := make([]byte, n)
				src.Read(p)
				if err := d.WriteAt(p, base+off, 0); err != nil {
					errs <- err
					return
				}
				copy(shadow[off:], p)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.Commands < workers*ops {
		t.Fatalf("only %d commands sent", st.Commands)
	}
	t.Logf("stats %+v", st)
}

// TestConcurrentRMWOnOneBlock has writers patch disjoint bytes of the same blocks: the
// read-modify-write of one must never undo another's bytes.
func TestConcurrentRMWOnOneBlock(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, targetOpts{Size: 1 << 20})
	s := dial(t, tg, 1, testOpts(t, "rmw"))
	d := newDisk(t, s)
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				// Byte w of blocks 0 and 1, and a 2-byte write across their boundary.
				if err := d.WriteAt([]byte{byte(w + 1)}, int64(w)*7, 0); err != nil {
					t.Error(err)
					return
				}
				if err := d.WriteAt([]byte{byte(w + 1)}, 512+int64(w)*7, 0); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	got := make([]byte, 1024)
	if err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	for w := 0; w < 16; w++ {
		if got[w*7] != byte(w+1) || got[512+w*7] != byte(w+1) {
			t.Fatalf("writer %d's byte lost: %d %d", w, got[w*7], got[512+w*7])
		}
	}
}

func TestKeepalive(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, targetOpts{})
	t.Run("idle session pings the target", func(t *testing.T) {
		o := testOpts(t, "keepalive")
		o.KeepaliveInterval = 100 * time.Millisecond
		s := dial(t, tg, 1, o)
		time.Sleep(time.Second)
		st := s.Stats()
		if st.Pings < 3 || st.Reconnects != 0 {
			t.Fatalf("stats %+v: want several pings and no reconnect", st)
		}
		if err := s.Ping(ctxT(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("target pings are answered", func(t *testing.T) {
		tg.adm("--mode", "target", "--op", "update", "--tid", "1", "--name", "nop_interval", "--value", "1")
		tg.adm("--mode", "target", "--op", "update", "--tid", "1", "--name", "nop_count", "--value", "2")
		o := testOpts(t, "target-nop")
		o.KeepaliveInterval = -1 // only the target pings
		s := dial(t, tg, 1, o)
		time.Sleep(4500 * time.Millisecond)
		st := s.Stats()
		if st.TargetPings < 2 || st.Reconnects != 0 {
			t.Fatalf("stats %+v: want target pings answered and no reconnect", st)
		}
		if _, err := newDisk(t, s).Size(), s.Ping(ctxT(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
	})
}

// trackingDialer remembers the connections it opened so a test can cut them.
type trackingDialer struct {
	mu    sync.Mutex
	conns []net.Conn
	fail  atomic.Bool
}

func (td *trackingDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if td.fail.Load() {
		return nil, errors.New("dial refused by test")
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err == nil {
		td.mu.Lock()
		td.conns = append(td.conns, c)
		td.mu.Unlock()
	}
	return c, err
}

func (td *trackingDialer) cut() {
	td.mu.Lock()
	defer td.mu.Unlock()
	if n := len(td.conns); n > 0 {
		td.conns[n-1].Close()
	}
}

// blockWriter writes versions of its own block and remembers what the device may hold.
type blockWriter struct {
	block    int64
	ok       uint32   // last version reported written
	unknown  []uint32 // versions that failed after ok: may or may not have landed
	attempts int
}

func (bw *blockWriter) payload(v uint32) []byte {
	p := make([]byte, 512)
	binary.BigEndian.PutUint32(p, v)
	binary.BigEndian.PutUint64(p[4:], uint64(bw.block))
	return p
}

// check verifies the LUN holds the last acknowledged version or one whose outcome was
// reported unknown, never an older one.
func (bw *blockWriter) check(t *testing.T, lun []byte) {
	t.Helper()
	got := binary.BigEndian.Uint32(lun[bw.block*512:])
	if got == bw.ok {
		return
	}
	for _, u := range bw.unknown {
		if got == u {
			return
		}
	}
	t.Errorf("block %d holds version %d; last acknowledged %d, unknown %v: an acknowledged write was lost", bw.block, got, bw.ok, bw.unknown)
}

// TestReconnectRetriesInterruptedWrites cuts the TCP connection under a session while
// writes are in flight, several times. Every write must either succeed — and then be on
// the LUN — or fail; none may be acknowledged and lost.
func TestReconnectRetriesInterruptedWrites(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, targetOpts{Size: 8 << 20})
	td := &trackingDialer{}
	o := testOpts(t, "reconnect")
	o.Dialer = td.dial
	o.ReconnectTimeout = 30 * time.Second
	s := dial(t, tg, 1, o)
	d := newDisk(t, s)

	const writers = 16
	bws := make([]*blockWriter, writers)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var failures atomic.Int64
	for i := range bws {
		bw := &blockWriter{block: int64(i * 128)} // 128 blocks = the 64 KiB each writes
		bws[i] = bw
		wg.Add(1)
		go func() {
			defer wg.Done()
			for v := uint32(1); ; v++ {
				select {
				case <-stop:
					return
				default:
				}
				bw.attempts++
				// 64 KiB writes keep R2T sequences in flight when the cut comes.
				p := bytes.Repeat(bw.payload(v), 128)
				if err := d.WriteAt(p, bw.block*512, 0); err != nil {
					failures.Add(1)
					bw.unknown = append(bw.unknown, v)
					continue
				}
				bw.ok, bw.unknown = v, nil
			}
		}()
	}
	for cut := 0; cut < 3; cut++ {
		time.Sleep(300 * time.Millisecond)
		td.cut()
		deadline := time.Now().Add(20 * time.Second)
		for s.Stats().Reconnects < cut+1 {
			if time.Now().After(deadline) {
				t.Fatalf("no reconnect after cut %d: %+v", cut+1, s.Stats())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	st := s.Stats()
	t.Logf("stats %+v, failed writes %d", st, failures.Load())
	if st.Resent == 0 {
		t.Error("no command was re-sent: the cuts did not hit writes in flight")
	}
	if failures.Load() != 0 {
		t.Errorf("%d writes failed although every reconnect succeeded", failures.Load())
	}
	lun := tg.lunFile(1)
	for _, bw := range bws {
		bw.check(t, lun)
		if bw.ok == 0 {
			t.Errorf("writer of block %d never succeeded", bw.block)
		}
	}
}

// TestReconnectGivesUp kills the target while writes are in flight: the writes must
// fail with ErrConnectionLost (not succeed, not hang), and the session recovers by itself
// once the target is back.
func TestReconnectGivesUp(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, targetOpts{Size: 8 << 20})
	o := testOpts(t, "giveup")
	o.ReconnectTimeout = 1500 * time.Millisecond
	o.Timeout = 2 * time.Second
	s := dial(t, tg, 1, o)
	d := newDisk(t, s)
	if err := d.WriteAt(fill(make([]byte, 4096), 'x'), 0, 0); err != nil {
		t.Fatal(err)
	}

	const writers = 8
	results := make(chan error, writers)
	started := make(chan struct{}, writers)
	for i := range writers {
		go func() {
			p := fill(make([]byte, 256<<10), byte('a'+i))
			started <- struct{}{}
			for {
				if err := d.WriteAt(p, int64(i)*(256<<10), 0); err != nil {
					results <- err
					return
				}
			}
		}()
	}
	for range writers {
		<-started
	}
	time.Sleep(100 * time.Millisecond)
	tg.stop()
	for range writers {
		select {
		case err := <-results:
			if !errors.Is(err, ErrConnectionLost) || !errors.Is(err, blockrep.ErrIO) {
				t.Fatalf("write while the target is gone: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("writes hang while the target is gone")
		}
	}
	// Down: new commands fail fast.
	start := time.Now()
	if err := d.ReadAt(make([]byte, 512), 0); !errors.Is(err, ErrConnectionLost) || time.Since(start) > time.Second {
		t.Fatalf("read while down: %v after %v", err, time.Since(start))
	}
	checkOneLine(t, d.ReadAt(make([]byte, 512), 0), "connection lost")

	// The target comes back on the same port with the same LUN file.
	tg.start()
	tg.adm("--mode", "target", "--op", "new", "--tid", "1", "--targetname", tg.IQN())
	tg.adm("--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1", "--backing-store", tg.File(1))
	tg.adm("--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL")
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := make([]byte, 4096)
		err := d.ReadAt(got, 0)
		if err == nil {
			if got[0] == 'x' || got[0] == 'a' {
				break
			}
			t.Fatalf("after recovery block 0 holds %q", got[0])
		}
		if time.Now().After(deadline) {
			t.Fatalf("session did not recover: %v (%+v)", err, s.Stats())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestReconnectKeepsRegistration: tgtd forgets a session's registration when it logs in
// again. With KeepRegistration the node re-registers if its key survived, so writes
// interrupted by the reconnect go through under a Write Exclusive – Registrants Only
// reservation; if a peer preempted the key meanwhile, they fail as fenced.
func TestReconnectKeepsRegistration(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, targetOpts{Size: 8 << 20})
	const keyA, keyB = 0xA1, 0xB1
	ctx := ctxT(t, 90*time.Second)
	td := &trackingDialer{}
	oa := testOpts(t, "keep-a")
	oa.Dialer = td.dial
	oa.OnReconnect = KeepRegistration(keyA)
	sa := dial(t, tg, 1, oa)
	sb := dial(t, tg, 1, testOpts(t, "keep-b"))
	prA, prB := scsi.NewPR(sa), scsi.NewPR(sb)
	da := newDisk(t, sa)
	if err := prA.Register(ctx, keyA); err != nil {
		t.Fatal(err)
	}
	if err := prB.Register(ctx, keyB); err != nil {
		t.Fatal(err)
	}
	if err := prB.Reserve(ctx, keyB, scsi.WriteExclusiveRegistrantsOnly); err != nil {
		t.Fatal(err)
	}
	block := fill(make([]byte, 512), 'a')
	if err := da.WriteAt(block, 0, 0); err != nil {
		t.Fatalf("registrant A cannot write: %v", err)
	}

	// Cut A's connection: after the re-login A is registered again and writes work.
	td.cut()
	waitReconnects(t, sa, 1)
	if err := da.WriteAt(block, 0, 0); err != nil {
		t.Fatalf("A's write after reconnect: %v", err)
	}
	keys, _ := prB.ReadKeys(ctx)
	t.Logf("keys after A re-registered: %x", keys.Keys)

	// Now B preempts A while A is disconnected: A must not re-register, and a write
	// issued while A is reconnecting (re-sent if it was in flight) fails as fenced.
	td.fail.Store(true)
	td.cut()
	errc := make(chan error, 1)
	go func() { errc <- da.WriteAt(block, 512, 0) }()
	time.Sleep(200 * time.Millisecond)
	if err := prB.Preempt(ctx, keyB, keyA, scsi.WriteExclusiveRegistrantsOnly); err != nil {
		t.Fatal(err)
	}
	td.fail.Store(false)
	select {
	case err := <-errc:
		if !errors.Is(err, scsi.ErrReservationConflict) {
			t.Fatalf("A's write across the reconnect after being preempted: %v, want RESERVATION CONFLICT", err)
		}
		t.Logf("A's write across the reconnect: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("A's write hangs")
	}
	if err := da.WriteAt(block, 1024, 0); !errors.Is(err, scsi.ErrReservationConflict) {
		t.Fatalf("fenced A's new write: %v", err)
	}
	if ok, _ := prB.Registered(ctx, keyA); ok {
		t.Fatal("A re-registered after being preempted")
	}
}

func waitReconnects(t *testing.T, s *Session, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for s.Stats().Reconnects < n {
		if time.Now().After(deadline) {
			t.Fatalf("no reconnect: %+v", s.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDiskTrimAndZero: Trim and Zero read back as zeroes, with and without UNMAP.
func TestDiskTrimAndZero(t *testing.T) {
	t.Parallel()
	for _, thin := range []bool{false, true} {
		t.Run(fmt.Sprintf("thin=%v", thin), func(t *testing.T) {
			tg := startTarget(t, targetOpts{Size: 16 << 20, Thin: thin})
			s := dial(t, tg, 1, testOpts(t, fmt.Sprintf("trim-%v", thin)))
			d := newDisk(t, s)
			t.Logf("capacity %+v caps %+v", d.Capacity(), d.Caps())
			pattern := fill(make([]byte, 8<<20), 0xee)
			if err := d.WriteAt(pattern, 0, 0); err != nil {
				t.Fatal(err)
			}
			if err := d.Trim(1000, 3<<20); err != nil {
				t.Fatalf("Trim: %v", err)
			}
			if err := d.Zero(5<<20+3, 70000, 0); err != nil {
				t.Fatalf("Zero: %v", err)
			}
			if err := d.Zero(0, 512, blockrep.FlagFastZero); !errors.Is(err, blockrep.ErrNotSupported) {
				t.Fatalf("fast zero: %v", err)
			}
			want := fill(make([]byte, 8<<20), 0xee)
			clear(want[1000 : 1000+3<<20])
			clear(want[5<<20+3 : 5<<20+3+70000])
			got := make([]byte, len(want))
			if err := d.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if i := firstDiff(got, want); i >= 0 {
				t.Fatalf("differs at %d: %x", i, got[i])
			}
			if i := firstDiff(tg.lunFile(1)[:len(want)], want); i >= 0 {
				t.Fatalf("LUN file differs at %d", i)
			}
		})
	}
}
