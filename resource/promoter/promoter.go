// Package promoter decides, drbd-reactor style, what a node does with one
// resource's service stack (device → filesystem → PostgreSQL → floating IP):
// promote and start it when no node is Primary and this one may, restart
// PostgreSQL in place when its health check fails, and stop the stack and
// demote when it cannot go on, so that another node takes over.
//
// Decide is pure: the runtime gathers a View (states, the clock, what it
// remembers), acts on the Action and calls Decide again on the next event,
// health check or when Action.Wait has passed. Two nodes deciding to promote
// at the same moment are arbitrated by the replication engine: one promotion
// fails and that node stays Secondary. Promotion is never forced.
package promoter

import (
	"fmt"
	"time"

	"github.com/blockrep/blockrep/blockrep"
)

// PreferDelay is how long a node that is not the preferred one waits, once
// eligible, while the preferred node is connected and could promote itself.
const PreferDelay = 2 * time.Second

// FailureBackoff is how long a node whose stack failed does not promote
// again, so that another node takes over first. Past it, the node tries again
// (it may be the only one left).
const FailureBackoff = 30 * time.Second

// Stack is the state of the local service stack. The values are pgagent's
// State strings, so the runtime converts with promoter.Stack(status.State).
type Stack string

const (
	Stopped  Stack = "stopped"
	Starting Stack = "starting"
	Running  Stack = "running"
	Stopping Stack = "stopping"
	Failed   Stack = "failed" // a start (or stop) step failed; FailedStep names it
)

// Peer is another node of the resource as this node sees it.
type Peer struct {
	Name      string
	Connected bool
	Role      blockrep.Role      // meaningful while Connected
	Disk      blockrep.DiskState // meaningful while Connected
}

// View is everything Decide looks at.
type View struct {
	Now    time.Time
	Self   string
	Role   blockrep.Role
	Disk   blockrep.DiskState // local disk state
	Quorum bool
	Peers  []Peer
	Prefer string // the preferred node (config prefer); "" if none

	Stack      Stack
	FailedStep string // the step that failed, when Stack is Failed
	// HealthOK is the result of the last health check while Running; true
	// until one has failed.
	HealthOK bool
	// Restarts are the times of in-place restarts of PostgreSQL; those older
	// than RestartWindow do not count (PruneRestarts drops them).
	Restarts      []time.Time
	RestartLimit  int // restarts allowed within RestartWindow; 0 = none
	RestartWindow time.Duration

	// HoldOff is set while pg-init (or an operator) works on the resource:
	// Decide then does nothing at all.
	HoldOff bool
	// EligibleSince is when Eligible last became true; zero if it is false
	// (or the runtime has not seen it true yet: the full delay applies).
	EligibleSince time.Time
	// LastFailure is when this node last gave the resource up because its
	// stack failed (an Action with Failure set was carried out); zero if never.
	LastFailure time.Time
}

// Kind is what to do.
type Kind uint8

const (
	None          Kind = iota
	Wait               // nothing now; decide again after Action.Wait
	Promote            // make this node Primary (never forced)
	Start              // start the stack
	Restart            // restart PostgreSQL in place; record Now in Restarts
	Stop               // stop the stack (this node is not Primary)
	StopAndDemote      // stop the stack, then demote
	Demote             // demote (the stack is stopped already)
)

var kindNames = [...]string{"none", "wait", "promote", "start", "restart", "stop", "stop-and-demote", "demote"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", k)
}

// Action is Decide's answer.
type Action struct {
	Kind   Kind
	Wait   time.Duration // for Wait: when to decide again at the latest
	Reason string        // for the log
	// Failure marks a StopAndDemote caused by this node's stack failing
	// rather than by lost quorum: the runtime records Now as
	// View.LastFailure, which keeps this node from promoting again at once.
	Failure bool
}

func (a Action) String() string {
	s := a.Kind.String()
	if a.Kind == Wait {
		s += " " + a.Wait.String()
	}
	if a.Reason != "" {
		s += ": " + a.Reason
	}
	return s
}

// Eligible reports whether this node could promote now, preference and
// failure backoff aside: Secondary with UpToDate data and quorum, the stack
// stopped, no connected peer Primary, no hold-off. The runtime keeps
// View.EligibleSince from it.
func Eligible(v View) bool {
	return v.Role == blockrep.Secondary && v.Disk == blockrep.UpToDate && v.Quorum &&
		v.Stack == Stopped && !v.HoldOff && connectedPrimary(v) == ""
}

