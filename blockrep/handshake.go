package blockrep

import "fmt"

// HandshakeSide is what each node tells the other when a connection is established.
type HandshakeSide struct {
	NodeID int
	Name   string
	Gen    Generations
	Role   Role
	Disk   DiskState
	// Dirty is the number of 4 KiB blocks set in this side's bitmap for the other side.
	Dirty uint64
	// PrimaryConnected: this side is connected to a Primary other than the peer.
	PrimaryConnected bool
}

// SyncBits says which blocks a resync moves.
type SyncBits uint8

const (
	BitsNone  SyncBits = iota
	BitsMerge          // the union of both sides' bitmaps for each other
	BitsAll            // every block
	BitsOther          // the source's bitmap for node Other (target's is stale)
)

var syncBitsNames = [...]string{"none", "merge", "all", "other"}

func (b SyncBits) String() string { return enumName(syncBitsNames[:], int(b)) }

// HandshakeResult is what a connection becomes after the handshake, seen from self.
type HandshakeResult struct {
	Comparison
	// Repl is Established, SyncSource or SyncTarget; ReplOff means drop the connection
	// (go StandAlone) for Reason.
	Repl       ReplState
	Bits       SyncBits
	SplitBrain bool   // split brain was detected (resolved or not)
	Reason     string // the log line explaining a drop or an automatic resolution
	// Retry: the connection is dropped (Repl is ReplOff) but not left StandAlone: what
	// refuses it is expected to pass (a diskless Primary getting its disk back).
	Retry bool
	// Deferred: a resync was due but waits until no Primary is connected or until one
	// of two Inconsistent disks is UpToDate (Repl is Established, Bits none).
	Deferred bool
}

// Drop reports whether the connection must be dropped.
func (h HandshakeResult) Drop() bool { return h.Repl == ReplOff }

