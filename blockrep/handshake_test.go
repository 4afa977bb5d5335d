package blockrep

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// The two nodes of the handshake tables: "alpha" (id 0) is self, "bravo" (id 1) the peer.
func alpha(role Role, disk DiskState, g Generations, dirty uint64) HandshakeSide {
	return HandshakeSide{NodeID: idSelf, Name: "alpha", Gen: g, Role: role, Disk: disk, Dirty: dirty}
}

func bravo(role Role, disk DiskState, g Generations, dirty uint64) HandshakeSide {
	return HandshakeSide{NodeID: idPeer, Name: "bravo", Gen: g, Role: role, Disk: disk, Dirty: dirty}
}

// Generation scenarios, as (self, peer).
var (
	genSame      = [2]Generations{mkGen(uA, histOf(uD)), mkGen(uA, histOf(uD))}
	genSelfAhead = [2]Generations{mkGen(uB, bmSlot(idPeer, uA), histOf(uA)), mkGen(uA)}
	genPeerAhead = [2]Generations{mkGen(uA), mkGen(uB, bmSlot(idSelf, uA), histOf(uA))}
	// Only history in common, we are newer: full sync to the peer.
	genSelfAheadFull = [2]Generations{mkGen(uB, histOf(uA)), mkGen(uA)}
	// Our bitmap for node 2 describes what the peer lacks.
	genCopyOther = [2]Generations{mkGen(uB, bmSlot(idThird, uA), histOf(uA)), mkGen(uA)}
	genClearBM   = [2]Generations{mkGen(uA), mkGen(uB, bmSlot(idThird, uA), histOf(uA))}
	genUnrelated = [2]Generations{mkGen(uA), mkGen(uB)}
	genFresh     = [2]Generations{mkGen(UUIDJustCreated), mkGen(uA)}
	// Split brain: both wrote since A; neither bitmap generation carries the primary bit.
	genSplit = [2]Generations{mkGen(uB, bmSlot(idPeer, uA), histOf(uA)), mkGen(uC, bmSlot(idSelf, uA), histOf(uA))}
	// Split brain where we were Primary at the split (older primary), the peer promoted later.
	genSplitSelfOlder = [2]Generations{mkGen(pri(uB), bmSlot(idPeer, pri(uA)), histOf(uA)), mkGen(pri(uC), bmSlot(idSelf, uA), histOf(uA))}
	// Split brain where both were Primary at the split: younger/older cannot decide.
	genSplitBothPri = [2]Generations{mkGen(uB, bmSlot(idPeer, pri(uA))), mkGen(uC, bmSlot(idSelf, pri(uA)))}
	// Split brain with only history in common.
	genSplitHistory = [2]Generations{mkGen(uB, histOf(uA)), mkGen(uC, histOf(uA))}
)

func discarding(g Generations) Generations {
	g.Flags |= GenDiscardMyData
	return g
}

const (
	reasonUnrelated        = "Unrelated data, aborting!"
	reasonUnresolved       = "Split-Brain detected but unresolved, dropping connection!"
	reasonBothPrimary      = "Both nodes are Primary, dropping connection!"
	reasonSourceIncons     = "I shall become SyncSource, but I am inconsistent!"
	reasonBothIncons       = "Resync deferred: both disks are Inconsistent"
	reasonTargetPrimary    = "I shall become SyncTarget, but I am primary!"
	reasonDiskSource       = "Becoming sync source due to disk states."
	reasonDiskTarget       = "Becoming sync target due to disk states."
	reasonAuto0FromThis    = "Split-Brain detected, 0 primaries, automatically solved. Sync from this node"
	reasonAuto0FromPeer    = "Split-Brain detected, 0 primaries, automatically solved. Sync from peer node"
	reasonAuto1FromThis    = "Split-Brain detected, 1 primaries, automatically solved. Sync from this node"
	reasonAuto1FromPeer    = "Split-Brain detected, 1 primaries, automatically solved. Sync from peer node"
	reasonManualFromThis   = "Split-Brain detected, manually solved. Sync from this node"
	reasonManualFromPeer   = "Split-Brain detected, manually solved. Sync from peer node"
	reasonAuto2FromThis    = "Split-Brain detected, 2 primaries, automatically solved. Sync from this node"
	reasonNone             = ""
	policyLeast            = "discard-least-changes"
	policyDisconnect       = "disconnect"
	policyViolently        = "violently-as0p"
	rrViolently            = "violently"
	policyDiscardSecond    = "discard-secondary"
	policyConsensus        = "consensus"
	policyZeroChanges      = "discard-zero-changes"
	policyYoungerPrimary   = "discard-younger-primary"
	policyOlderPrimary     = "discard-older-primary"
	policyCallPriLostAfter = "call-pri-lost-after-sb"
)

type handshakeCase struct {
	name       string
	self, peer HandshakeSide
	pol        SplitBrainPolicy
	repl       ReplState
	bits       SyncBits
	splitBrain bool
	reason     string
	rule       string // the generation rule reported in the result; "" = not checked
	other      int    // checked when bits is BitsOther
}

