package blockrep

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/blockrep/blockrep/transport"
)

// Effect is one thing the core asks the shell to do. The shell carries out a step's
// effects in order, outside the core's lock, before the next step's.
type Effect interface {
	effect()
	String() string
}

// Body is a message body the core sends: a transport message with an encoder.
type Body interface{ Encode() []byte }

// Persist writes the metadata's generations and flags durably (superblock + fdatasync).
// Effects after it may depend on it; if it fails the shell stops the step's remaining
// effects and treats the failure as a local I/O error.
type Persist struct{ Meta MetaState }

// FlushData makes every write to the data device durable (fdatasync). It precedes a
// Persist that declares data complete (a resync target becoming UpToDate).
type FlushData struct{}

// BitsOp is a whole-bitmap operation.
type BitsOp uint8

const (
	BitsSetAll   BitsOp = iota // every block out of sync
	BitsClearAll               // every block in sync
	BitsCopy                   // out of sync where the bitmap of node From says so (or everywhere if we have none)
	BitsMarkHot                // every activity-log extent that is hot out of sync (everything without al-updates)
)

var bitsOpNames = [...]string{"set-all", "clear-all", "copy", "mark-hot"}

func (o BitsOp) String() string { return enumName(bitsOpNames[:], int(o)) }

// Bits changes the bitmap of peer Peer.
type Bits struct {
	Op   BitsOp
	Peer int
	From int // BitsCopy: the node whose bitmap to merge in
}

// WriteBitmaps writes dirty bitmap pages durably.
type WriteBitmaps struct{}

// Send queues a message on a peer's link (dropped when the link is not live).
type Send struct {
	Peer int
	Type transport.MsgType
	Body Body
}

// CloseLink closes a peer's link (the session ends; the peer reconnects if wanted).
type CloseLink struct {
	Peer   int
	Reason string
}

// Wake kicks a peer's connection manager (the connection is wanted now).
type Wake struct{ Peer int }

// StartResync starts the SyncSource loop towards a peer for its live session.
type StartResync struct {
	Peer    int
	Session uint64
}

// ResyncStats starts (Begin) or ends the resync progress accounting of a peer.
type ResyncStats struct {
	Peer  int
	Begin bool
}

// RequestSync asks a peer for a full resync (SenderIsSource: we are the source). The
// answer arrives as EvSyncReply.
type RequestSync struct {
	Peer           int
	SenderIsSource bool
}

// RunHandler runs a DRBD handler for a peer in the background; its exit arrives as
// EvHandlerDone.
type RunHandler struct {
	Name    string
	Peer    int
	Purpose HandlerPurpose
}

// HandlerPurpose says why a handler runs, so that its result is read in context.
type HandlerPurpose uint8

const (
	PurposeLostPeer HandlerPurpose = iota // fence-peer after losing an UpToDate peer while Primary
	PurposePromote                        // fence-peer before promoting without a peer
	PurposeResynced                       // unfence-peer once the peer has our data again
)

var purposeNames = [...]string{"lost-peer", "promote", "resynced"}

func (p HandlerPurpose) String() string { return enumName(purposeNames[:], int(p)) }

// Freeze holds back every write's completion (and new writes) until Thaw.
type Freeze struct{ Reason string }

// Thaw releases what Freeze held.
type Thaw struct{}

// SetWritable opens (On) or closes the write path: Primary writes are accepted only
// while it is open.
type SetWritable struct{ On bool }

// QuorumIO makes a Primary fail new writes with ErrNoQuorum (Fail) or accept them again:
// on-no-quorum io-error.
type QuorumIO struct{ Fail bool }

// Log is a log line about a decision.
type Log struct {
	Level slog.Level
	Msg   string
	Args  []any
}

func (Persist) effect()      {}
func (FlushData) effect()    {}
func (Bits) effect()         {}
func (WriteBitmaps) effect() {}
func (Send) effect()         {}
func (CloseLink) effect()    {}
func (Wake) effect()         {}
func (StartResync) effect()  {}
func (ResyncStats) effect()  {}
func (RequestSync) effect()  {}
func (RunHandler) effect()   {}
func (Freeze) effect()       {}
func (Thaw) effect()         {}
func (SetWritable) effect()  {}
func (QuorumIO) effect()     {}
func (Log) effect()          {}

