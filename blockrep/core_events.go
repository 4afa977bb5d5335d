package blockrep

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/blockrep/blockrep/transport"
)

// Event is something that happened to a volume: an operator request, a message from a
// peer, a link that came up or went down, a handler that finished. Core.Step applies it.
type Event interface {
	apply(c *Core) error
}

// errNoop is Step's answer to a request that has nothing to do (demoting a Secondary).
var errNoop = errors.New("nothing to do")

// ---- operator requests ----

// EvConnect: the operator wants the connection to Peer (-1: every peer).
type EvConnect struct {
	Peer          int
	DiscardMyData bool
}

func (e EvConnect) apply(c *Core) error {
	if e.DiscardMyData && c.State.Role == Primary {
		return refuse(nil, "--discard-my-data on a Primary: demote it first")
	}
	for i := range c.Peers {
		p := &c.Peers[i]
		if e.Peer >= 0 && p.NodeID != e.Peer {
			continue
		}
		p.Want, p.DiscardMyData = true, e.DiscardMyData
		if c.ps(i).Conn == StandAlone {
			c.mustChange(func(s *State) {
				sp := s.Peer(p.NodeID)
				sp.Conn, sp.SplitBrain, sp.Reason = Connecting, false, ""
			})
		}
		c.emit(Wake{Peer: p.NodeID})
	}
	return nil
}

// EvAddPeer: a node joins the resource's configuration while it is up (adjust).
// Nothing is known of its data: no bitmap generation, so the handshake decides (a new
// node's just-created data is synced in full). Want: connect to it at once.
type EvAddPeer struct {
	Config CorePeerConfig
	Want   bool
}

func (e EvAddPeer) apply(c *Core) error {
	pc := e.Config
	if pc.NodeID == c.NodeID || c.peer(pc.NodeID) >= 0 {
		return fmt.Errorf("node-id %d is already a node of the resource", pc.NodeID)
	}
	c.Peers = append(c.Peers, CorePeer{NodeID: pc.NodeID, Name: pc.Name, Protocol: pc.Protocol, Fencing: pc.Fencing,
		Tiebreaker: pc.Tiebreaker, Want: e.Want})
	c.Meta.Slots = append(c.Meta.Slots, SlotState{})
	conn := StandAlone
	if e.Want {
		conn = Connecting
	}
	c.mustChange(func(s *State) {
		s.Peers = append(s.Peers, PeerState{NodeID: pc.NodeID, Name: pc.Name, Conn: conn, Disk: DUnknown})
	})
	c.persist()
	if e.Want {
		c.emit(Wake{Peer: pc.NodeID})
	}
	return nil
}

// EvDisconnect: the operator closes the connection to Peer (-1: every peer) on purpose.
// What that means for data is recorded first: a Secondary that leaves its Primary is
// Outdated, and a Primary knows the Secondary it leaves is.
type EvDisconnect struct{ Peer int }

const reasonOperator = "disconnected by operator"

func (e EvDisconnect) apply(c *Core) error {
	for i := range c.Peers {
		p := &c.Peers[i]
		if e.Peer >= 0 && p.NodeID != e.Peer {
			continue
		}
		p.Want = false
		if c.ps(i).Conn != Connected {
			c.mustChange(func(s *State) { s.Peer(p.NodeID).Conn = StandAlone })
		} else {
			c.leaving(i)
			c.send(i, transport.MsgDisconnect, &transport.Disconnect{Reason: reasonOperator})
			c.closeLink(i, reasonOperator)
		}
		c.emit(Wake{Peer: p.NodeID})
	}
	return nil
}

// leaving records what a deliberate disconnect from the connected peer i means for data.
func (c *Core) leaving(i int) {
	ps := c.ps(i)
	if ps.Conn != Connected {
		return
	}
	if c.State.Role == Secondary && ps.Role == Primary {
		c.markOutdated()
	}
	if c.State.Role == Primary && ps.Role == Secondary {
		c.Meta.Slots[i].Flags |= PeerOutdated
		c.persist()
	}
}

// EvPromote begins a promotion (drbdadm primary [--force]). The shell then fences
// unreachable peers where the policy asks for it (NeedsFence, EvHandlerDone), asks the
// connected ones (PromotePeers), and commits with EvPromoteCommit under the I/O gate, or
// gives up with EvPromoteAbort.
type EvPromote struct{ Force bool }

func (e EvPromote) apply(c *Core) error {
	if err := CanPromote(c.State, e.Force); err != nil {
		return err
	}
	if c.State.Role == Primary {
		return errNoop
	}
	if c.Promoting {
		return refuse(nil, "a promotion is already in progress")
	}
	c.Promoting, c.PromoteForce = true, e.Force
	return nil
}

// NeedsFence lists the peers that must be fenced before this node may promote: with
// fencing, a peer we cannot reach must be known Outdated first. --force takes the
// operator's word for it, as in DRBD.
func (c *Core) NeedsFence() []int {
	if c.PromoteForce {
		return nil
	}
	var ids []int
	for i, p := range c.Peers {
		if p.Fencing != FencingDontCare && c.ps(i).Conn != Connected && c.Meta.Slots[i].Flags&PeerOutdated == 0 {
			ids = append(ids, p.NodeID)
		}
	}
	return ids
}

