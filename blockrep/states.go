package blockrep

import "fmt"

// MaxNodes bounds node ids (0..MaxNodes-1), as in DRBD 9.
const MaxNodes = 32

// Role is a node's role for one resource.
type Role uint8

const (
	RoleUnknown Role = iota
	Secondary
	Primary
)

var roleNames = [...]string{"Unknown", "Secondary", "Primary"}

func (r Role) String() string { return enumName(roleNames[:], int(r)) }

// DiskState is the state of a node's local data, named as DRBD names it.
type DiskState uint8

// The order matters: a larger value is "better" data where comparisons make sense
// (Inconsistent < Outdated < Consistent < UpToDate), as in DRBD.
const (
	Diskless DiskState = iota
	Attaching
	Detaching
	Failed
	Negotiating
	Inconsistent
	Outdated
	DUnknown
	Consistent
	UpToDate
)

var diskNames = [...]string{"Diskless", "Attaching", "Detaching", "Failed", "Negotiating",
	"Inconsistent", "Outdated", "DUnknown", "Consistent", "UpToDate"}

func (d DiskState) String() string { return enumName(diskNames[:], int(d)) }

// ConnState is the state of the connection to one peer.
type ConnState uint8

const (
	StandAlone ConnState = iota
	Disconnecting
	Unconnected
	Connecting
	Connected
)

var connNames = [...]string{"StandAlone", "Disconnecting", "Unconnected", "Connecting", "Connected"}

func (c ConnState) String() string { return enumName(connNames[:], int(c)) }

// ReplState is the replication state towards one peer (meaningful only while Connected).
type ReplState uint8

const (
	ReplOff ReplState = iota
	Established
	StartingSyncS
	StartingSyncT
	WFBitMapS
	WFBitMapT
	SyncSource
	SyncTarget
	PausedSyncS
	PausedSyncT
	Ahead
	Behind
	VerifyS
	VerifyT
)

var replNames = [...]string{"Off", "Established", "StartingSyncS", "StartingSyncT", "WFBitMapS",
	"WFBitMapT", "SyncSource", "SyncTarget", "PausedSyncS", "PausedSyncT", "Ahead", "Behind",
	"VerifyS", "VerifyT"}

func (r ReplState) String() string { return enumName(replNames[:], int(r)) }

// IsSyncSource reports whether data flows from this node to the peer by resync.
func (r ReplState) IsSyncSource() bool {
	return r == SyncSource || r == PausedSyncS || r == StartingSyncS || r == WFBitMapS
}

// IsSyncTarget reports whether this node receives resync data from the peer.
func (r ReplState) IsSyncTarget() bool {
	return r == SyncTarget || r == PausedSyncT || r == StartingSyncT || r == WFBitMapT
}

// Protocol is the replication protocol of one connection.
type Protocol uint8

const (
	ProtocolC Protocol = iota // ack after the peer wrote it (default)
	ProtocolB                 // ack after the peer received it
	ProtocolA                 // ack after it is queued for the peer
)

func (p Protocol) String() string { return enumName([]string{"C", "B", "A"}, int(p)) }

// ParseProtocol parses "A", "B" or "C".
func ParseProtocol(s string) (Protocol, error) {
	switch s {
	case "A":
		return ProtocolA, nil
	case "B":
		return ProtocolB, nil
	case "C":
		return ProtocolC, nil
	}
	return 0, fmt.Errorf("unknown protocol %q (want A, B or C)", s)
}

func enumName(names []string, i int) string {
	if i >= 0 && i < len(names) {
		return names[i]
	}
	return fmt.Sprintf("?%d", i)
}
