package blockrep

import (
	"fmt"
	"strings"
)

// PeerState is one peer as this node sees it.
type PeerState struct {
	NodeID int
	Name   string
	Conn   ConnState
	Repl   ReplState
	Role   Role      // the peer's role, RoleUnknown unless Connected
	Disk   DiskState // the peer's disk, DUnknown unless Connected
	// SplitBrain is set when the last handshake found split brain; it stays until the
	// operator connects again.
	SplitBrain bool
	// Reason is why the connection is StandAlone, for status and logs.
	Reason string
}

// State is a node's view of one resource. It is plain data: the engine copies it,
// edits the copy, and commits the copy only if Validate accepts the transition.
type State struct {
	Role  Role
	Disk  DiskState
	Peers []PeerState
	// Suspended says why writes are frozen ("fencing", "quorum"), or "".
	Suspended string
	// NoQuorum: quorum is on and this node does not see enough nodes (DRBD's quorum:no).
	NoQuorum bool
}

// Clone returns a deep copy.
func (s State) Clone() State {
	s.Peers = append([]PeerState(nil), s.Peers...)
	return s
}

// Equal reports whether s and o are the same state.
func (s State) Equal(o State) bool {
	if s.Role != o.Role || s.Disk != o.Disk || s.Suspended != o.Suspended || s.NoQuorum != o.NoQuorum || len(s.Peers) != len(o.Peers) {
		return false
	}
	for i := range s.Peers {
		if s.Peers[i] != o.Peers[i] {
			return false
		}
	}
	return true
}

// Peer returns the state of a peer by node id, or nil.
func (s *State) Peer(nodeID int) *PeerState {
	for i := range s.Peers {
		if s.Peers[i].NodeID == nodeID {
			return &s.Peers[i]
		}
	}
	return nil
}

// Sanitize derives what follows from the rest: a peer that is not connected has no
// replication state and unknown role and disk.
func (s *State) Sanitize() {
	for i := range s.Peers {
		p := &s.Peers[i]
		if p.Conn != Connected {
			p.Repl, p.Role, p.Disk = ReplOff, RoleUnknown, DUnknown
		}
		if p.Conn == Connected {
			p.SplitBrain, p.Reason = false, ""
		}
	}
}

// StateError is a refused state change, with DRBD's wording where it has one.
type StateError struct {
	Err error
	Msg string
}

func (e *StateError) Error() string { return e.Msg }
func (e *StateError) Unwrap() error { return e.Err }

func refuse(err error, format string, a ...any) error {
	return &StateError{Err: err, Msg: fmt.Sprintf(format, a...)}
}

// Validate decides whether old → new is a legal transition. It is the one place that
// says what states may coexist, locally and with connected peers.
func Validate(old, new State) error {
	if new.Role == Primary {
		if new.Disk != UpToDate {
			if old.Role != Primary {
				return refuse(ErrNotUpToDate, "Need access to UpToDate data (local disk is %s)", new.Disk)
			}
			// An established Primary may lose its disk (on-io-error detach) but not keep an
			// unusable one.
			if new.Disk != Diskless && new.Disk != Failed {
				return refuse(ErrNotUpToDate, "Primary with %s data", new.Disk)
			}
		}
		for _, p := range new.Peers {
			if p.Conn == Connected && p.Role == Primary {
				return refuse(ErrPeerIsPrimary, "peer %s is Primary (only one Primary per resource)", p.Name)
			}
			if old.Role != Primary && p.Repl.IsSyncTarget() {
				return refuse(ErrNotUpToDate, "Need access to UpToDate data (resync from %s in progress)", p.Name)
			}
		}
	}
	for _, p := range new.Peers {
		if p.Repl.IsSyncTarget() && new.Disk != Inconsistent {
			return refuse(nil, "SyncTarget from %s with %s disk", p.Name, new.Disk)
		}
		if p.Repl.IsSyncSource() && new.Disk < Outdated {
			return refuse(nil, "SyncSource to %s with %s disk", p.Name, new.Disk)
		}
		if p.Conn != Connected && p.Repl != ReplOff {
			return refuse(nil, "replication %s without a connection to %s", p.Repl, p.Name)
		}
	}
	return nil
}

// CanPromote checks a promotion request against the current state. With force, local
// data is declared UpToDate (DRBD's primary --force), but not if there is no disk.
func CanPromote(s State, force bool) error {
	if s.Role == Primary {
		return nil
	}
	// --force overrides a missing quorum, as in DRBD.
	if s.NoQuorum && !force {
		return refuse(ErrNoQuorum, "No quorum: this node sees too few of the resource's nodes to be promoted")
	}
	next := s.Clone()
	next.Role = Primary
	if force {
		if next.Disk <= Failed {
			return refuse(ErrDiskless, "no local disk to force UpToDate")
		}
		next.Disk = UpToDate
		for i := range next.Peers {
			if next.Peers[i].Repl.IsSyncTarget() {
				next.Peers[i].Repl = Established
			}
		}
	}
	return Validate(s, next)
}

// Diff describes old → new as DRBD-like event fragments ("role:Secondary->Primary").
func Diff(old, new State) []string {
	var out []string
	if old.Role != new.Role {
		out = append(out, fmt.Sprintf("role:%s->%s", old.Role, new.Role))
	}
	if old.Disk != new.Disk {
		out = append(out, fmt.Sprintf("disk:%s->%s", old.Disk, new.Disk))
	}
	if old.NoQuorum != new.NoQuorum {
		out = append(out, fmt.Sprintf("quorum:%s->%s", yesNo(!old.NoQuorum), yesNo(!new.NoQuorum)))
	}
	if old.Suspended != new.Suspended {
		out = append(out, fmt.Sprintf("suspended:%s->%s", suspendedName(old.Suspended), suspendedName(new.Suspended)))
	}
	for _, np := range new.Peers {
		op := old.Peer(np.NodeID)
		if op == nil {
			out = append(out, fmt.Sprintf("%s added:%s", np.Name, np.Conn))
			continue
		}
		var f []string
		if op.Conn != np.Conn {
			f = append(f, fmt.Sprintf("connection:%s->%s", op.Conn, np.Conn))
		}
		if op.Repl != np.Repl {
			f = append(f, fmt.Sprintf("replication:%s->%s", op.Repl, np.Repl))
		}
		if op.Role != np.Role {
			f = append(f, fmt.Sprintf("peer-role:%s->%s", op.Role, np.Role))
		}
		if op.Disk != np.Disk {
			f = append(f, fmt.Sprintf("peer-disk:%s->%s", op.Disk, np.Disk))
		}
		if len(f) > 0 {
			out = append(out, np.Name+" "+strings.Join(f, " "))
		}
	}
	return out
}

func suspendedName(s string) string {
	if s == "" {
		return "no"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
