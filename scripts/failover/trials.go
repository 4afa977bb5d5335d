package main

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// poller asks every data node for its status every 100 ms, all at once, and keeps
// which were active.
type poller struct {
	c    *cluster
	mu   sync.Mutex
	all  []sample
	stop chan struct{}
	done chan struct{}
}

func startPoller(c *cluster) *poller {
	p := &poller{c: c, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
			}
			s := sample{At: time.Now()}
			var mu sync.Mutex
			var wg sync.WaitGroup
			for _, n := range c.data() {
				wg.Add(1)
				go func() {
					defer wg.Done()
					st, err := c.status(n, 300*time.Millisecond)
					if err == nil && active(st) {
						mu.Lock()
						s.Active = append(s.Active, n.Name)
						if st.Quorum {
							s.Quorate = append(s.Quorate, n.Name)
						}
						mu.Unlock()
					}
				}()
			}
			c.noteLoops()
			wg.Wait()
			p.mu.Lock()
			p.all = append(p.all, s)
			p.mu.Unlock()
		}
	}()
	return p
}

// since is the samples taken at or after t.
func (p *poller) since(t time.Time) []sample {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []sample
	for _, s := range p.all {
		if !s.At.Before(t) {
			out = append(out, s)
		}
	}
	return out
}

func (p *poller) close() {
	close(p.stop)
	<-p.done
}

// harness runs trials against a running cluster with its client.
type harness struct {
	c      *cluster
	cl     *clientProc
	poll   *poller
	logf   func(format string, args ...any)
	missed map[int64]bool // rows found missing by earlier checks
	// recovered is when the current trial saw the client commit again.
	recovered time.Time
}

// waitRecovered is called once the service is back: it waits for a commit that
// returned from now on and notes when it was seen (the end of the window in which
// the trial's outage is looked for).
func (h *harness) waitRecovered(d time.Duration) error {
	err := h.cl.waitCommitAfter(time.Now(), d)
	if err == nil {
		h.recovered = time.Now()
	}
	return err
}

// steady waits until a data node serves, the other is in sync with it, the
// tiebreaker is connected and the client commits; it returns the serving node.
func (h *harness) steady() (*node, error) {
	var p *node
	if err := waitFor(120*time.Second, "a node serving PostgreSQL", func() bool { p = h.c.servingNode(); return p != nil }); err != nil {
		return nil, err
	}
	if err := waitFor(180*time.Second, "both data nodes in sync", func() bool {
		return h.c.inSync(h.c.Nodes[0]) && h.c.inSync(h.c.Nodes[1]) && h.c.inSync(h.c.Nodes[2])
	}); err != nil {
		return nil, err
	}
	if err := h.cl.waitCommitAfter(time.Now(), 30*time.Second); err != nil {
		return nil, fmt.Errorf("the client commits nothing: %v (errors: %s)", err, strings.Join(h.cl.errorsSince(time.Now().Add(-30*time.Second)), "; "))
	}
	// A moment of steady load, so that the gap measured is the fault's.
	time.Sleep(time.Second)
	if q := h.c.servingNode(); q != p {
		return nil, fmt.Errorf("the serving node changed while the cluster was idle")
	}
	return p, nil
}

// trial runs one fault of a kind and measures it.
func (h *harness) trial(kind string, n int) result {
	r := result{Kind: kind, N: n}
	p, err := h.steady()
	if err != nil {
		r.Err = "before the fault: " + err.Error()
		return r
	}
	from := time.Now()
	var fault time.Time
	h.recovered = time.Time{}
	switch kind {
	case "kill":
		fault, err = h.kill(p)
	case "isolate":
		fault, err = h.isolate(p)
	case "pgkill":
		fault, err = h.pgkill(p)
	case "switchover":
		fault, err = h.switchover(p)
	default:
		err = fmt.Errorf("unknown kind %q", kind)
	}
	if err != nil {
		r.Err = err.Error()
	}
	recovered := h.recovered
	if recovered.IsZero() {
		recovered = time.Now()
	}
	if last, first, ok := outage(h.cl.snapshot(), fault, recovered); ok && !fault.IsZero() {
		r.RTO, r.HaveRTO = first.At.Sub(last.At), true
		h.logf("  client: last commit before the fault id %d, first after id %d: gap %s", last.ID, first.ID, secs(r.RTO))
	}
	for _, o := range overlaps(h.poll.since(from)) {
		r.TwoServing += o.Polls
		r.TwoQuorate += o.BothQuorate
		h.logf("  TWO SERVING: %s active together from +%s to +%s (%d polls, %d with both in quorum)", strings.Join(o.Nodes, ", "),
			secs(o.From.Sub(fault)), secs(o.To.Sub(fault)), o.Polls, o.BothQuorate)
	}
	lost, err := h.checkRows()
	r.Lost = lost
	if err != nil && r.Err == "" {
		r.Err = err.Error()
	}
	if r.Err != "" {
		h.logf("  FAILED: %s", r.Err)
	}
	return r
}

