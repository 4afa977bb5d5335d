package soak

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"github.com/blockrep/blockrep/internal/clustertest"
)

// inject runs one fault from injection to recovery. Faults do not overlap: each one
// is healed before the next begins (though the cluster may still be resyncing), which
// keeps the promotion policy well defined — see killPrimary.
func (tr *trial) inject(st Step) {
	r := st.Rand()
	switch st.Kind {
	case KillPrimary:
		tr.killPrimary(st, r)
	case KillSecondary:
		tr.killSecondary(st, r)
	case Partition, PartitionOneWay, PartitionFlap:
		tr.partition(st, r)
	case SlowLink:
		tr.slowLink(st, r)
	case WriteErrorPrimary:
		tr.diskError(st, r, tr.primary, "write")
	case WriteErrorSecondary:
		ss := tr.secondaries()
		tr.diskError(st, r, ss[r.IntN(len(ss))], "write")
	case ReadErrorPrimary:
		tr.diskError(st, r, tr.primary, "read")
	case CrashMidResync:
		tr.crashMidResync(st, r)
	case SplitBrain:
		tr.splitBrain(st, r)
	}
}

func pick(r *rand.Rand, ns []*clustertest.Node) *clustertest.Node { return ns[r.IntN(len(ns))] }

// inSyncWith lists the Secondaries in sync with the Primary now. Called just before
// the Primary is killed, with no network fault active (faults do not overlap), it is
// the set of nodes that hold every write the Primary acknowledged.
func (tr *trial) inSyncWith(p *clustertest.Node, except *clustertest.Node) []*clustertest.Node {
	var out []*clustertest.Node
	for _, s := range tr.others(p) {
		if s != except && tr.inSync(p, s) {
			out = append(out, s)
		}
	}
	return out
}

// killPrimary kills the Primary and fails over by the harness's promotion policy.
// Half the time it is a machine crash rather than a process crash: the node's links are
// cut first, so that what its kernel still held for its peers dies with it too.
func (tr *trial) killPrimary(st Step, r *rand.Rand) {
	tr.fio.wait()
	old := tr.primary
	eligible := tr.inSyncWith(old, nil)
	if r.IntN(2) == 0 {
		tr.isolate(old)
	}
	tr.kill(old)
	tr.res.Faults[KillPrimary]++
	tr.failover(old, eligible, st.Hold, r)
}

// isolate cuts every link of n in both directions (healed by mendAll).
func (tr *trial) isolate(n *clustertest.Node) {
	for _, o := range tr.others(n) {
		tr.cut(n, o)
		tr.cut(o, n)
	}
	tr.logf("%s cut off from every peer", n.Name)
}

// failover continues after the Primary died. blockrep has no fencing in this
// configuration (DRBD's "fencing dont-care"): a Secondary that was cut off before the
// Primary died does not have the writes the Primary acknowledged alone. So a survivor
// is promoted only if it was in sync with the Primary when it died; otherwise the old
// Primary is restarted and promoted again.
func (tr *trial) failover(old *clustertest.Node, eligible []*clustertest.Node, hold time.Duration, r *rand.Rand) {
	if len(eligible) == 0 {
		tr.logf("no survivor was in sync with %s: it is restarted and stays Primary", old.Name)
		tr.sleep(hold)
		tr.mendAll()
		if err := tr.restart(old); err != nil {
			tr.fail("restarting the crashed Primary %s: %v", old.Name, err)
			tr.aborted = true
			return
		}
		if err := tr.takeOver(old, "after the crashed Primary "+old.Name+" came back"); err != nil {
			tr.fail("the restarted Primary %s cannot be promoted again: %v; %s", old.Name, err, tr.describe())
			tr.aborted = true
		}
		return
	}
	s := pick(r, eligible)
	err := tr.waitUntil(s.Name+" notices that "+old.Name+" is gone", waitShort, func() bool {
		_, ps, ok := tr.peer(s, old)
		return ok && ps.Connection != "Connected"
	})
	if err != nil {
		tr.fail("%v", err)
	}
	if err := tr.takeOver(s, "after failing over from "+old.Name+" to "+s.Name); err != nil {
		tr.fail("%s was in sync with the dead Primary %s but cannot be promoted: %v", s.Name, old.Name, err)
		tr.aborted = true
		return
	}
	tr.sleep(hold)
	tr.mendAll()
	if err := tr.restart(old); err != nil {
		tr.fail("restarting the old Primary %s: %v", old.Name, err)
		tr.aborted = true
	}
}