// PromotePeers lists the connected peers that must agree to a promotion (phase one of
// the cluster-wide change); a connected Primary refuses it outright.
func (c *Core) PromotePeers() ([]int, error) {
	var ids []int
	for i, p := range c.Peers {
		ps := c.ps(i)
		if ps.Conn != Connected {
			continue
		}
		if ps.Role == Primary {
			return nil, refuse(ErrPeerIsPrimary, "peer %s is Primary (only one Primary per resource)", p.Name)
		}
		ids = append(ids, p.NodeID)
	}
	return ids, nil
}

// EvPromoteAbort: the promotion could not get its peers' consent (Err says why).
type EvPromoteAbort struct{ Err error }

func (e EvPromoteAbort) apply(c *Core) error {
	c.Promoting, c.PromoteForce = false, false
	return e.Err
}

// EvPromoteCommit makes this node Primary. The shell holds the I/O gate: no write is
// in flight while the generation changes.
type EvPromoteCommit struct{}

func (EvPromoteCommit) apply(c *Core) error {
	force := c.PromoteForce
	defer func() { c.Promoting, c.PromoteForce = false, false }()
	if err := CanPromote(c.State, force); err != nil {
		return err
	}
	forced := force && c.State.Disk != UpToDate
	if forced {
		// A SyncTarget forced UpToDate abandons its resync source.
		for i := range c.Peers {
			if c.ps(i).Repl.IsSyncTarget() {
				c.closeLink(i, "forced to Primary while SyncTarget")
			}
		}
	}
	c.Meta.Flags |= MDPrimaryInd
	// Blocks that may differ after a lost Primary are resynced from us now: our data is
	// the truth, so we are not "unclean" any more. The bits stay; a crashed Primary's
	// own flags stay too.
	for i := range c.Meta.Slots {
		if c.Meta.Slots[i].Flags&PeerCrashedPrimary == 0 {
			c.Meta.Slots[i].Flags &^= PeerResyncPending
		}
	}
	if forced {
		c.Meta.Flags |= MDConsistent | MDWasUpToDate
		c.Meta.Flags &^= MDOutdated
	}
	c.persist()
	if forced || c.anyBehind() {
		c.newGeneration(forced, false)
	}
	if err := c.change(func(s *State) {
		s.Role = Primary
		if forced {
			s.Disk = UpToDate
			for i := range s.Peers {
				if s.Peers[i].Repl.IsSyncTarget() {
					s.Peers[i].Repl = Established // the link is closing; the resync is over
				}
			}
		}
	}); err != nil {
		return err
	}
	c.emit(SetWritable{On: true})
	for i, p := range c.Peers {
		ps := c.ps(i)
		if forced && ps.Conn == Connected && ps.Repl == Established && ps.Disk != UpToDate && !p.Tiebreaker {
			c.emit(RequestSync{Peer: p.NodeID, SenderIsSource: true})
		}
	}
	// Peers whose resync was deferred to a Primary (that is us now), and connected peers
	// with blocks to resync from us (marked when the last Primary went away).
	c.rehandshake(func(i int) bool {
		return c.Peers[i].Deferred || c.ps(i).Repl == Established && c.Meta.Slots[i].Flags&PeerResyncPending != 0
	}, "promoted: resyncing the peers that waited for a Primary")
	c.log(slog.LevelInfo, "promoted", "force", force)
	return nil
}

// EvDemote begins a demotion: new writes are refused from now on. The shell then waits
// for the writes in flight, flushes everywhere and commits with EvDemoteCommit.
type EvDemote struct{}

func (EvDemote) apply(c *Core) error {
	if c.State.Role != Primary {
		return errNoop
	}
	if c.State.Suspended != "" {
		return refuse(nil, "I/O is suspended (%s): the peer is not confirmed fenced; fix that or run resume-io first", c.State.Suspended)
	}
	c.emit(SetWritable{On: false})
	return nil
}

// EvDemoteCommit ends a demotion; FlushErr is the final flush's failure, if any.
type EvDemoteCommit struct{ FlushErr error }

func (e EvDemoteCommit) apply(c *Core) error {
	if e.FlushErr != nil {
		c.emit(SetWritable{On: true})
		return fmt.Errorf("flush before demotion failed: %w", e.FlushErr)
	}
	c.Meta.Flags &^= MDPrimaryInd
	c.persist()
	c.mustChange(func(s *State) { s.Role = Secondary })
	c.log(slog.LevelInfo, "demoted")
	// Without quorum the majority may have promoted another node meanwhile: our data
	// is no longer authoritative, and must neither be promoted again nor win a
	// reconnection.
	if c.State.NoQuorum {
		c.log(slog.LevelWarn, "demoted without quorum: marking the disk Outdated")
		c.markOutdated()
	}
	return nil
}

// EvInvalidate discards local data (drbdadm invalidate): everything is resynced from a
// peer with UpToDate data, now if one is connected, else at the next connection.
type EvInvalidate struct{}

