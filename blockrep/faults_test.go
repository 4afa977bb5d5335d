package blockrep

import (
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// crashCluster is a pair of nodes whose disks are CrashDevices: power can be cut.
type crashCluster struct {
	nodes []*testNode
	devs  []*CrashDevice
}

func newCrashCluster(t *testing.T, size int64) *crashCluster {
	cc := &crashCluster{devs: []*CrashDevice{NewCrashDevice(size), NewCrashDevice(size)}}
	cc.nodes = testClusterWith(t, 2, size, ProtocolC, func(i int, cfg *Config) {
		cfg.OpenDevice = func(string) (Device, error) { return cc.devs[i], nil }
	})
	return cc
}

// TestPowerLossKeepsEveryFlushedWrite cuts power to both nodes in the middle of a write
// and flush stream, with each disk keeping a random subset of its cached writes, and
// checks that every write acknowledged before an acknowledged FLUSH survives on the node
// that becomes Primary, and that the replicas end identical.
func TestPowerLossKeepsEveryFlushedWrite(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 99))
			cc := newCrashCluster(t, 8<<20)
			a, b := cc.nodes[0], cc.nodes[1]
			for _, nd := range cc.nodes {
				nd.v.Connect(-1, false)
			}
			waitFor(t, "connected", func() bool { return connected(a, b) })
			if err := a.v.Promote(true); err != nil {
				t.Fatal(err)
			}
			waitSynced(t, a, b)

			const blocks = 512
			flushed := map[int64][32]byte{} // durable by contract
			acked := map[int64][32]byte{}   // acknowledged since the last flush
			later := map[int64][][32]byte{} // acknowledged after the value in flushed
			for i := 0; i < 600; i++ {
				off := int64(r.IntN(blocks)) * 4096
				data := make([]byte, 4096)
				for j := range data {
					data[j] = byte(r.Uint32())
				}
				sum := sha256.Sum256(data)
				write(t, a.v, off, data)
				acked[off] = sum
				later[off] = append(later[off], sum)
				if r.IntN(10) == 0 {
					if err := submit(t, a.v, OpFlush, 0, nil, 0, 0); err != nil {
						t.Fatal(err)
					}
					for o, s := range acked {
						flushed[o] = s
						later[o] = nil
					}
					clear(acked)
				}
			}
			// Power cut on both nodes at once: the disks' state is taken first, so
			// nothing the processes do while they die can make data durable.
			keep := func(i, n int) bool { return r.IntN(2) == 0 }
			after := []*CrashDevice{cc.devs[0].PowerLoss(keep), cc.devs[1].PowerLoss(keep)}
			a.crash()
			b.crash()
			cc.devs[0], cc.devs[1] = after[0], after[1]
			a.restart()
			b.restart()
			for _, nd := range cc.nodes {
				nd.v.Connect(-1, false)
			}
			waitSynced(t, a, b)
			if err := a.v.Promote(false); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4096)
			for off, want := range flushed {
				a.v.ReadAt(buf, off)
				got := sha256.Sum256(buf)
				ok := got == want
				for _, l := range later[off] {
					ok = ok || got == l
				}
				if !ok {
					t.Fatalf("flushed write at %d lost after power loss", off)
				}
			}
			if !equalDevs(cc.devs[0], cc.devs[1], a.v.Size()) {
				t.Fatal("replicas differ after power loss and resync")
			}
		})
	}
}

func equalDevs(a, b *CrashDevice, n int64) bool {
	x, y := make([]byte, n), make([]byte, n)
	a.ReadAt(x, 0)
	b.ReadAt(y, 0)
	return sha256.Sum256(x) == sha256.Sum256(y)
}

// TestFlushReachesThePeerDisk: a FLUSH reply means the peer's disk made the data durable
// too — cut the peer's power right after the flush and the data is there.
func TestFlushReachesThePeerDisk(t *testing.T) {
	cc := newCrashCluster(t, 4<<20)
	a, b := cc.nodes[0], cc.nodes[1]
	for _, nd := range cc.nodes {
		nd.v.Connect(-1, false)
	}
	waitFor(t, "connected", func() bool { return connected(a, b) })
	a.v.Promote(true)
	waitSynced(t, a, b)
	data := randBytes(64 << 10)
	write(t, a.v, 1<<20, data)
	if err := submit(t, a.v, OpFlush, 0, nil, 0, 0); err != nil {
		t.Fatal(err)
	}
	img := cc.devs[1].PowerLoss(nil).Durable() // nothing cached survives
	if sha256.Sum256(img[1<<20:1<<20+64<<10]) != sha256.Sum256(data) {
		t.Fatal("data flushed through the Primary is not durable on the peer")
	}
	// A FUA write is durable on the peer without a flush.
	fua := randBytes(4096)
	if err := submit(t, a.v, OpWrite, 2<<20, fua, 0, FlagFUA); err != nil {
		t.Fatal(err)
	}
	img = cc.devs[1].PowerLoss(nil).Durable()
	if sha256.Sum256(img[2<<20:2<<20+4096]) != sha256.Sum256(fua) {
		t.Fatal("a FUA write is not durable on the peer")
	}
}

// TestThousandReconnectsLeakNothing: goroutines and file descriptors return to their
// level after 1,000 disconnect/connect cycles.
func TestThousandReconnectsLeakNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 reconnects")
	}
	a, b := upToDatePair(t, 4<<20, ProtocolC)
	settle := func() (int, int) {
		time.Sleep(100 * time.Millisecond)
		fds, _ := os.ReadDir("/proc/self/fd")
		return runtime.NumGoroutine(), len(fds)
	}
	g0, f0 := settle()
	var wg sync.WaitGroup
	for i := 0; i < 1000; i++ {
		if err := b.v.Disconnect(-1); err != nil {
			t.Fatal(err)
		}
		b.v.Connect(-1, false)
		waitFor(t, "reconnected", func() bool { return connected(a, b) })
		if i%100 == 0 {
			write(t, a.v, int64(i)*4096%(1<<20), randBytes(4096))
		}
	}
	wg.Wait()
	g1, f1 := settle()
	if g1 > g0+5 || f1 > f0+5 {
		t.Fatalf("after 1,000 reconnects: goroutines %d -> %d, fds %d -> %d", g0, g1, f0, f1)
	}
	t.Logf("goroutines %d -> %d, fds %d -> %d", g0, g1, f0, f1)
	_ = filepath.Join
}
