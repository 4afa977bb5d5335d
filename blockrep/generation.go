package blockrep

import "fmt"

// Generation identifiers (DRBD's data-generation UUIDs). A node's data is named by its
// Current generation; a new one starts whenever a Primary writes without some peer. For
// every peer, Bitmap[peer] is the generation at which this node began recording, in that
// peer's bitmap, the blocks the peer is missing (0 = the bitmap is empty). History holds
// older generations, most recent first. Comparing two nodes' generations tells which of
// them has newer data and whether a bitmap suffices to bring the other up to date.

const (
	// UUIDJustCreated is the current generation of freshly created metadata.
	UUIDJustCreated uint64 = 4
	// UUIDPrimaryBit marks a generation created while Primary; masked in comparisons.
	UUIDPrimaryBit uint64 = 1
	// HistoryLen is the number of history generations kept.
	HistoryLen = 8
)

// GenFlags are handshake flags that travel with the generations.
type GenFlags uint32

const (
	// GenCrashedPrimary: the node was Primary when it last went down uncleanly.
	GenCrashedPrimary GenFlags = 1 << iota
	// GenDiscardMyData: the operator asked this node to be the split-brain victim.
	GenDiscardMyData
	// GenUnclean: the node went down uncleanly while Secondary; blocks it was writing
	// may differ from the peer (blockrep extension of DRBD's rule 4).
	GenUnclean
)

// Generations is one node's generation set as exchanged in a handshake.
type Generations struct {
	Current uint64
	Bitmap  [MaxNodes]uint64
	History [HistoryLen]uint64
	Flags   GenFlags
}

func mask(u uint64) uint64 { return u &^ UUIDPrimaryBit }

// Strategy is the outcome of comparing two nodes' generations.
type Strategy uint8

const (
	NoSync                Strategy = iota
	SourceUseBitmap                // we have newer data; our bitmap for the peer (OR theirs) says what moves
	SourceSetBitmap                // we have newer data; everything moves
	SourceCopyOtherBitmap          // we have newer data; our bitmap for another node describes the peer
	TargetUseBitmap
	TargetSetBitmap
	TargetClearBitmap     // the peer's bitmap for another node describes us; start from it
	SplitBrainAutoRecover // both wrote since a common generation; bitmaps cover the divergence
	SplitBrainDisconnect  // both wrote, only history in common
	UnrelatedData
)

var strategyNames = [...]string{"no-sync", "source-use-bitmap", "source-set-bitmap",
	"source-copy-other-bitmap", "target-use-bitmap", "target-set-bitmap", "target-clear-bitmap",
	"split-brain-auto-recover", "split-brain-disconnect", "unrelated-data"}

func (s Strategy) String() string { return enumName(strategyNames[:], int(s)) }

// IsSource reports whether this node would send data.
func (s Strategy) IsSource() bool {
	return s == SourceUseBitmap || s == SourceSetBitmap || s == SourceCopyOtherBitmap
}

// IsTarget reports whether this node would receive data.
func (s Strategy) IsTarget() bool {
	return s == TargetUseBitmap || s == TargetSetBitmap || s == TargetClearBitmap
}

// Mirror returns the strategy as the peer sees it.
func (s Strategy) Mirror() Strategy {
	switch s {
	case SourceUseBitmap:
		return TargetUseBitmap
	case SourceSetBitmap:
		return TargetSetBitmap
	case SourceCopyOtherBitmap:
		return TargetClearBitmap
	case TargetUseBitmap:
		return SourceUseBitmap
	case TargetSetBitmap:
		return SourceSetBitmap
	case TargetClearBitmap:
		return SourceCopyOtherBitmap
	}
	return s
}

// Comparison is the result of CompareGenerations: the strategy, DRBD's name for the rule
// that decided it (logged as "uuid_compare()=<strategy> by rule=<rule>"), and for the
// copy-other/clear-bitmap strategies the node whose bitmap slot is used.
type Comparison struct {
	Strategy Strategy
	Rule     string
	// Other is the node id whose bitmap slot describes the difference (rules 6 and 8).
	Other int
}

func (c Comparison) String() string {
	return fmt.Sprintf("uuid_compare()=%s by rule=%s", c.Strategy, c.Rule)
}

