package blockrep

import (
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// stonithPair is a synced pair whose node 0 fences with resource-and-stonith through
// handler, a shell command.
func stonithPair(t *testing.T, handler string) (a, b *testNode) {
	n := testClusterWith(t, 2, 8<<20, ProtocolC, func(i int, cfg *Config) {
		cfg.Handlers = map[string]string{"fence-peer": handler}
		for j := range cfg.Peers {
			cfg.Peers[j].Fencing = FencingResourceAndStonith
		}
	})
	return promotedPair(t, n)
}

// writeStream writes at queue depth 1 until stop, recording the slowest completion.
func writeStream(t *testing.T, v *Volume, stop chan struct{}) (done chan struct{}, maxLat *atomic.Int64, count *atomic.Int64) {
	done = make(chan struct{})
	maxLat, count = new(atomic.Int64), new(atomic.Int64)
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			if err := submit(t, v, OpWrite, int64(i%256)*4096, randBytes(4096), 0, 0); err != nil {
				t.Errorf("write %d: %v", i, err)
				return
			}
			if l := int64(time.Since(start)); l > maxLat.Load() {
				maxLat.Store(l)
			}
			count.Add(1)
		}
	}()
	return done, maxLat, count
}

func TestStonithFreezesWritesUntilTheHandlerFencesThePeer(t *testing.T) {
	dir := t.TempDir()
	env := filepath.Join(dir, "env")
	a, b := stonithPair(t, "env > "+env+"; sleep 2; exit 7")
	stop := make(chan struct{})
	done, maxLat, count := writeStream(t, a.v, stop)
	time.Sleep(200 * time.Millisecond)
	b.crash()
	waitFor(t, "the handler ran", func() bool { _, err := os.Stat(env); return err == nil })
	n0 := count.Load()
	time.Sleep(1 * time.Second)
	if n := count.Load(); n != n0 {
		t.Fatalf("%d writes completed while the fence-peer handler ran", n-n0)
	}
	if s := a.v.Suspended(); s != "fencing" {
		t.Fatalf("suspended = %q while fencing", s)
	}
	time.Sleep(1500 * time.Millisecond)
	waitFor(t, "writes flowing again", func() bool { return count.Load() > n0+10 })
	close(stop)
	<-done
	if l := time.Duration(maxLat.Load()); l < 2*time.Second {
		t.Fatalf("slowest write took %s; the handler sleeps 2 s, so some write must have waited that long", l)
	}
	got, _ := os.ReadFile(env)
	for _, want := range []string{"DRBD_RESOURCE=r0", "DRBD_PEER_NODE_ID=1", "BLOCKREP_PEER=n1"} {
		if !strings.Contains(string(got), want) {
			t.Errorf("handler environment lacks %s", want)
		}
	}
	if f := a.v.meta.Superblock().Peers[0].Flags; f&PeerOutdated == 0 {
		t.Error("a fenced peer is not recorded as outdated")
	}
}

func TestStonithStaysFrozenWhenTheHandlerFailsUntilResumeIO(t *testing.T) {
	a, b := stonithPair(t, "exit 1")
	stop := make(chan struct{})
	done, _, count := writeStream(t, a.v, stop)
	time.Sleep(200 * time.Millisecond)
	b.crash()
	waitFor(t, "frozen", func() bool { return a.v.Suspended() == "fencing" })
	time.Sleep(300 * time.Millisecond)
	n0 := count.Load()
	time.Sleep(700 * time.Millisecond)
	if n := count.Load(); n != n0 {
		t.Fatalf("%d writes completed although the handler failed", n-n0)
	}
	if err := a.v.Demote(); err == nil {
		t.Fatal("demoted while I/O is frozen")
	}
	if err := a.v.ResumeIO(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "writes flowing again", func() bool { return count.Load() > n0+10 })
	close(stop)
	<-done
}

func TestFencingRefusesPromotionWhileThePeerIsNotOutdated(t *testing.T) {
	n := testClusterWith(t, 2, 8<<20, ProtocolC, func(i int, cfg *Config) {
		cfg.Handlers = map[string]string{"fence-peer": "exit 1"}
		for j := range cfg.Peers {
			cfg.Peers[j].Fencing = FencingResourceOnly
		}
	})
	a, b := promotedPair(t, n)
	a.crash() // b loses its Primary without a word: b is UpToDate but a is not outdated
	waitFor(t, "b noticed", func() bool { return b.peer(0).Conn != Connected })
	err := b.v.Promote(false)
	if err == nil || !strings.Contains(err.Error(), "Refusing to be Primary while peer") {
		t.Fatalf("promotion with fencing and an unconfirmed peer: %v", err)
	}
	if err := b.v.Promote(true); err != nil {
		t.Fatalf("--force overrides fencing: %v", err)
	}
}
