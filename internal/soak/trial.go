package soak

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockrep/blockrep/internal/clustertest"
	"github.com/blockrep/blockrep/resource/control"
)

// Options are the parts of a trial that do not come from its seed.
type Options struct {
	// Network is Netns or Proxied; "" picks Netns where it works (see PickNetwork).
	Network clustertest.NetMode
}

// Result is what one trial did and found.
type Result struct {
	Plan    Plan
	Network clustertest.NetMode
	Faults  map[Kind]int // injected
	Skipped map[Kind]int // not applicable when their moment came (the transcript says why)
	Acked   int          // acknowledged writes of the surviving lineage, all checked
	Flushed int          // of those, covered by an acknowledged FLUSH
	Failed  int          // writes that failed or were in flight at a crash (may or may not be there)
	Reads   int64        // reads checked against the history while the trial ran
	Blocks  int64        // blocks read back and checked at the end
	Fio     bool         // fio's verify state was checked too
	// StaleViews: after convergence a node still showed a peer's disk in another state
	// than the peer's own (a failure; TestPeerDiskViewAfterResync pins it).
	StaleViews int
	// KnownBugs names the pinned bugs whose signatures a failed trial shows.
	KnownBugs []string
	Failures  []string
	Duration  time.Duration
	Dir       string // the trial's files, kept when it failed
}

// trial runs one Plan against a real cluster. Its methods run on the test's goroutine;
// only the workload and the poller have goroutines of their own.
type trial struct {
	t    testing.TB
	plan Plan
	c    *clustertest.Cluster
	res  *Result

	start      time.Time
	transcript *os.File
	lines      []string

	w       *Workload
	primary *clustertest.Node
	poll    *poller
	fio     *fioRun
	// aborted: a step left the cluster in a state the plan cannot go on from; the
	// remaining steps are skipped, the cluster is healed and checked all the same.
	aborted bool
	// hung: some request or command never returned; the daemons were dumped and
	// killed, nothing more can be checked.
	hung bool
}

const (
	waitLong   = 90 * time.Second // convergence after all faults
	waitMedium = 30 * time.Second
	waitShort  = 15 * time.Second
	pauseLimit = 60 * time.Second // a request unanswered this long is a hang
)

// Run runs one trial; the failures are reported to t as they are found and returned
// in the Result. (If the cluster cannot even be set up, clustertest fails t and Run
// does not return.)
func Run(t testing.TB, p Plan, o Options) (res *Result) {
	t.Helper()
	if o.Network == "" {
		o.Network = PickNetwork()
	}
	tr := &trial{t: t, plan: p, start: time.Now(),
		res: &Result{Plan: p, Network: o.Network, Faults: map[Kind]int{}, Skipped: map[Kind]int{}}}
	res = tr.res
	defer func() { tr.res.Duration = time.Since(tr.start) }()
	defer tr.finish()
	defer func() {
		if v := recover(); v != nil {
			if _, ok := v.(abortTrial); !ok {
				panic(v)
			}
		}
	}()
	tr.setup(o)
	for i, st := range p.Steps {
		if tr.aborted || tr.hung {
			tr.logf("step %d (%s) not run: the trial was aborted", i+1, st.Kind)
			continue
		}
		tr.sleep(st.After)
		tr.logf("step %d: %s", i+1, st.Kind)
		tr.inject(st)
	}
	if !tr.hung {
		tr.heal()
	}
	if !tr.hung {
		tr.check()
	}
	return tr.res
}

var (
	pickOnce sync.Once
	picked   clustertest.NetMode
)

// PickNetwork is Netns where network namespaces work (root, ip netns), else Proxied,
// saying so once.
func PickNetwork() clustertest.NetMode {
	pickOnce.Do(func() {
		picked = clustertest.Netns
		if err := clustertest.NetnsAvailable(); err != nil {
			picked = clustertest.Proxied
			fmt.Printf("soak: network namespaces unavailable (%v): nodes use 127.0.0.x addresses behind in-process proxies\n", err)
		}
	})
	return picked
}