// checkRows reads back every row the client saw committed and returns how many are
// newly missing.
func (h *harness) checkRows() (int, error) {
	if err := h.cl.waitCommitAfter(time.Now(), 30*time.Second); err != nil {
		return 0, fmt.Errorf("after the trial: %v", err)
	}
	hi := h.cl.lastCommit().ID
	e, err := h.cl.check(1, hi)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, id := range e.Missing {
		if !h.missed[id] {
			h.missed[id] = true
			n++
		}
	}
	if n > 0 {
		h.logf("  ROWS LOST: %d of %d committed rows are missing (first ids %v)", n, e.Committed, e.Missing[:min(len(e.Missing), 10)])
	} else {
		h.logf("  all %d committed rows present", e.Committed)
	}
	return n, nil
}

// kill is SIGKILL of everything in the Primary's namespace with its cable pulled at
// the same instant; once another node serves, the node is restarted and rejoins.
func (h *harness) kill(p *node) (time.Time, error) {
	other := h.c.other(p)
	pids := nsPids(p.NS())
	fault := time.Now()
	// The cable first: killed processes' sockets are closed by the kernel, and the
	// resets it sends would tell the peers at once, which a dead machine never does.
	if err := setLink(p.NS(), false); err != nil {
		return fault, err
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	killNS(p.NS()) // anything started meanwhile
	h.logf("  killed every process on %s and pulled its cable", p.Name)
	p.reap(10 * time.Second)
	// Its mount namespace died with it; the loop device on its FUSE file stays
	// (teardown detaches it if it is not gone yet).
	time.Sleep(200 * time.Millisecond)
	detachLoops(h.c.Work, true)
	err := waitFor(60*time.Second, other.Name+" serving", func() bool { return h.c.servingNode() == other })
	if err == nil {
		h.logf("  %s serves %s after the kill", other.Name, secs(time.Since(fault)))
		err = h.waitRecovered(30 * time.Second)
	}
	if rerr := h.rejoin(p); err == nil {
		err = rerr
	}
	return fault, err
}

// rejoin puts a killed node's cable back and restarts its daemon; it must come back
// as Secondary and resync.
func (h *harness) rejoin(p *node) error {
	if err := setLink(p.NS(), true); err != nil {
		return err
	}
	start := time.Now()
	if err := h.c.start(p); err != nil {
		return err
	}
	if _, err := h.c.adm(p, "up", resName); err != nil {
		return err
	}
	if err := waitFor(180*time.Second, p.Name+" resynced", func() bool { return h.c.inSync(p) }); err != nil {
		return err
	}
	if s, err := h.c.status(p, time.Second); err != nil || s.Role != "Secondary" {
		return fmt.Errorf("%s rejoined as %s (%v)", p.Name, s.Role, err)
	}
	h.logf("  %s restarted, rejoined as Secondary and resynced in %s", p.Name, secs(time.Since(start)))
	return nil
}

// isolate pulls the Primary's cable with everything left running: it must lose
// quorum and stop, and the other node serve within 5 s; after healing it must rejoin
// as Secondary.
func (h *harness) isolate(p *node) (time.Time, error) {
	other := h.c.other(p)
	fault := time.Now()
	if err := setLink(p.NS(), false); err != nil {
		return time.Time{}, err
	}
	h.logf("  pulled %s's cable (its processes keep running)", p.Name)
	var errs []string
	if err := waitFor(5*time.Second, other.Name+" serving", func() bool { return h.c.servingNode() == other }); err != nil {
		errs = append(errs, "the other node did not serve within 5 s")
		if err := waitFor(55*time.Second, other.Name+" serving", func() bool { return h.c.servingNode() == other }); err != nil {
			errs = append(errs, err.Error())
		}
	}
	h.logf("  %s serves %s after the cut", other.Name, secs(time.Since(fault)))
	err := waitFor(30*time.Second, p.Name+" stopped for want of quorum", func() bool {
		s, err := h.c.status(p, time.Second)
		return err == nil && !s.Quorum && s.Role == "Secondary" && !serving(s)
	})
	if err != nil {
		errs = append(errs, err.Error())
	} else if s, ok := firstInactive(h.poll.since(fault), p.Name); ok {
		h.logf("  %s lost quorum and stepped down %s after the cut", p.Name, secs(s.At.Sub(fault)))
	}
	if err := h.waitRecovered(30 * time.Second); err != nil {
		errs = append(errs, err.Error())
	}
	healed := time.Now()
	if err := setLink(p.NS(), true); err != nil {
		return fault, err
	}
	if err := waitFor(180*time.Second, p.Name+" resynced", func() bool { return h.c.inSync(p) }); err != nil {
		errs = append(errs, err.Error())
	} else if s, err := h.c.status(p, time.Second); err != nil || s.Role != "Secondary" || serving(s) {
		errs = append(errs, fmt.Sprintf("%s after healing: role %s service running %v", p.Name, s.Role, serving(s)))
	} else {
		h.logf("  healed: %s rejoined as Secondary and resynced in %s", p.Name, secs(time.Since(healed)))
	}
	if s, ok := firstActive(h.poll.since(healed), p.Name); ok {
		errs = append(errs, fmt.Sprintf("%s was active again %s after healing", p.Name, secs(s.At.Sub(healed))))
	}
	if len(errs) > 0 {
		return fault, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return fault, nil
}

// pgkill is kill -9 of the postmaster alone: the promoter restarts it in place.
func (h *harness) pgkill(p *node) (time.Time, error) {
	other := h.c.other(p)
	pm := postmaster(p.NS())
	if pm == 0 {
		return time.Time{}, fmt.Errorf("no postmaster found in %s", p.NS())
	}
	fault := time.Now()
	if err := syscall.Kill(pm, syscall.SIGKILL); err != nil {
		return time.Time{}, err
	}
	h.logf("  kill -9 of the postmaster (pid %d) on %s", pm, p.Name)
	if err := waitFor(60*time.Second, "a new postmaster on "+p.Name, func() bool {
		np := postmaster(p.NS())
		return np != 0 && np != pm
	}); err != nil {
		return fault, err
	}
	if err := waitFor(30*time.Second, p.Name+" serving again", func() bool { return h.c.servingNode() == p }); err != nil {
		return fault, err
	}
	if err := h.waitRecovered(30 * time.Second); err != nil {
		return fault, err
	}
	if s, ok := firstActive(h.poll.since(fault), other.Name); ok {
		return fault, fmt.Errorf("%s became active %s after the kill (a promotion, not a restart in place)", other.Name, secs(s.At.Sub(fault)))
	}
	h.logf("  restarted in place on %s, no promotion", p.Name)
	return fault, nil
}

// switchover moves the service to the other node under load.
func (h *harness) switchover(p *node) (time.Time, error) {
	other := h.c.other(p)
	fault := time.Now()
	if _, err := h.c.adm(p, "switchover", resName, other.Name); err != nil {
		return fault, err
	}
	h.logf("  blockrepadm switchover %s %s returned after %s", resName, other.Name, secs(time.Since(fault)))
	if err := waitFor(60*time.Second, other.Name+" serving", func() bool { return h.c.servingNode() == other }); err != nil {
		return fault, err
	}
	return fault, h.waitRecovered(30 * time.Second)
}

// firstActive is the first sample in which the named node was active.
func firstActive(samples []sample, name string) (sample, bool) {
	for _, s := range samples {
		if slices.Contains(s.Active, name) {
			return s, true
		}
	}
	return sample{}, false
}

// firstInactive is the first sample in which the named node was not active.
func firstInactive(samples []sample, name string) (sample, bool) {
	for _, s := range samples {
		if !slices.Contains(s.Active, name) {
			return s, true
		}
	}
	return sample{}, false
}
