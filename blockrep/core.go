package blockrep

import (
	"fmt"
	"log/slog"
	"slices"

	"github.com/blockrep/blockrep/transport"
)

// Core is the control plane of one volume as plain data: roles, disk, connection and
// replication states, the generation metadata and the per-peer bookkeeping that decides
// how the volume reacts to an event. Step applies one event and returns what the shell
// must do about it (persist metadata, send messages, start a resync, run a handler, …)
// as effects, in order. Core does no I/O, reads no clock and starts no goroutine: the
// same events give the same states and effects (core_test.go replays transcripts).
//
// The shell (Volume and Peer) owns the data path — writes, bitmaps' bits, links — and
// serializes Step and the execution of its effects, so effects run in the order the
// core produced them and before the next event's. Effects are ordered as etcd raft's
// Ready is: metadata a message depends on is persisted before it is sent.
type Core struct {
	NodeID    int
	Name      string
	ALUpdates bool
	State     State
	Meta      MetaState
	Peers     []CorePeer
	// Promoting is set from EvPromote until the promotion commits or is abandoned:
	// the peer whose promotion request collides with ours learns of it.
	Promoting    bool
	PromoteForce bool
	// DiskFailed: the local disk was detached after an I/O error (on-io-error detach).
	DiskFailed bool
	// Quorum is the resource's quorum policy; State.NoQuorum follows it after every step.
	Quorum QuorumPolicy
	// NewUUID draws generation identifiers (random in production, a counter in tests).
	NewUUID func() uint64

	fx []Effect
}

// CorePeer is the core's bookkeeping of one configured peer.
type CorePeer struct {
	NodeID   int
	Name     string
	Protocol Protocol
	Fencing  FencingPolicy
	// Tiebreaker: the peer is diskless by configuration (disk none): it votes for
	// quorum and arbitrates promotions, and holds no data.
	Tiebreaker bool
	// Want: the operator wants the connection (connect); false after disconnect or a
	// refusal that must not be retried automatically.
	Want          bool
	DiscardMyData bool
	// Deferred: the live session's resync was deferred (a Primary was connected, or both
	// disks were Inconsistent); BothInconsistent tells the second cause. The connection
	// is re-decided once the cause goes away.
	Deferred, BothInconsistent bool
	// Session counts live sessions; events of an older session (a resync loop that
	// outlived its link) carry a smaller number and are ignored.
	Session uint64
	// Closing is why the core itself asked for this link to close: the loss that follows
	// is deliberate and never fenced.
	Closing string
	// TargetWasUpToDate: the live session's resync runs from us to a peer whose disk
	// was UpToDate at the handshake.
	TargetWasUpToDate bool
	// Fence: the live link was lost while this peer held our data; FenceFreeze: writes
	// were frozen for it. Set at EvLinkDown, acted on at EvSessionEnded.
	Fence, FenceFreeze bool
}

// MetaState is what the control plane keeps in the superblock: generations and flags.
type MetaState struct {
	Current uint64
	History [HistoryLen]uint64
	Flags   MDFlags
	Slots   []SlotState // one per configured peer, in Core.Peers order
}

// SlotState is one peer slot's generation and flags.
type SlotState struct {
	BitmapUUID uint64
	Flags      PeerFlags
}

func (m MetaState) clone() MetaState {
	m.Slots = slices.Clone(m.Slots)
	return m
}

// CorePeerConfig configures one peer of NewCore.
type CorePeerConfig struct {
	NodeID     int
	Name       string
	Protocol   Protocol
	Fencing    FencingPolicy
	Tiebreaker bool
}