func (tr *trial) killSecondary(st Step, r *rand.Rand) {
	s := pick(r, tr.secondaries())
	if r.IntN(2) == 0 {
		tr.isolate(s) // a machine crash, as in killPrimary
	}
	tr.kill(s)
	tr.res.Faults[KillSecondary]++
	tr.sleep(st.Hold)
	tr.mendAll()
	if err := tr.restart(s); err != nil {
		tr.fail("restarting the Secondary %s: %v", s.Name, err)
		tr.aborted = true
	}
}

// partition cuts the link between two nodes (the Primary and a Secondary, or with
// three nodes any pair): both ways, one way, or flapping.
func (tr *trial) partition(st Step, r *rand.Rand) {
	a, b := tr.primary, pick(r, tr.secondaries())
	if len(tr.c.Nodes) == 3 && r.IntN(3) == 0 {
		ss := tr.secondaries()
		a, b = ss[0], ss[1]
	}
	if r.IntN(2) == 0 {
		a, b = b, a
	}
	tr.res.Faults[st.Kind]++
	defer func() {
		// Whether the daemons noticed, for the transcript (either is fine).
		_, pa, _ := tr.peer(a, b)
		_, pb, _ := tr.peer(b, a)
		tr.logf("before healing: %s sees %s %s, %s sees %s %s", a.Name, b.Name, pa.Connection, b.Name, a.Name, pb.Connection)
		tr.mendAll()
	}()
	switch st.Kind {
	case Partition:
		tr.cut(a, b)
		tr.cut(b, a)
		tr.logf("partition %s <-> %s for %s", a.Name, b.Name, st.Hold)
		tr.sleep(st.Hold)
	case PartitionOneWay:
		tr.cut(a, b)
		tr.logf("partition %s -> %s (one way) for %s", a.Name, b.Name, st.Hold)
		tr.sleep(st.Hold)
	case PartitionFlap:
		tr.logf("flapping %s <-> %s for %s", a.Name, b.Name, st.Hold)
		end := time.Now().Add(st.Hold)
		for on := true; time.Now().Before(end); on = !on {
			if on {
				tr.cut(a, b)
				tr.cut(b, a)
			} else {
				tr.mend(a, b)
				tr.mend(b, a)
			}
			tr.sleep(ms(r, 100, 400))
		}
	}
}

func (tr *trial) cut(a, b *clustertest.Node) {
	if err := tr.c.Cut(a, b); err != nil {
		tr.fatal("cut %s -> %s: %v", a.Name, b.Name, err)
	}
}

func (tr *trial) mend(a, b *clustertest.Node) {
	if err := tr.c.Mend(a, b); err != nil {
		tr.fatal("mend %s -> %s: %v", a.Name, b.Name, err)
	}
}

func (tr *trial) mendAll() {
	if err := tr.c.MendAll(); err != nil {
		tr.fatal("healing the network: %v", err)
	}
	tr.logf("network healed")
}

// slowLink rate-limits one node's outgoing traffic.
func (tr *trial) slowLink(st Step, r *rand.Rand) {
	n := pick(r, tr.c.Nodes)
	shape := clustertest.Shape{Rate: int64(256+r.IntN(1792)) << 10, Delay: ms(r, 5, 30)}
	if err := tr.c.Throttle(n, shape); err != nil {
		tr.fatal("throttling %s: %v", n.Name, err)
	}
	tr.res.Faults[SlowLink]++
	tr.logf("%s's outgoing traffic limited to %d KiB/s (+%s in proxy mode) for %s", n.Name, shape.Rate>>10, shape.Delay, st.Hold)
	tr.sleep(st.Hold)
	if err := tr.c.Unthrottle(n); err != nil {
		tr.fatal("unthrottling %s: %v", n.Name, err)
	}
}