func (EvInvalidate) apply(c *Core) error {
	if c.State.Role == Primary {
		return refuse(nil, "cannot invalidate a Primary (demote it first)")
	}
	for _, ps := range c.State.Peers {
		if ps.Repl.IsSyncSource() {
			return refuse(nil, "cannot invalidate while SyncSource to %s", ps.Name)
		}
	}
	source := -1
	for i := range c.Peers {
		if ps := c.ps(i); ps.Conn == Connected && ps.Disk == UpToDate && ps.Repl == Established {
			source = i
			break
		}
	}
	c.markInconsistent(true)
	if source >= 0 {
		c.emit(RequestSync{Peer: c.Peers[source].NodeID, SenderIsSource: false})
	}
	return nil
}

// EvOutdate marks the local data Outdated (drbdadm outdate): it may not be promoted
// without a resync or --force. As in DRBD it is refused on a Primary and while
// connected to a peer with a disk, whose handshake would settle it UpToDate again.
type EvOutdate struct{}

func (EvOutdate) apply(c *Core) error {
	if c.State.Role == Primary || c.Promoting {
		return refuse(nil, "cannot outdate a Primary (demote it first)")
	}
	for i := range c.Peers {
		if ps := c.ps(i); ps.Conn == Connected && !c.Peers[i].Tiebreaker {
			return refuse(nil, "refusing to be Outdated while connected to %s (disconnect first)", ps.Name)
		}
	}
	if c.State.Disk != UpToDate && c.State.Disk != Consistent {
		return errNoop // Outdated already, or worse
	}
	c.markOutdated()
	return nil
}

// EvNewCurrentUUID starts a new current generation (drbdadm new-current-uuid). Without
// ClearBitmap it is a Primary's: peers in sync adopt it, the others' bitmaps start.
// With ClearBitmap it is DRBD's way to skip the initial resync of fresh disks that are
// identical (all zeroes, or copies): on a just-created Secondary whose connected peers
// are Inconsistent, this node takes a new generation as UpToDate with empty bitmaps, and
// the connected peers adopt it the same way (GenClearBitmap). Peers that are not
// connected get a full resync when they connect, as for any just-created disk.
type EvNewCurrentUUID struct{ ClearBitmap bool }

func (e EvNewCurrentUUID) apply(c *Core) error {
	if !e.ClearBitmap {
		if c.State.Role != Primary {
			return refuse(nil, "new-current-uuid needs a Primary (or --clear-bitmap on a just-created resource)")
		}
		c.newGeneration(false, false)
		return nil
	}
	if c.State.Role == Primary || c.Promoting {
		return refuse(nil, "new-current-uuid --clear-bitmap on a Primary: it is for a just-created resource")
	}
	if mask(c.Meta.Current) != UUIDJustCreated || c.State.Disk != Inconsistent {
		return refuse(nil, "new-current-uuid --clear-bitmap needs just-created metadata (this disk is %s, generation %s)",
			c.State.Disk, uuidStr(c.Meta.Current))
	}
	var adopters []int
	for i := range c.Peers {
		ps := c.ps(i)
		if ps.Conn != Connected {
			continue
		}
		if !c.Peers[i].Tiebreaker && (ps.Disk != Inconsistent || ps.Repl != Established) {
			return refuse(nil, "new-current-uuid --clear-bitmap: %s is %s/%s, not a fresh Inconsistent peer", ps.Name, ps.Repl, ps.Disk)
		}
		adopters = append(adopters, i)
	}
	old := c.Meta.Current
	for _, i := range adopters {
		if !c.Peers[i].Tiebreaker {
			c.emit(Bits{Op: BitsClearAll, Peer: c.Peers[i].NodeID})
		}
	}
	c.emit(WriteBitmaps{})
	c.Meta.Current = c.NewUUID()
	c.Meta.Flags |= MDConsistent | MDWasUpToDate
	c.Meta.Flags &^= MDOutdated
	c.persist()
	c.log(slog.LevelInfo, "new current generation, bitmaps cleared", "old", uuidStr(old), "new", uuidStr(c.Meta.Current))
	// The generation goes ahead of our State on the same link, so that a peer never
	// sees us UpToDate before it could adopt (which would re-decide a full resync).
	for _, i := range adopters {
		c.Peers[i].Deferred, c.Peers[i].BothInconsistent = false, false
		c.send(i, transport.MsgNewUUID, &transport.Generation{Current: c.Meta.Current, Prev: old, Flags: transport.GenClearBitmap})
	}
	c.mustChange(func(s *State) { s.Disk = UpToDate })
	return nil
}

// adoptClearedGeneration is the receiving side of new-current-uuid --clear-bitmap:
// a just-created Inconsistent Secondary takes the generation as UpToDate data with empty
// bitmaps. Anything else re-decides with a handshake (a resync from the sender).
func (c *Core) adoptClearedGeneration(i int, g transport.Generation) error {
	fresh := mask(c.Meta.Current) == UUIDJustCreated && c.State.Disk == Inconsistent && c.State.Role == Secondary
	for j := range c.Peers {
		if ps := c.ps(j); ps.Repl.IsSyncSource() || ps.Repl.IsSyncTarget() {
			fresh = false // a resync decided otherwise already
		}
	}
	if !fresh {
		c.log(slog.LevelWarn, "not adopting a cleared generation: this disk is not just created or a resync runs",
			"ours", uuidStr(c.Meta.Current), "disk", c.State.Disk)
		c.rehandshake(func(j int) bool { return j == i }, "the peer skipped the initial resync; this disk cannot follow")
		return nil
	}
	for j := range c.Peers {
		if !c.Peers[j].Tiebreaker {
			c.emit(Bits{Op: BitsClearAll, Peer: c.Peers[j].NodeID})
		}
	}
	c.emit(WriteBitmaps{})
	c.Meta.Current = g.Current
	c.Meta.Flags |= MDConsistent | MDWasUpToDate
	c.Meta.Flags &^= MDOutdated
	c.persist()
	c.log(slog.LevelInfo, "adopted the peer's new generation, bitmaps cleared", "peer", c.Peers[i].Name, "new", uuidStr(g.Current))
	c.Peers[i].Deferred, c.Peers[i].BothInconsistent = false, false
	c.mustChange(func(s *State) { s.Disk = UpToDate })
	return nil
}