func (tr *trial) setup(o Options) {
	p := tr.plan
	tr.c = clustertest.New(tr.t, clustertest.Options{Nodes: p.Nodes, Size: diskSize, Network: o.Network, FaultInjection: true})
	tr.res.Dir = tr.c.Dir
	f, err := os.Create(filepath.Join(tr.c.Dir, "trial.log"))
	if err != nil {
		tr.t.Fatal(err)
	}
	tr.transcript = f
	tr.logf("%s", p)
	tr.logf("network: %s; files in %s", o.Network, tr.c.Dir)
	tr.c.StartAll()
	tr.primary = tr.c.Nodes[p.First]
	if err := tr.waitUntil("every node connected", waitMedium, func() bool { return tr.allConnected() }); err != nil {
		tr.fatal("%v", err)
	}
	if err := tr.promote(tr.primary, true); err != nil {
		tr.fatal("initial primary --force: %v", err)
	}
	if err := tr.waitAllInSync(waitMedium); err != nil {
		tr.fatal("initial full sync: %v", err)
	}
	tr.poll = startPoller(tr)
	tr.w = StartWorkload(WorkloadConfig{Resource: tr.c.Res, Seed: p.Seed, SpanOff: p.SpanOff, SpanLen: p.SpanLen, Writers: p.Writers},
		NewHistory(), tr.primary.ExportPath())
	if p.Fio {
		tr.fio = startFio(tr, tr.primary)
	}
	tr.logf("workload started on %s", tr.primary.Name)
}

// finish stops what setup started, even after a fatal error.
func (tr *trial) finish() {
	if tr.w != nil {
		tr.w.Stop(5 * time.Second)
	}
	if tr.fio != nil {
		tr.fio.kill()
	}
	if tr.poll != nil {
		tr.poll.halt()
	}
	if tr.transcript != nil {
		if len(tr.res.Failures) > 0 {
			tr.t.Logf("transcript of seed %d:\n%s", tr.plan.Seed, strings.Join(tr.lines, "\n"))
		}
		tr.transcript.Close()
	}
}

// logf appends a line to the trial's transcript (trial.log in its directory, and the
// test log when the trial fails).
func (tr *trial) logf(format string, a ...any) {
	line := fmt.Sprintf("[%7.3fs] ", time.Since(tr.start).Seconds()) + fmt.Sprintf(format, a...)
	tr.lines = append(tr.lines, line)
	if tr.transcript != nil {
		fmt.Fprintln(tr.transcript, line)
	}
}

// fail records a failure of the guarantees (or of the harness's expectations).
func (tr *trial) fail(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	tr.logf("FAILURE: %s", msg)
	tr.res.Failures = append(tr.res.Failures, msg)
	tr.t.Errorf("seed %d: %s", tr.plan.Seed, msg)
}

// fatal is a failure after which the trial cannot go on: it unwinds to Run, which
// stops what runs and returns the result (the failure is already reported).
func (tr *trial) fatal(format string, a ...any) {
	tr.fail(format, a...)
	panic(abortTrial{})
}

type abortTrial struct{}

// hang records a request or command that never returned: every daemon is asked for a
// goroutine dump (into its log) and killed.
func (tr *trial) hang(format string, a ...any) {
	tr.fail("hang: "+format, a...)
	tr.hung = true
	for _, n := range tr.c.Nodes {
		tr.c.DumpGoroutines(n)
	}
	tr.logf("goroutine dumps are in the node logs in %s", tr.c.Dir)
}

func (tr *trial) skip(k Kind, format string, a ...any) {
	tr.res.Skipped[k]++
	tr.logf("skipped %s: %s", k, fmt.Sprintf(format, a...))
}

func (tr *trial) sleep(d time.Duration) { time.Sleep(d) }

// waitUntil polls cond every 20 ms for at most timeout.
func (tr *trial) waitUntil(what string, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s; %s", timeout, what, tr.describe())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func (tr *trial) status(n *clustertest.Node) (control.ResourceStatus, error) {
	return tr.c.TryStatus(n, 5*time.Second)
}

// peer is n's view of p; false when n cannot answer.
func (tr *trial) peer(n, p *clustertest.Node) (control.ResourceStatus, control.PeerStatus, bool) {
	s, err := tr.status(n)
	if err != nil {
		return s, control.PeerStatus{}, false
	}
	for _, ps := range s.Peers {
		if ps.Node == p.Name {
			return s, ps, true
		}
	}
	return s, control.PeerStatus{}, false
}

// inSync: a and b are both UpToDate (each by its own status) and replicate with each
// other (Connected and Established, seen from both sides). Their views of each other's
// disk are checked separately, by staleViews, once the cluster has converged.
func (tr *trial) inSync(a, b *clustertest.Node) bool {
	sa, pa, ok := tr.peer(a, b)
	if !ok {
		return false
	}
	sb, pb, ok := tr.peer(b, a)
	if !ok {
		return false
	}
	live := func(s control.ResourceStatus, p control.PeerStatus) bool {
		return s.Disk == "UpToDate" && p.Connection == "Connected" && p.Replication == "Established"
	}
	return live(sa, pa) && live(sb, pb)
}