// diskError makes node n's backing disk fail reads or writes (on-io-error detach).
func (tr *trial) diskError(st Step, r *rand.Rand, n *clustertest.Node, op string) {
	after := r.IntN(30)
	rule := fmt.Sprintf("ops=%s,off=%d,len=%d,after=%d", op, tr.plan.SpanOff, tr.plan.SpanLen, after)
	if r.IntN(4) == 0 {
		rule = fmt.Sprintf("ops=%s,after=%d", op, after) // the whole device, metadata included
	}
	werr, rerr := tr.w.Errors()
	faultAt := time.Now()
	if err := tr.c.Fault(n, rule); err != nil {
		tr.fatal("fault %s on %s: %v", rule, n.Name, err)
	}
	tr.logf("%s: disk fault %q", n.Name, rule)
	failed := tr.waitUntil(n.Name+"'s disk to fail", 10*time.Second, func() bool {
		s, err := tr.status(n)
		return err == nil && s.DiskFailed
	})
	if failed != nil {
		tr.c.Fault(n, "")
		tr.skip(st.Kind, "the fault on %s never fired (no matching I/O)", n.Name)
		return
	}
	tr.res.Faults[st.Kind]++
	if n == tr.primary {
		tr.disklessPrimary(st, r, werr, rerr, faultAt)
		return
	}
	tr.logf("%s detached its failed disk", n.Name)
	err := tr.waitUntil(tr.primary.Name+" to drop "+n.Name, waitShort, func() bool {
		_, ps, ok := tr.peer(tr.primary, n)
		return ok && ps.Connection != "Connected"
	})
	if err != nil {
		tr.fail("a Secondary with a failed disk stayed connected: %v", err)
	}
	tr.sleep(st.Hold)
	tr.recoverDisk(n, r)
}

// disklessPrimary: the Primary lost its disk. While a peer is connected every request
// must go on succeeding (writes land on the peers, reads come from one). Then the
// Primary is demoted, since a Primary cannot take a disk back, and either a peer takes
// over or the old Primary re-attaches, resyncs and is promoted again.
func (tr *trial) disklessPrimary(st Step, r *rand.Rand, werr, rerr int64, faultAt time.Time) {
	p := tr.primary
	tr.logf("%s detached its failed disk and goes on diskless", p.Name)
	tr.sleep(st.Hold)
	var up []*clustertest.Node
	for _, s := range tr.secondaries() {
		if st, ps, ok := tr.peer(s, p); ok && st.Disk == "UpToDate" && ps.Connection == "Connected" && ps.Replication == "Established" {
			up = append(up, s)
		}
	}
	if lost := tr.lostPeers(p, faultAt); len(lost) == len(tr.secondaries()) {
		// Every peer dropped at some moment after the fault (a keepalive timeout left
		// over from an earlier partition): meanwhile no replica existed.
		tr.logf("%s lost every peer (%s) after its disk failed: failed requests meanwhile are expected", p.Name, strings.Join(lost, ", "))
	} else if w, rd := tr.w.Errors(); len(up) > 0 && (w > werr || rd > rerr) {
		tr.fail("requests failed on the diskless Primary %s while its peers were connected: %d write and %d read errors (last: %s)",
			p.Name, w-werr, rd-rerr, tr.w.LastError())
	}
	if len(up) == 0 {
		// A keepalive timeout left over from an earlier partition can drop the last
		// peer just before the disk fails: then no replica exists, requests fail as they
		// must, and only the Primary's own disk, back again, has its latest writes.
		tr.logf("no peer was in sync with %s when its disk failed: its requests fail; it gets its disk back and stays Primary", p.Name)
	}
	if err := tr.demote(); err != nil {
		tr.fail("demoting the diskless Primary %s: %v", p.Name, err)
		tr.aborted = true
		return
	}
	if len(up) > 0 && r.IntN(2) == 0 {
		s := pick(r, up)
		if err := tr.takeOver(s, "after switching from the diskless "+p.Name+" to "+s.Name); err != nil {
			tr.fail("%s had the diskless Primary's data but cannot be promoted: %v", s.Name, err)
			tr.aborted = true
			return
		}
		tr.recoverDisk(p, r)
		return
	}
	tr.recoverDisk(p, r)
	// In sync with every peer: each has its own bitmap of what p missed, and p becomes
	// SyncTarget of one after another.
	if len(up) == 0 {
		up = tr.secondaries()
	}
	err := tr.waitUntil(p.Name+" resynced", waitMedium, func() bool {
		for _, s := range up {
			if !tr.inSync(p, s) {
				return false
			}
		}
		return true
	})
	if err != nil {
		tr.fail("after re-attaching its disk: %v", err)
		tr.aborted = true
		return
	}
	if err := tr.takeOver(p, "after "+p.Name+" got its disk back"); err != nil {
		tr.fail("re-promoting %s after its disk came back: %v", p.Name, err)
		tr.aborted = true
	}
}

// lostPeers names the peers whose connection n's log reports lost since t.
func (tr *trial) lostPeers(n *clustertest.Node, t time.Time) []string {
	data, err := os.ReadFile(n.LogFile())
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.Contains(line, `msg="connection lost"`) {
			continue
		}
		at, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		if ts, err := time.Parse(time.RFC3339Nano, at); err != nil || ts.Before(t) {
			continue
		}
		if i := strings.Index(line, " peer="); i >= 0 {
			peer, _, _ := strings.Cut(line[i+6:], " ")
			if !seen[peer] {
				seen[peer] = true
				out = append(out, peer)
			}
		}
	}
	return out
}

