package soak

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Summary adds up trials.
type Summary struct {
	Trials, Failed  int
	Faults, Skipped map[Kind]int
	Acked, Flushed  int64
	Indeterminate   int64 // failed or in-flight writes (either outcome allowed)
	Reads, Blocks   int64
	FioTrials       int
	StaleViewTrials int // trials ending with a stale peer-disk view
	// KnownBugs counts failed trials by the known bug whose signature they show.
	KnownBugs        map[string]int
	Unexplained      int // failed trials with no known bug's signature
	Nodes            map[int]int
	Failures         []string // "seed N: what"
	Elapsed, Longest time.Duration
	LongestSeed      uint64
	networks         map[string]int
}

// NewSummary returns an empty summary.
func NewSummary() *Summary {
	return &Summary{Faults: map[Kind]int{}, Skipped: map[Kind]int{}, Nodes: map[int]int{}, networks: map[string]int{},
		KnownBugs: map[string]int{}}
}

// Add counts one trial.
func (s *Summary) Add(r *Result) {
	s.Trials++
	s.Nodes[r.Plan.Nodes]++
	s.networks[string(r.Network)]++
	for k, n := range r.Faults {
		s.Faults[k] += n
	}
	for k, n := range r.Skipped {
		s.Skipped[k] += n
	}
	s.Acked += int64(r.Acked)
	s.Flushed += int64(r.Flushed)
	s.Indeterminate += int64(r.Failed)
	s.Reads += r.Reads
	s.Blocks += r.Blocks
	if r.Fio {
		s.FioTrials++
	}
	if r.StaleViews > 0 {
		s.StaleViewTrials++
	}
	s.Elapsed += r.Duration
	if r.Duration > s.Longest {
		s.Longest, s.LongestSeed = r.Duration, r.Plan.Seed
	}
	if len(r.Failures) > 0 {
		s.Failed++
		tag := ""
		for _, b := range r.KnownBugs {
			s.KnownBugs[b]++
		}
		if len(r.KnownBugs) == 0 {
			s.Unexplained++
		} else {
			tag = " [" + strings.Join(r.KnownBugs, ", ") + "]"
		}
		for _, f := range r.Failures {
			s.Failures = append(s.Failures, fmt.Sprintf("seed %d (%d nodes)%s: %s", r.Plan.Seed, r.Plan.Nodes, tag, firstLine(f)))
		}
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}

// Line is one trial's result in one line.
func Line(r *Result) string {
	var kinds []string
	for _, st := range r.Plan.Steps {
		kinds = append(kinds, st.Kind.String())
	}
	verdict := "ok"
	if len(r.Failures) > 0 {
		verdict = fmt.Sprintf("FAILED (%d) — files kept in %s", len(r.Failures), r.Dir)
		if len(r.KnownBugs) > 0 {
			verdict += " [signature of " + strings.Join(r.KnownBugs, ", ") + "]"
		}
	}
	return fmt.Sprintf("seed %d: %d nodes, %s: %d acknowledged writes checked, %d reads: %s (%.1fs)",
		r.Plan.Seed, r.Plan.Nodes, strings.Join(kinds, "+"), r.Acked, r.Reads, verdict, r.Duration.Seconds())
}

func (s *Summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "trials: %d (%d with 2 nodes, %d with 3), %d failed; network: %v\n", s.Trials, s.Nodes[2], s.Nodes[3], s.Failed, s.networks)
	fmt.Fprintf(&b, "faults injected:")
	for _, k := range Kinds() {
		fmt.Fprintf(&b, " %s %d", k, s.Faults[k])
		if n := s.Skipped[k]; n > 0 {
			fmt.Fprintf(&b, " (+%d not applicable)", n)
		}
		b.WriteString(";")
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "acknowledged writes checked: %d (%d covered by a FLUSH); indeterminate writes (failed or in flight at a crash): %d\n",
		s.Acked, s.Flushed, s.Indeterminate)
	fmt.Fprintf(&b, "blocks read back: %d; reads checked online: %d; trials with fio verification: %d\n", s.Blocks, s.Reads, s.FioTrials)
	if s.StaleViewTrials > 0 {
		fmt.Fprintf(&b, "stale peer-disk views after convergence in %d trials (TestPeerDiskViewAfterResync)\n", s.StaleViewTrials)
	}
	fmt.Fprintf(&b, "time: %s in trials, longest %s (seed %d)\n", s.Elapsed.Round(time.Second), s.Longest.Round(100*time.Millisecond), s.LongestSeed)
	fmt.Fprintf(&b, "separately covered in-process (blockrep): simulated power loss (TestPowerLossKeepsEveryFlushedWrite), FLUSH on the peer disk (TestFlushReachesThePeerDisk), 1,000 reconnects (TestThousandReconnectsLeakNothing)\n")
	for _, bug := range slices.Sorted(maps.Keys(s.KnownBugs)) {
		fmt.Fprintf(&b, "failed trials showing the signature of the fixed bug %s: %d of %d\n", bug, s.KnownBugs[bug], s.Failed)
	}
	if s.Failed > 0 {
		fmt.Fprintf(&b, "failed trials with no known bug's signature: %d\n", s.Unexplained)
	}
	if len(s.Failures) == 0 {
		b.WriteString("failures: none\n")
	} else {
		fmt.Fprintf(&b, "failures (%d):\n", len(s.Failures))
		for _, f := range s.Failures {
			fmt.Fprintf(&b, "  %s\n", f)
		}
	}
	return b.String()
}