// DecideHandshake is DRBD's sync handshake: compare generations, let disk states and
// split-brain policies adjust the answer, and refuse combinations that would lose data.
// It is pure and symmetric: both nodes compute mirrored answers from the same inputs.
func DecideHandshake(self, peer HandshakeSide, pol SplitBrainPolicy) HandshakeResult {
	if self.Disk == Diskless || peer.Disk == Diskless {
		r := HandshakeResult{Comparison: Comparison{Strategy: NoSync, Rule: "diskless", Other: -1}, Repl: Established}
		if self.Role == Primary && peer.Role == Primary {
			return drop(r, "Both nodes are Primary, dropping connection!")
		}
		// A diskless Primary reads from its peers: only a peer holding the data it
		// exposes (its current generation) may join. One that fell behind waits for the
		// Primary's disk (DRBD says the same, and disconnects).
		for _, pair := range [2][2]HandshakeSide{{self, peer}, {peer, self}} {
			dp, other := pair[0], pair[1]
			if dp.Role == Primary && dp.Disk == Diskless && other.Disk != Diskless &&
				mask(other.Gen.Current) != mask(dp.Gen.Current) {
				r = drop(r, fmt.Sprintf("Can only connect to data with current UUID=%016X", dp.Gen.Current))
				r.Retry = true
				return r
			}
		}
		return r
	}
	cmp := CompareGenerations(self.Gen, peer.Gen, self.NodeID, peer.NodeID)
	r := HandshakeResult{Comparison: cmp}
	if cmp.Strategy == UnrelatedData {
		return drop(r, "Unrelated data, aborting!")
	}

	// dir > 0: we are source; < 0: target; 0: no sync. full: every block.
	dir, full := direction(cmp.Strategy), cmp.Strategy == SourceSetBitmap || cmp.Strategy == TargetSetBitmap
	splitBrain := cmp.Strategy == SplitBrainAutoRecover || cmp.Strategy == SplitBrainDisconnect

	// Exactly one side inconsistent: the other side's data wins, whatever the generations
	// say, with a plain bitmap resync (a third node's bitmap would describe the wrong pair).
	selfIncons, peerIncons := self.Disk <= Inconsistent, peer.Disk <= Inconsistent
	overridden := selfIncons != peerIncons
	if overridden {
		full = full || cmp.Strategy == SplitBrainDisconnect
		if peerIncons {
			dir = 1
		} else {
			dir = -1
		}
		splitBrain = false
		r.Reason = fmt.Sprintf("Becoming sync %s due to disk states.", srcTgt(dir))
	}

	if splitBrain {
		r.SplitBrain = true
		// A Primary that lost quorum marks itself Outdated when it steps down: what it
		// wrote after the majority moved on is discarded, as a victim's changes are.
		if so, po := self.Disk == Outdated, peer.Disk == Outdated; so != po {
			dir, full = 1, cmp.Strategy == SplitBrainDisconnect
			if so {
				dir = -1
			}
			r.Reason = fmt.Sprintf("Split-Brain detected, the Outdated node's changes are discarded. Sync from %s node", fromNode(dir))
		} else if cmp.Strategy == SplitBrainAutoRecover || pol.AlwaysASBP {
			if d := afterSplitBrain(self, peer, pol); d != 0 {
				dir, full = d, cmp.Strategy == SplitBrainDisconnect
				r.Reason = fmt.Sprintf("Split-Brain detected, %d primaries, automatically solved. Sync from %s node",
					primaries(self, peer), fromNode(d))
			}
		}
		if dir == 0 {
			sd, pd := self.Gen.Flags&GenDiscardMyData != 0, peer.Gen.Flags&GenDiscardMyData != 0
			switch {
			case sd && !pd:
				dir = -1
			case pd && !sd:
				dir = 1
			}
			if dir != 0 {
				full = cmp.Strategy == SplitBrainDisconnect
				r.Reason = fmt.Sprintf("Split-Brain detected, manually solved. Sync from %s node", fromNode(dir))
			}
		}
		if dir == 0 {
			return drop(r, "Split-Brain detected but unresolved, dropping connection!")
		}
	}

	if self.Role == Primary && peer.Role == Primary {
		return drop(r, "Both nodes are Primary, dropping connection!")
	}
	// Both sides may hold writes of a Primary that went away (or both crashed as
	// Secondaries): either could be the source, and the first to be promoted will be —
	// deciding by node id now would make that one a SyncTarget, which cannot be promoted.
	if cmp.Rule == "both-unclean" && !overridden && self.Role == Secondary && peer.Role == Secondary {
		r.Repl, r.Bits, r.Deferred = Established, BitsNone, true
		r.Reason = "Resync deferred: both sides are unclean; the first promoted is the source"
		return r
	}
	// Both disks Inconsistent (each, say, a SyncTarget of a third node): neither can be
	// the source now. Stay connected and decide again once one of them is UpToDate.
	if dir != 0 && selfIncons && peerIncons && !r.SplitBrain {
		r.Repl, r.Bits, r.Deferred = Established, BitsNone, true
		r.Reason = "Resync deferred: both disks are Inconsistent"
		return r
	}
	// Both sides log the same line, whichever of them is meant.
	if dir > 0 && selfIncons || dir < 0 && peerIncons {
		return drop(r, "I shall become SyncSource, but I am inconsistent!")
	}
	// rr-conflict: a Primary never becomes SyncTarget. Every rr-conflict policy acts as
	// "disconnect" here: a Primary's data is UpToDate by definition (Validate), and
	// blockrep runs no pri-lost handlers. This holds even when no bit would move.
	if dir < 0 && self.Role == Primary && self.Disk >= Consistent || dir > 0 && peer.Role == Primary && peer.Disk >= Consistent {
		return drop(r, "I shall become SyncTarget, but I am primary!")
	}

	// Two Secondaries do not resync each other while either is connected to a Primary:
	// the Primary's writes reach the target on another stream than the resync data,
	// so a resync block read before a write could overwrite it. The Primary resyncs the
	// target itself; the pair re-handshakes once no Primary is connected.
	if dir != 0 && self.Role == Secondary && peer.Role == Secondary && (self.PrimaryConnected || peer.PrimaryConnected) {
		r.Repl, r.Bits, r.Deferred = Established, BitsNone, true
		r.Reason = "Resync deferred: a Primary is connected"
		return r
	}

	switch {
	case dir == 0:
		r.Repl, r.Bits = Established, BitsNone
	case dir > 0:
		r.Repl = SyncSource
	default:
		r.Repl = SyncTarget
	}
	if dir != 0 {
		switch {
		case full:
			r.Bits = BitsAll
		case !overridden && (cmp.Strategy == SourceCopyOtherBitmap || cmp.Strategy == TargetClearBitmap):
			r.Bits = BitsOther
		default:
			r.Bits = BitsMerge
		}
	}
	return r
}

