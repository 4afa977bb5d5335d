package soak

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Kind is a kind of fault.
type Kind int

const (
	KillPrimary         Kind = iota // kill -9 of the Primary; a survivor in sync takes over, else it restarts
	KillSecondary                   // kill -9 of a Secondary, restart, up
	Partition                       // both directions between two nodes, then healed
	PartitionOneWay                 // one direction only
	PartitionFlap                   // toggled every 100–400 ms for a while
	SlowLink                        // a node's outgoing traffic rate-limited
	WriteErrorPrimary               // backing-disk write errors on the Primary: it goes on diskless
	WriteErrorSecondary             // on a Secondary: it detaches and drops its connections
	ReadErrorPrimary                // backing-disk read errors on the Primary: reads come from a peer
	CrashMidResync                  // kill -9 of the SyncSource or SyncTarget while a resync runs
	SplitBrain                      // both sides write while partitioned (forced promotion), then resolved
	numKinds
)

var kindNames = [numKinds]string{"kill-primary", "kill-secondary", "partition", "partition-oneway", "partition-flap",
	"slow-link", "write-error-primary", "write-error-secondary", "read-error-primary", "crash-mid-resync", "split-brain"}

func (k Kind) String() string {
	if k >= 0 && k < numKinds {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Kinds lists every kind of fault.
func Kinds() []Kind {
	out := make([]Kind, numKinds)
	for i := range out {
		out[i] = Kind(i)
	}
	return out
}

// Plan is one trial, derived entirely from its seed: the cluster, the workload and the
// faults with their timing. Choices made while the trial runs (which Secondary, which
// recovery) come from per-step generators derived from the same seed (Step.Rand), so a
// seed replays the same schedule as far as the daemons' timing allows.
type Plan struct {
	Seed    uint64
	Nodes   int   // 2 or 3
	First   int   // the node forced Primary at the start
	SpanOff int64 // the workload's blocks
	SpanLen int64
	Writers int
	Fio     bool // run fio with verify state alongside, as a second oracle
	// FioRuntime is how long fio writes (a demotion waits for it to end).
	FioRuntime time.Duration
	Final      int // the node promoted at the end, whose export is read back
	Steps      []Step
}

// Step is one fault: the workload runs for After, then the fault is injected and lasts
// about Hold before it is healed.
type Step struct {
	Kind  Kind
	After time.Duration
	Hold  time.Duration
	seed  [2]uint64
}

// Rand is the step's own generator for the choices made while it runs.
func (s Step) Rand() *rand.Rand { return rand.New(rand.NewPCG(s.seed[0], s.seed[1])) }

// Geometry of every trial's cluster.
const (
	diskSize = 48 << 20 // backing file; the data region is slightly smaller
	fioOff   = 32 << 20 // fio's region, outside every workload span
	fioLen   = 8 << 20
)

// NewPlan derives a trial from its seed.
func NewPlan(seed uint64) Plan {
	r := rand.New(rand.NewPCG(seed, 0x736f616b)) // "soak"
	p := Plan{Seed: seed, Nodes: 2 + r.IntN(2), Writers: 2 + r.IntN(3)}
	p.First = r.IntN(p.Nodes)
	p.SpanLen = int64(4+r.IntN(13)) << 20 // 4–16 MiB: overwrites are common
	p.SpanOff = int64(r.IntN(int((fioOff-p.SpanLen)/BlockSize))) * BlockSize
	steps := 1 + r.IntN(3)
	for i := 0; i < steps; i++ {
		k := Kind(r.IntN(int(numKinds)))
		st := Step{Kind: k, After: ms(r, 300, 1500), Hold: hold(r, k), seed: [2]uint64{seed, uint64(i + 1)}}
		p.Steps = append(p.Steps, st)
	}
	// fio's verify state holds only for one lineage: not with split brain.
	p.Fio = r.IntN(3) == 0 && !p.Has(SplitBrain)
	p.FioRuntime = ms(r, 2000, 5000)
	p.Final = r.IntN(p.Nodes)
	return p
}

func ms(r *rand.Rand, lo, hi int) time.Duration {
	return time.Duration(lo+r.IntN(hi-lo+1)) * time.Millisecond
}

// hold draws how long a fault lasts: partitions around the peers' keepalive timeout
// (3 s in the test configuration), so that some are noticed and some are not.
func hold(r *rand.Rand, k Kind) time.Duration {
	switch k {
	case Partition, PartitionOneWay:
		return ms(r, 500, 5000)
	case PartitionFlap:
		return ms(r, 1500, 4000)
	case SlowLink:
		return ms(r, 1000, 4000)
	case SplitBrain:
		return ms(r, 500, 2000)
	}
	return ms(r, 200, 2000)
}

// Has reports whether the plan injects a fault of kind k.
func (p Plan) Has(k Kind) bool {
	for _, s := range p.Steps {
		if s.Kind == k {
			return true
		}
	}
	return false
}

func (p Plan) String() string {
	var st []string
	for _, s := range p.Steps {
		st = append(st, fmt.Sprintf("%s after %s for %s", s.Kind, s.After, s.Hold))
	}
	fio := ""
	if p.Fio {
		fio = ", fio"
	}
	return fmt.Sprintf("seed %d: %d nodes, %s first, %d writers on %d MiB at %d MiB%s; %s; final Primary %s",
		p.Seed, p.Nodes, nodeName(p.First), p.Writers, p.SpanLen>>20, p.SpanOff>>20, fio, strings.Join(st, ", "), nodeName(p.Final))
}

var nodeNames = []string{"alpha", "beta", "gamma"}

func nodeName(i int) string { return nodeNames[i] }
