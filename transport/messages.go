package transport

import (
	"encoding/binary"
	"fmt"
)

// MsgType identifies a message.
type MsgType uint16

const (
	MsgHello MsgType = 1 + iota
	MsgHelloAck
	MsgAuth
	MsgAuthResult
	MsgHandshake  // Handshake: both sides, once per connection
	MsgBitmap     // Bitmap chunk: RLE bitmap for the receiver's slot
	MsgSyncReady  // empty: the sender is ready for data (target persisted Inconsistent)
	MsgWrite      // Data + payload
	MsgTrim       // Data
	MsgZero       // Data
	MsgFlush      // Ack (ID only)
	MsgRecvAck    // Ack: protocol B, received
	MsgWriteAck   // Ack: written
	MsgFlushAck   // Ack: flushed
	MsgNegAck     // Ack with Code: the peer failed to write
	MsgRSData     // Data + payload: resync block(s)
	MsgRSAck      // Ack
	MsgRSDone     // Generation: resync complete, the source's current generation
	MsgNewUUID    // Generation: the Primary started a new current generation
	MsgState      // State: role/disk changed
	MsgPromoteReq // Ack (ID): may I become Primary?
	MsgPromoteReply
	MsgSyncRequest // SyncRequest: start a full resync (invalidate, forced primary)
	MsgSyncReply   // PromoteReply-shaped: accepted or refused with a reason
	MsgPing
	MsgPingAck
	MsgDisconnect // Disconnect: graceful close with a reason
	MsgRSZero     // Data without payload: a resync range that reads as zeroes
	MsgReadReq    // Data without payload: a diskless Primary reads from the peer
	MsgReadReply  // Data + payload
	MsgOutOfSync  // Data without payload: the sender's own disk misses this range
	msgMax
)

var msgNames = [...]string{"?", "Hello", "HelloAck", "Auth", "AuthResult", "Handshake", "Bitmap",
	"SyncReady", "Write", "Trim", "Zero", "Flush", "RecvAck", "WriteAck", "FlushAck", "NegAck",
	"RSData", "RSAck", "RSDone", "NewUUID", "State", "PromoteReq", "PromoteReply", "SyncRequest",
	"SyncReply", "Ping", "PingAck", "Disconnect", "RSZero", "ReadReq", "ReadReply", "OutOfSync"}

func (t MsgType) String() string {
	if int(t) < len(msgNames) {
		return msgNames[t]
	}
	return fmt.Sprintf("Msg(%d)", uint16(t))
}

// Data flags.
const (
	DataFUA      = 1 << 0
	DataNoHole   = 1 << 1
	DataFastZero = 1 << 2
	DataNotLocal = 1 << 3 // the sender has no local copy: record it as missing there
)

// DataSize is the size of a Data header.
const DataSize = 24

// Data is the fixed part of Write, Trim, Zero and RSData.
type Data struct {
	ID    uint64
	Off   uint64
	Len   uint32
	Flags uint32
}

// Put renders d into b (at least DataSize bytes).
func (d *Data) Put(b []byte) {
	binary.BigEndian.PutUint64(b[0:], d.ID)
	binary.BigEndian.PutUint64(b[8:], d.Off)
	binary.BigEndian.PutUint32(b[16:], d.Len)
	binary.BigEndian.PutUint32(b[20:], d.Flags)
}

// DecodeData parses a data message; withPayload says whether Len bytes must follow.
func DecodeData(p []byte, withPayload bool) (Data, []byte, error) {
	if len(p) < DataSize {
		return Data{}, nil, protoErr("data message of %d bytes", len(p))
	}
	d := Data{
		ID:    binary.BigEndian.Uint64(p[0:]),
		Off:   binary.BigEndian.Uint64(p[8:]),
		Len:   binary.BigEndian.Uint32(p[16:]),
		Flags: binary.BigEndian.Uint32(p[20:]),
	}
	rest := p[DataSize:]
	if withPayload && len(rest) != int(d.Len) || !withPayload && len(rest) != 0 {
		return Data{}, nil, protoErr("data message length %d does not match payload of %d bytes", d.Len, len(rest))
	}
	if d.Flags&^(DataFUA|DataNoHole|DataFastZero|DataNotLocal) != 0 {
		return Data{}, nil, protoErr("unknown data flags %#x", d.Flags)
	}
	return d, rest, nil
}