func checkHandshake(t *testing.T, tc handshakeCase) {
	t.Helper()
	got := DecideHandshake(tc.self, tc.peer, tc.pol)
	if got.Repl != tc.repl || got.Bits != tc.bits || got.SplitBrain != tc.splitBrain || got.Reason != tc.reason {
		t.Fatalf("DecideHandshake = repl %v bits %v split-brain %v reason %q (%v)\nwant      repl %v bits %v split-brain %v reason %q",
			got.Repl, got.Bits, got.SplitBrain, got.Reason, got.Comparison, tc.repl, tc.bits, tc.splitBrain, tc.reason)
	}
	if got.Drop() != (tc.repl == ReplOff) {
		t.Fatalf("Drop() = %v with Repl %v", got.Drop(), got.Repl)
	}
	if want := strings.HasPrefix(tc.reason, "Resync deferred"); got.Deferred != want {
		t.Fatalf("Deferred = %v, want %v", got.Deferred, want)
	}
	if tc.rule != "" && got.Rule != tc.rule {
		t.Fatalf("rule = %q, want %q", got.Rule, tc.rule)
	}
	if tc.bits == BitsOther && got.Other != tc.other {
		t.Fatalf("Other = %d, want %d", got.Other, tc.other)
	}
	// The peer decides from the same inputs and must reach the mirrored answer.
	back := DecideHandshake(tc.peer, tc.self, tc.pol)
	if back.Repl != mirrorRepl(tc.repl) || back.Bits != tc.bits || back.SplitBrain != tc.splitBrain ||
		back.Reason != mirrorReason(tc.reason) || back.Comparison != mirrorComparison(got.Comparison) {
		t.Fatalf("peer's side: repl %v bits %v split-brain %v reason %q (%v)\nwant        repl %v bits %v split-brain %v reason %q",
			back.Repl, back.Bits, back.SplitBrain, back.Reason, back.Comparison,
			mirrorRepl(tc.repl), tc.bits, tc.splitBrain, mirrorReason(tc.reason))
	}
}

func mirrorRepl(r ReplState) ReplState {
	switch r {
	case SyncSource:
		return SyncTarget
	case SyncTarget:
		return SyncSource
	}
	return r
}

// mirrorReason is the log line the peer writes for the same decision.
func mirrorReason(s string) string {
	swap := func(s, a, b string) string {
		s = strings.ReplaceAll(s, a, "\x00")
		s = strings.ReplaceAll(s, b, a)
		return strings.ReplaceAll(s, "\x00", b)
	}
	switch {
	case strings.HasPrefix(s, "Becoming sync "):
		return swap(s, "source", "target")
	case strings.Contains(s, "Sync from "):
		return swap(s, "from this", "from peer")
	}
	return s
}

func TestDecideHandshakeFromGenerations(t *testing.T) {
	S, P, U, I := Secondary, Primary, UpToDate, Inconsistent
	cases := []handshakeCase{
		{name: "same generation: connected without resync",
			self: alpha(S, U, genSame[0], 0), peer: bravo(S, U, genSame[1], 0),
			repl: Established, bits: BitsNone, rule: "both-off"},
		{name: "our bitmap for the peer covers its gap: SyncSource of both bitmaps",
			self: alpha(S, U, genSelfAhead[0], 7), peer: bravo(S, U, genSelfAhead[1], 0),
			repl: SyncSource, bits: BitsMerge, rule: "bitmap-self"},
		{name: "the peer's bitmap for us covers our gap: SyncTarget of both bitmaps",
			self: alpha(S, U, genPeerAhead[0], 0), peer: bravo(S, U, genPeerAhead[1], 7),
			repl: SyncTarget, bits: BitsMerge, rule: "bitmap-peer"},
		{name: "only history in common, we are newer: full sync as SyncSource",
			self: alpha(S, U, genSelfAheadFull[0], 0), peer: bravo(S, U, genSelfAheadFull[1], 0),
			repl: SyncSource, bits: BitsAll, rule: "history-self"},
		{name: "our bitmap for a third node describes the peer: SyncSource sends that bitmap",
			self: alpha(S, U, genCopyOther[0], 0), peer: bravo(S, U, genCopyOther[1], 0),
			repl: SyncSource, bits: BitsOther, other: idThird, rule: "bitmap-self-other"},
		{name: "the peer's bitmap for a third node describes us: SyncTarget of that bitmap",
			self: alpha(S, U, genClearBM[0], 0), peer: bravo(S, U, genClearBM[1], 0),
			repl: SyncTarget, bits: BitsOther, other: idThird, rule: "bitmap-peer-other"},
		{name: "unrelated data drops the connection",
			self: alpha(S, U, genUnrelated[0], 0), peer: bravo(S, U, genUnrelated[1], 0),
			repl: ReplOff, reason: reasonUnrelated, rule: "unrelated-data"},
		{name: "a diskless Secondary connects without resync whatever the generations",
			self: alpha(S, U, genUnrelated[0], 0), peer: bravo(S, Diskless, Generations{}, 0),
			repl: Established, bits: BitsNone, rule: "diskless"},
		{name: "a diskless Primary takes a peer with its current data",
			self: alpha(S, U, genSame[0], 0), peer: bravo(P, Diskless, genSame[1], 0),
			repl: Established, bits: BitsNone, rule: "diskless"},
		{name: "a diskless Primary refuses a peer that is behind (it would read stale data from it)",
			self: alpha(S, U, genPeerAhead[0], 0), peer: bravo(P, Diskless, genPeerAhead[1], 0),
			repl: ReplOff, reason: fmt.Sprintf("Can only connect to data with current UUID=%016X", genPeerAhead[1].Current), rule: "diskless"},

		{name: "a diskless node connects to a Primary without resync",
			self: alpha(S, Diskless, Generations{}, 0), peer: bravo(P, U, genSame[1], 0),
			repl: Established, bits: BitsNone, rule: "diskless"},
		{name: "two fresh nodes connect without resync (the initial sync needs primary --force)",
			self: alpha(S, I, mkGen(UUIDJustCreated), 0), peer: bravo(S, I, mkGen(UUIDJustCreated), 0),
			repl: Established, bits: BitsNone, rule: "just-created-both"},
		{name: "a Primary may be SyncSource",
			self: alpha(P, U, genSelfAhead[0], 3), peer: bravo(S, U, genSelfAhead[1], 0),
			repl: SyncSource, bits: BitsMerge},
		{name: "a Secondary becomes SyncTarget of a Primary",
			self: alpha(S, U, genPeerAhead[0], 0), peer: bravo(P, U, genPeerAhead[1], 3),
			repl: SyncTarget, bits: BitsMerge},
		{name: "both Primary without split brain: dropped",
			self: alpha(P, U, genSame[0], 0), peer: bravo(P, U, genSame[1], 0),
			repl: ReplOff, reason: reasonBothPrimary},
		{name: "the would-be source is Inconsistent too: deferred until one is UpToDate",
			self: alpha(S, I, genSelfAhead[0], 0), peer: bravo(S, I, genSelfAhead[1], 0),
			repl: Established, reason: reasonBothIncons},
		{name: "fresh metadata against an Inconsistent peer with data: deferred, the peer cannot be source",
			self: alpha(S, I, genFresh[0], 0), peer: bravo(S, I, genFresh[1], 0),
			repl: Established, reason: reasonBothIncons},
		{name: "a split brain resolved towards an Inconsistent source: dropped",
			self: alpha(S, I, genSplit[0], 0), peer: bravo(S, I, discarding(genSplit[1]), 0),
			repl: ReplOff, splitBrain: true, reason: reasonSourceIncons},
		{name: "discard-my-data does not reverse a decided resync",
			self: alpha(S, U, discarding(genSelfAhead[0]), 2), peer: bravo(S, U, genSelfAhead[1], 0),
			repl: SyncSource, bits: BitsMerge},
		{name: "discard-my-data does not start a resync where none is needed",
			self: alpha(S, U, discarding(genSame[0]), 0), peer: bravo(S, U, genSame[1], 0),
			repl: Established, bits: BitsNone},
		{name: "a crashed primary returning as Secondary resyncs its activity log to the peer",
			self: alpha(S, U, mkGen(uA, withFlags(GenCrashedPrimary)), 40), peer: bravo(S, U, mkGen(uA), 0),
			repl: SyncSource, bits: BitsMerge, rule: "crashed-primary"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { checkHandshake(t, tc) })
	}
}

