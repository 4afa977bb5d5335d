package blockrep

import (
	"fmt"
	"strconv"
	"strings"
)

// FencingPolicy is DRBD's net { fencing … }.
type FencingPolicy uint8

const (
	FencingDontCare           FencingPolicy = iota // never fence (the default)
	FencingResourceOnly                            // run fence-peer when an UpToDate peer is lost while Primary
	FencingResourceAndStonith                      // also freeze I/O until fence-peer confirms
)

var fencingNames = [...]string{"dont-care", "resource-only", "resource-and-stonith"}

func (f FencingPolicy) String() string { return enumName(fencingNames[:], int(f)) }

// ParseFencingPolicy parses a fencing policy ("" is dont-care).
func ParseFencingPolicy(s string) (FencingPolicy, error) {
	if s == "" {
		return FencingDontCare, nil
	}
	return parseEnum[FencingPolicy]("fencing", s, fencingNames[:])
}

// IOErrorPolicy is DRBD's disk { on-io-error … }.
type IOErrorPolicy uint8

const (
	IOErrorDetach IOErrorPolicy = iota // stop using the disk, serve through the peers (default)
	IOErrorPassOn                      // return the error to the caller
)

var ioErrorNames = [...]string{"detach", "pass_on"}

func (p IOErrorPolicy) String() string { return enumName(ioErrorNames[:], int(p)) }

// ParseIOErrorPolicy parses on-io-error. call-local-io-error detaches: blockrep runs no
// local-io-error handler, and detaching is the safe part of it.
func ParseIOErrorPolicy(s string) (IOErrorPolicy, error) {
	switch s {
	case "", "call-local-io-error":
		return IOErrorDetach, nil
	}
	return parseEnum[IOErrorPolicy]("on-io-error", s, ioErrorNames[:])
}

// After0Pri is after-sb-0pri: how a split brain with no Primary is resolved.
type After0Pri uint8

const (
	ASB0Disconnect After0Pri = iota
	ASB0DiscardYoungerPrimary
	ASB0DiscardOlderPrimary
	ASB0DiscardZeroChanges
	ASB0DiscardLeastChanges
	ASB0DiscardNode // the node named in SplitBrainPolicy.DiscardNode loses
)

var asb0Names = [...]string{"disconnect", "discard-younger-primary", "discard-older-primary",
	"discard-zero-changes", "discard-least-changes", "discard-node-"}

func (a After0Pri) String() string { return enumName(asb0Names[:], int(a)) }

// After1Pri is after-sb-1pri: one Primary.
type After1Pri uint8

const (
	ASB1Disconnect After1Pri = iota
	ASB1Consensus
	ASB1DiscardSecondary
	ASB1CallPriLostAfterSB
	ASB1ViolentlyAS0P
)

var asb1Names = [...]string{"disconnect", "consensus", "discard-secondary", "call-pri-lost-after-sb", "violently-as0p"}

func (a After1Pri) String() string { return enumName(asb1Names[:], int(a)) }

// After2Pri is after-sb-2pri: two Primaries.
type After2Pri uint8

const (
	ASB2Disconnect After2Pri = iota
	ASB2ViolentlyAS0P
	ASB2CallPriLostAfterSB
)

var asb2Names = [...]string{"disconnect", "violently-as0p", "call-pri-lost-after-sb"}

func (a After2Pri) String() string { return enumName(asb2Names[:], int(a)) }

// RRConflict is rr-conflict: a would-be SyncTarget that is Primary. Every policy acts as
// disconnect in blockrep (see DecideHandshake); the value must still match on both sides.
type RRConflict uint8

const (
	RRDisconnect RRConflict = iota
	RRRetryConnect
	RRViolently
	RRCallPriLost
	RRAutoDiscard
)

var rrNames = [...]string{"disconnect", "retry-connect", "violently", "call-pri-lost", "auto-discard"}

func (r RRConflict) String() string { return enumName(rrNames[:], int(r)) }

// SplitBrainPolicy is the after-sb-* / rr-conflict configuration of a connection; both
// sides must use the same one (the handshake's settings check compares them).
type SplitBrainPolicy struct {
	After0Pri   After0Pri
	DiscardNode string // the node name of after-sb-0pri discard-node-NAME
	After1Pri   After1Pri
	After2Pri   After2Pri
	AlwaysASBP  bool
	RRConflict  RRConflict
}

// ParseSplitBrainPolicy builds a policy from the .res option values ("" = disconnect).
func ParseSplitBrainPolicy(after0, after1, after2, rr string, always bool) (SplitBrainPolicy, error) {
	p := SplitBrainPolicy{AlwaysASBP: always}
	var err error
	if node, ok := strings.CutPrefix(after0, "discard-node-"); ok && node != "" {
		p.After0Pri, p.DiscardNode = ASB0DiscardNode, node
	} else if after0 != "" {
		if p.After0Pri, err = parseEnum[After0Pri]("after-sb-0pri", after0, asb0Names[:ASB0DiscardNode]); err != nil {
			return p, err
		}
	}
	if after1 != "" {
		if p.After1Pri, err = parseEnum[After1Pri]("after-sb-1pri", after1, asb1Names[:]); err != nil {
			return p, err
		}
	}
	if after2 != "" {
		if p.After2Pri, err = parseEnum[After2Pri]("after-sb-2pri", after2, asb2Names[:]); err != nil {
			return p, err
		}
	}
	if rr != "" {
		if p.RRConflict, err = parseEnum[RRConflict]("rr-conflict", rr, rrNames[:]); err != nil {
			return p, err
		}
	}
	return p, nil
}

func parseEnum[T ~uint8](what, s string, names []string) (T, error) {
	for i, n := range names {
		if n == s {
			return T(i), nil
		}
	}
	return 0, fmt.Errorf("unknown %s %q (want one of %s)", what, s, strings.Join(names, ", "))
}

// QuorumPolicy is DRBD's options { quorum …; on-no-quorum …; }: a node has quorum when
// it sees enough of the resource's nodes, itself included.
type QuorumPolicy struct {
	// Need is how many nodes must be present: 0 = quorum off, -1 = a majority,
	// -2 = all of them, else that number.
	Need int
	// IOError: without quorum a Primary fails new writes (on-no-quorum io-error);
	// otherwise it freezes them until quorum returns (suspend-io, DRBD's default).
	IOError bool
}

// Quorum modes for QuorumPolicy.Need.
const (
	QuorumOff      = 0
	QuorumMajority = -1
	QuorumAll      = -2
)

// ParseQuorumPolicy reads the .res values: quorum off|majority|all|N, on-no-quorum
// suspend-io|io-error ("" = the defaults).
func ParseQuorumPolicy(quorum, onNoQuorum string) (QuorumPolicy, error) {
	var q QuorumPolicy
	switch quorum {
	case "", "off":
	case "majority":
		q.Need = QuorumMajority
	case "all":
		q.Need = QuorumAll
	default:
		n, err := strconv.Atoi(quorum)
		if err != nil || n < 1 || n > MaxNodes {
			return q, fmt.Errorf("unknown quorum %q (want off, majority, all or 1..%d)", quorum, MaxNodes)
		}
		q.Need = n
	}
	switch onNoQuorum {
	case "", "suspend-io":
	case "io-error":
		q.IOError = true
	default:
		return q, fmt.Errorf("unknown on-no-quorum %q (want suspend-io or io-error)", onNoQuorum)
	}
	return q, nil
}