// AckSize is the size of an Ack.
const AckSize = 12

// Ack acknowledges (or with a Code, refuses) the message with the same ID.
type Ack struct {
	ID   uint64
	Code uint32
}

func (a *Ack) Put(b []byte) {
	binary.BigEndian.PutUint64(b[0:], a.ID)
	binary.BigEndian.PutUint32(b[8:], a.Code)
}

func DecodeAck(p []byte) (Ack, error) {
	if len(p) != AckSize {
		return Ack{}, protoErr("ack of %d bytes", len(p))
	}
	return Ack{ID: binary.BigEndian.Uint64(p[0:]), Code: binary.BigEndian.Uint32(p[8:])}, nil
}

// MaxNodes and HistoryLen mirror the engine's limits on the wire.
const (
	MaxNodes   = 32
	HistoryLen = 8
)

// Handshake is one side's state, generations and connection settings.
type Handshake struct {
	NodeID   uint32
	Name     string
	Role     uint8
	Disk     uint8
	Current  uint64
	Bitmap   [MaxNodes]uint64
	History  [HistoryLen]uint64
	GenFlags uint32
	Dirty    uint64 // bits set in the sender's bitmap for the receiver
	Size     uint64 // data size in bytes
	Protocol uint8
	// Settings must be equal on both sides (after-sb policies etc.).
	Settings string
	Flags    uint32 // HandshakePrimaryConnected
}

// HandshakePrimaryConnected: the sender is connected to a Primary other than the receiver.
const HandshakePrimaryConnected = 1

func (h *Handshake) Encode() []byte {
	var e Enc
	e.U32(h.NodeID)
	e.Str(h.Name)
	e.U8(h.Role)
	e.U8(h.Disk)
	e.U64(h.Current)
	for _, b := range h.Bitmap {
		e.U64(b)
	}
	for _, x := range h.History {
		e.U64(x)
	}
	e.U32(h.GenFlags)
	e.U64(h.Dirty)
	e.U64(h.Size)
	e.U8(h.Protocol)
	e.Str(h.Settings)
	e.U32(h.Flags)
	return e.B
}

func DecodeHandshake(p []byte) (Handshake, error) {
	d := Dec{B: p}
	var h Handshake
	h.NodeID = d.U32()
	h.Name = d.Str()
	h.Role = d.U8()
	h.Disk = d.U8()
	h.Current = d.U64()
	for i := range h.Bitmap {
		h.Bitmap[i] = d.U64()
	}
	for i := range h.History {
		h.History[i] = d.U64()
	}
	h.GenFlags = d.U32()
	h.Dirty = d.U64()
	h.Size = d.U64()
	h.Protocol = d.U8()
	h.Settings = d.Str()
	h.Flags = d.U32()
	if err := d.End(); err != nil {
		return Handshake{}, err
	}
	if h.NodeID >= MaxNodes {
		return Handshake{}, protoErr("node id %d out of range", h.NodeID)
	}
	return h, nil
}

// BitmapChunk carries part of an RLE bitmap; Last marks the final chunk.
type BitmapChunk struct {
	Last bool
	Data []byte
}

func (b *BitmapChunk) Encode() []byte {
	var e Enc
	e.Bool(b.Last)
	e.Bytes(b.Data)
	return e.B
}

func DecodeBitmapChunk(p []byte) (BitmapChunk, error) {
	d := Dec{B: p}
	b := BitmapChunk{Last: d.Bool(), Data: d.Bytes()}
	return b, d.End()
}

// Generation carries a current generation (RSDone, NewUUID).
type Generation struct {
	Current uint64
	Prev    uint64 // NewUUID: the generation it replaces
	Flags   uint32
	History [HistoryLen]uint64 // RSDone: the source's history, which the target takes over
}