func (e Persist) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "persist current=%s flags=%s", uuidStr(e.Meta.Current), mdFlagsStr(e.Meta.Flags))
	for i, s := range e.Meta.Slots {
		if s.BitmapUUID != 0 || s.Flags != 0 {
			fmt.Fprintf(&b, " slot%d=%s/%s", i, uuidStr(s.BitmapUUID), peerFlagsStr(s.Flags))
		}
	}
	if h := e.Meta.History[0]; h != 0 {
		fmt.Fprintf(&b, " history0=%s", uuidStr(h))
	}
	return b.String()
}
func (FlushData) String() string    { return "flush-data" }
func (WriteBitmaps) String() string { return "write-bitmaps" }
func (e Bits) String() string {
	if e.Op == BitsCopy {
		return fmt.Sprintf("bits peer=%d %s from=%d", e.Peer, e.Op, e.From)
	}
	return fmt.Sprintf("bits peer=%d %s", e.Peer, e.Op)
}
func (e Send) String() string {
	return fmt.Sprintf("send peer=%d %s %s", e.Peer, e.Type, bodyStr(e.Body))
}
func (e CloseLink) String() string { return fmt.Sprintf("close-link peer=%d %q", e.Peer, e.Reason) }
func (e Wake) String() string      { return fmt.Sprintf("wake peer=%d", e.Peer) }
func (e StartResync) String() string {
	return fmt.Sprintf("start-resync peer=%d session=%d", e.Peer, e.Session)
}
func (e ResyncStats) String() string {
	if e.Begin {
		return fmt.Sprintf("resync-stats peer=%d begin", e.Peer)
	}
	return fmt.Sprintf("resync-stats peer=%d end", e.Peer)
}
func (e RequestSync) String() string {
	return fmt.Sprintf("request-sync peer=%d sender-is-source=%t", e.Peer, e.SenderIsSource)
}
func (e RunHandler) String() string {
	return fmt.Sprintf("run-handler %s peer=%d for=%s", e.Name, e.Peer, e.Purpose)
}
func (e Freeze) String() string      { return fmt.Sprintf("freeze %q", e.Reason) }
func (Thaw) String() string          { return "thaw" }
func (e SetWritable) String() string { return fmt.Sprintf("set-writable %t", e.On) }
func (e QuorumIO) String() string    { return fmt.Sprintf("quorum-io fail=%t", e.Fail) }
func (e Log) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "log %s %q", e.Level, e.Msg)
	for i := 0; i+1 < len(e.Args); i += 2 {
		fmt.Fprintf(&b, " %v=%v", e.Args[i], e.Args[i+1])
	}
	return b.String()
}

func bodyStr(b Body) string {
	switch m := b.(type) {
	case *transport.State:
		return fmt.Sprintf("role=%s disk=%s", Role(m.Role), DiskState(m.Disk))
	case *transport.Generation:
		s := fmt.Sprintf("current=%s", uuidStr(m.Current))
		if m.Prev != 0 {
			s += " prev=" + uuidStr(m.Prev)
		}
		if m.Flags != 0 {
			s += fmt.Sprintf(" flags=%d", m.Flags)
		}
		return s
	case *transport.Reply:
		if m.OK {
			return fmt.Sprintf("id=%d ok", m.ID)
		}
		return fmt.Sprintf("id=%d refused %q", m.ID, m.Reason)
	case *transport.Disconnect:
		return fmt.Sprintf("%q", m.Reason)
	case nil:
		return ""
	}
	return fmt.Sprintf("%+v", b)
}

// uuidStr prints generation identifiers the way transcripts read them: small numbers
// (the tests' counter) in decimal, random ones in hex.
func uuidStr(u uint64) string {
	if u < 1<<16 {
		return fmt.Sprint(u)
	}
	return fmt.Sprintf("%016X", u)
}

func mdFlagsStr(f MDFlags) string {
	return flagNames(uint32(f), []string{"consistent", "was-uptodate", "outdated", "primary", "unclean", "no-al"})
}

func peerFlagsStr(f PeerFlags) string {
	return flagNames(uint32(f), []string{"resync-pending", "crashed-primary", "outdated"})
}

func flagNames(f uint32, names []string) string {
	var out []string
	for i, n := range names {
		if f&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return "-"
	}
	return strings.Join(out, ",")
}