// CompareGenerations is DRBD's uuid_compare for two nodes, seen from self. It is pure
// and symmetric: CompareGenerations(b, a, ...) is the mirror of CompareGenerations(a, b, ...).
// Ties between two crashed primaries go to the lower node id.
func CompareGenerations(self, peer Generations, selfID, peerID int) Comparison {
	sc, pc := mask(self.Current), mask(peer.Current)
	// No generation at all is as good as a fresh one.
	if sc == 0 {
		sc = UUIDJustCreated
	}
	if pc == 0 {
		pc = UUIDJustCreated
	}
	res := func(s Strategy, rule string) Comparison { return Comparison{Strategy: s, Rule: rule, Other: -1} }

	// (1)-(3) Fresh metadata: the other side's data wins, whatever it is.
	switch {
	case sc == UUIDJustCreated && pc == UUIDJustCreated:
		return res(NoSync, "just-created-both")
	case sc == UUIDJustCreated:
		return res(TargetSetBitmap, "just-created-self")
	case pc == UUIDJustCreated:
		return res(SourceSetBitmap, "just-created-peer")
	}

	// (4) Same data generation.
	if sc == pc {
		sCrash := self.Flags&GenCrashedPrimary != 0
		pCrash := peer.Flags&GenCrashedPrimary != 0
		switch {
		case sCrash && !pCrash:
			return res(SourceUseBitmap, "crashed-primary")
		case pCrash && !sCrash:
			return res(TargetUseBitmap, "crashed-primary")
		case sCrash && pCrash:
			if selfID < peerID {
				return res(SourceUseBitmap, "both-crashed")
			}
			return res(TargetUseBitmap, "both-crashed")
		}
		sUnclean := self.Flags&GenUnclean != 0
		pUnclean := peer.Flags&GenUnclean != 0
		switch {
		case sUnclean && !pUnclean:
			return res(TargetUseBitmap, "crashed-secondary")
		case pUnclean && !sUnclean:
			return res(SourceUseBitmap, "crashed-secondary")
		case sUnclean && pUnclean:
			if selfID < peerID {
				return res(SourceUseBitmap, "both-unclean")
			}
			return res(TargetUseBitmap, "both-unclean")
		}
		return res(NoSync, "both-off")
	}

	// (5) The peer recorded our divergence point in its bitmap for us; (7) we recorded
	// the peer's in ours. Both at once would make each side older than the other.
	peerHasUs := mask(peer.Bitmap[selfID]) != 0 && sc == mask(peer.Bitmap[selfID])
	weHavePeer := mask(self.Bitmap[peerID]) != 0 && pc == mask(self.Bitmap[peerID])
	switch {
	case peerHasUs && weHavePeer:
		return res(SplitBrainDisconnect, "bitmap-crossed")
	case peerHasUs:
		return res(TargetUseBitmap, "bitmap-peer")
	case weHavePeer:
		return res(SourceUseBitmap, "bitmap-self")
	}
	// (6) We match the peer's bitmap for another node: that bitmap describes us too.
	// (8) The peer matches our bitmap for another node.
	other6, other8 := otherSlot(peer.Bitmap[:], sc, selfID, peerID), otherSlot(self.Bitmap[:], pc, selfID, peerID)
	switch {
	case other6 >= 0 && other8 >= 0:
		return res(SplitBrainDisconnect, "bitmap-other-crossed")
	case other6 >= 0:
		return Comparison{Strategy: TargetClearBitmap, Rule: "bitmap-peer-other", Other: other6}
	case other8 >= 0:
		return Comparison{Strategy: SourceCopyOtherBitmap, Rule: "bitmap-self-other", Other: other8}
	}

	// (9) One side's current generation is in the other's history: the other is newer,
	// but no bitmap covers the gap.
	inPeerHistory := inHistory(sc, peer.History[:])
	inSelfHistory := inHistory(pc, self.History[:])
	if inPeerHistory && !inSelfHistory {
		return res(TargetSetBitmap, "history-peer")
	}
	if inSelfHistory && !inPeerHistory {
		return res(SourceSetBitmap, "history-self")
	}

	// (10) Both started a bitmap at the same generation: both wrote since then.
	if sb, pb := mask(self.Bitmap[peerID]), mask(peer.Bitmap[selfID]); sb != 0 && sb == pb {
		return res(SplitBrainAutoRecover, "bitmap-both")
	}

	// (11) Some common ancestor: split brain that no bitmap describes.
	for _, h := range self.History {
		if h = mask(h); h != 0 && inHistory(h, peer.History[:]) {
			return res(SplitBrainDisconnect, "history-both")
		}
	}
	return res(UnrelatedData, "unrelated-data")
}

// otherSlot returns the lowest node id other than a and b whose bitmap generation is u, or -1.
func otherSlot(bitmaps []uint64, u uint64, a, b int) int {
	for n, bu := range bitmaps {
		if n != a && n != b && mask(bu) != 0 && mask(bu) == u {
			return n
		}
	}
	return -1
}

func inHistory(u uint64, hist []uint64) bool {
	if u == 0 {
		return false
	}
	for _, h := range hist {
		if mask(h) == u {
			return true
		}
	}
	return false
}

// pushHistory puts u at the front of h, dropping the oldest entry.
func pushHistory(h *[HistoryLen]uint64, u uint64) {
	if u == 0 || u == UUIDJustCreated {
		return
	}
	copy(h[1:], h[:HistoryLen-1])
	h[0] = u
}
