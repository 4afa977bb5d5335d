package blockrep

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Fencing policies (DRBD's net { fencing … }).
const (
	FencingDontCare           = "dont-care"
	FencingResourceOnly       = "resource-only"
	FencingResourceAndStonith = "resource-and-stonith"
)

// fence-peer handler exit codes, as DRBD reads them.
const (
	FenceExitPeerInconsistent = 3 // the peer's disk is Inconsistent or worse: nothing to fence
	FenceExitPeerOutdated     = 4 // the handler outdated the peer
	FenceExitPeerUnreachable  = 5 // the peer could not be reached
	FenceExitPeerIsPrimary    = 6 // the peer refused: it is Primary
	FenceExitPeerFenced       = 7 // the peer was fenced (STONITH)
)

// suspension freezes the write path: while set, Submit waits and completions are held
// back, so no write is acknowledged until the fence-peer handler has confirmed that the
// lost peer cannot write any more (fencing resource-and-stonith).
type suspension struct {
	on     atomic.Bool
	mu     sync.Mutex
	cond   sync.Cond
	reason string
	held   []heldCompletion
}

type heldCompletion struct {
	r   *Request
	err error
}

func (s *suspension) init() { s.cond.L = &s.mu }

// freeze starts a suspension (idempotent).
func (s *suspension) freeze(reason string) {
	s.mu.Lock()
	s.reason = reason
	s.on.Store(true)
	s.mu.Unlock()
}

// thaw ends the suspension and returns the held completions.
func (s *suspension) thaw() []heldCompletion {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.on.Store(false)
	s.reason = ""
	held := s.held
	s.held = nil
	s.cond.Broadcast()
	return held
}

// waitThawed blocks a submitter while frozen.
func (s *suspension) waitThawed() {
	if !s.on.Load() {
		return
	}
	s.mu.Lock()
	for s.on.Load() {
		s.cond.Wait()
	}
	s.mu.Unlock()
}

// hold keeps a completion back if frozen; false means complete it now.
func (s *suspension) hold(r *Request, err error) bool {
	if !s.on.Load() {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.on.Load() {
		return false
	}
	s.held = append(s.held, heldCompletion{r, err})
	return true
}

// Suspended returns why I/O is frozen, or "".
func (v *Volume) Suspended() string {
	v.susp.mu.Lock()
	defer v.susp.mu.Unlock()
	return v.susp.reason
}

// ResumeIO ends a suspension by operator decision (drbdadm resume-io).
func (v *Volume) ResumeIO() error {
	if !v.susp.on.Load() {
		return refuse(nil, "I/O is not suspended")
	}
	v.log.Warn("I/O resumed by the operator")
	v.releaseHeld()
	return nil
}

func (v *Volume) releaseHeld() {
	var b Batch
	for _, h := range v.susp.thaw() {
		h.r.Owner.Complete(h.r, h.err, &b)
	}
	b.Flush()
}

// fencePeer runs the fence-peer handler for a lost peer; with freeze the write path is
// already frozen and resumes only when the handler confirms the peer is fenced.
func (p *Peer) fencePeer(freeze bool) {
	v := p.v
	code, err := p.runHandler("fence-peer")
	switch {
	case err != nil:
		p.log.Error("fence-peer handler failed", "err", err)
	case code == FenceExitPeerOutdated || code == FenceExitPeerFenced || code == FenceExitPeerInconsistent:
		p.log.Warn("fence-peer: peer fenced", "exit", code)
		if code != FenceExitPeerInconsistent {
			v.mu.Lock()
			v.meta.Update(func(sb *Superblock) { sb.Peers[p.slot].Flags |= PeerOutdated })
			v.mu.Unlock()
		}
		if freeze {
			p.log.Warn("resuming I/O: the peer is fenced")
			v.releaseHeld()
		}
		return
	default:
		p.log.Error("fence-peer handler did not confirm the peer is fenced", "exit", code)
	}
	if freeze {
		p.log.Error("I/O stays frozen until the peer is fenced or the operator runs resume-io")
	}
}

// runHandler runs a handler command as DRBD does: sh -c CMD with $1 = the resource and
// DRBD_* (and BLOCKREP_*) variables describing the peer. No handler is exit code -1.
func (p *Peer) runHandler(name string) (int, error) {
	v := p.v
	st := v.State()
	cstate := st.Peer(p.cfg.NodeID).Conn.String()
	cmdline := v.cfg.Handlers[name]
	if cmdline == "" {
		return -1, fmt.Errorf("no %s handler configured", name)
	}
	p.log.Warn("running handler", "handler", name, "command", cmdline)
	cmd := exec.CommandContext(context.Background(), "/bin/sh", "-c", cmdline, name, v.cfg.Resource)
	env := map[string]string{
		"DRBD_RESOURCE":         v.cfg.Resource,
		"DRBD_VOLUME":           "0",
		"DRBD_MINOR":            "0",
		"DRBD_MY_NODE_ID":       strconv.Itoa(v.cfg.NodeID),
		"DRBD_MY_ADDRESS":       hostOf(p.cfg.LocalAddress),
		"DRBD_MY_AF":            "ipv4",
		"DRBD_PEER_NODE_ID":     strconv.Itoa(p.cfg.NodeID),
		"DRBD_PEER_ADDRESS":     hostOf(p.cfg.Address),
		"DRBD_PEER_AF":          "ipv4",
		"DRBD_PEER":             p.cfg.Name,
		"DRBD_BACKING_DEV":      v.cfg.Disk,
		"DRBD_CSTATE":           cstate,
		"BLOCKREP_RESOURCE":     v.cfg.Resource,
		"BLOCKREP_NODE":         v.cfg.NodeName,
		"BLOCKREP_NODE_ID":      strconv.Itoa(v.cfg.NodeID),
		"BLOCKREP_PEER":         p.cfg.Name,
		"BLOCKREP_PEER_NODE_ID": strconv.Itoa(p.cfg.NodeID),
		"BLOCKREP_PEER_ADDRESS": p.cfg.Address,
		"BLOCKREP_HANDLER":      name,
	}
	cmd.Env = os.Environ()
	for k, val := range env {
		cmd.Env = append(cmd.Env, k+"="+val)
	}
	start := time.Now()
	out, err := cmd.CombinedOutput()
	code := cmd.ProcessState.ExitCode()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return -1, err
	}
	p.log.Warn("handler finished", "handler", name, "exit", code, "took", time.Since(start).Round(time.Millisecond), "output", string(out))
	return code, nil
}

func hostOf(addr string) string {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			return addr[:i]
		}
	}
	return addr
}

