package nbd

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/blockrep/blockrep/blockrep"
)

type observed struct {
	k      Kind
	n      int64
	failed bool
}

type recObserver struct {
	mu  sync.Mutex
	obs []observed
}

func (o *recObserver) Observe(k Kind, n int64, d time.Duration, failed bool) {
	if d < 0 {
		panic("negative duration")
	}
	o.mu.Lock()
	o.obs = append(o.obs, observed{k, n, failed})
	o.mu.Unlock()
}

func (o *recObserver) take() []observed {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := o.obs
	o.obs = nil
	return out
}

// TestObserverSeesAnsweredRequests: each request the backend answers is observed once,
// with its kind, size and outcome; refused ones are not.
func TestObserverSeesAnsweredRequests(t *testing.T) {
	rec, _ := newRec(testSize)
	srv := testServer(rec)
	o := &recObserver{}
	srv.Observer = o
	cl, _ := serve(t, srv)
	cl.handshake("disk", true, false)

	cl.do(0, cmdWrite, 0, 4096, make([]byte, 4096))
	cl.do(0, cmdRead, 0, 8192, nil)
	cl.do(0, cmdFlush, 0, 0, nil)
	cl.do(0, cmdTrim, 8192, 4096, nil)
	cl.do(0, cmdWriteZeroes, 0, 512, nil)
	cl.do(0, cmdRead, testSize, 4096, nil) // beyond the end: refused, not observed
	rec.mu.Lock()
	rec.failRead, rec.failSub = blockrep.ErrIO, blockrep.ErrIO
	rec.mu.Unlock()
	cl.do(0, cmdRead, 0, 512, nil)
	cl.do(0, cmdWrite, 0, 512, make([]byte, 512))

	want := []observed{{KindWrite, 4096, false}, {KindRead, 8192, false}, {KindFlush, 0, false},
		{KindTrim, 4096, false}, {KindZero, 512, false}, {KindRead, 512, true}, {KindWrite, 512, true}}
	if got := o.take(); !slices.Equal(got, want) {
		t.Fatalf("observed %v, want %v", got, want)
	}
}
