package soak

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/blockrep/blockrep/blockrep/nbd"
	"github.com/blockrep/blockrep/resource/clustertest"
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
			if p.Connection == "StandAlone" {
				tr.fail("%s went StandAlone towards %s without an operator's disconnect (split-brain %v, reason %q)",
					n.Name, p.Node, p.SplitBrain, p.Reason)
				if !p.SplitBrain {
					tr.adm(n, "connect")
				}
			}
		}
	}
	if err := tr.waitAllInSync(waitLong); err != nil {
		tr.fail("the cluster did not converge after the faults were healed: %v", err)
		tr.aborted = true
		return
	}
	if stale := tr.staleViews(); len(stale) > 0 {
		tr.res.StaleViews = len(stale)
		tr.logf("known bug (TestBugPeerDiskViewStaleAfterResync): %s", strings.Join(stale, "; "))
	}
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
	tr.readBack(final, h)
	tr.fio.verify(final)
	tr.checkIdentical("at the end")
}

// attribute names the known bug a failed trial shows the signature of.
func (tr *trial) attribute() {
	if len(tr.res.Failures) == 0 {
		return
	}
	if src := tr.secondarySources(); len(src) > 0 {
		tr.res.KnownBug = "TestBugResyncBetweenSecondariesLosesPrimaryWrites"
		tr.logf("signature of %s: %s", tr.res.KnownBug, strings.Join(src, "; "))
	}
}

// readBack reads the whole span through n's export and checks every block.
func (tr *trial) readBack(n *clustertest.Node, h *History) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := nbd.Dial(ctx, "unix", n.ExportPath(), tr.c.Res)
	if err != nil {
		tr.fail("reading back through %s's export: %v", n.Name, err)
		return
	}
	defer cl.Close()
	now := h.Tick()
	buf := make([]byte, 1<<20)
	bad := 0
	for off := tr.plan.SpanOff; off < tr.plan.SpanOff+tr.plan.SpanLen; off += int64(len(buf)) {
		chunk := buf[:min(int64(len(buf)), tr.plan.SpanOff+tr.plan.SpanLen-off)]
		if err := cl.ReadAt(chunk, off); err != nil {
			tr.fail("read back at %d on %s: %v", off, n.Name, err)
			return
		}
		for i := 0; i < len(chunk); i += BlockSize {
			tr.res.Blocks++
			if err := h.Check(off+int64(i), chunk[i:i+BlockSize], now, now); err != nil {
				if bad++; bad <= 10 {
					tr.fail("read back on %s: %v", n.Name, err)
				}
			}
		}
	}
	if bad > 10 {
		tr.fail("read back on %s: %d blocks wrong in all", n.Name, bad)
	}
	tr.logf("read back %d blocks through %s's export: %d wrong", tr.plan.SpanLen/BlockSize, n.Name, bad)
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

// secondarySources finds, in the daemons' logs, resyncs that a Secondary served: the
// signature of TestBugResyncBetweenSecondariesLosesPrimaryWrites. A failed trial that
// shows it is attributed to that known bug in the summary (and still fails).
func (tr *trial) secondarySources() []string {
	var out []string
	for _, n := range tr.c.Nodes {
		f, err := os.Open(n.LogFile())
		if err != nil {
			continue
		}
		primary := false
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.Contains(line, `msg="blockrepd started"`), strings.Contains(line, "role:Primary->Secondary"):
				primary = false
			case strings.Contains(line, "role:Secondary->Primary"):
				primary = true
			case !primary && strings.Contains(line, `msg="resync started"`) && strings.Contains(line, "as=SyncSource"):
				ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
				peer := ""
				if i := strings.Index(line, " peer="); i >= 0 {
					peer, _, _ = strings.Cut(line[i+6:], " ")
				}
				out = append(out, fmt.Sprintf("%s served a resync to %s as a Secondary at %s", n.Name, peer, ts))
			}
		}
		f.Close()
	}
	return out
}