func TestDecideHandshakeDiskStatesOverrideGenerations(t *testing.T) {
	S, U, I, O := Secondary, UpToDate, Inconsistent, Outdated
	cases := []handshakeCase{
		{name: "Inconsistent with the same generation: SyncTarget due to disk states",
			self: alpha(S, I, genSame[0], 0), peer: bravo(S, U, genSame[1], 0),
			repl: SyncTarget, bits: BitsMerge, reason: reasonDiskTarget, rule: "both-off"},
		{name: "peer Inconsistent with the same generation: SyncSource due to disk states",
			self: alpha(S, U, genSame[0], 0), peer: bravo(S, I, genSame[1], 0),
			repl: SyncSource, bits: BitsMerge, reason: reasonDiskSource},
		{name: "an Inconsistent node never becomes source, whatever the generations say",
			self: alpha(S, I, genSelfAhead[0], 5), peer: bravo(S, U, genSelfAhead[1], 0),
			repl: SyncTarget, bits: BitsMerge, reason: reasonDiskTarget, rule: "bitmap-self"},
		{name: "a full sync stays full when disk states reverse it",
			self: alpha(S, I, genSelfAheadFull[0], 0), peer: bravo(S, U, genSelfAheadFull[1], 0),
			repl: SyncTarget, bits: BitsAll, reason: reasonDiskTarget},
		{name: "fresh metadata takes a full sync from an UpToDate peer",
			self: alpha(S, I, genFresh[0], 0), peer: bravo(S, U, genFresh[1], 0),
			repl: SyncTarget, bits: BitsAll, reason: reasonDiskTarget, rule: "just-created-self"},
		{name: "Outdated data is better than Inconsistent data",
			self: alpha(S, O, genSame[0], 0), peer: bravo(S, I, genSame[1], 0),
			repl: SyncSource, bits: BitsMerge, reason: reasonDiskSource},
		{name: "Outdated against Outdated: generations decide",
			self: alpha(S, O, genPeerAhead[0], 0), peer: bravo(S, O, genPeerAhead[1], 2),
			repl: SyncTarget, bits: BitsMerge},
		{name: "disk states settle a bitmap split brain, which is then not reported",
			self: alpha(S, U, genSplit[0], 3), peer: bravo(S, I, genSplit[1], 9),
			pol:  SplitBrainPolicy{After0Pri: ASB0Disconnect},
			repl: SyncSource, bits: BitsMerge, reason: reasonDiskSource, rule: "bitmap-both"},
		{name: "disk states settle a history-only split brain with a full sync",
			self: alpha(S, I, genSplitHistory[0], 0), peer: bravo(S, U, genSplitHistory[1], 0),
			repl: SyncTarget, bits: BitsAll, reason: reasonDiskTarget, rule: "history-both"},
		{name: "disk states do not make unrelated data related",
			self: alpha(S, I, genUnrelated[0], 0), peer: bravo(S, U, genUnrelated[1], 0),
			repl: ReplOff, reason: reasonUnrelated},
		{name: "both Inconsistent with the same generation stay connected without resync",
			self: alpha(S, I, genSame[0], 0), peer: bravo(S, I, genSame[1], 0),
			repl: Established, bits: BitsNone},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { checkHandshake(t, tc) })
	}
}