// EvResumeIO ends a fencing freeze by operator decision (drbdadm resume-io).
type EvResumeIO struct{}

func (EvResumeIO) apply(c *Core) error {
	if c.State.Suspended == "" {
		return refuse(nil, "I/O is not suspended")
	}
	c.log(slog.LevelWarn, "I/O resumed by the operator")
	c.thaw()
	return nil
}

func (c *Core) thaw() {
	c.mustChange(func(s *State) { s.Suspended = "" })
	c.emit(Thaw{})
}

// EvDiskFailed: the local disk was detached after an I/O error. A Primary goes on
// diskless: it starts a new generation that its in-sync peers adopt while recording what
// its disk misses. A Secondary cannot apply writes any more and drops its connections.
type EvDiskFailed struct{}

func (EvDiskFailed) apply(c *Core) error {
	if c.DiskFailed {
		return nil
	}
	c.DiskFailed = true
	primary := c.State.Role == Primary
	// A resync from this disk cannot go on: its links close, and the peers it was
	// bringing up to date stay Inconsistent until the disk is back.
	var sources []int
	for i := range c.Peers {
		if c.ps(i).Repl.IsSyncSource() {
			sources = append(sources, i)
		}
	}
	c.mustChange(func(s *State) {
		s.Disk = Diskless
		for _, i := range sources {
			s.Peer(c.Peers[i].NodeID).Repl = Established
		}
	})
	for _, i := range sources {
		c.closeLink(i, "local disk failed: the resync from it cannot go on")
	}
	if primary {
		c.newGeneration(false, true)
		return nil
	}
	for i := range c.Peers {
		c.Peers[i].Want = false
		c.closeLink(i, "local disk failed")
	}
	return nil
}

// EvHandlerDone: a handler started by RunHandler (or by the shell for a promotion)
// exited with Exit, or could not run (Err; a timeout counts as a failure).
type EvHandlerDone struct {
	Name    string
	Peer    int
	Purpose HandlerPurpose
	Exit    int
	Err     error
}

// fence-peer handler exit codes, as DRBD reads them.
const (
	FenceExitPeerInconsistent = 3 // the peer's disk is Inconsistent or worse: nothing to fence
	FenceExitPeerOutdated     = 4 // the handler outdated the peer
	FenceExitPeerUnreachable  = 5 // the peer could not be reached
	FenceExitPeerIsPrimary    = 6 // the peer refused: it is Primary
	FenceExitPeerFenced       = 7 // the peer was fenced (STONITH)
)

func (e EvHandlerDone) apply(c *Core) error {
	i := c.peer(e.Peer)
	if i < 0 {
		return fmt.Errorf("handler %s for unknown node-id %d", e.Name, e.Peer)
	}
	name := c.Peers[i].Name
	if e.Name != "fence-peer" {
		if e.Err != nil || e.Exit != 0 {
			c.log(slog.LevelWarn, e.Name+" handler failed", "peer", name, "exit", e.Exit, "err", e.Err)
		}
		return nil
	}
	outdated := e.Err == nil && (e.Exit == FenceExitPeerOutdated || e.Exit == FenceExitPeerFenced)
	if outdated {
		c.Meta.Slots[i].Flags |= PeerOutdated
		c.persist()
	}
	switch e.Purpose {
	case PurposePromote:
		if outdated || e.Err == nil && (e.Exit == FenceExitPeerInconsistent || e.Exit == FenceExitPeerUnreachable) {
			return nil
		}
		c.Promoting, c.PromoteForce = false, false
		if e.Err != nil {
			return refuse(nil, "Refusing to be Primary while peer %s is not outdated (%v)", name, e.Err)
		}
		return refuse(nil, "Refusing to be Primary while peer %s is not outdated (fence-peer exit %d)", name, e.Exit)
	case PurposeLostPeer:
		freeze := c.Peers[i].FenceFreeze
		c.Peers[i].FenceFreeze = false
		if outdated || e.Err == nil && e.Exit == FenceExitPeerInconsistent {
			c.log(slog.LevelWarn, "fence-peer: peer fenced", "peer", name, "exit", e.Exit)
			if freeze && c.State.Suspended == suspendFencing && !c.fencePending() {
				c.log(slog.LevelWarn, "resuming I/O: the peer is fenced")
				c.thaw()
			}
			return nil
		}
		c.log(slog.LevelError, "fence-peer handler did not confirm the peer is fenced", "peer", name, "exit", e.Exit, "err", e.Err)
		if freeze {
			c.log(slog.LevelError, "I/O stays frozen until the peer is fenced or the operator runs resume-io")
		}
	}
	return nil
}

