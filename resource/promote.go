package resource

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/blockrep/blockrep/blockrep"
	"github.com/blockrep/blockrep/pgagent"
	"github.com/blockrep/blockrep/resource/config"
	"github.com/blockrep/blockrep/resource/control"
	"github.com/blockrep/blockrep/resource/promoter"
)

// Promoter timing. The tick bounds how late a change is acted on (the engine's
// changes also wake the loop at once); the health check runs once a second.
const (
	promoterTick     = 100 * time.Millisecond
	healthInterval   = time.Second
	healthTimeout    = 2 * time.Second
	promoteRetry     = 300 * time.Millisecond
	switchoverWindow = 30 * time.Second
	// gaveUpFor: a peer seen stepping down on purpose is not waited for as the
	// preferred node this long (a switchover away from it).
	gaveUpFor = 10 * time.Second
)

// promoterRun is the built-in promoter of one resource on this node (drbd-reactor's
// model): it promotes when no node is Primary and this node has UpToDate data and
// quorum, starts the service stack, monitors it, and gives the role up when the stack
// fails or quorum is lost. The decisions are promoter.Decide's; this is the shell
// that observes the engine and carries them out.
type promoterRun struct {
	r     *running
	pc    *config.Promoter
	stack *pgagent.Stack
	log   *slog.Logger

	wake chan struct{}
	stop chan struct{}
	done chan struct{}

	mu sync.Mutex
	// holdOff says why the promoter waits (pg-init, switchover, a failed start),
	// until holdUntil (zero: until released).
	holdOff   string
	holdUntil time.Time
	acting    string // "starting" or "stopping" while the stack moves, for status
	restarts  []time.Time
	healthOK  bool
	lastCheck time.Time
	eligible  time.Time // since when this node may promote (zero: it may not)
	nextTry   time.Time // no promotion attempt before
	peerRole  map[string]blockrep.Role
	gaveUp    map[string]time.Time
	lastErr   string
	// lastFailure: when this node last gave the resource up because its stack
	// failed (Decide keeps it from promoting again at once).
	lastFailure time.Time
	// failStep and failErr: what made this node give the service up last, shown as
	// "failed" while the stack stays stopped here.
	failStep, failErr string
}

// pgagentConfig is the stack's configuration for resource res on this daemon.
func pgagentConfig(d *Daemon, res string, pc *config.Promoter, log *slog.Logger) pgagent.Config {
	return pgagent.Config{Resource: res, RunDir: filepath.Join(d.RunDir, "pg-"+res),
		NBDURI:     "nbd+unix:///" + res + "?socket=" + control.ExportPath(d.RunDir, res),
		MountPoint: pc.MountPoint, FSType: pc.FSType, PGBinDir: pc.PGBinDir, PGData: pc.PGData,
		PGUser: pc.PGUser, PGPort: pc.PGPort, Address: pc.AddressString(), Logger: log}
}

// newPromoter checks the stack's configuration (binaries, user, paths) and starts the
// loop; nil when the resource has no promoter section for this node.
func newPromoter(r *running) (*promoterRun, error) {
	pc, ok := r.cfg.PromoterFor(r.host.Name)
	if !ok {
		return nil, nil
	}
	log := r.log.With("promoter", true)
	stack, err := pgagent.New(pgagentConfig(r.d, r.cfg.Name, pc, r.log))
	if err != nil {
		return nil, fmt.Errorf("%s: promoter: %v", r.cfg.Name, err)
	}
	p := &promoterRun{r: r, pc: pc, stack: stack, log: log, wake: make(chan struct{}, 1), stop: make(chan struct{}),
		done: make(chan struct{}), healthOK: true, peerRole: map[string]blockrep.Role{}, gaveUp: map[string]time.Time{}}
	// A crash may have left our address, mount or device behind: they would
	// answer for the resource while another node serves it.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := stack.Cleanup(ctx); err != nil {
		log.Warn("promoter: cleaning up a previous run", "err", err)
	}
	go p.run()
	return p, nil
}

func (p *promoterRun) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// close stops the loop and the stack (the caller demotes).
func (p *promoterRun) close() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := p.stack.Stop(ctx); err != nil {
		p.log.Error("promoter: stopping the stack", "err", err)
	}
}