// NewCore is the core of a freshly attached volume: Secondary, every peer StandAlone,
// the disk state and generations from the superblock.
func NewCore(nodeID int, name string, alUpdates bool, quorum QuorumPolicy, peers []CorePeerConfig, sb Superblock, newUUID func() uint64) *Core {
	c := &Core{NodeID: nodeID, Name: name, ALUpdates: alUpdates, NewUUID: newUUID, Quorum: quorum,
		State: State{Role: Secondary, Disk: DiskStateFromFlags(sb.Flags)},
		Meta:  MetaState{Current: sb.Current, History: sb.History, Flags: sb.Flags}}
	for _, pc := range peers {
		c.Peers = append(c.Peers, CorePeer{NodeID: pc.NodeID, Name: pc.Name, Protocol: pc.Protocol, Fencing: pc.Fencing, Tiebreaker: pc.Tiebreaker})
		c.State.Peers = append(c.State.Peers, PeerState{NodeID: pc.NodeID, Name: pc.Name, Conn: StandAlone, Disk: DUnknown})
		var slot SlotState
		if i := sb.Slot(pc.NodeID); i >= 0 {
			slot = SlotState{BitmapUUID: sb.Peers[i].BitmapUUID, Flags: sb.Peers[i].Flags}
		}
		c.Meta.Slots = append(c.Meta.Slots, slot)
	}
	c.State.NoQuorum = !c.hasQuorum()
	return c
}

// Step applies one event. It returns the effects to carry out, in order, and an error
// when an operator request is refused (nothing changed) or a peer's message is not
// acceptable now (the shell closes that link).
func (c *Core) Step(ev Event) ([]Effect, error) {
	c.fx = nil
	err := ev.apply(c)
	c.followQuorum()
	fx := c.fx
	c.fx = nil
	return fx, err
}

// Clone returns a deep copy (for tests that compare or replay).
func (c *Core) Clone() *Core {
	d := *c
	d.State = c.State.Clone()
	d.Meta = c.Meta.clone()
	d.Peers = slices.Clone(c.Peers)
	d.fx = nil
	return &d
}

// peer returns a peer's index by node id, or -1.
func (c *Core) peer(nodeID int) int {
	for i := range c.Peers {
		if c.Peers[i].NodeID == nodeID {
			return i
		}
	}
	return -1
}

// known returns a peer's index, or an error naming what came from an unknown node.
func (c *Core) known(nodeID int, what string) (int, error) {
	if i := c.peer(nodeID); i >= 0 {
		return i, nil
	}
	return -1, fmt.Errorf("%s unknown node-id %d", what, nodeID)
}

func (c *Core) ps(i int) *PeerState { return c.State.Peer(c.Peers[i].NodeID) }

func (c *Core) emit(e Effect) { c.fx = append(c.fx, e) }

func (c *Core) log(level slog.Level, msg string, args ...any) {
	c.emit(Log{Level: level, Msg: msg, Args: args})
}

func (c *Core) persist() { c.emit(Persist{Meta: c.Meta.clone()}) }

func (c *Core) send(i int, t transport.MsgType, body Body) {
	c.emit(Send{Peer: c.Peers[i].NodeID, Type: t, Body: body})
}

// change commits fn's edit of the state if Validate accepts it (DRBD's pattern: copy,
// edit, sanitize, validate, commit). Every peer hears of our role and disk changes, not
// only the one involved: a third node must not go on believing a resynced peer is
// Inconsistent.
func (c *Core) change(fn func(s *State)) error {
	old := c.State
	next := old.Clone()
	fn(&next)
	next.Sanitize()
	if err := Validate(old, next); err != nil {
		return err
	}
	c.State = next
	if d := Diff(old, next); len(d) > 0 {
		c.log(slog.LevelInfo, "state change", "change", d)
	}
	if old.Role != next.Role || old.Disk != next.Disk {
		for i := range c.Peers {
			c.send(i, transport.MsgState, &transport.State{Role: uint8(next.Role), Disk: uint8(next.Disk)})
		}
	}
	return nil
}

// mustChange is change for edits the core derived itself: a refusal there is a bug in
// the core, logged (and visible in transcripts) rather than silently dropped.
func (c *Core) mustChange(fn func(s *State)) {
	if err := c.change(fn); err != nil {
		c.log(slog.LevelError, "internal: state change refused", "err", err)
	}
}

// inSync reports whether peer i receives our writes and has all our data.
func (c *Core) inSync(i int) bool {
	ps := c.ps(i)
	return ps.Conn == Connected && ps.Repl == Established && ps.Disk == UpToDate
}

// otherInSync reports whether a peer other than i is connected with our data.
func (c *Core) otherInSync(i int) bool {
	for j := range c.Peers {
		if j != i && c.inSync(j) {
			return true
		}
	}
	return false
}