const suspendFencing = "fencing"

// fencePending reports whether some freeze still waits for its fence-peer handler.
func (c *Core) fencePending() bool {
	for _, p := range c.Peers {
		if p.FenceFreeze {
			return true
		}
	}
	return false
}

// ---- links and sessions ----

// EvHandshake: the handshake with Peer decided Result (both sides' data in Self and
// PeerSide); a BitsMerge exchange is done. The core settles the bitmap and persists
// what must hold before the peer may send data (Inconsistent for a target).
type EvHandshake struct {
	Peer           int
	Self, PeerSide HandshakeSide
	Result         HandshakeResult
}

func (e EvHandshake) apply(c *Core) error {
	if _, err := c.known(e.Peer, "handshake with"); err != nil {
		return err
	}
	res := e.Result
	switch res.Bits {
	case BitsAll:
		c.emit(Bits{Op: BitsSetAll, Peer: e.Peer})
	case BitsOther:
		if res.Repl == SyncSource {
			c.emit(Bits{Op: BitsCopy, Peer: e.Peer, From: res.Other})
		} else {
			c.emit(Bits{Op: BitsClearAll, Peer: e.Peer})
		}
	}
	if res.Repl == SyncTarget {
		c.markInconsistent(false)
	}
	c.emit(WriteBitmaps{})
	return nil
}

// EvSessionUp: the session with Peer is live (both sides ready): commit the connection
// and open the write path to it. Refused if the operator disconnected meanwhile.
type EvSessionUp struct {
	Peer           int
	Self, PeerSide HandshakeSide
	Result         HandshakeResult
}

func (e EvSessionUp) apply(c *Core) error {
	i, err := c.known(e.Peer, "session with")
	if err != nil {
		return err
	}
	p := &c.Peers[i]
	if !p.Want {
		return errors.New(reasonOperator)
	}
	res, self, peer := e.Result, e.Self, e.PeerSide
	// One resync source at a time. (The shell closes the old source's link when the new
	// one is a Primary; until that session's end is stepped, this one waits.)
	if j := c.syncSourceOtherThan(i); j >= 0 && res.Repl == SyncTarget {
		return fmt.Errorf("already SyncTarget of %s; retrying", c.Peers[j].Name)
	}
	p.DiscardMyData = false
	p.TargetWasUpToDate = res.Repl == SyncSource && peer.Disk == UpToDate
	p.Deferred = res.Deferred
	p.BothInconsistent = res.Deferred && self.Disk <= Inconsistent && peer.Disk <= Inconsistent
	p.Session++
	p.Closing = ""
	if res.Repl == Established && !res.Deferred {
		c.settleNoSync(self, peer)
	}
	if err := c.change(func(s *State) {
		sp := s.Peer(p.NodeID)
		sp.Conn, sp.Repl, sp.Role, sp.Disk = Connected, res.Repl, peer.Role, peer.Disk
		if res.Repl == Established && peer.Disk == Outdated && s.Disk == UpToDate && mask(self.Gen.Current) == mask(peer.Gen.Current) {
			sp.Disk = UpToDate // it settles itself the same way
		}
		if res.Repl == SyncSource {
			sp.Disk = Inconsistent
		}
	}); err != nil {
		return err
	}
	// Whatever changed since our handshake was sent.
	c.send(i, transport.MsgState, &transport.State{Role: uint8(c.State.Role), Disk: uint8(c.State.Disk)})
	switch res.Repl {
	case SyncSource:
		c.emit(StartResync{Peer: p.NodeID, Session: p.Session})
	case SyncTarget:
		c.emit(ResyncStats{Peer: p.NodeID, Begin: true})
	}
	return nil
}

// settleNoSync: with no resync needed and the same generation, an Outdated or
// Consistent disk next to an UpToDate one is UpToDate too.
func (c *Core) settleNoSync(self, peer HandshakeSide) {
	if mask(self.Gen.Current) != mask(peer.Gen.Current) || peer.Disk != UpToDate {
		return
	}
	if self.Disk == Outdated || self.Disk == Consistent {
		c.markUpToDate()
	}
}

// EvLinkDown: the live link to Peer is gone; Graceful says the peer closed it on
// purpose (a Disconnect message). The shell completes the link's pending writes after
// this step, so a freeze decided here holds their completions back.
type EvLinkDown struct {
	Peer     int
	Graceful bool
	Reason   string
}

func (e EvLinkDown) apply(c *Core) error {
	i, err := c.known(e.Peer, "link to")
	if err != nil {
		return err
	}
	p := &c.Peers[i]
	if e.Graceful {
		c.leaving(i)
	}
	// Only a lost peer is fenced: an operator's disconnect, a re-handshake we asked for,
	// or the peer's own goodbye outdate the peer as part of the state change instead.
	deliberate := e.Graceful || p.Closing != "" || !p.Want
	fence := !deliberate && p.Fencing != FencingDontCare && c.State.Role == Primary && c.inSync(i)
	if !fence {
		return nil
	}
	p.Fence = true
	if p.Fencing == FencingResourceAndStonith && !c.otherInSync(i) {
		p.FenceFreeze = true
		c.log(slog.LevelWarn, "lost the last UpToDate peer: I/O frozen until the fence-peer handler confirms it is fenced", "peer", p.Name)
		if c.State.Suspended == "" {
			c.mustChange(func(s *State) { s.Suspended = suspendFencing })
			c.emit(Freeze{Reason: suspendFencing})
		}
	}
	return nil
}

