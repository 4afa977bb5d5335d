package blockrep

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Generation identifiers used by the tables: even (UUIDPrimaryBit clear), never 0 or
// UUIDJustCreated, and easy to read in failure messages.
const (
	uA uint64 = 0xA0A0
	uB uint64 = 0xB0B0
	uC uint64 = 0xC0C0
	uD uint64 = 0xD0D0
)

// pri marks a generation as created while Primary.
func pri(u uint64) uint64 { return u | UUIDPrimaryBit }

type genOpt func(*Generations)

// mkGen builds a generation set with the given current generation.
func mkGen(cur uint64, opts ...genOpt) Generations {
	g := Generations{Current: cur}
	for _, o := range opts {
		o(&g)
	}
	return g
}

// bmSlot sets the bitmap generation this node keeps for node.
func bmSlot(node int, u uint64) genOpt { return func(g *Generations) { g.Bitmap[node] = u } }

// histOf sets the history, most recent first.
func histOf(us ...uint64) genOpt {
	return func(g *Generations) { copy(g.History[:], us) }
}

func withFlags(f GenFlags) genOpt { return func(g *Generations) { g.Flags |= f } }

// Node ids of the tables: we are 0, the peer is 1, a third node is 2.
const (
	idSelf  = 0
	idPeer  = 1
	idThird = 2
)