// staleViews lists the connected pairs where one side shows the other's disk in a state
// that the other does not report itself.
func (tr *trial) staleViews() []string {
	var out []string
	for _, a := range tr.c.Nodes {
		for _, b := range tr.others(a) {
			_, pa, ok1 := tr.peer(a, b)
			sb, err := tr.status(b)
			if ok1 && err == nil && pa.Connection == "Connected" && pa.PeerDisk != sb.Disk {
				out = append(out, fmt.Sprintf("%s (%s) shows %s's disk %s, %s says %s", a.Name, pa.Replication, b.Name, pa.PeerDisk, b.Name, sb.Disk))
			}
		}
	}
	return out
}

func (tr *trial) allConnected() bool {
	for _, a := range tr.c.Nodes {
		for _, b := range tr.c.Nodes {
			if _, ps, ok := tr.peer(a, b); a != b && (!ok || ps.Connection != "Connected") {
				return false
			}
		}
	}
	return true
}

func (tr *trial) waitAllInSync(timeout time.Duration) error {
	return tr.waitUntil("every pair in sync", timeout, tr.allInSync)
}

func (tr *trial) allInSync() bool {
	for i, a := range tr.c.Nodes {
		for _, b := range tr.c.Nodes[i+1:] {
			if !tr.inSync(a, b) {
				return false
			}
		}
	}
	return true
}

// describe is every node's status in one line each, for failure messages.
func (tr *trial) describe() string {
	var b strings.Builder
	b.WriteString("status:")
	for _, n := range tr.c.Nodes {
		s, err := tr.status(n)
		if err != nil {
			fmt.Fprintf(&b, "\n  %s: %v", n.Name, err)
			continue
		}
		fmt.Fprintf(&b, "\n  %s: %s %s", n.Name, s.Role, s.Disk)
		if s.DiskFailed {
			b.WriteString(" (disk failed)")
		}
		for _, p := range s.Peers {
			fmt.Fprintf(&b, "; %s %s %s %s/%s", p.Node, p.Connection, p.Replication, p.PeerRole, p.PeerDisk)
			if p.OutOfSyncBytes > 0 {
				fmt.Fprintf(&b, " oos=%dK", p.OutOfSyncBytes>>10)
			}
			if p.SplitBrain {
				b.WriteString(" split-brain")
			}
			if p.Reason != "" {
				fmt.Fprintf(&b, " (%s)", p.Reason)
			}
		}
	}
	return b.String()
}

func (tr *trial) secondaries() []*clustertest.Node {
	var out []*clustertest.Node
	for _, n := range tr.c.Nodes {
		if n != tr.primary {
			out = append(out, n)
		}
	}
	return out
}

func (tr *trial) others(n *clustertest.Node) []*clustertest.Node {
	var out []*clustertest.Node
	for _, o := range tr.c.Nodes {
		if o != n {
			out = append(out, o)
		}
	}
	return out
}

func (tr *trial) adm(n *clustertest.Node, args ...string) error {
	err := tr.c.TryAdm(n, append(args, tr.c.Res)...)
	if err != nil {
		tr.logf("%s: blockrepadm %s: %v", n.Name, strings.Join(args, " "), err)
	} else {
		tr.logf("%s: blockrepadm %s", n.Name, strings.Join(args, " "))
	}
	return err
}

func (tr *trial) kill(n *clustertest.Node) {
	tr.c.Kill(n)
	tr.logf("kill -9 %s", n.Name)
}

// restart starts a node's daemon and brings the resource up.
func (tr *trial) restart(n *clustertest.Node) error {
	tr.c.Start(n)
	tr.logf("%s: blockrepd restarted", n.Name)
	return tr.adm(n, "up")
}

// promote makes n Primary and points the workload at it.
func (tr *trial) promote(n *clustertest.Node, force bool) error {
	args := []string{"primary"}
	if force {
		args = append(args, "--force")
	}
	err := tr.adm(n, args...)
	for try := 0; err != nil && try < 3 && tr.transientRefusal(n, err); try++ {
		err = tr.adm(n, args...)
	}
	if err != nil {
		return err
	}
	tr.primary = n
	if tr.w != nil {
		tr.w.SetTarget(n.ExportPath())
	}
	return nil
}

