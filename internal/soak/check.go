package soak

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/blockrep/blockrep/blockrep/nbd"
	"github.com/blockrep/blockrep/internal/clustertest"
)

// heal ends every fault: the network is mended, crashed daemons restart, failed disks
// are re-attached; then the cluster must converge — every pair in sync — by itself.
// A connection the engine gave up on (StandAlone) is a failure: after these faults an
// operator should not be needed.
func (tr *trial) heal() {
	tr.logf("healing")
	tr.mendAll()
	tr.unthrottleAll()
	for _, n := range tr.c.Nodes {
		if !n.Running() {
			if err := tr.restart(n); err != nil {
				tr.fail("restarting %s to heal: %v", n.Name, err)
			}
		}
		if err := tr.c.Fault(n, ""); err != nil {
			tr.fail("clearing faults on %s: %v", n.Name, err)
		}
	}
	for _, n := range tr.c.Nodes {
		s, err := tr.status(n)
		if err != nil {
			tr.fail("status of %s: %v", n.Name, err)
			continue
		}
		if s.DiskFailed && s.Role != "Primary" {
			tr.logf("%s still has a failed disk", n.Name)
			tr.adm(n, "attach")
		}
		for _, p := range s.Peers {
			if p.Connection == "StandAlone" && !p.SplitBrain {
				tr.fail("%s went StandAlone towards %s without an operator's disconnect (%s)", n.Name, p.Node, p.Reason)
				tr.adm(n, "connect")
			}
		}
	}
	// Converged, or stuck in a split brain (now or meanwhile), which needs an operator.
	var stuck string
	err := tr.waitUntil("every pair in sync", waitLong, func() bool {
		stuck = tr.splitBrainSeen()
		return stuck != "" || tr.allInSync()
	})
	if stuck != "" {
		tr.fail("%s without an operator's disconnect or a forced promotion since the faults were healed; %s", stuck, tr.describe())
		tr.aborted = true
		return
	}
	if err != nil {
		tr.fail("the cluster did not converge after the faults were healed: %v", err)
		tr.aborted = true
		return
	}
	// Every node must come to see each peer's disk as the peer reports it (a stale view
	// once made a new Primary hold an UpToDate replica for Inconsistent).
	var stale []string
	if err := tr.waitUntil("every peer-disk view current", waitShort, func() bool {
		stale = tr.staleViews()
		return len(stale) == 0
	}); err != nil {
		tr.res.StaleViews = len(stale)
		tr.fail("stale peer-disk views after convergence: %s", strings.Join(stale, "; "))
	}
}

// splitBrainSeen names a connection that went StandAlone for split brain, or "".
func (tr *trial) splitBrainSeen() string {
	for _, n := range tr.c.Nodes {
		s, err := tr.status(n)
		if err != nil {
			continue
		}
		for _, p := range s.Peers {
			if p.Connection == "StandAlone" && p.SplitBrain {
				return fmt.Sprintf("%s went StandAlone towards %s (split-brain true)", n.Name, p.Node)
			}
		}
	}
	return ""
}

// check stops the workload and applies the oracle: the node promoted last serves every
// acknowledged write (read back through its export), all replicas are byte-identical,
// fio's own verification passes, and no invariant broke during the trial.
func (tr *trial) check() {
	if err := tr.w.Stop(pauseLimit); err != nil {
		tr.hang("stopping the workload: %v", err)
		return
	}
	tr.fio.wait()
	tr.poll.halt()
	for _, v := range append(tr.poll.found(), tr.w.Violations()...) {
		tr.fail("%s", v)
	}
	tr.scanLogs()
	defer tr.attribute()
	if tr.aborted {
		return
	}
	final := tr.c.Nodes[tr.plan.Final]
	if final != tr.primary {
		tr.waitNoClients(tr.primary)
		if err := tr.adm(tr.primary, "secondary"); err != nil {
			tr.fail("final switchover: %v", err)
			return
		}
		if err := tr.promote(final, false); err != nil {
			tr.fail("final switchover: %v; %s", err, tr.describe())
			return
		}
	}
	h := tr.w.History()
	st := h.Stats()
	tr.res.Acked, tr.res.Flushed, tr.res.Failed = st.Acked, st.FlushCovered, st.Failed+st.InFlight
	tr.res.Reads = tr.w.Reads()
	tr.logf("history: %d writes (%d acknowledged, %d of them flushed; %d failed or in flight at a crash), %d flushes, %d reads checked online",
		st.Writes, st.Acked, st.FlushCovered, st.Failed+st.InFlight, st.Flushes, tr.res.Reads)
	tr.readBack(final, h, "at the end")
	tr.fio.verify(final)
	tr.checkIdentical("at the end")
}

