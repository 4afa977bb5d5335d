package soak

import (
	"crypto/sha256"
	"io"
	"strings"
	"testing"
)

// The oracle itself is tested without daemons: each case is a sequence of events on
// one block, then the contents a final read may and may not return.

type event struct {
	op string // issue, ack, fail
	w  int    // write number (1-based) in the case
}

func TestHistoryDecidesWhatABlockMayHold(t *testing.T) {
	for _, tc := range []struct {
		name     string
		events   []event
		possible []int // write numbers; 0 = zeros
		not      []int
	}{
		{"an acknowledged write replaces the zeros",
			[]event{{"issue", 1}, {"ack", 1}}, []int{1}, []int{0}},
		{"a write in flight may or may not have landed",
			[]event{{"issue", 1}}, []int{0, 1}, nil},
		{"a later acknowledged write supersedes an earlier one",
			[]event{{"issue", 1}, {"ack", 1}, {"issue", 2}, {"ack", 2}}, []int{2}, []int{0, 1}},
		{"overlapping writes may land in either order",
			[]event{{"issue", 1}, {"issue", 2}, {"ack", 2}, {"ack", 1}}, []int{1, 2}, []int{0}},
		{"a failed write after an acknowledged one may have landed",
			[]event{{"issue", 1}, {"ack", 1}, {"issue", 2}, {"fail", 2}}, []int{1, 2}, []int{0}},
		{"a failed write is superseded by a write issued after the failure",
			[]event{{"issue", 1}, {"fail", 1}, {"issue", 2}, {"ack", 2}}, []int{2}, []int{0, 1}},
		{"a write issued before another's failure may still land after it",
			[]event{{"issue", 1}, {"issue", 2}, {"fail", 1}, {"ack", 2}}, []int{1, 2}, []int{0}},
		{"an unacknowledged write after an acknowledged one keeps both possible",
			[]event{{"issue", 1}, {"ack", 1}, {"issue", 2}}, []int{1, 2}, []int{0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := NewHistory()
			ws := map[int]*Write{}
			data := map[int][]byte{0: make([]byte, BlockSize)}
			for _, e := range tc.events {
				switch e.op {
				case "issue":
					id := h.NextID()
					data[e.w] = Content(id, 0, 0)
					ws[e.w] = h.Issue(id, 0, sha256.Sum256(data[e.w]))
				case "ack":
					h.Ack(ws[e.w])
				case "fail":
					h.Fail(ws[e.w])
				}
			}
			now := h.Tick()
			for _, w := range tc.possible {
				if err := h.Check(0, data[w], now, now); err != nil {
					t.Errorf("write %d should be possible: %v", w, err)
				}
			}
			for _, w := range tc.not {
				if err := h.Check(0, data[w], now, now); err == nil {
					t.Errorf("write %d should be impossible", w)
				}
			}
		})
	}
}

// A read sees what was possible while it ran: a write acknowledged only after the
// read began does not supersede anything for it, one issued after it ended is unseen.
func TestHistoryChecksReadsAgainstTheirWindow(t *testing.T) {
	h := NewHistory()
	d1, d2, d3 := Content(1, 0, 0), Content(2, 0, 0), Content(3, 0, 0)
	w1 := h.Issue(1, 0, sha256.Sum256(d1))
	h.Ack(w1)
	w2 := h.Issue(2, 0, sha256.Sum256(d2))
	from := h.Tick()
	h.Ack(w2)
	to := h.Tick()
	h.Issue(3, 0, sha256.Sum256(d3))
	for _, tc := range []struct {
		data []byte
		ok   bool
	}{{d1, true}, {d2, true}, {d3, false}, {make([]byte, BlockSize), false}} {
		if err := h.Check(0, tc.data, from, to); (err == nil) != tc.ok {
			t.Errorf("read of %x…: err %v, want ok=%v", tc.data[8:16], err, tc.ok)
		}
	}
}

func TestHistoryRejectsForeignAndTornContent(t *testing.T) {
	h := NewHistory()
	d := Content(h.NextID(), 0, 0)
	h.Ack(h.Issue(1, 0, sha256.Sum256(d)))
	torn := append([]byte(nil), d...)
	torn[BlockSize-1] ^= 1
	foreign := Content(99, 1, 0) // another lineage's write: a merged split brain
	garbage := make([]byte, BlockSize)
	garbage[100] = 1
	now := h.Tick()
	for name, b := range map[string][]byte{"torn": torn, "never issued": foreign, "unknown": garbage} {
		err := h.Check(0, b, now, now)
		if err == nil {
			t.Errorf("%s content accepted", name)
			continue
		}
		if !strings.Contains(err.Error(), "write 1 (issued") {
			t.Errorf("%s: the error does not say what was expected: %v", name, err)
		}
	}
}

// A fork keeps what was acknowledged before the cut, makes what was in flight
// indeterminate, and drops what was issued after it.
func TestHistoryFork(t *testing.T) {
	h := NewHistory()
	ia, ib, ic := h.NextID(), h.NextID(), h.NextID()
	da, db, dc := Content(ia, 0, 0), Content(ib, 0, 4096), Content(ic, 0, 8192)
	h.Ack(h.Issue(ia, 0, sha256.Sum256(da)))
	h.Issue(ib, 4096, sha256.Sum256(db)) // in flight at the cut
	cut := h.Tick()
	h.Issue(ic, 8192, sha256.Sum256(dc)) // after the cut: never reached the fork
	f := h.Fork(cut)
	now := f.Tick()
	zero := make([]byte, BlockSize)
	for _, tc := range []struct {
		off  int64
		data []byte
		ok   bool
	}{
		{0, da, true}, {0, zero, false},
		{4096, db, true}, {4096, zero, true},
		{8192, dc, false}, {8192, zero, true},
	} {
		if err := f.Check(tc.off, tc.data, now, now); (err == nil) != tc.ok {
			t.Errorf("fork, block %d: err %v, want ok=%v", tc.off, err, tc.ok)
		}
	}
	if f.Lineage != h.Lineage+1 || f.NextID() <= 3 {
		t.Errorf("fork lineage %d, next id shared: %v", f.Lineage, f.NextID())
	}
}

// The known-bug signature: a resync served by a Secondary while another node is Primary.
// A Secondary that serves a resync when nobody is Primary (a crashed Primary coming back
// as the source of its own activity log) is not it, and a peer's role changes are not
// the node's own.
func TestSecondarySourceSignature(t *testing.T) {
	line := func(at, node, msg string) string {
		return "time=2026-01-01T00:00:" + at + "Z level=INFO " + msg + " node=" + node + "\n"
	}
	alpha := line("01.000", "alpha", `msg="blockrepd started"`) +
		line("02.000", "alpha", `msg="state change" change="[role:Secondary->Primary disk:Inconsistent->UpToDate]"`) +
		line("09.000", "alpha", `msg="state change" change=[role:Primary->Secondary]`)
	gamma := line("01.000", "gamma", `msg="blockrepd started"`) +
		line("03.000", "gamma", `msg="state change" change="[alpha peer-role:Primary->Secondary]"`) +
		line("04.000", "gamma", `msg="resync started" peer=beta as=SyncSource`) +
		line("10.000", "gamma", `msg="resync started" peer=beta as=SyncSource`)
	got := secondarySources(map[string]io.Reader{"alpha": strings.NewReader(alpha), "gamma": strings.NewReader(gamma)})
	if len(got) != 1 || !strings.Contains(got[0], "gamma served a resync to beta") || !strings.Contains(got[0], "alpha was Primary") {
		t.Fatalf("signature: %q; want gamma's first resync only", got)
	}
}
