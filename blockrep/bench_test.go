package blockrep

import (
	"testing"
)

// benchCompleter counts completions for the benchmarks.
type benchCompleter struct{ done chan struct{} }

func (c *benchCompleter) Complete(_ *Request, err error, b *Batch) {
	if err != nil {
		panic(err)
	}
	c.done <- struct{}{}
}

// benchSubmit drives qd 4 KiB writes at once through v.Submit, as the NBD server does.
func benchSubmit(b *testing.B, v *Volume, qd int) {
	c := &benchCompleter{done: make(chan struct{}, qd)}
	reqs := make([]Request, qd)
	data := randBytes(4096)
	var bt Batch
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	inflight := 0
	for i := 0; i < b.N; i++ {
		if inflight == qd {
			<-c.done
			inflight--
		}
		r := &reqs[i%qd]
		r.Op, r.Off, r.Len, r.Data, r.Owner = OpWrite, int64(i%2048)*4096, 4096, data, c
		r.Idle = inflight == qd-1
		v.Submit(r, &bt)
		bt.Flush()
		inflight++
	}
	for ; inflight > 0; inflight-- {
		<-c.done
	}
}

func BenchmarkSubmit4KOneNode(b *testing.B) {
	n := testCluster(b, 1, 16<<20, ProtocolC)
	if err := n[0].v.Promote(true); err != nil {
		b.Fatal(err)
	}
	benchSubmit(b, n[0].v, 32)
}

func BenchmarkSubmit4KProtocolC(b *testing.B) {
	a, _ := upToDatePair(b, 16<<20, ProtocolC)
	benchSubmit(b, a.v, 32)
}

func BenchmarkSubmit4KProtocolA(b *testing.B) {
	a, _ := upToDatePair(b, 16<<20, ProtocolA)
	benchSubmit(b, a.v, 32)
}