// ownRole reports whether a state-change log line changes the node's role as given.
func ownRole(line, change string) bool {
	return strings.Contains(line, "change=[role:"+change) || strings.Contains(line, `change="[role:`+change)
}

// attribute names the known bugs whose signatures a failed trial shows.
func (tr *trial) attribute() {
	if len(tr.res.Failures) == 0 {
		return
	}
	if src := tr.secondarySources(); len(src) > 0 {
		tr.knownBug("TestNoResyncBetweenSecondariesWhileAPrimaryWrites", strings.Join(src, "; "))
	}
	for _, f := range tr.res.Failures {
		if strings.Contains(f, "went StandAlone") && strings.Contains(f, "split-brain true") {
			tr.knownBug("TestNoFalseSplitBrainBetweenSecondaries", f)
			break
		}
	}
}

func (tr *trial) knownBug(name, evidence string) {
	tr.res.KnownBugs = append(tr.res.KnownBugs, name)
	tr.logf("signature of %s: %s", name, evidence)
}

// readBack reads the whole span through n's export and checks every block against the
// history as it stands (nothing may be in flight).
func (tr *trial) readBack(n *clustertest.Node, h *History, when string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := nbd.Dial(ctx, "unix", n.ExportPath(), tr.c.Res)
	if err != nil {
		tr.fail("reading back %s through %s's export: %v", when, n.Name, err)
		return
	}
	defer cl.Close()
	now := h.Tick()
	buf := make([]byte, 1<<20)
	bad := 0
	for off := tr.plan.SpanOff; off < tr.plan.SpanOff+tr.plan.SpanLen; off += int64(len(buf)) {
		chunk := buf[:min(int64(len(buf)), tr.plan.SpanOff+tr.plan.SpanLen-off)]
		if err := cl.ReadAt(chunk, off); err != nil {
			tr.fail("read back %s at %d on %s: %v", when, off, n.Name, err)
			return
		}
		for i := 0; i < len(chunk); i += BlockSize {
			tr.res.Blocks++
			if err := h.Check(off+int64(i), chunk[i:i+BlockSize], now, now); err != nil {
				if bad++; bad <= 10 {
					tr.fail("read back %s on %s: %v", when, n.Name, err)
				}
			}
		}
	}
	if bad > 10 {
		tr.fail("read back %s on %s: %d blocks wrong in all", when, n.Name, bad)
	}
	tr.logf("read back %d blocks through %s's export %s: %d wrong", tr.plan.SpanLen/BlockSize, n.Name, when, bad)
}

// checkIdentical pauses the workload, waits until every pair is in sync, and compares
// the data regions of all backing files byte for byte.
func (tr *trial) checkIdentical(when string) {
	if err := tr.w.Pause(pauseLimit); err != nil {
		tr.hang("pausing the workload: %v", err)
		return
	}
	defer tr.w.Resume()
	if err := tr.waitAllInSync(waitMedium); err != nil {
		tr.fail("%s: %v", when, err)
		return
	}
	s, err := tr.status(tr.c.Nodes[0])
	if err != nil {
		tr.fail("%s: %v", when, err)
		return
	}
	sums := map[string][]string{}
	for _, n := range tr.c.Nodes {
		sum, err := tr.c.TryDataSum(n, s.SizeBytes)
		if err != nil {
			tr.fail("%s: %v", when, err)
			return
		}
		sums[sum] = append(sums[sum], n.Name)
	}
	if len(sums) == 1 {
		tr.logf("replicas identical %s (%d bytes each)", when, s.SizeBytes)
		return
	}
	tr.fail("replicas differ %s: %s", when, tr.diff(s.SizeBytes))
}