// transientRefusal reports whether a refused promotion of n is worth retrying, after
// waiting for what refused it to pass:
//   - a promotion asks every connected peer first; a link that a keepalive timeout
//     drops in that moment (typically a second after a partition healed) fails it with
//     "connection lost";
//   - "peer X is Primary" right after X was demoted: a link that died in a partition
//     still shows X's last role until the keepalive drops it.
func (tr *trial) transientRefusal(n *clustertest.Node, err error) bool {
	switch {
	case strings.Contains(err.Error(), "connection lost"):
		tr.waitSettled(n)
		return true
	case strings.Contains(err.Error(), "UpToDate data") || strings.Contains(err.Error(), "SyncTarget"):
		// A resync started between the wait and the promotion.
		tr.waitComplete(n)
		return true
	case strings.Contains(err.Error(), "is Primary") && !tr.anotherPrimary(n):
		tr.waitUntil(n.Name+" to see no Primary peer", waitShort, func() bool {
			s, err := tr.status(n)
			if err != nil {
				return false
			}
			for _, ps := range s.Peers {
				if ps.Connection == "Connected" && ps.PeerRole == "Primary" {
					return false
				}
			}
			return true
		})
		return true
	}
	return false
}

// waitComplete waits until n is UpToDate and no peer's SyncTarget: a SyncTarget is not
// promoted, and a demotion or a lost Primary can start a resync between the others.
func (tr *trial) waitComplete(n *clustertest.Node) {
	err := tr.waitUntil(n.Name+" UpToDate and no SyncTarget", waitMedium, func() bool {
		st, err := tr.status(n)
		if err != nil || st.Disk != "UpToDate" {
			return false
		}
		for _, ps := range st.Peers {
			if ps.Replication == "SyncTarget" {
				return false
			}
		}
		return true
	})
	if err != nil {
		tr.logf("%v", err)
	}
}

// anotherPrimary reports whether a node other than n says it is Primary.
func (tr *trial) anotherPrimary(n *clustertest.Node) bool {
	for _, o := range tr.others(n) {
		if s, err := tr.status(o); err == nil && s.Role == "Primary" {
			return true
		}
	}
	return false
}

// takeOver promotes n with the workload paused, reads the whole span back through its
// export before anything new is written — every acknowledged write must be there — and
// resumes the workload on it. The pause is a no-op when the workload is already paused.
func (tr *trial) takeOver(n *clustertest.Node, when string) error {
	if err := tr.w.Pause(pauseLimit); err != nil {
		tr.hang("pausing the workload: %v", err)
		return err
	}
	defer tr.w.Resume()
	tr.waitComplete(n)
	if err := tr.promote(n, false); err != nil {
		return err
	}
	tr.readBack(n, tr.w.History(), when)
	return nil
}

// checkpoint reads the whole span back through the Primary's export with the workload
// paused.
func (tr *trial) checkpoint(when string) {
	if err := tr.w.Pause(pauseLimit); err != nil {
		tr.hang("pausing the workload: %v", err)
		return
	}
	defer tr.w.Resume()
	tr.readBack(tr.primary, tr.w.History(), when)
}

// waitSettled waits (at most waitShort) until n is Connected to every peer whose
// daemon answers.
func (tr *trial) waitSettled(n *clustertest.Node) {
	tr.waitUntil(n.Name+" reconnected", waitShort, func() bool {
		for _, o := range tr.others(n) {
			if _, err := tr.status(o); err != nil {
				continue
			}
			if _, ps, ok := tr.peer(n, o); !ok || ps.Connection != "Connected" {
				return false
			}
		}
		return true
	})
}

// demote pauses the workload (and lets fio finish) and makes the Primary Secondary.
// The caller resumes the workload once there is a Primary again.
func (tr *trial) demote() error {
	if err := tr.w.Pause(pauseLimit); err != nil {
		tr.hang("pausing the workload on %s: %v", tr.primary.Name, err)
		return err
	}
	tr.fio.wait()
	tr.waitNoClients(tr.primary)
	return tr.adm(tr.primary, "secondary")
}

// waitNoClients waits until n's export has no client left: the server notices a
// closed connection a moment after the client closed it, and secondary is refused
// while a client is attached.
func (tr *trial) waitNoClients(n *clustertest.Node) {
	err := tr.waitUntil(n.Name+"'s export to lose its clients", waitShort, func() bool {
		s, err := tr.status(n)
		return err == nil && s.Clients == 0
	})
	if err != nil {
		tr.logf("%v", err)
	}
}
