package soak

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/blockrep/blockrep/internal/clustertest"
)

var (
	soakN    = flag.Int("soak.n", 0, "TestSoak: run this many randomized trials")
	soakSeed = flag.Uint64("soak.seed", 0, "TestSoak: replay the trial of this seed")
	soakBase = flag.Uint64("soak.base", 0, "TestSoak: derive the trials' seeds from this seed (default: the time)")
	soakNet  = flag.String("soak.net", "", "network: netns or proxy (default: netns where it works)")
)

// shortSet is the fixed set that runs with every go test: together these seeds inject
// every kind of fault, with two and three nodes, with fio alongside, and once in the
// 127.0.0.x proxy fallback (TestShortSetCoversEveryFault keeps it so).
var shortSet = []struct {
	seed uint64
	net  clustertest.NetMode
}{
	{2, ""},                   // slow-link, write-error-primary, partition-flap
	{4, ""},                   // write-error-secondary, write-error-primary, split-brain
	{9, ""},                   // kill-secondary, crash-mid-resync, write-error-secondary
	{20, ""},                  // kill-primary, partition-oneway; fio
	{25, ""},                  // read-error-primary; fio
	{32, ""},                  // three nodes: slow-link; fio
	{29, clustertest.Proxied}, // slow-link, partition through the proxies
}

// TestShortSet runs the fixed trials (a few minutes with the race detector).
func TestShortSet(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault harness starts real daemons; skipped with -short")
	}
	clustertest.Need(t, "fio")
	sum := NewSummary()
	for _, tc := range shortSet {
		p := NewPlan(tc.seed)
		var r *Result
		t.Run(fmt.Sprintf("seed=%d", tc.seed), func(t *testing.T) {
			r = Run(t, p, Options{Network: netFlag(tc.net)})
			t.Log(Line(r))
		})
		sum.Add(orSetupFailure(r, p))
	}
	t.Logf("short set:\n%s", sum)
	// The set promises every kind of fault; one that found no moment to happen (a
	// resync too short to crash in, a disk fault no I/O reached) breaks the promise.
	for _, k := range Kinds() {
		if sum.Faults[k] == 0 && !t.Failed() {
			t.Errorf("the short set injected no %s fault (%d not applicable)", k, sum.Skipped[k])
		}
	}
}

func netFlag(def clustertest.NetMode) clustertest.NetMode {
	if *soakNet != "" {
		return clustertest.NetMode(*soakNet)
	}
	if def == clustertest.Netns || def == "" {
		return PickNetwork()
	}
	return def
}

// TestSoak runs randomized trials: go test ./internal/soak -run TestSoak -timeout 0
// -args -soak.n=500 (or make soak N=500), or replays one: -soak.seed=SEED (make soak
// SEED=…). It prints one line per trial and a summary; failures name their seeds.
func TestSoak(t *testing.T) {
	if *soakN == 0 && *soakSeed == 0 {
		t.Skip("run with -soak.n=N or -soak.seed=SEED (make soak)")
	}
	var seeds []uint64
	if *soakSeed != 0 {
		seeds = []uint64{*soakSeed}
	} else {
		base := *soakBase
		if base == 0 {
			base = uint64(time.Now().UnixNano())
		}
		fmt.Printf("soak: %d trials from base seed %d (replay all: -soak.base=%d)\n", *soakN, base, base)
		r := rand.New(rand.NewPCG(base, 0))
		for range *soakN {
			seeds = append(seeds, r.Uint64()>>16) // short enough to type
		}
	}
	sum := NewSummary()
	start := time.Now()
	for i, seed := range seeds {
		p := NewPlan(seed)
		fmt.Printf("soak: trial %d/%d: %s\n", i+1, len(seeds), p)
		var r *Result
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			r = Run(t, p, Options{Network: netFlag("")})
		})
		r = orSetupFailure(r, p)
		sum.Add(r)
		fmt.Printf("soak: %s\n", Line(r))
		if (i+1)%10 == 0 || i+1 == len(seeds) {
			writeProgress(sum, i+1, len(seeds), start)
		}
	}
	fmt.Printf("soak summary (%s wall clock):\n%s", time.Since(start).Round(time.Second), sum)
}

// orSetupFailure stands in for the result of a trial whose cluster could not be set up.
func orSetupFailure(r *Result, p Plan) *Result {
	if r != nil {
		return r
	}
	return &Result{Plan: p, Failures: []string{"the cluster could not be set up (see the test log)"}}
}

// writeProgress leaves the running summary in $SOAK_PROGRESS, if set, so that a long
// soak that is interrupted still tells how far it got.
func writeProgress(s *Summary, done, total int, start time.Time) {
	path := os.Getenv("SOAK_PROGRESS")
	if path == "" {
		return
	}
	txt := fmt.Sprintf("%d of %d trials done after %s\n%s", done, total, time.Since(start).Round(time.Second), s)
	os.WriteFile(path, []byte(txt), 0o644)
}

// TestShortSetCoversEveryFault pins the promise of the short set.
func TestShortSetCoversEveryFault(t *testing.T) {
	kinds := map[Kind]bool{}
	nodes := map[int]bool{}
	fio, proxy := false, false
	for _, tc := range shortSet {
		p := NewPlan(tc.seed)
		for _, st := range p.Steps {
			kinds[st.Kind] = true
		}
		nodes[p.Nodes] = true
		fio = fio || p.Fio
		proxy = proxy || tc.net == clustertest.Proxied
	}
	for _, k := range Kinds() {
		if !kinds[k] {
			t.Errorf("no short-set trial injects %s", k)
		}
	}
	if !nodes[2] || !nodes[3] || !fio || !proxy {
		t.Errorf("short set: nodes %v, fio %v, proxy fallback %v; want 2 and 3 nodes, fio and the fallback", nodes, fio, proxy)
	}
}

// TestPlanIsAFunctionOfTheSeed: replaying a seed replays the schedule.
func TestPlanIsAFunctionOfTheSeed(t *testing.T) {
	for seed := uint64(1); seed < 200; seed++ {
		a, b := NewPlan(seed), NewPlan(seed)
		if a.String() != b.String() {
			t.Fatalf("seed %d: %s != %s", seed, a, b)
		}
		for i := range a.Steps {
			if a.Steps[i].Rand().Uint64() != b.Steps[i].Rand().Uint64() {
				t.Fatalf("seed %d step %d: different runtime choices", seed, i)
			}
		}
	}
}