// fenceBeforePromotion: with fencing, promoting while this peer is unreachable and not
// known Outdated needs the fence-peer handler to outdate or fence it first.
func (p *Peer) fenceBeforePromotion() error {
	if p.cfg.Fencing == "" || p.cfg.Fencing == FencingDontCare {
		return nil
	}
	v := p.v
	v.mu.Lock()
	ps := *v.state.Peer(p.cfg.NodeID)
	outdated := v.meta.Superblock().Peers[p.slot].Flags&PeerOutdated != 0
	v.mu.Unlock()
	if ps.Conn == Connected || outdated {
		return nil
	}
	code, err := p.runHandler("fence-peer")
	switch {
	case err != nil:
		return refuse(nil, "Refusing to be Primary while peer %s is not outdated (%v)", p.cfg.Name, err)
	case code == FenceExitPeerOutdated || code == FenceExitPeerFenced:
		v.mu.Lock()
		v.meta.Update(func(sb *Superblock) { sb.Peers[p.slot].Flags |= PeerOutdated })
		v.mu.Unlock()
		return nil
	case code == FenceExitPeerInconsistent || code == FenceExitPeerUnreachable:
		return nil
	}
	return refuse(nil, "Refusing to be Primary while peer %s is not outdated (fence-peer exit %d)", p.cfg.Name, code)
}

// unfencePeer runs the unfence-peer handler once the peer has our data again.
func (p *Peer) unfencePeer() {
	if p.cfg.Fencing == "" || p.cfg.Fencing == FencingDontCare || p.v.cfg.Handlers["unfence-peer"] == "" {
		return
	}
	if code, err := p.runHandler("unfence-peer"); err != nil || code != 0 {
		p.log.Warn("unfence-peer handler failed", "exit", code, "err", err)
	}
}