// EvSessionEnded: a session with Peer ended (live or not). The shell holds the I/O gate.
// StandAlone means the outcome must not be retried automatically (Reason says why,
// SplitBrain if that was the cause); HotExtents is how many activity-log extents are hot.
type EvSessionEnded struct {
	Peer       int
	StandAlone bool
	SplitBrain bool
	Reason     string
	HotExtents int
}

func (e EvSessionEnded) apply(c *Core) error {
	i, err := c.known(e.Peer, "session with")
	if err != nil {
		return err
	}
	p := &c.Peers[i]
	ps := c.ps(i)
	wasLive := ps.Conn == Connected
	lostPrimary := wasLive && ps.Role == Primary
	fence := p.Fence
	p.Fence, p.Deferred, p.BothInconsistent, p.Closing = false, false, false, ""
	if e.StandAlone {
		p.Want = false
	}
	c.mustChange(func(s *State) {
		sp := s.Peer(p.NodeID)
		sp.Conn = Connecting
		if !p.Want {
			sp.Conn, sp.SplitBrain = StandAlone, e.SplitBrain
			if e.StandAlone {
				sp.Reason = e.Reason
			} else {
				sp.Reason = "" // the operator disconnected: nothing to explain
			}
		}
	})
	if lostPrimary {
		marked := c.State.Role == Secondary && c.markPrimaryLoss(i, e.HotExtents)
		c.rehandshake(func(j int) bool { return c.Peers[j].Deferred || marked && j != i },
			"the Primary is gone: re-deciding with the blocks its last writes touched")
	}
	// A new generation marks writes this peer misses. A diskless Primary left without
	// any replica writes nothing, so its generation stays and the peer may rejoin it.
	if wasLive && !p.Tiebreaker && c.State.Role == Primary && (!c.DiskFailed || c.otherInSync(i)) {
		c.newGeneration(false, c.DiskFailed)
	}
	if wasLive {
		c.emit(ResyncStats{Peer: p.NodeID})
	}
	if fence {
		c.emit(RunHandler{Name: "fence-peer", Peer: p.NodeID, Purpose: PurposeLostPeer})
	}
	return nil
}

// markPrimaryLoss: the Primary (peer lost) went away without stepping down. Its last
// writes may have reached some Secondaries and not others, and nothing says which, so
// every block our activity log covers is marked out of sync towards the other peers and
// their slots flagged (as after a crash of ours): the survivors resync those blocks from
// one of them, or from whichever becomes Primary. Reports whether it marked any.
func (c *Core) markPrimaryLoss(lost, hot int) bool {
	var others []int
	for j := range c.Peers {
		if j != lost {
			others = append(others, j)
		}
	}
	if len(others) == 0 || c.ALUpdates && hot == 0 {
		return false
	}
	for _, j := range others {
		c.emit(Bits{Op: BitsMarkHot, Peer: c.Peers[j].NodeID})
		c.Meta.Slots[j].Flags |= PeerResyncPending
	}
	c.emit(WriteBitmaps{})
	c.persist()
	c.log(slog.LevelWarn, "the Primary went away without stepping down: activity-log extents marked out of sync towards the other peers",
		"primary", c.Peers[lost].Name, "extents", hot, "al-updates", c.ALUpdates)
	return true
}

// ---- messages from a live peer ----

// EvPeerState: the peer's role or disk changed.
type EvPeerState struct {
	Peer int
	Role Role
	Disk DiskState
}

func (e EvPeerState) apply(c *Core) error {
	i, err := c.known(e.Peer, "state of")
	if err != nil {
		return err
	}
	if e.Role == Primary && c.State.Role == Primary {
		return fmt.Errorf("%w: peer became Primary while we are Primary", transport.ErrProtocol)
	}
	p := &c.Peers[i]
	wasPrimary := c.ps(i).Role == Primary
	if err := c.change(func(s *State) {
		sp := s.Peer(p.NodeID)
		sp.Role, sp.Disk = e.Role, e.Disk
	}); err != nil {
		return err
	}
	if e.Role == Primary && !wasPrimary {
		c.primaryAppeared(i)
	}
	if e.Role != Primary && wasPrimary {
		c.rehandshake(func(j int) bool { return c.Peers[j].Deferred }, "the Primary stepped down: re-deciding the deferred resync")
	}
	if e.Disk == UpToDate && p.BothInconsistent {
		c.rehandshake(func(j int) bool { return j == i },
			"the peer is UpToDate now: re-deciding the resync deferred while both disks were Inconsistent")
	}
	return nil
}

// primaryAppeared: peer i became Primary. A resync between us and another Secondary
// would now race the Primary's writes: stop it; the Primary resyncs instead.
func (c *Core) primaryAppeared(i int) {
	if c.State.Role == Primary {
		return
	}
	c.rehandshake(func(j int) bool {
		ps := c.ps(j)
		return j != i && ps.Role != Primary && (ps.Repl.IsSyncSource() || ps.Repl.IsSyncTarget())
	}, "a Primary appeared: a resync between Secondaries would race its writes")
}