// Decide returns what to do next.
func Decide(v View) Action {
	if v.HoldOff {
		return Action{Kind: None, Reason: "held off (pg-init is working on the resource)"}
	}
	switch v.Stack {
	case Starting, Stopping:
		return Action{Kind: None, Reason: "stack is " + string(v.Stack)}
	case Stopped, Running, Failed:
	default:
		return Action{Kind: None, Reason: fmt.Sprintf("unknown stack state %q", v.Stack)}
	}
	if v.Role == blockrep.Primary {
		return primary(v)
	}
	if v.Stack != Stopped {
		// Demoted by someone else, or a failed start left pieces behind: a
		// Secondary cannot serve.
		return Action{Kind: Stop, Reason: fmt.Sprintf("not Primary (%s) but the stack is %s", v.Role, v.Stack)}
	}
	if v.Role != blockrep.Secondary {
		return Action{Kind: None, Reason: fmt.Sprintf("role %s", v.Role)}
	}
	return secondary(v)
}

func primary(v View) Action {
	if !v.Quorum {
		// Writes the majority may never see must not be acknowledged; another
		// node with quorum takes over.
		if v.Stack == Stopped {
			return Action{Kind: Demote, Reason: "Primary without quorum"}
		}
		return Action{Kind: StopAndDemote, Reason: "lost quorum"}
	}
	switch v.Stack {
	case Failed:
		step := v.FailedStep
		if step == "" {
			step = "unknown"
		}
		return Action{Kind: StopAndDemote, Failure: true, Reason: "stack step " + step + " failed"}
	case Running:
		if v.HealthOK {
			return Action{Kind: None, Reason: "running"}
		}
		n := recent(v.Restarts, v.Now, v.RestartWindow)
		if n < v.RestartLimit {
			return Action{Kind: Restart, Reason: fmt.Sprintf("health check failed (restart %d of %d within %s)", n+1, v.RestartLimit, v.RestartWindow)}
		}
		return Action{Kind: StopAndDemote, Failure: true,
			Reason: fmt.Sprintf("health check failed after %d restarts within %s (restart-limit %d)", n, v.RestartWindow, v.RestartLimit)}
	}
	// Stopped: just promoted, or promoted by hand. Right after this node gave
	// the resource up, the stack was stopped but the demotion has not
	// happened (or failed): finish the hand-over instead of starting again.
	// Not a new failure: past the backoff, starting here beats serving nothing.
	if backoff(v) > 0 {
		return Action{Kind: Demote, Reason: "stack failed here " + v.Now.Sub(v.LastFailure).String() + " ago; handing over"}
	}
	return Action{Kind: Start, Reason: "Primary with the stack stopped"}
}

func secondary(v View) Action {
	switch {
	case !v.Quorum:
		return Action{Kind: None, Reason: "no quorum"}
	case v.Disk != blockrep.UpToDate:
		return Action{Kind: None, Reason: "local disk is " + v.Disk.String()}
	}
	if p := connectedPrimary(v); p != "" {
		return Action{Kind: None, Reason: p + " is Primary"}
	}
	if left := backoff(v); left > 0 {
		return Action{Kind: Wait, Wait: left, Reason: "stack failed here " + v.Now.Sub(v.LastFailure).String() + " ago; leaving it to another node"}
	}
	if pref, ok := preferredCandidate(v); ok {
		since := v.EligibleSince
		if since.IsZero() {
			since = v.Now
		}
		if left := since.Add(PreferDelay).Sub(v.Now); left > 0 {
			return Action{Kind: Wait, Wait: left, Reason: "preferred node " + pref + " may promote first"}
		}
		return Action{Kind: Promote, Reason: "no Primary; preferred node " + pref + " did not promote within " + PreferDelay.String()}
	}
	return Action{Kind: Promote, Reason: "no Primary, local data UpToDate, quorum"}
}

// preferredCandidate reports the preferred node when it is another node that
// could promote itself: connected, Secondary, UpToDate. Otherwise nobody is
// worth waiting for.
func preferredCandidate(v View) (string, bool) {
	if v.Prefer == "" || v.Prefer == v.Self {
		return "", false
	}
	for _, p := range v.Peers {
		if p.Name == v.Prefer && p.Connected && p.Role == blockrep.Secondary && p.Disk == blockrep.UpToDate {
			return p.Name, true
		}
	}
	return "", false
}

func connectedPrimary(v View) string {
	for _, p := range v.Peers {
		if p.Connected && p.Role == blockrep.Primary {
			return p.Name
		}
	}
	return ""
}

// backoff is how much of FailureBackoff is left after this node's last failure.
func backoff(v View) time.Duration {
	if v.LastFailure.IsZero() {
		return 0
	}
	return v.LastFailure.Add(FailureBackoff).Sub(v.Now)
}

// recent counts the restarts within window before now: (now-window, now].
// Restarts stamped after now (a clock step) count, to be safe.
func recent(restarts []time.Time, now time.Time, window time.Duration) int {
	n := 0
	for _, t := range restarts {
		if now.Sub(t) < window {
			n++
		}
	}
	return n
}

// PruneRestarts returns the restarts that still count at now, so the runtime's
// list stays short. It reuses the array of restarts.
func PruneRestarts(restarts []time.Time, now time.Time, window time.Duration) []time.Time {
	out := restarts[:0]
	for _, t := range restarts {
		if now.Sub(t) < window {
			out = append(out, t)
		}
	}
	return out
}