// anyBehind reports whether some peer would not receive our writes.
func (c *Core) anyBehind() bool {
	for i := range c.Peers {
		if !c.inSync(i) && !c.Peers[i].Tiebreaker {
			return true
		}
	}
	return false
}

// newGeneration starts a new current generation: the old one becomes the bitmap
// generation of every peer that does not have our data (unless its bitmap already
// started earlier) and goes to the history; in-sync connected peers adopt the new one
// (NewUUID travels on the data stream, before any write that follows it).
func (c *Core) newGeneration(forced, diskless bool) {
	old := c.Meta.Current
	next := c.NewUUID()
	if c.State.Role == Primary || c.Promoting {
		next |= UUIDPrimaryBit
	}
	c.Meta.Current = next
	pushHistory(&c.Meta.History, old)
	var adopters []int
	for i := range c.Peers {
		if !forced && c.inSync(i) {
			adopters = append(adopters, i)
			continue
		}
		// A tiebreaker records the generation, so that it grants promotion only to data
		// this new; it has no bitmap.
		if c.Peers[i].Tiebreaker {
			if c.ps(i).Conn == Connected {
				adopters = append(adopters, i)
			}
			continue
		}
		if s := &c.Meta.Slots[i]; s.BitmapUUID == 0 && mask(old) != UUIDJustCreated {
			s.BitmapUUID = old
		}
	}
	c.persist()
	c.log(slog.LevelInfo, "new current generation", "old", uuidStr(old), "new", uuidStr(next))
	var flags uint32
	if diskless {
		flags = transport.GenSenderDiskless
	}
	for _, i := range adopters {
		c.send(i, transport.MsgNewUUID, &transport.Generation{Current: next, Prev: old, Flags: flags})
	}
}

// rehandshake closes the live links of the peers which selects, so that they reconnect
// and decide again with the current state.
func (c *Core) rehandshake(which func(i int) bool, why string) {
	for i := range c.Peers {
		// A tiebreaker holds no data: there is nothing to re-decide with it.
		if which(i) && c.ps(i).Conn == Connected && !c.Peers[i].Tiebreaker {
			c.Peers[i].Deferred, c.Peers[i].BothInconsistent = false, false
			c.closeLink(i, why)
		}
	}
}

// closeLink asks the shell to close peer i's link; the loss that follows is deliberate.
func (c *Core) closeLink(i int, why string) {
	c.Peers[i].Closing = why
	c.emit(CloseLink{Peer: c.Peers[i].NodeID, Reason: why})
}

// markInconsistent persists Inconsistent before any resync data may arrive; with all,
// every block is marked out of sync towards every peer first.
func (c *Core) markInconsistent(all bool) {
	if all {
		for i := range c.Peers {
			c.emit(Bits{Op: BitsSetAll, Peer: c.Peers[i].NodeID})
		}
		c.emit(WriteBitmaps{})
	}
	c.Meta.Flags &^= MDConsistent | MDWasUpToDate
	c.persist()
	c.mustChange(func(s *State) { s.Disk = Inconsistent })
}

// markUpToDate persists UpToDate.
func (c *Core) markUpToDate() {
	if c.State.Disk == UpToDate {
		return
	}
	c.Meta.Flags |= MDConsistent | MDWasUpToDate
	c.Meta.Flags &^= MDOutdated
	c.persist()
	c.mustChange(func(s *State) { s.Disk = UpToDate })
}

// markOutdated persists Outdated (a Secondary that left its Primary gracefully).
func (c *Core) markOutdated() {
	if c.State.Disk != UpToDate && c.State.Disk != Consistent {
		return
	}
	c.Meta.Flags |= MDOutdated
	c.persist()
	c.mustChange(func(s *State) { s.Disk = Outdated })
}

// syncSourceOtherThan returns the index of the peer we are SyncTarget of, other than i,
// or -1.
func (c *Core) syncSourceOtherThan(i int) int {
	for j := range c.Peers {
		if j != i && c.ps(j).Repl.IsSyncTarget() {
			return j
		}
	}
	return -1
}

// syncTargetOtherThan returns the index of a peer we are SyncSource of, other than i,
// or -1.
func (c *Core) syncTargetOtherThan(i int) int {
	for j := range c.Peers {
		if j != i && c.ps(j).Repl.IsSyncSource() {
			return j
		}
	}
	return -1
}