// TestDecideHandshakeDiskStateReversalDropsTheOtherNodesBitmap: BitsOther means "the
// SOURCE's bitmap for node Other describes the target". When disk states reverse the
// direction of a copy-other/clear-bitmap decision, that bitmap belongs to the new
// target, so the new source would send a bitmap that describes some other node. DRBD
// falls back to a plain bitmap resync (drbd_disk_states_{source,target}_strategy return
// *_USE_BITMAP unless the peer is already a sync target).
func TestDecideHandshakeDiskStateReversalDropsTheOtherNodesBitmap(t *testing.T) {
	S, U, I := Secondary, UpToDate, Inconsistent
	for _, tc := range []handshakeCase{
		{name: "copy-other reversed: we are Inconsistent",
			self: alpha(S, I, genCopyOther[0], 0), peer: bravo(S, U, genCopyOther[1], 0),
			repl: SyncTarget, bits: BitsMerge, reason: reasonDiskTarget},
		{name: "clear-bitmap reversed: the peer is Inconsistent",
			self: alpha(S, U, genClearBM[0], 0), peer: bravo(S, I, genClearBM[1], 0),
			repl: SyncSource, bits: BitsMerge, reason: reasonDiskSource},
	} {
		t.Run(tc.name, func(t *testing.T) { checkHandshake(t, tc) })
	}
}

func TestDecideHandshakeAfterSplitBrainZeroPrimaries(t *testing.T) {
	S, U := Secondary, UpToDate
	pol := func(p string) SplitBrainPolicy {
		// The 1pri/2pri policies must not matter with 0 primaries.
		return mustPolicy(p, "discard-secondary", "violently-as0p", "")
	}
	sb := func(name string, g [2]Generations, policy string, selfID, peerID int, selfDirty, peerDirty uint64,
		repl ReplState, reason string) handshakeCase {
		self, peer := alpha(S, U, g[0], selfDirty), bravo(S, U, g[1], peerDirty)
		self.NodeID, peer.NodeID = selfID, peerID
		// Keep the bitmap slots pointing at each other under the new ids.
		sbm, pbm := self.Gen.Bitmap[idPeer], peer.Gen.Bitmap[idSelf]
		self.Gen.Bitmap[idPeer], peer.Gen.Bitmap[idSelf] = 0, 0
		self.Gen.Bitmap[peerID], peer.Gen.Bitmap[selfID] = sbm, pbm
		bits := BitsMerge
		if repl == ReplOff {
			bits = BitsNone
		}
		return handshakeCase{name: name, self: self, peer: peer, pol: pol(policy), repl: repl, bits: bits,
			splitBrain: true, reason: reason, rule: "bitmap-both"}
	}
	cases := []handshakeCase{
		sb("disconnect: split brain stays unresolved", genSplit, policyDisconnect, 0, 1, 3, 9, ReplOff, reasonUnresolved),
		sb("no policy configured means disconnect", genSplit, "", 0, 1, 3, 9, ReplOff, reasonUnresolved),
		sb("discard-younger-primary: the peer promoted after the split loses", genSplitSelfOlder, policyYoungerPrimary, 0, 1, 1, 50, SyncSource, reasonAuto0FromThis),
		sb("discard-older-primary: we were Primary at the split and lose", genSplitSelfOlder, policyOlderPrimary, 0, 1, 50, 1, SyncTarget, reasonAuto0FromPeer),
		sb("discard-younger-primary undecided falls back to least changes (we changed more)", genSplitBothPri, policyYoungerPrimary, 0, 1, 10, 3, SyncSource, reasonAuto0FromThis),
		sb("discard-older-primary undecided falls back to least changes (we changed less)", genSplit, policyOlderPrimary, 0, 1, 3, 10, SyncTarget, reasonAuto0FromPeer),
		sb("discard-younger-primary undecided with equal changes: the lower node id wins", genSplit, policyYoungerPrimary, 0, 1, 4, 4, SyncSource, reasonAuto0FromThis),
		sb("discard-zero-changes: we wrote nothing and are discarded", genSplit, policyZeroChanges, 0, 1, 0, 5, SyncTarget, reasonAuto0FromPeer),
		sb("discard-zero-changes: the peer wrote nothing and is discarded", genSplit, policyZeroChanges, 0, 1, 5, 0, SyncSource, reasonAuto0FromThis),
		sb("discard-zero-changes: neither wrote, the lower node id wins", genSplit, policyZeroChanges, 0, 1, 0, 0, SyncSource, reasonAuto0FromThis),
		sb("discard-zero-changes: neither wrote, the higher node id loses", genSplit, policyZeroChanges, 3, 1, 0, 0, SyncTarget, reasonAuto0FromPeer),
		sb("discard-zero-changes: both wrote, unresolved", genSplit, policyZeroChanges, 0, 1, 1, 2, ReplOff, reasonUnresolved),
		sb("discard-least-changes: we changed less and are discarded", genSplit, policyLeast, 0, 1, 4, 9, SyncTarget, reasonAuto0FromPeer),
		sb("discard-least-changes: the peer changed less and is discarded", genSplit, policyLeast, 0, 1, 9, 4, SyncSource, reasonAuto0FromThis),
		sb("discard-least-changes: a tie goes to the lower node id", genSplit, policyLeast, 4, 2, 6, 6, SyncTarget, reasonAuto0FromPeer),
		sb("discard-node-NAME naming us: we are discarded", genSplit, "discard-node-alpha", 0, 1, 90, 1, SyncTarget, reasonAuto0FromPeer),
		sb("discard-node-NAME naming the peer: the peer is discarded", genSplit, "discard-node-bravo", 0, 1, 1, 90, SyncSource, reasonAuto0FromThis),
		sb("discard-node-NAME naming neither: unresolved", genSplit, "discard-node-charlie", 0, 1, 1, 90, ReplOff, reasonUnresolved),
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { checkHandshake(t, tc) })
	}
}

