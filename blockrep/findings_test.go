package blockrep

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestDisklessPrimaryBlockStatus (review finding 1): a Primary whose disk was detached
// must not answer block status from that disk — blocks written through the peers since
// would read as holes, and nbdcopy or qemu-img convert would skip real data.
func TestDisklessPrimaryBlockStatus(t *testing.T) {
	var faulty *FaultyDevice
	a, _ := promotedPair(t, testClusterWith(t, 2, 16<<20, ProtocolC, faultyDisk(0, &faulty)))
	faulty.SetRules(FaultRule{Ops: "write"})
	data := randBytes(1 << 20)
	if err := submit(t, a.v, OpWrite, 4<<20, data, 0, 0); err != nil {
		t.Fatalf("write through the peer: %v", err)
	}
	waitFor(t, "detached", func() bool { return a.v.DiskFailed() && a.v.State().Disk == Diskless })
	got := make([]byte, len(data))
	if err := a.v.ReadAt(got, 4<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back through the peer: %v (equal %t)", err, bytes.Equal(got, data))
	}
	var holes int64
	if err := a.v.Extents(4<<20, 1<<20, func(off, n int64, hole bool) bool {
		if hole {
			holes += n
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if holes != 0 {
		t.Fatalf("block status reports %d bytes of written data as holes on a diskless Primary", holes)
	}
}

// TestHandlerTimeout (review finding 5): a handler that never returns is killed at the
// handler timeout, and the timeout counts as the handler's failure.
func TestHandlerTimeout(t *testing.T) {
	n := testClusterWith(t, 2, 8<<20, ProtocolC, func(_ int, cfg *Config) {
		cfg.Handlers = map[string]string{"fence-peer": "sleep 60"}
		cfg.HandlerTimeout = 300 * time.Millisecond
	})
	start := time.Now()
	code, err := n[0].v.peersNow()[0].runHandler("fence-peer")
	if err == nil || code != -1 {
		t.Fatalf("a handler that outlived its timeout: exit %d, err %v; want a failure", code, err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the handler ran %v, past its 300 ms timeout", took)
	}
}

// TestResyncTargetUpToDateIsDurable (review finding 2): a SyncTarget becomes UpToDate
// only after the resynced data is durable. With external metadata the superblock's
// flush does not cover the data device, so a power cut right after "resync done" would
// leave an UpToDate disk with stale blocks and no bits set.
func TestResyncTargetUpToDateIsDurable(t *testing.T) {
	const size = 8 << 20
	data := []*CrashDevice{NewCrashDevice(size), NewCrashDevice(size)}
	meta := []*CrashDevice{NewCrashDevice(4 << 20), NewCrashDevice(4 << 20)}
	n := testClusterWith(t, 2, size, ProtocolC, func(i int, cfg *Config) {
		cfg.MetaDisk = cfg.Disk + ".md"
		cfg.OpenDevice = func(path string) (Device, error) {
			if path == cfg.MetaDisk {
				return meta[i], nil
			}
			return data[i], nil
		}
	})
	a, b := n[0], n[1]
	b.v.Disconnect(-1)
	a.v.Connect(-1, false)
	if err := a.v.Promote(true); err != nil {
		t.Fatal(err)
	}
	payload := randBytes(1 << 20)
	write(t, a.v, 2<<20, payload)
	if err := submit(t, a.v, OpFlush, 0, nil, 0, 0); err != nil {
		t.Fatal(err)
	}
	b.v.Connect(-1, false)
	waitSynced(t, a, b)
	// Power cut on beta: only what was made durable survives, on each device.
	nothing := func(int, int) bool { return false }
	data[1], meta[1] = data[1].PowerLoss(nothing), meta[1].PowerLoss(nothing)
	b.crash()
	b.restart()
	if d := b.v.State().Disk; d != UpToDate {
		t.Skipf("beta came back %s: the resync's end was not persisted before the cut", d)
	}
	got := make([]byte, len(payload))
	data[1].ReadAt(got, 2<<20)
	if !bytes.Equal(got, payload) {
		t.Fatal("beta came back UpToDate after a power cut, but the resynced blocks are gone")
	}
}

// TestDeliberateDisconnectIsNotFenced (review finding 3): with resource-and-stonith, an
// operator's disconnect of a healthy Secondary must neither run fence-peer against it
// nor freeze I/O; the Primary records the peer Outdated instead.
func TestDeliberateDisconnectIsNotFenced(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "fenced")
	n := testClusterWith(t, 2, 8<<20, ProtocolC, func(_ int, cfg *Config) {
		cfg.Handlers = map[string]string{"fence-peer": "touch " + marker + "; exit 7"}
		for i := range cfg.Peers {
			cfg.Peers[i].Fencing = FencingResourceAndStonith
		}
	})
	a, _ := promotedPair(t, n)
	if err := a.v.Disconnect(-1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // a handler would have started by now
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("fence-peer ran against a peer the operator disconnected")
	}
	if s := a.v.Suspended(); s != "" {
		t.Fatalf("I/O is suspended (%s) after a deliberate disconnect", s)
	}
	if err := submit(t, a.v, OpWrite, 0, randBytes(4096), 0, 0); err != nil {
		t.Fatalf("write after the disconnect: %v", err)
	}
	if sb := a.v.meta.Superblock(); sb.Peers[a.v.peersNow()[0].slot].Flags&PeerOutdated == 0 {
		t.Fatal("the Primary did not record the disconnected Secondary as Outdated")
	}
}