// hold keeps the promoter from acting (why) until release, or until d passes (d > 0).
func (p *promoterRun) hold(why string, d time.Duration) {
	p.mu.Lock()
	p.holdOff = why
	p.holdUntil = time.Time{}
	if d > 0 {
		p.holdUntil = time.Now().Add(d)
	}
	p.mu.Unlock()
	p.r.publish(false)
}

func (p *promoterRun) release() {
	p.mu.Lock()
	p.holdOff = ""
	p.mu.Unlock()
	p.r.publish(false)
	p.poke()
}

func (p *promoterRun) run() {
	defer close(p.done)
	t := time.NewTicker(promoterTick)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-p.wake:
		case <-t.C:
		}
		p.step()
	}
}

// step observes, decides and acts once.
func (p *promoterRun) step() {
	vol := p.r.volume()
	if vol == nil {
		return
	}
	now := time.Now()
	st := vol.State()
	p.observePeers(st, now)
	ss := p.stack.Status()
	p.mu.Lock()
	due := ss.State == pgagent.Running && now.Sub(p.lastCheck) >= healthInterval && p.acting == ""
	p.mu.Unlock()
	if due {
		ctx, cancel := context.WithTimeout(context.Background(), healthTimeout)
		err := p.stack.Check(ctx)
		cancel()
		p.mu.Lock()
		p.lastCheck, p.healthOK = now, err == nil
		p.mu.Unlock()
		if err != nil {
			p.log.Warn("promoter: health check failed", "err", err)
		}
	}
	v := p.view(st, ss, now)
	a := promoter.Decide(v)
	if a.Kind != promoter.None && a.Kind != promoter.Wait {
		p.log.Debug("promoter: decision", "action", a.Kind, "reason", a.Reason)
	}
	p.act(a, vol, now)
}

// observePeers notes peers that stepped down while connected: they gave the role up
// on purpose, and are not waited for as the preferred node for a while.
func (p *promoterRun) observePeers(st blockrep.State, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ps := range st.Peers {
		prev := p.peerRole[ps.Name]
		if prev == blockrep.Primary && ps.Conn == blockrep.Connected && ps.Role == blockrep.Secondary {
			p.gaveUp[ps.Name] = now
		}
		if ps.Conn == blockrep.Connected {
			p.peerRole[ps.Name] = ps.Role
		} else {
			p.peerRole[ps.Name] = blockrep.RoleUnknown
		}
	}
}

func (p *promoterRun) view(st blockrep.State, ss pgagent.Status, now time.Time) promoter.View {
	p.mu.Lock()
	defer p.mu.Unlock()
	hold := p.holdOff != "" && (p.holdUntil.IsZero() || now.Before(p.holdUntil))
	if p.holdOff != "" && !hold {
		p.holdOff = ""
	}
	if p.holdOff == "switchover" {
		for _, ps := range st.Peers {
			if ps.Conn == blockrep.Connected && ps.Role == blockrep.Primary {
				p.holdOff, hold = "", false // the other node took over
			}
		}
	}
	v := promoter.View{Now: now, Self: p.r.host.Name, Role: st.Role, Disk: st.Disk, Quorum: !st.NoQuorum,
		Prefer: p.pc.Prefer, HealthOK: p.healthOK, Restarts: p.restarts, RestartLimit: p.pc.RestartLimit,
		RestartWindow: p.pc.RestartWindow, HoldOff: hold, Stack: promoter.Stack(ss.State), FailedStep: ss.Step,
		LastFailure: p.lastFailure}
	for _, ps := range st.Peers {
		pv := promoter.Peer{Name: ps.Name, Connected: ps.Conn == blockrep.Connected, Role: ps.Role, Disk: ps.Disk}
		if t, ok := p.gaveUp[ps.Name]; ok && now.Sub(t) < gaveUpFor && ps.Role != blockrep.Primary {
			pv.Disk = blockrep.Outdated // stepped down on purpose: not a candidate to wait for
		}
		v.Peers = append(v.Peers, pv)
	}
	switch {
	case !promoter.Eligible(v):
		p.eligible = time.Time{}
	case p.eligible.IsZero():
		p.eligible = now
	}
	v.EligibleSince = p.eligible
	return v
}