func TestDecideHandshakeAfterSplitBrainOnePrimary(t *testing.T) {
	S, P, U := Secondary, Primary, UpToDate
	pol := func(p1, p0 string) SplitBrainPolicy {
		return mustPolicy(p0, p1, "violently-as0p", "disconnect")
	}
	cases := []handshakeCase{
		{name: "disconnect: unresolved even if the 0pri policy could decide",
			self: alpha(P, U, genSplit[0], 9), peer: bravo(S, U, genSplit[1], 4), pol: pol(policyDisconnect, policyLeast),
			repl: ReplOff, splitBrain: true, reason: reasonUnresolved},
		{name: "consensus: the 0pri policy discards the Secondary, accepted",
			self: alpha(P, U, genSplit[0], 9), peer: bravo(S, U, genSplit[1], 4), pol: pol(policyConsensus, policyLeast),
			repl: SyncSource, bits: BitsMerge, splitBrain: true, reason: reasonAuto1FromThis},
		{name: "consensus seen from the Secondary: we are discarded",
			self: alpha(S, U, genSplit[0], 4), peer: bravo(P, U, genSplit[1], 9), pol: pol(policyConsensus, policyLeast),
			repl: SyncTarget, bits: BitsMerge, splitBrain: true, reason: reasonAuto1FromPeer},
		{name: "consensus: the 0pri policy would discard the Primary, unresolved",
			self: alpha(P, U, genSplit[0], 4), peer: bravo(S, U, genSplit[1], 9), pol: pol(policyConsensus, policyLeast),
			repl: ReplOff, splitBrain: true, reason: reasonUnresolved},
		{name: "consensus with a 0pri policy that cannot decide: unresolved",
			self: alpha(P, U, genSplit[0], 4), peer: bravo(S, U, genSplit[1], 9), pol: pol(policyConsensus, policyDisconnect),
			repl: ReplOff, splitBrain: true, reason: reasonUnresolved},
		{name: "discard-secondary: the Primary keeps its data although it changed less",
			self: alpha(P, U, genSplit[0], 1), peer: bravo(S, U, genSplit[1], 90), pol: pol(policyDiscardSecond, policyLeast),
			repl: SyncSource, bits: BitsMerge, splitBrain: true, reason: reasonAuto1FromThis},
		{name: "discard-secondary seen from the Secondary",
			self: alpha(S, U, genSplit[0], 90), peer: bravo(P, U, genSplit[1], 1), pol: pol(policyDiscardSecond, policyDisconnect),
			repl: SyncTarget, bits: BitsMerge, splitBrain: true, reason: reasonAuto1FromPeer},
		{name: "violently-as0p discarding the Secondary",
			self: alpha(P, U, genSplit[0], 9), peer: bravo(S, U, genSplit[1], 4), pol: pol(policyViolently, policyLeast),
			repl: SyncSource, bits: BitsMerge, splitBrain: true, reason: reasonAuto1FromThis},
		{name: "violently-as0p discarding the Primary hits the rr-conflict",
			self: alpha(P, U, genSplit[0], 4), peer: bravo(S, U, genSplit[1], 9), pol: pol(policyViolently, policyLeast),
			repl: ReplOff, splitBrain: true, reason: reasonTargetPrimary},
		{name: "violently-as0p discarding the Primary with rr-conflict violently: still refused, blockrep never makes a Primary SyncTarget",
			self: alpha(P, U, genSplit[0], 4), peer: bravo(S, U, genSplit[1], 9),
			pol:  SplitBrainPolicy{After0Pri: ASB0DiscardLeastChanges, After1Pri: ASB1ViolentlyAS0P, RRConflict: RRViolently},
			repl: ReplOff, splitBrain: true, reason: reasonTargetPrimary},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { checkHandshake(t, tc) })
	}
}

// TestDecideHandshakeCallPriLostAfterSBActsAsConsensusWhenTheSecondaryLoses: in DRBD
// (drbd_asb_recover_1p, ASB_CALL_HELPER) the 0pri answer is applied; only when it would
// discard the Primary must the Primary be demoted (or the pri-lost-after-sb handler
// called). When it discards the Secondary, the split brain is resolved.
func TestDecideHandshakeCallPriLostAfterSBActsAsConsensusWhenTheSecondaryLoses(t *testing.T) {
	checkHandshake(t, handshakeCase{
		self: alpha(Primary, UpToDate, genSplit[0], 9), peer: bravo(Secondary, UpToDate, genSplit[1], 4),
		pol:  SplitBrainPolicy{After0Pri: ASB0DiscardLeastChanges, After1Pri: ASB1CallPriLostAfterSB},
		repl: SyncSource, bits: BitsMerge, splitBrain: true, reason: reasonAuto1FromThis})
}

func TestDecideHandshakeAfterSplitBrainTwoPrimaries(t *testing.T) {
	P, U := Primary, UpToDate
	cases := []handshakeCase{
		{name: "disconnect: unresolved",
			self: alpha(P, U, genSplit[0], 9), peer: bravo(P, U, genSplit[1], 4),
			pol:  SplitBrainPolicy{After0Pri: ASB0DiscardLeastChanges, After1Pri: ASB1DiscardSecondary, After2Pri: ASB2Disconnect},
			repl: ReplOff, splitBrain: true, reason: reasonUnresolved},
		{name: "violently-as0p resolves the split brain, but two Primaries may not connect",
			self: alpha(P, U, genSplit[0], 9), peer: bravo(P, U, genSplit[1], 4),
			pol:  SplitBrainPolicy{After0Pri: ASB0DiscardLeastChanges, After2Pri: ASB2ViolentlyAS0P, RRConflict: RRViolently},
			repl: ReplOff, splitBrain: true, reason: reasonBothPrimary},
		{name: "violently-as0p with a 0pri policy that cannot decide: unresolved",
			self: alpha(P, U, genSplit[0], 9), peer: bravo(P, U, genSplit[1], 4),
			pol:  SplitBrainPolicy{After0Pri: ASB0Disconnect, After2Pri: ASB2ViolentlyAS0P},
			repl: ReplOff, splitBrain: true, reason: reasonUnresolved},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { checkHandshake(t, tc) })
	}
}