func drop(r HandshakeResult, why string) HandshakeResult {
	r.Repl, r.Bits, r.Reason = ReplOff, BitsNone, why
	return r
}

func direction(s Strategy) int {
	switch {
	case s.IsSource():
		return 1
	case s.IsTarget():
		return -1
	}
	return 0
}

func srcTgt(dir int) string {
	if dir > 0 {
		return "source"
	}
	return "target"
}

func fromNode(dir int) string {
	if dir > 0 {
		return "this"
	}
	return "peer"
}

func primaries(a, b HandshakeSide) int {
	n := 0
	if a.Role == Primary {
		n++
	}
	if b.Role == Primary {
		n++
	}
	return n
}

// afterSplitBrain applies the after-sb-Npri policy: 1 = we keep our data, -1 = we discard
// it, 0 = unresolved.
func afterSplitBrain(self, peer HandshakeSide, pol SplitBrainPolicy) int {
	switch primaries(self, peer) {
	case 0:
		return asb0p(self, peer, pol)
	case 1:
		switch pol.After1Pri {
		case ASB1DiscardSecondary:
			if self.Role == Primary {
				return 1
			}
			return -1
		case ASB1Consensus, ASB1CallPriLostAfterSB:
			// Only accept the 0pri answer when it discards the Secondary. (DRBD's
			// call-pri-lost-after-sb would also demote a losing Primary through a
			// handler; blockrep runs none, so that case stays unresolved.)
			d := asb0p(self, peer, pol)
			if d == -1 && self.Role == Secondary || d == 1 && peer.Role == Secondary {
				return d
			}
		case ASB1ViolentlyAS0P:
			return asb0p(self, peer, pol)
		}
	case 2:
		if pol.After2Pri == ASB2ViolentlyAS0P {
			return asb0p(self, peer, pol)
		}
	}
	return 0
}

func asb0p(self, peer HandshakeSide, pol SplitBrainPolicy) int {
	// Ties go to the lower node id, on both sides alike.
	tie := 1
	if self.NodeID > peer.NodeID {
		tie = -1
	}
	selfPri := self.Gen.Bitmap[peer.NodeID]&UUIDPrimaryBit != 0
	peerPri := peer.Gen.Bitmap[self.NodeID]&UUIDPrimaryBit != 0
	switch pol.After0Pri {
	case ASB0DiscardNode:
		switch pol.DiscardNode {
		case self.Name:
			return -1
		case peer.Name:
			return 1
		}
		return 0
	case ASB0DiscardYoungerPrimary, ASB0DiscardOlderPrimary:
		younger := pol.After0Pri == ASB0DiscardYoungerPrimary
		if !selfPri && peerPri {
			return pick(younger, -1, 1)
		}
		if selfPri && !peerPri {
			return pick(younger, 1, -1)
		}
		// Undecided: DRBD falls through to discard-least-changes.
		return leastChanges(self, peer, tie)
	case ASB0DiscardZeroChanges:
		switch {
		case self.Dirty == 0 && peer.Dirty == 0:
			return tie
		case peer.Dirty == 0:
			return 1
		case self.Dirty == 0:
			return -1
		}
		return 0
	case ASB0DiscardLeastChanges:
		return leastChanges(self, peer, tie)
	}
	return 0
}

func leastChanges(self, peer HandshakeSide, tie int) int {
	switch {
	case self.Dirty < peer.Dirty:
		return -1
	case self.Dirty > peer.Dirty:
		return 1
	}
	return tie
}

func pick(cond bool, a, b int) int {
	if cond {
		return a
	}
	return b
}