// EvPeerNewUUID: the Primary started a new current generation. We follow it when we
// hold the generation it replaces (we have all its data).
type EvPeerNewUUID struct {
	Peer int
	Gen  transport.Generation
}

func (e EvPeerNewUUID) apply(c *Core) error {
	i, err := c.known(e.Peer, "generation from")
	if err != nil {
		return err
	}
	g := e.Gen
	if g.Flags&transport.GenClearBitmap != 0 {
		return c.adoptClearedGeneration(i, g)
	}
	if mask(c.Meta.Current) != mask(g.Prev) || c.State.Disk != UpToDate {
		c.log(slog.LevelWarn, "not adopting the peer's new generation", "ours", uuidStr(c.Meta.Current),
			"their-previous", uuidStr(g.Prev), "disk", c.State.Disk)
		return nil
	}
	diskless := g.Flags&transport.GenSenderDiskless != 0
	if diskless {
		// The sender lost its disk: its writes now carry DataNotLocal.
		c.mustChange(func(s *State) { s.Peer(e.Peer).Disk = Diskless })
	}
	pushHistory(&c.Meta.History, c.Meta.Current)
	c.Meta.Current = g.Current
	if s := &c.Meta.Slots[i]; diskless && s.BitmapUUID == 0 {
		s.BitmapUUID = g.Prev
	}
	c.persist()
	return nil
}

// EvPromoteRequest: the peer asks to become Primary. We grant it unless we are (or are
// becoming) Primary; of two concurrent promotions the lower node id wins.
type EvPromoteRequest struct {
	Peer int
	ID   uint64
}

func (e EvPromoteRequest) apply(c *Core) error {
	i, err := c.known(e.Peer, "promotion request from")
	if err != nil {
		return err
	}
	r := transport.Reply{ID: e.ID, OK: true}
	switch {
	case c.State.Role == Primary:
		r.OK, r.Reason = false, fmt.Sprintf("%s is Primary", c.Name)
	case c.Promoting && c.NodeID < e.Peer:
		r.OK, r.Reason = false, fmt.Sprintf("%s is becoming Primary", c.Name)
	default:
		// Until it tells us otherwise, treat the peer as Primary so we do not promote too.
		c.mustChange(func(s *State) { s.Peer(e.Peer).Role = Primary })
		c.primaryAppeared(i)
	}
	c.send(i, transport.MsgPromoteReply, &r)
	return nil
}

// EvSyncRequest: the peer asks for a full resync; SenderIsSource says it would be the
// source (it was forced Primary), else it invalidated itself and wants our data.
type EvSyncRequest struct {
	Peer           int
	ID             uint64
	SenderIsSource bool
}

func (e EvSyncRequest) apply(c *Core) error {
	i, err := c.known(e.Peer, "sync request from")
	if err != nil {
		return err
	}
	selfSource := !e.SenderIsSource
	reply := transport.Reply{ID: e.ID, OK: true}
	if why := c.fullSyncRefusal(i, selfSource); why != "" {
		reply.OK, reply.Reason = false, why
	}
	// A target persists Inconsistent before its OK lets the source send the first block;
	// a source starts sending after its OK.
	if reply.OK {
		c.beginFullSync(i, selfSource)
	}
	c.send(i, transport.MsgSyncReply, &reply)
	if reply.OK {
		c.startFullSync(i, selfSource)
	}
	return nil
}

// EvSyncReply: the peer answered our RequestSync.
type EvSyncReply struct {
	Peer           int
	Reply          transport.Reply
	SenderIsSource bool // as we asked
}

func (e EvSyncReply) apply(c *Core) error {
	i, err := c.known(e.Peer, "sync reply from")
	if err != nil {
		return err
	}
	if !e.Reply.OK {
		c.log(slog.LevelWarn, "peer refused a full resync", "peer", c.Peers[i].Name, "reason", e.Reply.Reason)
		return nil
	}
	// The peer checked its side; ours may have changed since we asked.
	if why := c.fullSyncRefusal(i, e.SenderIsSource); why != "" {
		c.log(slog.LevelWarn, "full resync accepted by the peer but not possible any more", "peer", c.Peers[i].Name, "reason", why)
		return nil
	}
	c.beginFullSync(i, e.SenderIsSource)
	c.startFullSync(i, e.SenderIsSource)
	return nil
}

// fullSyncRefusal is the one decision both sides of a full resync take: why this node
// cannot become the source (selfSource) or the target of a full resync with peer i now,
// or "".
func (c *Core) fullSyncRefusal(i int, selfSource bool) string {
	ps := c.ps(i)
	switch {
	case c.Peers[i].Tiebreaker:
		return fmt.Sprintf("%s is a diskless tiebreaker", c.Peers[i].Name)
	case ps.Repl != Established:
		return fmt.Sprintf("replication is %s", ps.Repl)
	case !selfSource && c.State.Role == Primary:
		return fmt.Sprintf("%s is Primary", c.Name)
	case !selfSource && c.syncSourceOtherThan(i) >= 0:
		return fmt.Sprintf("%s is already SyncTarget of another peer", c.Name)
	case !selfSource && c.syncTargetOtherThan(i) >= 0:
		return fmt.Sprintf("%s is SyncSource of another peer", c.Name)
	case selfSource && c.State.Disk != UpToDate:
		return fmt.Sprintf("%s is %s", c.Name, c.State.Disk)
	}
	return ""
}

