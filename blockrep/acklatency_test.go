package blockrep

import (
	"sync/atomic"
	"testing"
	"time"
)

// TestAckLatencyObserver: every replicated write is reported once with its ack's
// latency, and Status shows an empty send window of max-buffers afterwards.
func TestAckLatencyObserver(t *testing.T) {
	var acks, negative atomic.Int64
	n := testClusterWith(t, 2, 8<<20, ProtocolC, func(i int, cfg *Config) {
		if i == 0 {
			cfg.Peers[0].AckLatency = func(d time.Duration) {
				acks.Add(1)
				if d < 0 {
					negative.Add(1)
				}
			}
		}
	})
	a, _ := promotedPair(t, n)
	before := acks.Load() // the full sync's resync data is not an application write
	for i := range 5 {
		write(t, a.v, int64(i)*4096, randBytes(4096))
	}
	if got := acks.Load() - before; got != 5 {
		t.Errorf("%d ack latencies observed for 5 protocol C writes", got)
	}
	if negative.Load() > 0 {
		t.Errorf("negative ack latency observed")
	}
	_, peers := a.v.Status()
	if p := peers[0]; p.InFlight != 0 || p.MaxInFlight <= 0 {
		t.Errorf("in flight %d of %d after every write completed", p.InFlight, p.MaxInFlight)
	}
}
