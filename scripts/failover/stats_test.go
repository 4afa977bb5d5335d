package main

import (
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func TestOutage(t *testing.T) {
	cs := []commit{{1, at(0)}, {2, at(10)}, {3, at(20)}, {4, at(30)}, {5, at(2530)}, {6, at(2540)}, {7, at(2600)}}
	// The fault began at 25 ms; commit 4 returned while it was being put in place.
	last, first, ok := outage(cs, at(25), at(2545))
	if !ok || last.ID != 4 || first.ID != 5 || first.At.Sub(last.At) != 2500*time.Millisecond {
		t.Fatalf("outage = %v %v %v", last, first, ok)
	}
	// Only gaps overlapping the window count: before it, 1→2 is the longest.
	if last, first, ok := outage(cs[:4], at(-100), at(5)); !ok || last.ID != 1 || first.ID != 2 {
		t.Fatalf("early window: %v %v %v", last, first, ok)
	}
	if _, _, ok := outage(cs, at(2600), at(3000)); ok {
		t.Fatal("no commit after the window's start, yet ok")
	}
	if _, _, ok := outage(cs, at(-100), at(-50)); ok {
		t.Fatal("no commit before the window's end, yet ok")
	}
	if _, _, ok := outage(nil, at(0), at(1)); ok {
		t.Fatal("no commits, yet ok")
	}
}

func TestMissing(t *testing.T) {
	got := missing([]int64{1, 2, 3, 4, 7}, []int64{1, 3, 4, 5, 6})
	if !slices.Equal(got, []int64{2, 7}) {
		t.Fatalf("missing = %v", got)
	}
	// Rows the client never saw acknowledged (5, 6: commit outcome unknown) are no loss.
	if got := missing([]int64{1}, []int64{1, 2}); len(got) != 0 {
		t.Fatalf("missing = %v", got)
	}
}

func TestOverlaps(t *testing.T) {
	ss := []sample{
		{at(0), []string{"alpha"}, nil},
		{at(100), []string{"alpha", "beta"}, []string{"beta"}},
		{at(200), []string{"beta", "alpha"}, []string{"beta", "alpha"}},
		{at(300), []string{"beta"}, nil},
		{at(400), nil, nil},
		{at(500), []string{"beta", "alpha"}, nil},
	}
	got := overlaps(ss)
	if len(got) != 2 {
		t.Fatalf("overlaps = %+v", got)
	}
	if got[0].From != at(100) || got[0].To != at(200) || got[0].Polls != 2 || got[0].BothQuorate != 1 || !slices.Equal(got[0].Nodes, []string{"alpha", "beta"}) {
		t.Fatalf("first overlap = %+v", got[0])
	}
	if got[1].Polls != 1 || got[1].From != at(500) {
		t.Fatalf("second overlap = %+v", got[1])
	}
	if o := overlaps([]sample{{at(0), []string{"alpha"}, nil}, {at(1), nil, nil}}); len(o) != 0 {
		t.Fatalf("one active node is no overlap: %+v", o)
	}
}

func TestPercentiles(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Second)
	}
	if p := percentile(ds, 99); p != 99*time.Second {
		t.Fatalf("p99 of 1..100 = %v", p)
	}
	if p := percentile(ds, 100); p != 100*time.Second {
		t.Fatalf("p100 = %v", p)
	}
	if m := median(ds); m != 50500*time.Millisecond {
		t.Fatalf("median of 1..100 = %v", m)
	}
	three := []time.Duration{3 * time.Second, time.Second, 2 * time.Second}
	if m, p := median(three), percentile(three, 99); m != 2*time.Second || p != 3*time.Second {
		t.Fatalf("median %v p99 %v", m, p)
	}
	if percentile(nil, 99) != 0 || median(nil) != 0 {
		t.Fatal("empty")
	}
	// The input is not reordered.
	if ds[0] != 100*time.Second {
		t.Fatal("percentile sorted its input")
	}
}

func TestSummarize(t *testing.T) {
	rs := []result{
		{Kind: "kill", RTO: 2 * time.Second, HaveRTO: true},
		{Kind: "pgkill", RTO: time.Second, HaveRTO: true},
		{Kind: "kill", RTO: 4 * time.Second, HaveRTO: true, Lost: 1, TwoServing: 3},
		{Kind: "pgkill", TwoServing: 2, TwoQuorate: 1, Err: "x"},
		{Kind: "kill", Err: "no commit after the fault"},
	}
	rows := summarize(rs)
	if len(rows) != 2 || rows[0].Kind != "kill" || rows[1].Kind != "pgkill" {
		t.Fatalf("rows = %+v", rows)
	}
	k := rows[0]
	if k.Trials != 3 || k.Failed != 1 || k.NoRecovery != 1 || k.Median != 3*time.Second || k.P99 != 4*time.Second ||
		k.Max != 4*time.Second || k.Lost != 1 || k.TwoServing != 1 {
		t.Fatalf("kill row = %+v", k)
	}
	tb := table(rows)
	if !strings.Contains(tb, "| kill | 3 | 1 | 3.00 s | 4.00 s | 4.00 s | 1 | 1 | 0 |") ||
		!strings.Contains(tb, "| pgkill | 2 | 1 | 1.00 s | 1.00 s | 1.00 s | 0 | 1 | 1 |") {
		t.Fatalf("table:\n%s", tb)
	}
}
