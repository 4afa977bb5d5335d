package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// commit is one transaction the client saw committed: its row id and the time the
// COMMIT returned OK.
type commit struct {
	ID int64
	At time.Time
}

// outage is the client's longest gap around a fault: among consecutive commits (a, b)
// with b returning after from (the fault began) and a before to (the harness saw
// service again), the pair furthest apart. A commit that returned while the fault was
// being put in place, or just after a switchover was asked for, was not yet affected
// and does not hide the gap that follows. ok is false when there is no such pair.
// commits must be in the order they returned.
func outage(commits []commit, from, to time.Time) (last, first commit, ok bool) {
	for i := 1; i < len(commits); i++ {
		a, b := commits[i-1], commits[i]
		if !b.At.After(from) || !a.At.Before(to) {
			continue
		}
		if !ok || b.At.Sub(a.At) > first.At.Sub(last.At) {
			last, first, ok = a, b, true
		}
	}
	return last, first, ok
}

// missing is the ids the client saw committed that the database no longer has.
func missing(committed []int64, present []int64) []int64 {
	have := make(map[int64]bool, len(present))
	for _, id := range present {
		have[id] = true
	}
	var lost []int64
	for _, id := range committed {
		if !have[id] {
			lost = append(lost, id)
		}
	}
	return lost
}

// sample is one poll of every node: which were active (role Primary or service
// running; a node that did not answer is not active), and which of those had quorum
// (only those could take writes: without quorum a Primary fails every write).
type sample struct {
	At      time.Time
	Active  []string
	Quorate []string
}

// overlap is the span during which polls saw two or more nodes active.
type overlap struct {
	From, To time.Time
	Nodes    []string
	Polls    int
	// BothQuorate counts the polls in which two of the active nodes had quorum.
	BothQuorate int
}

// overlaps finds the runs of consecutive polls that saw more than one active node.
func overlaps(samples []sample) []overlap {
	var out []overlap
	var cur *overlap
	for _, s := range samples {
		if len(s.Active) < 2 {
			cur = nil
			continue
		}
		if cur == nil {
			out = append(out, overlap{From: s.At})
			cur = &out[len(out)-1]
		}
		cur.To = s.At
		cur.Polls++
		if len(s.Quorate) > 1 {
			cur.BothQuorate++
		}
		for _, n := range s.Active {
			if !slices.Contains(cur.Nodes, n) {
				cur.Nodes = append(cur.Nodes, n)
			}
		}
	}
	return out
}

// percentile is the nearest-rank percentile p (0 < p ≤ 100) of ds, 0 for none.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(p/100*float64(len(s)) + 0.999999999)
	rank = min(max(rank, 1), len(s))
	return s[rank-1]
}

// median is the middle value of ds (the mean of the two middle ones for an even count).
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// result is one trial's outcome.
type result struct {
	Kind string
	N    int
	// RTO is the client's gap; HaveRTO is false when no commit followed the fault.
	RTO     time.Duration
	HaveRTO bool
	Lost    int
	// TwoServing counts the polls that saw two nodes active; TwoQuorate those of
	// them in which both had quorum.
	TwoServing, TwoQuorate int
	// Err is why the trial failed, "" when it ran to the end.
	Err string
}

// row is the summary of one kind of trial.
type row struct {
	Kind                string
	Trials, Failed      int
	Median, P99, Max    time.Duration
	Lost, TwoServing    int
	TwoQuorate          int
	NoRecovery, Checked int
}

// summarize groups results by kind, in the order the kinds first appear.
func summarize(results []result) []row {
	var rows []row
	idx := map[string]int{}
	rtos := map[string][]time.Duration{}
	for _, r := range results {
		i, ok := idx[r.Kind]
		if !ok {
			i = len(rows)
			idx[r.Kind] = i
			rows = append(rows, row{Kind: r.Kind})
		}
		w := &rows[i]
		w.Trials++
		if r.Err != "" {
			w.Failed++
		}
		if r.HaveRTO {
			rtos[r.Kind] = append(rtos[r.Kind], r.RTO)
		} else {
			w.NoRecovery++
		}
		w.Lost += r.Lost
		if r.TwoServing > 0 {
			w.TwoServing++
		}
		if r.TwoQuorate > 0 {
			w.TwoQuorate++
		}
	}
	for i := range rows {
		ds := rtos[rows[i].Kind]
		rows[i].Checked = len(ds)
		rows[i].Median = median(ds)
		rows[i].P99 = percentile(ds, 99)
		if len(ds) > 0 {
			rows[i].Max = slices.Max(ds)
		}
	}
	return rows
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

// table renders rows as a markdown table (also readable as text).
func table(rows []row) string {
	var b strings.Builder
	b.WriteString("| kind | trials | failed | RTO median | RTO p99 | RTO max | rows lost | two serving | two with quorum |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		med, p99, mx := "–", "–", "–"
		if r.Checked > 0 {
			med, p99, mx = secs(r.Median), secs(r.P99), secs(r.Max)
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %s | %s | %s | %d | %d | %d |\n", r.Kind, r.Trials, r.Failed, med, p99, mx, r.Lost, r.TwoServing, r.TwoQuorate)
	}
	return b.String()
}