// GenSenderDiskless: the sender lost its disk and goes on without it; the receiver
// records what the sender's disk misses from now on.
const GenSenderDiskless = 1

// GenClearBitmap: new-current-uuid --clear-bitmap on a just-created resource; a
// just-created receiver adopts the generation as UpToDate, with nothing to resync.
const GenClearBitmap = 2

func (g *Generation) Encode() []byte {
	var e Enc
	e.U64(g.Current)
	e.U64(g.Prev)
	e.U32(g.Flags)
	for _, h := range g.History {
		e.U64(h)
	}
	return e.B
}

func DecodeGeneration(p []byte) (Generation, error) {
	d := Dec{B: p}
	g := Generation{Current: d.U64(), Prev: d.U64(), Flags: d.U32()}
	for i := range g.History {
		g.History[i] = d.U64()
	}
	return g, d.End()
}

// State announces the sender's role and disk state.
type State struct {
	Role uint8
	Disk uint8
}

func (s *State) Encode() []byte { return []byte{s.Role, s.Disk} }

func DecodeState(p []byte) (State, error) {
	if len(p) != 2 {
		return State{}, protoErr("state of %d bytes", len(p))
	}
	return State{Role: p[0], Disk: p[1]}, nil
}

// PromoteRequest asks the receiver's consent to become Primary. Current is the
// sender's current generation: a tiebreaker grants only data at least as new as the
// last Primary's it saw. An older peer sends the bare Ack (12 bytes).
type PromoteRequest struct {
	ID      uint64
	Current uint64
}

func (r *PromoteRequest) Encode() []byte {
	b := make([]byte, AckSize+8)
	a := Ack{ID: r.ID}
	a.Put(b)
	binary.BigEndian.PutUint64(b[AckSize:], r.Current)
	return b
}

func DecodePromoteRequest(p []byte) (PromoteRequest, error) {
	switch len(p) {
	case AckSize:
		a, err := DecodeAck(p)
		return PromoteRequest{ID: a.ID}, err
	case AckSize + 8:
		a, _ := DecodeAck(p[:AckSize])
		return PromoteRequest{ID: a.ID, Current: binary.BigEndian.Uint64(p[AckSize:])}, nil
	}
	return PromoteRequest{}, protoErr("promote request of %d bytes", len(p))
}

// Reply answers a request (PromoteReq, SyncRequest) by ID.
type Reply struct {
	ID     uint64
	OK     bool
	Reason string
}

func (r *Reply) Encode() []byte {
	var e Enc
	e.U64(r.ID)
	e.Bool(r.OK)
	e.Str(r.Reason)
	return e.B
}

func DecodeReply(p []byte) (Reply, error) {
	d := Dec{B: p}
	r := Reply{ID: d.U64(), OK: d.Bool(), Reason: d.Str()}
	return r, d.End()
}

// SyncRequest asks the receiver to take part in a full resync.
type SyncRequest struct {
	ID uint64
	// SenderIsSource: the sender will send (forced primary, invalidate-remote);
	// otherwise the sender wants to receive (invalidate).
	SenderIsSource bool
}

func (s *SyncRequest) Encode() []byte {
	var e Enc
	e.U64(s.ID)
	e.Bool(s.SenderIsSource)
	return e.B
}

func DecodeSyncRequest(p []byte) (SyncRequest, error) {
	d := Dec{B: p}
	s := SyncRequest{ID: d.U64(), SenderIsSource: d.Bool()}
	return s, d.End()
}

// Disconnect closes a connection on purpose.
type Disconnect struct {
	Reason string
}

func (m *Disconnect) Encode() []byte {
	var e Enc
	e.Str(m.Reason)
	return e.B
}

func DecodeDisconnect(p []byte) (Disconnect, error) {
	d := Dec{B: p}
	m := Disconnect{Reason: d.Str()}
	return m, d.End()
}