// TestCompareGenerationsFollowsDRBDRuleOrder pins one case per uuid_compare rule (and the
// precedence between rules) and checks that the peer, comparing the same generations
// from its side, reaches the mirrored answer.
func TestCompareGenerationsFollowsDRBDRuleOrder(t *testing.T) {
	cases := []struct {
		name           string
		self, peer     Generations
		selfID, peerID int
		want           Strategy
		rule           string
		other          int // -1 unless the rule names another node's bitmap slot
	}{
		// (1)-(3) fresh metadata.
		{name: "both just created: nothing to sync",
			self: mkGen(UUIDJustCreated), peer: mkGen(UUIDJustCreated),
			want: NoSync, rule: "just-created-both", other: -1},
		{name: "we are just created: full sync from the peer",
			self: mkGen(UUIDJustCreated), peer: mkGen(uA, histOf(uB)),
			want: TargetSetBitmap, rule: "just-created-self", other: -1},
		{name: "peer is just created: full sync to the peer",
			self: mkGen(uA), peer: mkGen(UUIDJustCreated),
			want: SourceSetBitmap, rule: "just-created-peer", other: -1},
		{name: "just created with the primary bit is still just created",
			self: mkGen(pri(UUIDJustCreated)), peer: mkGen(uA),
			want: TargetSetBitmap, rule: "just-created-self", other: -1},
		{name: "just created beats crash flags and bitmaps",
			self: mkGen(UUIDJustCreated, withFlags(GenCrashedPrimary)),
			peer: mkGen(UUIDJustCreated, withFlags(GenUnclean), bmSlot(idSelf, UUIDJustCreated)),
			want: NoSync, rule: "just-created-both", other: -1},

		// (4) same current generation.
		{name: "same generation, clean on both sides: both-off, no sync",
			self: mkGen(uA), peer: mkGen(uA),
			want: NoSync, rule: "both-off", other: -1},
		{name: "same generation except the primary bit: masked, no sync",
			self: mkGen(pri(uA)), peer: mkGen(uA),
			want: NoSync, rule: "both-off", other: -1},
		{name: "same generation beats a matching bitmap slot",
			self: mkGen(uA, bmSlot(idPeer, uA)), peer: mkGen(uA, bmSlot(idSelf, uA)),
			want: NoSync, rule: "both-off", other: -1},
		{name: "we crashed as primary: our activity log is resynced to the peer",
			self: mkGen(uA, withFlags(GenCrashedPrimary)), peer: mkGen(uA),
			want: SourceUseBitmap, rule: "crashed-primary", other: -1},
		{name: "peer crashed as primary: its activity log is resynced to us",
			self: mkGen(uA), peer: mkGen(uA, withFlags(GenCrashedPrimary)),
			want: TargetUseBitmap, rule: "crashed-primary", other: -1},
		{name: "both crashed as primary: the lower node id is the source",
			self: mkGen(uA, withFlags(GenCrashedPrimary)), peer: mkGen(uA, withFlags(GenCrashedPrimary)),
			selfID: 0, peerID: 1,
			want: SourceUseBitmap, rule: "both-crashed", other: -1},
		{name: "both crashed as primary: the higher node id is the target",
			self: mkGen(uA, withFlags(GenCrashedPrimary)), peer: mkGen(uA, withFlags(GenCrashedPrimary)),
			selfID: 5, peerID: 3,
			want: TargetUseBitmap, rule: "both-crashed", other: -1},
		{name: "we went down uncleanly as secondary: the peer's data wins",
			self: mkGen(uA, withFlags(GenUnclean)), peer: mkGen(uA),
			want: TargetUseBitmap, rule: "crashed-secondary", other: -1},
		{name: "peer went down uncleanly as secondary: our data wins",
			self: mkGen(uA), peer: mkGen(uA, withFlags(GenUnclean)),
			want: SourceUseBitmap, rule: "crashed-secondary", other: -1},
		{name: "both unclean secondaries: the lower node id is the source",
			self: mkGen(uA, withFlags(GenUnclean)), peer: mkGen(uA, withFlags(GenUnclean)),
			selfID: 2, peerID: 7,
			want: SourceUseBitmap, rule: "both-unclean", other: -1},
		{name: "both unclean secondaries: the higher node id is the target",
			self: mkGen(uA, withFlags(GenUnclean)), peer: mkGen(uA, withFlags(GenUnclean)),
			selfID: 7, peerID: 2,
			want: TargetUseBitmap, rule: "both-unclean", other: -1},
		{name: "a crashed primary beats an unclean secondary",
			self: mkGen(uA, withFlags(GenCrashedPrimary)), peer: mkGen(uA, withFlags(GenUnclean)),
			want: SourceUseBitmap, rule: "crashed-primary", other: -1},
		{name: "an unclean secondary loses to a crashed primary",
			self: mkGen(uA, withFlags(GenUnclean)), peer: mkGen(uA, withFlags(GenCrashedPrimary|GenUnclean)),
			want: TargetUseBitmap, rule: "crashed-primary", other: -1},
		{name: "discard-my-data does not influence the comparison",
			self: mkGen(uA, withFlags(GenDiscardMyData)), peer: mkGen(uA),
			want: NoSync, rule: "both-off", other: -1},

		// (5) and (7): one side's bitmap for the other starts at the other's current generation.
		{name: "peer's bitmap for us starts at our generation: bitmap resync from the peer",
			self: mkGen(uA), peer: mkGen(uB, bmSlot(idSelf, uA), histOf(uA)),
			want: TargetUseBitmap, rule: "bitmap-peer", other: -1},
		{name: "bitmap-peer matches through the primary bit",
			self: mkGen(uA), peer: mkGen(pri(uB), bmSlot(idSelf, pri(uA))),
			want: TargetUseBitmap, rule: "bitmap-peer", other: -1},
		{name: "our bitmap for the peer starts at its generation: bitmap resync to the peer",
			self: mkGen(uB, bmSlot(idPeer, uA), histOf(uA)), peer: mkGen(uA),
			want: SourceUseBitmap, rule: "bitmap-self", other: -1},
		{name: "bitmap-self matches through the primary bit",
			self: mkGen(uB, bmSlot(idPeer, uA)), peer: mkGen(pri(uA)),
			want: SourceUseBitmap, rule: "bitmap-self", other: -1},
		{name: "bitmap slots are looked up by node id, not by position",
			self: mkGen(uA), peer: mkGen(uB, bmSlot(9, uA)), selfID: 9, peerID: 4,
			want: TargetUseBitmap, rule: "bitmap-peer", other: -1},

		// (6) and (8): a bitmap kept for a third node describes the difference.
		{name: "peer's bitmap for a third node starts at our generation: target, peer provides the bitmap",
			self: mkGen(uA), peer: mkGen(uB, bmSlot(idThird, uA)),
			want: TargetClearBitmap, rule: "bitmap-peer-other", other: idThird},
		{name: "our bitmap for a third node starts at the peer's generation: source, copy that bitmap",
			self: mkGen(uB, bmSlot(idThird, uA)), peer: mkGen(uA),
			want: SourceCopyOtherBitmap, rule: "bitmap-self-other", other: idThird},
		{name: "bitmap-peer-other picks the lowest matching node id",
			self: mkGen(uA), peer: mkGen(uB, bmSlot(7, uA), bmSlot(3, pri(uA))),
			want: TargetClearBitmap, rule: "bitmap-peer-other", other: 3},
		{name: "our own slot in the peer's bitmaps is bitmap-peer, never bitmap-peer-other",
			self: mkGen(uA), peer: mkGen(uB, bmSlot(idSelf, uA), bmSlot(idThird, uA)),
			want: TargetUseBitmap, rule: "bitmap-peer", other: -1},
		{name: "the peer's slot for itself is not another node's bitmap",
			self: mkGen(uA), peer: mkGen(uB, bmSlot(idPeer, uA)),
			want: UnrelatedData, rule: "unrelated-data", other: -1},
		{name: "bitmap-peer-other beats history-peer",
			self: mkGen(uA), peer: mkGen(uB, bmSlot(idThird, uA), histOf(uA)),
			want: TargetClearBitmap, rule: "bitmap-peer-other", other: idThird},
		{name: "bitmap-self-other beats history-self",
			self: mkGen(uB, bmSlot(idThird, uA), histOf(uA)), peer: mkGen(uA),
			want: SourceCopyOtherBitmap, rule: "bitmap-self-other", other: idThird},

		// (9) history only: full sync.
		{name: "our generation is in the peer's history only: full sync from the peer",
			self: mkGen(uA), peer: mkGen(uB, histOf(uC, uA)),
			want: TargetSetBitmap, rule: "history-peer", other: -1},
		{name: "the peer's generation is in our history only: full sync to the peer",
			self: mkGen(uB, histOf(uC, pri(uA))), peer: mkGen(uA),
			want: SourceSetBitmap, rule: "history-self", other: -1},
		{name: "bitmap-peer beats history-peer (bitmap resync, not full)",
			self: mkGen(uA), peer: mkGen(uB, bmSlot(idSelf, uA), histOf(uA)),
			want: TargetUseBitmap, rule: "bitmap-peer", other: -1},
		{name: "each current in the other's history is no history rule",
			self: mkGen(uA, histOf(uB)), peer: mkGen(uB, histOf(uA)),
			want: UnrelatedData, rule: "unrelated-data", other: -1},
		{name: "history-peer beats bitmap-both",
			self: mkGen(uA, bmSlot(idPeer, uC)), peer: mkGen(uB, bmSlot(idSelf, uC), histOf(uA)),
			want: TargetSetBitmap, rule: "history-peer", other: -1},

		// (10)-(12) split brain and unrelated data.
		{name: "both bitmaps start at the same generation: split brain a bitmap can recover",
			self: mkGen(uB, bmSlot(idPeer, uA), histOf(uA)), peer: mkGen(uC, bmSlot(idSelf, uA), histOf(uA)),
			want: SplitBrainAutoRecover, rule: "bitmap-both", other: -1},
		{name: "bitmap-both compares masked bitmap generations",
			self: mkGen(uB, bmSlot(idPeer, pri(uA))), peer: mkGen(uC, bmSlot(idSelf, uA)),
			want: SplitBrainAutoRecover, rule: "bitmap-both", other: -1},
		{name: "bitmap-both needs a non-zero bitmap generation",
			self: mkGen(uB, bmSlot(idPeer, UUIDPrimaryBit)), peer: mkGen(uC, bmSlot(idSelf, UUIDPrimaryBit)),
			want: UnrelatedData, rule: "unrelated-data", other: -1},
		{name: "bitmap-both beats history-both",
			self: mkGen(uB, bmSlot(idPeer, uA), histOf(uD)), peer: mkGen(uC, bmSlot(idSelf, uA), histOf(uD)),
			want: SplitBrainAutoRecover, rule: "bitmap-both", other: -1},
		{name: "only a common history generation: split brain without a bitmap",
			self: mkGen(uB, histOf(uA)), peer: mkGen(uC, histOf(uD, pri(uA))),
			want: SplitBrainDisconnect, rule: "history-both", other: -1},
		{name: "empty history slots are not a common ancestor",
			self: mkGen(uB), peer: mkGen(uC),
			want: UnrelatedData, rule: "unrelated-data", other: -1},
		{name: "nothing in common: unrelated data",
			self: mkGen(uA, histOf(uB), bmSlot(idPeer, uB)), peer: mkGen(uC, histOf(uD), bmSlot(idSelf, uD)),
			want: UnrelatedData, rule: "unrelated-data", other: -1},

		// blockrep: cycles that make each side newer than the other are split brain, so
		// that both sides agree.
		{name: "each side's bitmap starts at the other's current: split brain",
			self: mkGen(uA, bmSlot(idPeer, uB)), peer: mkGen(uB, bmSlot(idSelf, uA)),
			want: SplitBrainDisconnect, rule: "bitmap-crossed", other: -1},
		{name: "each side's third-node bitmap starts at the other's current: split brain",
			self: mkGen(uA, bmSlot(idThird, uB)), peer: mkGen(uB, bmSlot(idThird, uA)),
			want: SplitBrainDisconnect, rule: "bitmap-other-crossed", other: -1},
		{name: "bitmap-peer and bitmap-self are checked before the other-node rules",
			self: mkGen(uA, bmSlot(idPeer, uB)), peer: mkGen(uB, bmSlot(idThird, uA)),
			want: SourceUseBitmap, rule: "bitmap-self", other: -1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			selfID, peerID := tc.selfID, tc.peerID
			if selfID == 0 && peerID == 0 {
				selfID, peerID = idSelf, idPeer
			}
			got := CompareGenerations(tc.self, tc.peer, selfID, peerID)
			want := Comparison{Strategy: tc.want, Rule: tc.rule, Other: tc.other}
			if got != want {
				t.Fatalf("CompareGenerations = %+v (%v), want %+v (%v)", got, got, want, want)
			}
			back := CompareGenerations(tc.peer, tc.self, peerID, selfID)
			if wantBack := mirrorComparison(want); back != wantBack {
				t.Fatalf("from the peer's side: %+v, want the mirror %+v", back, wantBack)
			}
		})
	}
}