// primaryConnectedOtherThan reports whether a peer other than i is a connected Primary.
func (c *Core) primaryConnectedOtherThan(i int) bool {
	for j := range c.Peers {
		if ps := c.ps(j); j != i && ps.Conn == Connected && ps.Role == Primary {
			return true
		}
	}
	return false
}

// HandshakeSide is what this node tells peer nodeID about itself; dirty is the number
// of blocks set in that peer's bitmap.
func (c *Core) HandshakeSide(nodeID int, dirty uint64) HandshakeSide {
	i := c.peer(nodeID)
	g := Generations{Current: c.Meta.Current, History: c.Meta.History}
	for j := range c.Peers {
		g.Bitmap[c.Peers[j].NodeID] = c.Meta.Slots[j].BitmapUUID
	}
	if f := c.Meta.Slots[i].Flags; f&PeerResyncPending != 0 {
		if f&PeerCrashedPrimary != 0 {
			g.Flags |= GenCrashedPrimary
		} else {
			g.Flags |= GenUnclean
		}
	}
	if c.Peers[i].DiscardMyData {
		g.Flags |= GenDiscardMyData
	}
	return HandshakeSide{NodeID: c.NodeID, Name: c.Name, Gen: g, Role: c.State.Role, Disk: c.State.Disk,
		Dirty: dirty, PrimaryConnected: c.primaryConnectedOtherThan(i)}
}

// SyncTargetOf returns the node id of the peer this node is SyncTarget of, other than
// nodeID, or -1: a node resyncs from one source at a time.
func (c *Core) SyncTargetOf(nodeID int) int {
	if j := c.syncSourceOtherThan(c.peer(nodeID)); j >= 0 {
		return c.Peers[j].NodeID
	}
	return -1
}

// Readable reports whether peer nodeID can serve reads for a diskless Primary.
func (c *Core) Readable(nodeID int) bool {
	i := c.peer(nodeID)
	if i < 0 {
		return false
	}
	ps := c.ps(i)
	return ps.Conn == Connected && ps.Repl == Established && ps.Disk == UpToDate
}

// hasQuorum counts the resource's nodes this node sees, itself included, against the
// policy (DRBD's calc_quorum): a majority (or all, or N) of the voters must be present.
// When every absent peer is known Outdated (it left gracefully, or was fenced), only the
// present nodes vote: a node whose peers all stepped down keeps quorum.
func (c *Core) hasQuorum() bool {
	if c.Quorum.Need == QuorumOff {
		return true
	}
	present, voters, unknownAbsent := 1, 1, false
	for i := range c.Peers {
		voters++
		if c.ps(i).Conn == Connected {
			present++
		} else if c.Meta.Slots[i].Flags&PeerOutdated == 0 && !c.Peers[i].Tiebreaker {
			// An absent tiebreaker holds no data that could move on without us.
			unknownAbsent = true
		}
	}
	if !unknownAbsent {
		voters = present
	}
	need := c.Quorum.Need
	switch need {
	case QuorumMajority:
		need = voters/2 + 1
	case QuorumAll:
		need = voters
	}
	return present >= need
}

// followQuorum commits a change of quorum after every step. A Primary that loses it
// stops taking writes the majority may never see: it fails them (io-error) or freezes
// them (suspend-io) until quorum returns.
func (c *Core) followQuorum() {
	lost := !c.hasQuorum()
	if lost == c.State.NoQuorum {
		return
	}
	c.mustChange(func(s *State) { s.NoQuorum = lost })
	if lost {
		c.log(slog.LevelWarn, "quorum lost")
	} else {
		c.log(slog.LevelInfo, "quorum regained")
	}
	if c.Quorum.IOError {
		c.emit(QuorumIO{Fail: lost && c.State.Role == Primary})
		return
	}
	switch {
	case lost && c.State.Role == Primary && c.State.Suspended == "":
		c.mustChange(func(s *State) { s.Suspended = suspendQuorum })
		c.emit(Freeze{Reason: suspendQuorum})
	case !lost && c.State.Suspended == suspendQuorum:
		c.thaw()
	}
}

const suspendQuorum = "quorum"