// recoverDisk clears the fault and gives node n its disk back: detach + attach,
// attach alone (which replaces a failed disk), or a daemon restart.
func (tr *trial) recoverDisk(n *clustertest.Node, r *rand.Rand) {
	if err := tr.c.Fault(n, ""); err != nil {
		tr.fatal("clearing the fault on %s: %v", n.Name, err)
	}
	var err error
	switch r.IntN(3) {
	case 0:
		if err = tr.adm(n, "detach"); err == nil {
			err = tr.adm(n, "attach")
		}
	case 1:
		err = tr.adm(n, "attach")
	case 2:
		tr.kill(n)
		err = tr.restart(n)
	}
	if err != nil {
		tr.fail("giving %s its disk back: %v", n.Name, err)
		tr.aborted = true
	}
}

// crashMidResync cuts a Secondary off while the workload dirties blocks, heals with
// the resync source throttled so that the resync lasts, and kills the SyncSource or the
// SyncTarget while status shows it running.
func (tr *trial) crashMidResync(st Step, r *rand.Rand) {
	tr.fio.wait() // the victim may be the Primary
	s := pick(r, tr.secondaries())
	if err := tr.waitUntil(s.Name+" in sync", waitMedium, func() bool { return tr.inSync(tr.primary, s) }); err != nil {
		tr.skip(CrashMidResync, "%s never got in sync first: %v", s.Name, err)
		return
	}
	for _, o := range tr.others(s) {
		tr.cut(s, o)
		tr.cut(o, s)
	}
	tr.logf("%s cut off from every peer", s.Name)
	err := tr.waitUntil(tr.primary.Name+" to drop "+s.Name, waitShort, func() bool {
		_, ps, ok := tr.peer(tr.primary, s)
		return ok && ps.Connection != "Connected"
	})
	if err != nil {
		tr.mendAll()
		tr.skip(CrashMidResync, "the cut was not noticed: %v", err)
		return
	}
	tr.sleep(ms(r, 1000, 2000)) // writes the resync will have to move
	rate := int64(256+r.IntN(512)) << 10
	for _, o := range tr.others(s) {
		if err := tr.c.Throttle(o, clustertest.Shape{Rate: rate, Delay: 10 * time.Millisecond}); err != nil {
			tr.fatal("throttling %s: %v", o.Name, err)
		}
	}
	defer tr.unthrottleAll()
	tr.mendAll()
	var source *clustertest.Node
	err = tr.waitUntil(s.Name+" to become SyncTarget", waitShort, func() bool {
		for _, o := range tr.others(s) {
			if _, ps, ok := tr.peer(s, o); ok && ps.Replication == "SyncTarget" {
				source = o
				return true
			}
		}
		return false
	})
	if err != nil {
		tr.skip(CrashMidResync, "no resync observed: %v", err)
		return
	}
	tr.sleep(ms(r, 0, 500))
	victim := s
	if r.IntN(2) == 0 {
		victim = source
	}
	tr.logf("resync %s -> %s running; crashing the %s", source.Name, s.Name, map[bool]string{true: "SyncTarget", false: "SyncSource"}[victim == s])
	tr.res.Faults[CrashMidResync]++
	if victim == tr.primary {
		eligible := tr.inSyncWith(victim, s)
		tr.kill(victim)
		tr.unthrottleAll()
		tr.failover(victim, eligible, st.Hold, r)
		return
	}
	tr.kill(victim)
	tr.unthrottleAll()
	tr.sleep(st.Hold)
	if err := tr.restart(victim); err != nil {
		tr.fail("restarting %s: %v", victim.Name, err)
		tr.aborted = true
	}
}

func (tr *trial) unthrottleAll() {
	for _, n := range tr.c.Nodes {
		if err := tr.c.Unthrottle(n); err != nil {
			tr.fatal("unthrottling %s: %v", n.Name, err)
		}
	}
}