func TestDecideHandshakeHistoryOnlySplitBrain(t *testing.T) {
	S, P, U := Secondary, Primary, UpToDate
	cases := []handshakeCase{
		{name: "after-sb policies do not apply without always-asbp",
			self: alpha(S, U, genSplitHistory[0], 9), peer: bravo(S, U, genSplitHistory[1], 4),
			pol:  SplitBrainPolicy{After0Pri: ASB0DiscardLeastChanges},
			repl: ReplOff, splitBrain: true, reason: reasonUnresolved, rule: "history-both"},
		{name: "always-asbp applies the 0pri policy, as a full sync",
			self: alpha(S, U, genSplitHistory[0], 9), peer: bravo(S, U, genSplitHistory[1], 4),
			pol:  SplitBrainPolicy{After0Pri: ASB0DiscardLeastChanges, AlwaysASBP: true},
			repl: SyncSource, bits: BitsAll, splitBrain: true, reason: reasonAuto0FromThis},
		{name: "always-asbp applies the 1pri policy, as a full sync",
			self: alpha(S, U, genSplitHistory[0], 9), peer: bravo(P, U, genSplitHistory[1], 4),
			pol:  SplitBrainPolicy{After1Pri: ASB1DiscardSecondary, AlwaysASBP: true},
			repl: SyncTarget, bits: BitsAll, splitBrain: true, reason: reasonAuto1FromPeer},
		{name: "discard-my-data resolves it manually, as a full sync",
			self: alpha(S, U, discarding(genSplitHistory[0]), 9), peer: bravo(S, U, genSplitHistory[1], 4),
			repl: SyncTarget, bits: BitsAll, splitBrain: true, reason: reasonManualFromPeer},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { checkHandshake(t, tc) })
	}
}

func TestDecideHandshakeManualSplitBrainResolution(t *testing.T) {
	S, P, U := Secondary, Primary, UpToDate
	cases := []handshakeCase{
		{name: "discard-my-data on our side: we become SyncTarget of both bitmaps",
			self: alpha(S, U, discarding(genSplit[0]), 9), peer: bravo(S, U, genSplit[1], 4),
			repl: SyncTarget, bits: BitsMerge, splitBrain: true, reason: reasonManualFromPeer},
		{name: "discard-my-data on the peer: we become SyncSource",
			self: alpha(S, U, genSplit[0], 9), peer: bravo(S, U, discarding(genSplit[1]), 4),
			repl: SyncSource, bits: BitsMerge, splitBrain: true, reason: reasonManualFromThis},
		{name: "discard-my-data on both sides resolves nothing",
			self: alpha(S, U, discarding(genSplit[0]), 9), peer: bravo(S, U, discarding(genSplit[1]), 4),
			repl: ReplOff, splitBrain: true, reason: reasonUnresolved},
		{name: "an automatic policy decides before discard-my-data is considered",
			self: alpha(S, U, discarding(genSplit[0]), 9), peer: bravo(S, U, genSplit[1], 4),
			pol:  SplitBrainPolicy{After0Pri: ASB0DiscardLeastChanges},
			repl: SyncSource, bits: BitsMerge, splitBrain: true, reason: reasonAuto0FromThis},
		{name: "discard-my-data applies when the automatic policy cannot decide",
			self: alpha(S, U, discarding(genSplit[0]), 9), peer: bravo(S, U, genSplit[1], 4),
			pol:  SplitBrainPolicy{After0Pri: ASB0DiscardZeroChanges},
			repl: SyncTarget, bits: BitsMerge, splitBrain: true, reason: reasonManualFromPeer},
		{name: "discard-my-data on a Primary makes it SyncTarget: rr-conflict",
			self: alpha(P, U, discarding(genSplit[0]), 9), peer: bravo(S, U, genSplit[1], 4),
			pol:  SplitBrainPolicy{RRConflict: RRDisconnect},
			repl: ReplOff, splitBrain: true, reason: reasonTargetPrimary},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { checkHandshake(t, tc) })
	}
}

func TestDecideHandshakeRRConflict(t *testing.T) {
	S, P, U := Secondary, Primary, UpToDate
	var cases []handshakeCase
	for _, rr := range []string{"", "disconnect", "retry-connect", "call-pri-lost"} {
		cases = append(cases, handshakeCase{name: "rr-conflict " + rr + ": a Primary refuses to become SyncTarget",
			self: alpha(P, U, genPeerAhead[0], 2), peer: bravo(S, U, genPeerAhead[1], 7),
			pol:  mustPolicy("", "", "", rr),
			repl: ReplOff, reason: reasonTargetPrimary})
	}
	cases = append(cases,
		handshakeCase{name: "rr-conflict violently acts as disconnect: a Primary never becomes SyncTarget",
			self: alpha(P, U, genPeerAhead[0], 2), peer: bravo(S, U, genPeerAhead[1], 7),
			pol:  SplitBrainPolicy{RRConflict: RRViolently},
			repl: ReplOff, reason: reasonTargetPrimary},
		handshakeCase{name: "rr-conflict also when the peer is the Primary that would become SyncTarget",
			self: alpha(S, U, genSelfAhead[0], 7), peer: bravo(P, U, genSelfAhead[1], 2),
			repl: ReplOff, reason: reasonTargetPrimary},
		handshakeCase{name: "a full sync onto a Primary is an rr-conflict too",
			self: alpha(P, U, genSelfAheadFull[1], 0), peer: bravo(S, U, genSelfAheadFull[0], 0),
			repl: ReplOff, reason: reasonTargetPrimary},
	)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { checkHandshake(t, tc) })
	}
}

