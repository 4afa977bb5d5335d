package pgagent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// State of a Stack.
type State string

const (
	Stopped  State = "stopped"
	Starting State = "starting"
	Running  State = "running"
	Stopping State = "stopping"
	Failed   State = "failed"
)

// Status is a snapshot of a Stack.
type Status struct {
	State  State
	Step   string    // the step that failed, when State is Failed
	Err    string    // its error
	Since  time.Time // when State was entered
	Path   string    // how the device was made: "nbdfuse+loop" or "nbd"
	Device string    // /dev/loopN or /dev/nbdN while attached
}

// StepError is the error of Start, Stop and RestartPostgres: the step that
// failed ("cleanup", "device", "filesystem", "postgres", "ip") and why.
type StepError struct {
	Step string
	Err  error
}

func (e *StepError) Error() string { return fmt.Sprintf("pgagent: step %s: %v", e.Step, e.Err) }
func (e *StepError) Unwrap() error { return e.Err }

type step struct {
	name string
	up   func(context.Context) error
	down func(context.Context) error
}

// Stack is one resource's service stack. Its methods are safe for
// concurrent use; Start, Stop and RestartPostgres are serialized.
type Stack struct {
	r     *resolved
	dev   *device
	fs    *filesystem
	pg    *postgres
	ip    *floatingIP
	steps []step

	op sync.Mutex // serializes operations

	mu     sync.Mutex // guards status
	status Status
}

// New validates cfg and returns a stopped Stack. Nothing is touched on the system.
func New(cfg Config) (*Stack, error) {
	r, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	s := &Stack{r: r, dev: newDevice(r)}
	s.fs = &filesystem{r: r, dev: func() string { return s.dev.dev }, loops: func() []string { return loopsOn(s.dev.fuseFile()) }}
	s.pg = &postgres{r: r}
	s.steps = []step{
		{"device", s.dev.up, s.dev.down},
		{"filesystem", s.fs.up, s.fs.down},
		{"postgres", s.pg.up, s.pg.down},
	}
	if r.vip.IsValid() {
		s.ip = &floatingIP{r: r}
		s.steps = append(s.steps, step{"ip", s.ip.up, s.ip.down})
	}
	s.status = Status{State: Stopped, Since: time.Now(), Path: s.dev.path}
	return s, nil
}

// Status returns the current status.
func (s *Stack) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// syncDevice publishes the device for Status; called under s.op, which
// guards the steps' own fields.
func (s *Stack) syncDevice() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.Device = s.dev.dev
}

func (s *Stack) setState(st State, step string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.State, s.status.Step, s.status.Since, s.status.Err = st, step, time.Now(), ""
	if err != nil {
		s.status.Err = err.Error()
	}
}

func (s *Stack) state() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status.State
}

// runStep runs one direction of a step under the step timeout with a log line.
func (s *Stack) runStep(ctx context.Context, name, dir string, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, s.r.StepTimeout)
	defer cancel()
	t := time.Now()
	s.r.Logger.Info("pgagent: step "+dir, "step", name)
	err := f(ctx)
	s.syncDevice()
	if err != nil {
		s.r.Logger.Error("pgagent: step "+dir+" failed", "step", name, "err", err, "elapsed", time.Since(t))
		return &StepError{Step: name, Err: err}
	}
	s.r.Logger.Info("pgagent: step "+dir+" done", "step", name, "elapsed", time.Since(t).Round(time.Millisecond))
	return nil
}

// Start brings the stack up: it first cleans up whatever a previous run of
// this resource left (postgres, mount, loop device, nbdfuse), then runs the
// steps in order. On failure it undoes what it did and returns a *StepError.
// Start on a running stack is a no-op.
func (s *Stack) Start(ctx context.Context) error {
	s.op.Lock()
	defer s.op.Unlock()
	if s.state() == Running {
		return nil
	}
	s.setState(Starting, "", nil)
	if err := s.down(ctx, "cleanup"); err != nil {
		s.setState(Failed, "cleanup", err)
		return err
	}
	for i, st := range s.steps {
		if err := s.runStep(ctx, st.name, "up", st.up); err != nil {
			// Undo this step's partial work too: every down is idempotent.
			for j := i; j >= 0; j-- {
				_ = s.runStep(context.WithoutCancel(ctx), s.steps[j].name, "down", s.steps[j].down)
			}
			s.setState(Failed, st.name, err)
			return err
		}
	}
	s.setState(Running, "", nil)
	s.r.Logger.Info("pgagent: stack running", "device", s.dev.dev, "path", s.dev.path)
	return nil
}

// down runs every step's down in reverse, going on past failures so that as
// much as possible is released; the first error is returned.
func (s *Stack) down(ctx context.Context, why string) error {
	var first error
	for i := len(s.steps) - 1; i >= 0; i-- {
		if err := s.runStep(ctx, s.steps[i].name, why, s.steps[i].down); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Cleanup removes what a previous run of this resource's stack left behind (a
// crash: a floating IP, PostgreSQL, a mount, a loop device, nbdfuse) without
// starting anything; for a node that comes up as Secondary. Only a stopped stack
// is cleaned.
func (s *Stack) Cleanup(ctx context.Context) error {
	s.op.Lock()
	defer s.op.Unlock()
	if s.state() != Stopped {
		return nil
	}
	return s.down(ctx, "cleanup")
}

// Stop takes the stack down in reverse order. Stop on a stopped stack is a no-op.
func (s *Stack) Stop(ctx context.Context) error {
	s.op.Lock()
	defer s.op.Unlock()
	if s.state() == Stopped {
		return nil
	}
	s.setState(Stopping, "", nil)
	if err := s.down(ctx, "down"); err != nil {
		var se *StepError
		errors.As(err, &se)
		s.setState(Failed, se.Step, err)
		return err
	}
	s.setState(Stopped, "", nil)
	s.r.Logger.Info("pgagent: stack stopped")
	return nil
}

// Check runs the SQL health check: SELECT 1, and the server must not be in recovery.
func (s *Stack) Check(ctx context.Context) error {
	if err := s.pg.check(ctx); err != nil {
		return &StepError{Step: "postgres", Err: err}
	}
	return nil
}

// RestartPostgres stops PostgreSQL (whatever state it is in, e.g. after its
// postmaster was killed) and starts it again, leaving device, filesystem and
// address alone. The stack must be running.
func (s *Stack) RestartPostgres(ctx context.Context) error {
	s.op.Lock()
	defer s.op.Unlock()
	if st := s.state(); st != Running {
		return &StepError{Step: "postgres", Err: fmt.Errorf("stack is %s, not running", st)}
	}
	if err := s.runStep(ctx, "postgres", "down", s.pg.down); err != nil {
		s.setState(Failed, "postgres", err)
		return err
	}
	if err := s.runStep(ctx, "postgres", "up", s.pg.up); err != nil {
		s.setState(Failed, "postgres", err)
		return err
	}
	return nil
}