// splitBrain cuts a Secondary off from every peer, promotes it with --force, lets both
// sides write, heals the network and expects split brain to be reported on both sides
// and never merged: then it is resolved by discarding one side's data (connect
// --discard-my-data on the victims), and the survivors' lineage goes on.
func (tr *trial) splitBrain(st Step, r *rand.Rand) {
	s := pick(r, tr.secondaries())
	p := tr.primary
	if err := tr.waitUntil(s.Name+" in sync", waitMedium, func() bool { return tr.inSync(p, s) }); err != nil {
		tr.skip(SplitBrain, "%s never got in sync first: %v", s.Name, err)
		return
	}
	for _, o := range tr.others(s) {
		tr.cut(s, o)
		tr.cut(o, s)
	}
	fork := tr.w.History().Tick() // after the cut: nothing issued later reaches s
	tr.logf("%s cut off from every peer (fork at t%d)", s.Name, fork)
	// A promotion asks every connected peer first: wait until s has noticed that every
	// link is gone, so that --force is all it takes.
	err := tr.waitUntil(s.Name+" to notice", waitShort, func() bool {
		for _, o := range tr.others(s) {
			if _, ps, ok := tr.peer(s, o); !ok || ps.Connection == "Connected" {
				return false
			}
		}
		return true
	})
	if err != nil {
		tr.fatal("%v", err)
	}
	if err := tr.adm(s, "primary", "--force"); err != nil {
		tr.fail("forced promotion of the isolated %s: %v", s.Name, err)
		tr.aborted = true
		tr.mendAll()
		return
	}
	tr.res.Faults[SplitBrain]++
	for _, o := range tr.others(s) {
		tr.poll.forbid(s, o)
	}
	w2 := StartWorkload(WorkloadConfig{Resource: tr.c.Res, Seed: tr.plan.Seed + 1, SpanOff: tr.plan.SpanOff,
		SpanLen: tr.plan.SpanLen, Writers: tr.plan.Writers}, tr.w.History().Fork(fork), s.ExportPath())
	tr.logf("both %s and %s write (lineages %d and %d)", p.Name, s.Name, tr.w.History().Lineage, w2.History().Lineage)
	tr.sleep(st.Hold)
	tr.mendAll()
	err = tr.waitUntil("split brain reported on both sides", waitMedium, func() bool {
		for _, o := range tr.others(s) {
			_, a, ok1 := tr.peer(s, o)
			_, b, ok2 := tr.peer(o, s)
			if !ok1 || !ok2 || !a.SplitBrain || !b.SplitBrain || a.Connection != "StandAlone" || b.Connection != "StandAlone" {
				return false
			}
		}
		return true
	})
	if err != nil {
		tr.fail("split brain: %v", err)
	}
	if out, _, _ := tr.c.Adm(s, "status", tr.c.Res); !containsSplitBrain(out) {
		tr.fail("blockrepadm status on %s does not say split-brain:\n%s", s.Name, out)
	}
	for _, o := range tr.others(s) {
		tr.poll.allow(s, o) // from here on they connect, through the resolution
	}
	if r.IntN(2) == 0 {
		tr.discard(w2, s, []*clustertest.Node{s}, tr.others(s))
	} else {
		// The old Primary's side is the victim: every node but s discards.
		old := tr.w
		tr.discard(old, p, tr.others(s), []*clustertest.Node{s})
		tr.w, tr.primary = w2, s
	}
	if tr.aborted {
		return
	}
	if err := tr.waitAllInSync(waitMedium); err != nil {
		tr.fail("after resolving the split brain: %v", err)
		tr.aborted = true
		return
	}
	tr.checkpoint("after resolving the split brain")
	tr.checkIdentical("after resolving the split brain")
}

// discard resolves a split brain: the victims' workload stops, their Primary is
// demoted, and they reconnect with --discard-my-data; the survivors reconnect.
func (tr *trial) discard(w *Workload, victimPrimary *clustertest.Node, victims, survivors []*clustertest.Node) {
	if err := w.Stop(pauseLimit); err != nil {
		tr.hang("stopping the discarded side's workload: %v", err)
		return
	}
	tr.fio.wait()
	tr.logf("victims: %v; lineage %d is discarded", names(victims), w.History().Lineage)
	tr.waitNoClients(victimPrimary)
	if err := tr.adm(victimPrimary, "secondary"); err != nil {
		tr.fail("demoting the split-brain victim %s: %v", victimPrimary.Name, err)
		tr.aborted = true
		return
	}
	for _, v := range victims {
		if err := tr.adm(v, "connect", "--discard-my-data"); err != nil {
			tr.fail("%v", err)
			tr.aborted = true
		}
	}
	for _, n := range survivors {
		if err := tr.adm(n, "connect"); err != nil {
			tr.fail("%v", err)
			tr.aborted = true
		}
	}
}

func names(ns []*clustertest.Node) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.Name)
	}
	return out
}