// TestDecideHandshakeRRConflictOnlyWithBitsToMove: DRBD 9 (drbd_sync_handshake, and
// reference §4 "If the would-be SyncTarget is a Primary with Consistent+ data and bits
// set → rr-conflict") only refuses when the resync would actually change the Primary's
// data; a bitmap resync with no bit set on either side moves nothing.
func TestDecideHandshakeRRConflictEvenWithNoBitsToMove(t *testing.T) {
	// blockrep is deliberately more conservative than DRBD 9 here: a Primary is never a
	// SyncTarget, so the generations of the two would stay apart. The connection drops.
	checkHandshake(t, handshakeCase{
		self: alpha(Primary, UpToDate, genPeerAhead[0], 0), peer: bravo(Secondary, UpToDate, genPeerAhead[1], 0),
		pol:  SplitBrainPolicy{RRConflict: RRDisconnect},
		repl: ReplOff, reason: reasonTargetPrimary})
}

// TestDecideHandshakeRefusesTwoPrimariesEvenIfOneIsDiskless: at most one Primary per
// resource (DESIGN.md "States"). A Primary that lost its disk (on-io-error detach, which
// Validate allows) is still Primary; if the peer was promoted meanwhile, the two must not
// connect. DecideHandshake returns early for a diskless side, before the both-Primary check.
func TestDecideHandshakeRefusesTwoPrimariesEvenIfOneIsDiskless(t *testing.T) {
	checkHandshake(t, handshakeCase{
		self: alpha(Primary, Diskless, Generations{}, 0), peer: bravo(Primary, UpToDate, genSame[1], 0),
		repl: ReplOff, reason: reasonBothPrimary})
}

// randSide draws one side of a handshake.
func randSide(r *rand.Rand, id int, name string) HandshakeSide {
	disks := []DiskState{Diskless, Inconsistent, Inconsistent, Outdated, Consistent, UpToDate, UpToDate, UpToDate}
	roles := []Role{Secondary, Secondary, Primary}
	g := randGen(r)
	if r.IntN(2) == 0 {
		g.Flags &^= GenDiscardMyData
	}
	return HandshakeSide{NodeID: id, Name: name, Gen: g, Role: roles[r.IntN(len(roles))],
		Disk: disks[r.IntN(len(disks))], Dirty: uint64(r.IntN(3))}
}

// mustPolicy builds a policy from .res values, as the configuration does.
func mustPolicy(after0, after1, after2, rr string) SplitBrainPolicy {
	p, err := ParseSplitBrainPolicy(after0, after1, after2, rr, false)
	if err != nil {
		panic(err)
	}
	return p
}

func randPolicy(r *rand.Rand) SplitBrainPolicy {
	oneOf := func(s ...string) string { return s[r.IntN(len(s))] }
	p := mustPolicy(oneOf("", "disconnect", "discard-younger-primary", "discard-older-primary",
		"discard-zero-changes", "discard-least-changes", "discard-node-n0", "discard-node-n1",
		"discard-node-n2", "discard-node-n3"),
		oneOf("", "disconnect", "consensus", "discard-secondary", "call-pri-lost-after-sb", "violently-as0p"),
		oneOf("", "disconnect", "violently-as0p", "call-pri-lost-after-sb"),
		oneOf("", "disconnect", "retry-connect", "violently", "call-pri-lost", "auto-discard"))
	p.AlwaysASBP = r.IntN(2) == 0
	return p
}

// TestDecideHandshakeIsSymmetric: both nodes run DecideHandshake on the same inputs and
// must agree: one SyncSource and one SyncTarget (or both Established), the same bits,
// both drop or neither; and no outcome breaks the safety rules.
func TestDecideHandshakeIsSymmetric(t *testing.T) {
	seed := propSeed(t)
	r := rand.New(rand.NewPCG(seed, 42))
	outcomes := map[string]int{}
	for i := 0; i < 200000; i++ {
		ia, ib := randIDs(r)
		a := randSide(r, ia, "n"+string(rune('0'+ia)))
		b := randSide(r, ib, "n"+string(rune('0'+ib)))
		pol := randPolicy(r)
		ab, ba := DecideHandshake(a, b, pol), DecideHandshake(b, a, pol)
		fail := func(why string) {
			t.Fatalf("seed %d (GENPROP_SEED=%d), iteration %d: %s\n a = %+v\n b = %+v\n policy = %+v\n decide(a,b) = %+v\n decide(b,a) = %+v",
				seed, seed, i, why, a, b, pol, ab, ba)
		}
		outcomes[ab.Repl.String()+"/"+ab.Bits.String()]++
		switch {
		case ab.Drop() != ba.Drop():
			fail("one side drops, the other does not")
		case ab.SplitBrain != ba.SplitBrain:
			fail("the sides disagree about split brain")
		case ab.Comparison != mirrorComparison(ba.Comparison):
			fail("the generation comparisons are not mirrored")
		case !ab.Drop() && ab.Repl != mirrorRepl(ba.Repl):
			fail("replication states are not mirrored")
		case !ab.Drop() && ab.Bits != ba.Bits:
			fail("the sides disagree about which blocks move")
		case ab.Drop() && (ab.Reason == "" || ba.Reason == ""):
			fail("a dropped connection needs a reason")
		}
		for _, c := range []struct {
			self, peer HandshakeSide
			res        HandshakeResult
		}{{a, b, ab}, {b, a, ba}} {
			res, self, peer := c.res, c.self, c.peer
			switch res.Repl {
			case ReplOff, Established, SyncSource, SyncTarget:
			default:
				fail("unexpected replication state " + res.Repl.String())
			}
			if (res.Bits == BitsNone) != (res.Repl == ReplOff || res.Repl == Established) {
				fail("bits must be none exactly when no resync runs")
			}
			if res.Repl == SyncSource && self.Disk <= Inconsistent {
				fail("an Inconsistent node became SyncSource")
			}
			if res.Repl == SyncTarget && self.Role == Primary && self.Disk >= Consistent && pol.RRConflict != RRViolently {
				fail("a Primary became SyncTarget without rr-conflict violently")
			}
			// (A diskless Primary is TestDecideHandshakeRefusesTwoPrimariesEvenIfOneIsDiskless.)
			if !res.Drop() && self.Role == Primary && peer.Role == Primary && self.Disk != Diskless && peer.Disk != Diskless {
				fail("two Primaries connected")
			}
			if res.Repl == Established && self.Disk != Diskless && peer.Disk != Diskless &&
				(self.Disk <= Inconsistent) != (peer.Disk <= Inconsistent) {
				fail("exactly one side Inconsistent but no resync")
			}
			if !res.Drop() && res.Strategy == UnrelatedData {
				fail("connected with unrelated data")
			}
		}
	}
	if testing.Verbose() {
		t.Logf("seed %d; outcomes: %v", seed, outcomes)
	}
}