func (p *promoterRun) act(a promoter.Action, vol *blockrep.Volume, now time.Time) {
	ctx := context.Background()
	switch a.Kind {
	case promoter.Promote:
		p.mu.Lock()
		wait := now.Before(p.nextTry)
		p.nextTry = now.Add(promoteRetry)
		p.mu.Unlock()
		if wait {
			return
		}
		if err := vol.Promote(false); err != nil {
			p.noteErr("promoter: promotion refused", err)
			return
		}
		p.log.Info("promoter: promoted", "reason", a.Reason)
		p.r.publish(false)
		p.poke()
	case promoter.Start:
		p.setActing("starting")
		err := p.stack.Start(ctx)
		p.setActing("")
		p.mu.Lock()
		p.healthOK, p.lastCheck = err == nil, now
		p.mu.Unlock()
		if err != nil {
			p.log.Error("promoter: the stack did not start", "err", err)
		} else {
			p.mu.Lock()
			p.failStep, p.failErr = "", ""
			p.mu.Unlock()
			p.log.Info("promoter: service running")
		}
		p.poke()
	case promoter.Restart:
		p.mu.Lock()
		p.restarts = append(p.restarts, now)
		p.mu.Unlock()
		p.log.Warn("promoter: restarting PostgreSQL in place", "reason", a.Reason)
		err := p.stack.RestartPostgres(ctx)
		p.mu.Lock()
		p.healthOK, p.lastCheck = err == nil, time.Now()
		p.mu.Unlock()
		if err != nil {
			p.log.Error("promoter: restart failed", "err", err)
		}
	case promoter.StopAndDemote, promoter.Demote:
		p.log.Warn("promoter: giving up the Primary role", "reason", a.Reason)
		if a.Failure {
			ss := p.stack.Status()
			p.mu.Lock()
			p.failStep, p.failErr = ss.Step, ss.Err
			if ss.State != pgagent.Failed {
				p.failStep, p.failErr = "postgres", a.Reason
			}
			p.mu.Unlock()
		}
		if a.Kind == promoter.StopAndDemote {
			p.stopStack(ctx)
		}
		if err := p.r.secondary(true); err != nil {
			p.noteErr("promoter: demotion failed", err)
			return
		}
		if a.Failure {
			// Let another node take over before this one tries again; status keeps
			// saying what failed until a start succeeds here.
			p.mu.Lock()
			p.lastFailure = now
			p.mu.Unlock()
		}
		p.r.publish(false)
	case promoter.Stop:
		p.stopStack(ctx)
	}
}

func (p *promoterRun) stopStack(ctx context.Context) {
	p.setActing("stopping")
	if err := p.stack.Stop(ctx); err != nil {
		p.log.Error("promoter: stopping the stack", "err", err)
	}
	p.setActing("")
	p.mu.Lock()
	p.restarts = nil
	p.mu.Unlock()
}

func (p *promoterRun) setActing(s string) {
	p.mu.Lock()
	p.acting = s
	p.mu.Unlock()
	p.r.publish(false)
}

// noteErr logs a failure once per distinct message.
func (p *promoterRun) noteErr(msg string, err error) {
	p.mu.Lock()
	same := p.lastErr == err.Error()
	p.lastErr = err.Error()
	p.mu.Unlock()
	if !same {
		p.log.Warn(msg, "err", err)
	}
}

// status is the service part of the resource's status.
func (p *promoterRun) status() *control.ServiceStatus {
	ss := p.stack.Status()
	p.mu.Lock()
	defer p.mu.Unlock()
	s := &control.ServiceStatus{State: string(ss.State), Node: p.r.host.Name, Since: ss.Since, Device: ss.Path,
		HoldOff: p.holdOff != ""}
	if p.acting != "" && ss.State != pgagent.Failed {
		s.State = p.acting
	}
	switch {
	case ss.State == pgagent.Failed:
		s.Step, s.Error = ss.Step, ss.Err
	case ss.State == pgagent.Stopped && p.failStep != "" && p.acting == "":
		s.State, s.Step, s.Error = string(pgagent.Failed), p.failStep, p.failErr
	}
	return s
}