// TestCompareGenerationsTreatsZeroCurrentAsJustCreated: DRBD maps a zero current UUID to
// UUID_JUST_CREATED before comparing (drbd_uuid_compare: "if (self == 0) self =
// UUID_JUST_CREATED"), so a node without a data generation takes a full sync.
func TestCompareGenerationsTreatsZeroCurrentAsJustCreated(t *testing.T) {
	if got := CompareGenerations(mkGen(0), mkGen(uA), idSelf, idPeer); got.Strategy != TargetSetBitmap || got.Rule != "just-created-self" {
		t.Errorf("zero vs A: %v, want target-set-bitmap by rule=just-created-self", got)
	}
	if got := CompareGenerations(mkGen(0), mkGen(0), idSelf, idPeer); got.Rule != "just-created-both" {
		t.Errorf("zero vs zero: %v, want rule just-created-both", got)
	}
}

func TestComparisonStringIsDRBDsLogLine(t *testing.T) {
	c := CompareGenerations(mkGen(uA), mkGen(uB, bmSlot(idSelf, uA)), idSelf, idPeer)
	if got, want := c.String(), "uuid_compare()=target-use-bitmap by rule=bitmap-peer"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestStrategyMirrorSwapsSourceAndTarget(t *testing.T) {
	pairs := map[Strategy]Strategy{
		NoSync:                NoSync,
		SourceUseBitmap:       TargetUseBitmap,
		SourceSetBitmap:       TargetSetBitmap,
		SourceCopyOtherBitmap: TargetClearBitmap,
		TargetUseBitmap:       SourceUseBitmap,
		TargetSetBitmap:       SourceSetBitmap,
		TargetClearBitmap:     SourceCopyOtherBitmap,
		SplitBrainAutoRecover: SplitBrainAutoRecover,
		SplitBrainDisconnect:  SplitBrainDisconnect,
		UnrelatedData:         UnrelatedData,
	}
	for s, want := range pairs {
		if got := s.Mirror(); got != want {
			t.Errorf("%v.Mirror() = %v, want %v", s, got, want)
		}
		if s.Mirror().Mirror() != s {
			t.Errorf("%v: Mirror is not an involution", s)
		}
		if s.IsSource() && s.IsTarget() {
			t.Errorf("%v is both source and target", s)
		}
		if s.IsSource() != s.Mirror().IsTarget() {
			t.Errorf("%v: IsSource=%v but mirror IsTarget=%v", s, s.IsSource(), s.Mirror().IsTarget())
		}
	}
	names := map[Strategy]string{NoSync: "no-sync", SourceCopyOtherBitmap: "source-copy-other-bitmap",
		TargetClearBitmap: "target-clear-bitmap", SplitBrainDisconnect: "split-brain-disconnect",
		UnrelatedData: "unrelated-data", Strategy(200): "?200"}
	for s, want := range names {
		if s.String() != want {
			t.Errorf("Strategy(%d).String() = %q, want %q", s, s.String(), want)
		}
	}
}

func TestPushHistoryKeepsMostRecentFirstAndDropsOldest(t *testing.T) {
	var h [HistoryLen]uint64
	pushHistory(&h, uA)
	pushHistory(&h, uB)
	if h[0] != uB || h[1] != uA || h[2] != 0 {
		t.Fatalf("after pushing A then B: %x", h)
	}
	pushHistory(&h, 0)
	pushHistory(&h, UUIDJustCreated)
	if h[0] != uB || h[1] != uA || h[2] != 0 {
		t.Fatalf("0 and UUIDJustCreated must not enter the history: %x", h)
	}
	for i := range HistoryLen {
		pushHistory(&h, uint64(0x1000+2*i))
	}
	for i := range HistoryLen {
		if want := uint64(0x1000 + 2*(HistoryLen-1-i)); h[i] != want {
			t.Fatalf("full history: slot %d = %x, want %x (all: %x)", i, h[i], want, h)
		}
	}
}

// mirrorRule is the name the peer gives to the rule we applied: "self" and "peer"
// swap places (bitmap-self ↔ bitmap-peer, history-self ↔ history-peer, ...).
func mirrorRule(rule string) string {
	r := strings.ReplaceAll(rule, "self", "\x00")
	r = strings.ReplaceAll(r, "peer", "self")
	return strings.ReplaceAll(r, "\x00", "peer")
}

// mirrorComparison is c as the peer sees it.
func mirrorComparison(c Comparison) Comparison {
	return Comparison{Strategy: c.Strategy.Mirror(), Rule: mirrorRule(c.Rule), Other: c.Other}
}

// propSeed returns the seed of a randomized test: GENPROP_SEED if set, else the clock.
func propSeed(t *testing.T) uint64 {
	if s := os.Getenv("GENPROP_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("GENPROP_SEED: %v", err)
		}
		return v
	}
	return uint64(time.Now().UnixNano())
}