// TestHandshakeOutcomesAreStatesTheEngineAccepts: whatever DecideHandshake lets through
// must be a state Validate accepts once applied (a SyncTarget marks its disk Inconsistent
// before the first block arrives). In particular a Primary is never made SyncTarget, not
// even with rr-conflict violently, because Validate never lets a Primary hold
// Inconsistent data.
func TestHandshakeOutcomesAreStatesTheEngineAccepts(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	for i := 0; i < 50000; i++ {
		self, peer := randSide(r, 0, "alpha"), randSide(r, 1, "bravo")
		if self.Role == Primary && self.Disk != UpToDate || peer.Role == Primary && peer.Disk != UpToDate {
			continue // not a state a node can be in (Validate)
		}
		pol := SplitBrainPolicy{After0Pri: ASB0DiscardLeastChanges, After1Pri: ASB1ViolentlyAS0P, After2Pri: ASB2ViolentlyAS0P, RRConflict: RRViolently}
		res := DecideHandshake(self, peer, pol)
		if res.Drop() || self.Disk == Diskless || peer.Disk == Diskless {
			continue
		}
		disk := self.Disk
		if res.Repl == SyncTarget {
			disk = Inconsistent
		}
		old := stateOf(self.Role, self.Disk, peerSt(Connecting, ReplOff, RoleUnknown, DUnknown))
		next := stateOf(self.Role, disk, peerSt(Connected, res.Repl, peer.Role, peer.Disk))
		if err := Validate(old, next); err != nil {
			t.Fatalf("self %+v peer %+v: handshake %v is refused by Validate: %v", self, peer, res.Repl, err)
		}
	}
}

// TestDecideHandshakeDefersSecondaryToSecondaryResyncWhileAPrimaryIsConnected: the
// Primary's writes reach a target on another stream than a Secondary's resync data, so
// two Secondaries leave the resync to the Primary; with a Primary among the pair, or
// nobody connected to one, the resync happens.
func TestDecideHandshakeDefersSecondaryToSecondaryResyncWhileAPrimaryIsConnected(t *testing.T) {
	S, P, U := Secondary, Primary, UpToDate
	withPrimary := func(h HandshakeSide) HandshakeSide { h.PrimaryConnected = true; return h }
	for _, tc := range []handshakeCase{
		{name: "the target is connected to a Primary: deferred",
			self: withPrimary(alpha(S, U, genPeerAhead[0], 0)), peer: bravo(S, U, genPeerAhead[1], 3),
			repl: Established, reason: "Resync deferred: a Primary is connected"},
		{name: "the source is connected to a Primary: deferred",
			self: alpha(S, U, genPeerAhead[0], 0), peer: withPrimary(bravo(S, U, genPeerAhead[1], 3)),
			repl: Established, reason: "Resync deferred: a Primary is connected"},
		{name: "no Primary anywhere: the Secondaries resync",
			self: alpha(S, U, genPeerAhead[0], 0), peer: bravo(S, U, genPeerAhead[1], 3),
			repl: SyncTarget, bits: BitsMerge},
		{name: "the source is the Primary: it resyncs on the stream its writes use",
			self: withPrimary(alpha(S, U, genPeerAhead[0], 0)), peer: bravo(P, U, genPeerAhead[1], 3),
			repl: SyncTarget, bits: BitsMerge},
		{name: "both unclean (the Primary they followed went away): deferred to the first promoted",
			self: alpha(S, U, mkGen(uA, withFlags(GenUnclean)), 4), peer: bravo(S, U, mkGen(uA, withFlags(GenUnclean)), 2),
			repl: Established, reason: "Resync deferred: both sides are unclean; the first promoted is the source"},
		{name: "one of them promoted (its flags cleared): the other is resynced from it",
			self: alpha(P, U, mkGen(uA), 4), peer: bravo(S, U, mkGen(uA, withFlags(GenUnclean)), 2),
			repl: SyncSource, bits: BitsMerge, rule: "crashed-secondary"},
		{name: "nothing to resync: plain Established, not deferred",
			self: withPrimary(alpha(S, U, genSame[0], 0)), peer: bravo(S, U, genSame[1], 0),
			repl: Established},
	} {
		t.Run(tc.name, func(t *testing.T) { checkHandshake(t, tc) })
	}
}
