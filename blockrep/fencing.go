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

// suspension freezes the write path: while set, Submit waits and completions are held
// back, so no write is acknowledged until the fence-peer handler has confirmed that the
// lost peer cannot write any more (fencing resource-and-stonith). The core decides when
// (Freeze, Thaw); this is the data path's side of it.
type suspension struct {
	on   atomic.Bool
	mu   sync.Mutex
	cond sync.Cond
	held []heldCompletion
}

type heldCompletion struct {
	r   *Request
	err error
}

func (s *suspension) init() { s.cond.L = &s.mu }

func (s *suspension) freeze(string) {
	s.mu.Lock()
	s.on.Store(true)
	s.mu.Unlock()
}

// thaw ends the suspension and returns the held completions.
func (s *suspension) thaw() []heldCompletion {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.on.Store(false)
	held := s.held
	s.held = nil
	s.cond.Broadcast()
	return held
}

// waitThawed blocks a submitter while frozen, sending what it queued first.
func (s *suspension) waitThawed(b *Batch) {
	if !s.on.Load() {
		return
	}
	s.mu.Lock()
	for s.on.Load() {
		b.Wait(&s.cond)
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

func completeHeld(held []heldCompletion) {
	var b Batch
	for _, h := range held {
		h.r.Owner.Complete(h.r, h.err, &b)
	}
	b.Flush()
}

// Suspended returns why I/O is frozen, or "".
func (v *Volume) Suspended() string {
	return query(v, func(c *Core) string { return c.State.Suspended })
}

// ResumeIO ends a suspension by operator decision (drbdadm resume-io).
func (v *Volume) ResumeIO() error { return v.step(EvResumeIO{}) }

// runHandler runs a handler command as DRBD does: sh -c CMD with $1 = the resource and
// DRBD_* (and BLOCKREP_*) variables describing the peer. A handler that is not
// configured, cannot start or outlives the handler timeout is an error (the timeout
// kills it); otherwise its exit code is returned.
func (p *Peer) runHandler(name string) (int, error) {
	v := p.v
	cmdline := v.cfg.Handlers[name]
	if cmdline == "" {
		return -1, fmt.Errorf("no %s handler configured", name)
	}
	st := v.State()
	cstate := st.Peer(p.cfg.NodeID).Conn.String()
	timeout := v.cfg.HandlerTimeout
	if timeout <= 0 {
		timeout = DefaultHandlerTimeout
	}
	p.log.Warn("running handler", "handler", name, "command", cmdline, "timeout", timeout)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	expired := atomic.Bool{}
	t := v.clock.AfterFunc(timeout, func() { expired.Store(true); cancel() })
	defer t.Stop()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", cmdline, name, v.cfg.Resource)
	cmd.WaitDelay = time.Second // a handler's children holding its output do not keep us
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
	if expired.Load() {
		p.log.Error("handler timed out and was killed", "handler", name, "timeout", timeout, "output", string(out))
		return -1, fmt.Errorf("%s handler timed out after %s", name, timeout)
	}
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