// diff names the first blocks where the backing files differ and what each holds.
func (tr *trial) diff(size int64) string {
	var files []*os.File
	for _, n := range tr.c.Nodes {
		f, err := os.Open(n.Disk)
		if err != nil {
			return err.Error()
		}
		defer f.Close()
		files = append(files, f)
	}
	var out []string
	blocks := make([][]byte, len(files))
	for i := range blocks {
		blocks[i] = make([]byte, BlockSize)
	}
	count := 0
	for off := int64(0); off < size; off += BlockSize {
		for i, f := range files {
			if _, err := f.ReadAt(blocks[i], off); err != nil && err != io.EOF {
				return err.Error()
			}
		}
		same := true
		for i := 1; i < len(blocks); i++ {
			same = same && bytes.Equal(blocks[0], blocks[i])
		}
		if same {
			continue
		}
		if count++; count <= 5 {
			var held []string
			for i, n := range tr.c.Nodes {
				held = append(held, n.Name+": "+tr.blockName(blocks[i]))
			}
			out = append(out, fmt.Sprintf("block at %d (%s)", off, strings.Join(held, ", ")))
		}
	}
	return fmt.Sprintf("%d blocks differ; first: %s", count, strings.Join(out, "; "))
}

// blockName says what a block holds in terms of the workload.
func (tr *trial) blockName(b []byte) string {
	if id, lineage, ok := parseHeader(b); ok {
		return fmt.Sprintf("write %d of lineage %d", id, lineage)
	}
	if allZero(b) {
		return "zeros"
	}
	return "other data (fio's, or torn)"
}

// scanLogs looks for the daemons' own alarms: the race detector, panics.
func (tr *trial) scanLogs() {
	for _, n := range tr.c.Nodes {
		f, err := os.Open(n.LogFile())
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for line := 1; sc.Scan(); line++ {
			t := sc.Text()
			if strings.Contains(t, "WARNING: DATA RACE") || strings.HasPrefix(t, "panic:") || strings.HasPrefix(t, "fatal error:") {
				tr.fail("%s's log line %d: %s (see %s)", n.Name, line, t, n.LogFile())
			}
		}
		f.Close()
	}
}

func containsSplitBrain(s string) bool { return strings.Contains(s, "split-brain") }

// secondarySources finds, in the daemons' logs, resyncs that a Secondary served while
// another node was Primary: the signature of
// TestNoResyncBetweenSecondariesWhileAPrimaryWrites (a fixed bug). A failed trial that
// shows it is attributed to that regression in the summary (and still fails).
func (tr *trial) secondarySources() []string {
	logs := map[string]io.Reader{}
	for _, n := range tr.c.Nodes {
		f, err := os.Open(n.LogFile())
		if err != nil {
			continue
		}
		defer f.Close()
		logs[n.Name] = f
	}
	return secondarySources(logs)
}

// secondarySources reads the logs of every node (by name).
func secondarySources(logs map[string]io.Reader) []string {
	type event struct {
		at, node, what, peer string
	}
	var evs []event
	for node, r := range logs {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			at, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
			e := event{at: at, node: node}
			switch {
			// The node's own role comes first in a change ("peer-role:" is a peer's);
			// slog quotes the change only when it has several parts.
			case strings.Contains(line, `msg="blockrepd started"`), ownRole(line, "Primary->"):
				e.what = "Secondary"
			case ownRole(line, "Secondary->Primary"):
				e.what = "Primary"
			case strings.Contains(line, `msg="resync started"`) && strings.Contains(line, "as=SyncSource"):
				e.what = "source"
				if i := strings.Index(line, " peer="); i >= 0 {
					e.peer, _, _ = strings.Cut(line[i+6:], " ")
				}
			default:
				continue
			}
			evs = append(evs, e)
		}
	}
	// The timestamps share one format, so they sort as strings.
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].at < evs[j].at })
	primary := map[string]bool{}
	var out []string
	for _, e := range evs {
		switch e.what {
		case "Primary":
			primary[e.node] = true
		case "Secondary":
			primary[e.node] = false
		case "source":
			if primary[e.node] {
				continue
			}
			for other, p := range primary {
				if p {
					out = append(out, fmt.Sprintf("%s served a resync to %s as a Secondary at %s while %s was Primary", e.node, e.peer, e.at, other))
					break
				}
			}
		}
	}
	return out
}