// beginFullSync starts a full resync with peer i, as source or target. A target persists
// Inconsistent before the first block can arrive.
func (c *Core) beginFullSync(i int, selfSource bool) {
	p := &c.Peers[i]
	c.emit(Bits{Op: BitsSetAll, Peer: p.NodeID})
	if !selfSource {
		c.markInconsistent(false)
	}
	c.emit(WriteBitmaps{})
	c.mustChange(func(s *State) {
		sp := s.Peer(p.NodeID)
		if selfSource {
			sp.Repl, sp.Disk = SyncSource, Inconsistent
		} else {
			sp.Repl = SyncTarget
		}
	})
}

// startFullSync starts moving data (source) or accounting for it (target).
func (c *Core) startFullSync(i int, selfSource bool) {
	p := &c.Peers[i]
	if selfSource {
		c.emit(StartResync{Peer: p.NodeID, Session: p.Session})
	} else {
		c.emit(ResyncStats{Peer: p.NodeID, Begin: true})
	}
}

// EvResyncDone: every block of the resync from Peer arrived (RSDone); take over the
// source's generation and history.
type EvResyncDone struct {
	Peer    int
	Current uint64
	History [HistoryLen]uint64
	Took    time.Duration
}

func (e EvResyncDone) apply(c *Core) error {
	i, err := c.known(e.Peer, "resync from")
	if err != nil {
		return err
	}
	if r := c.ps(i).Repl; !r.IsSyncTarget() {
		return fmt.Errorf("%w: RSDone while %s", transport.ErrProtocol, r)
	}
	c.emit(Bits{Op: BitsClearAll, Peer: e.Peer})
	c.emit(WriteBitmaps{})
	// The resync's writes must be durable before the metadata says the data is complete.
	c.emit(FlushData{})
	// Our data is now the source's: so is its lineage. Keeping our own history instead
	// would make us look like a branch of it to a third node.
	c.Meta.History = e.History
	c.Meta.Current = e.Current
	c.Meta.Slots[i].BitmapUUID = 0
	c.Meta.Slots[i].Flags &^= PeerOutdated
	// Whatever a crash left uncertain on our disk is now the source's data: no peer needs
	// a crash resync from us any more (generations say whether one differs).
	for j := range c.Meta.Slots {
		c.Meta.Slots[j].Flags &^= PeerResyncPending | PeerCrashedPrimary
	}
	c.Meta.Flags |= MDConsistent | MDWasUpToDate
	c.Meta.Flags &^= MDOutdated
	c.persist()
	c.log(slog.LevelInfo, "resync done", "as", "SyncTarget", "peer", c.Peers[i].Name, "took", e.Took)
	c.emit(ResyncStats{Peer: e.Peer})
	c.mustChange(func(s *State) {
		s.Disk = UpToDate
		s.Peer(e.Peer).Repl = Established
	})
	c.rehandshake(func(j int) bool { return c.Peers[j].BothInconsistent },
		"UpToDate now: re-deciding the resync deferred while both disks were Inconsistent")
	return nil
}

// EvResyncFinished: the SyncSource loop of Session towards Peer found nothing left to
// send and everything acknowledged.
type EvResyncFinished struct {
	Peer    int
	Session uint64
	Took    time.Duration
}

func (e EvResyncFinished) apply(c *Core) error {
	i, err := c.known(e.Peer, "resync to")
	if err != nil {
		return err
	}
	p := &c.Peers[i]
	if p.Session != e.Session || !c.ps(i).Repl.IsSyncSource() {
		return nil // a resync loop of a session that ended
	}
	s := &c.Meta.Slots[i]
	pushHistory(&c.Meta.History, s.BitmapUUID)
	s.BitmapUUID = 0
	s.Flags &^= PeerResyncPending | PeerCrashedPrimary | PeerOutdated
	c.persist()
	c.emit(WriteBitmaps{})
	c.mustChange(func(s *State) {
		sp := s.Peer(p.NodeID)
		sp.Repl, sp.Disk = Established, UpToDate
	})
	c.log(slog.LevelInfo, "resync done", "as", "SyncSource", "peer", p.Name, "took", e.Took)
	// An Outdated node (one that stepped down without quorum) whose data proved newer
	// than an UpToDate peer's has just made that peer's data its own: it is as current.
	if c.State.Disk == Outdated && p.TargetWasUpToDate {
		c.log(slog.LevelInfo, "our newer data is now the UpToDate peer's: UpToDate again", "peer", p.Name)
		c.markUpToDate()
	}
	c.emit(ResyncStats{Peer: p.NodeID})
	c.send(i, transport.MsgRSDone, &transport.Generation{Current: c.Meta.Current, History: c.Meta.History})
	if p.Fencing != FencingDontCare {
		c.emit(RunHandler{Name: "unfence-peer", Peer: p.NodeID, Purpose: PurposeResynced})
	}
	return nil
}