// randGen draws a generation set from a small alphabet so that rules collide often.
func randGen(r *rand.Rand) Generations {
	alphabet := []uint64{uA, uB, uC, uD}
	pick := func() uint64 {
		u := alphabet[r.IntN(len(alphabet))]
		if r.IntN(3) == 0 {
			u = pri(u)
		}
		return u
	}
	var g Generations
	switch r.IntN(8) {
	case 0:
		g.Current = UUIDJustCreated
	case 1:
		g.Current = pri(UUIDJustCreated)
	default:
		g.Current = pick()
	}
	for n := 0; n < 4; n++ {
		switch r.IntN(3) {
		case 0:
			g.Bitmap[n] = pick()
		case 1:
			if r.IntN(4) == 0 {
				g.Bitmap[n] = UUIDPrimaryBit
			}
		}
	}
	for i, n := 0, r.IntN(4); i < n; i++ {
		g.History[i] = pick()
	}
	g.Flags = GenFlags(r.IntN(8))
	return g
}

// randIDs returns two distinct node ids out of 0..3.
func randIDs(r *rand.Rand) (int, int) {
	a := r.IntN(4)
	b := (a + 1 + r.IntN(3)) % 4
	return a, b
}

// TestCompareGenerationsIsSymmetric: whatever the inputs, the peer's comparison is the
// mirror of ours (same rule, same Other), so both sides always agree on the direction.
func TestCompareGenerationsIsSymmetric(t *testing.T) {
	seed := propSeed(t)
	r := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	rules := map[string]int{}
	for i := 0; i < 200000; i++ {
		a, b := randGen(r), randGen(r)
		ia, ib := randIDs(r)
		ab := CompareGenerations(a, b, ia, ib)
		ba := CompareGenerations(b, a, ib, ia)
		rules[ab.Rule]++
		if want := mirrorComparison(ab); ba != want {
			t.Fatalf("seed %d (GENPROP_SEED=%d), iteration %d:\n a (id %d) = %+v\n b (id %d) = %+v\n compare(a,b) = %+v\n compare(b,a) = %+v, want %+v",
				seed, seed, i, ia, a, ib, b, ab, ba, want)
		}
		usesOther := ab.Strategy == SourceCopyOtherBitmap || ab.Strategy == TargetClearBitmap
		if usesOther != (ab.Other >= 0) || ab.Other == ia || ab.Other == ib {
			t.Fatalf("seed %d: %+v names Other=%d (ids %d, %d)", seed, ab, ab.Other, ia, ib)
		}
	}
	// The generator must reach every rule, or the property says little.
	for _, rule := range []string{"just-created-both", "just-created-self", "just-created-peer", "both-off",
		"crashed-primary", "both-crashed", "crashed-secondary", "both-unclean", "bitmap-peer", "bitmap-self",
		"bitmap-peer-other", "bitmap-self-other", "history-peer", "history-self", "bitmap-both",
		"history-both", "unrelated-data", "bitmap-crossed"} {
		if rules[rule] == 0 {
			t.Errorf("seed %d: the generator never reached rule %s (reached: %v)", seed, rule, rules)
		}
	}
	if t.Failed() || testing.Verbose() {
		t.Log(fmt.Sprintf("seed %d; rules reached: %v", seed, rules))
	}
}
