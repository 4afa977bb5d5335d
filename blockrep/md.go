package blockrep

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// On-disk metadata. Internal metadata sits at the end of the backing device:
//
//	[ data | bitmap slot 0 .. slot maxPeers-1 | AL slot A | AL slot B | superblock A | superblock B ]
//
// External metadata uses the same regions from offset 0 of its own device, in reverse
// order: [ superblock A | superblock B | AL A | AL B | bitmaps ].
//
// Every metadata update is atomic: superblocks and activity-log transactions are written
// alternately to two slots, each with a sequence number and a CRC32C, and the newest
// slot that checks out wins. A torn write leaves the other slot, and so the previous
// state, intact.

const (
	// BlockSize is the bitmap granularity: one bit per 4 KiB per peer.
	BlockSize  = 4096
	blockShift = 12
	// ALExtentSize is the activity-log granularity.
	ALExtentSize  = 4 << 20
	alExtentShift = 22
	// MaxALExtents bounds the activity log (DRBD's effective maximum for its 32 KiB ring).
	MaxALExtents = 6433

	sbSize       = 4096
	sbMagic      = 0x424c4b5245504d44 // "BLKREPMD"
	sbVersion    = 1
	alMagic      = 0x414c5452 // "ALTR"
	alHeaderSize = 24
	pageSize     = 4096
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrNoMetadata means the device holds no valid blockrep metadata (create-md first).
var ErrNoMetadata = errors.New("no valid blockrep metadata")

// Geometry is where data and metadata live.
type Geometry struct {
	Internal    bool
	DataSize    int64 // bytes exported, a multiple of BlockSize
	MaxPeers    int
	BitmapBytes int64 // per peer slot, a multiple of pageSize
	ALSlotBytes int64
	// Offsets on the metadata device (the backing device itself when Internal).
	BMOffset, ALOffset, SBOffset int64
	MDSize                       int64
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

func bitmapBytes(dataSize int64) int64 {
	blocks := (dataSize + BlockSize - 1) / BlockSize
	return roundUp((blocks+63)/64*8, pageSize)
}

func alSlotBytes() int64 { return roundUp(alHeaderSize+4*MaxALExtents, pageSize) }

// InternalGeometry lays out metadata at the end of a device of devSize bytes.
func InternalGeometry(devSize int64, maxPeers int) (Geometry, error) {
	if maxPeers < 1 || maxPeers > MaxNodes-1 {
		return Geometry{}, fmt.Errorf("max-peers %d out of range 1..%d", maxPeers, MaxNodes-1)
	}
	g := Geometry{Internal: true, MaxPeers: maxPeers, ALSlotBytes: alSlotBytes()}
	// Size the bitmap for the whole device: an upper bound that avoids a fixed point.
	g.BitmapBytes = bitmapBytes(devSize)
	g.MDSize = int64(maxPeers)*g.BitmapBytes + 2*g.ALSlotBytes + 2*sbSize
	end := devSize / BlockSize * BlockSize
	g.SBOffset = end - 2*sbSize
	g.ALOffset = g.SBOffset - 2*g.ALSlotBytes
	g.BMOffset = g.ALOffset - int64(maxPeers)*g.BitmapBytes
	g.DataSize = g.BMOffset / BlockSize * BlockSize
	if g.DataSize < 1<<20 {
		return Geometry{}, fmt.Errorf("device of %d bytes is too small for internal metadata (%d bytes) and 1 MiB of data", devSize, g.MDSize)
	}
	return g, nil
}

// ExternalGeometry lays out metadata on its own device of mdDevSize bytes for dataSize bytes of data.
func ExternalGeometry(dataSize, mdDevSize int64, maxPeers int) (Geometry, error) {
	if maxPeers < 1 || maxPeers > MaxNodes-1 {
		return Geometry{}, fmt.Errorf("max-peers %d out of range 1..%d", maxPeers, MaxNodes-1)
	}
	g := Geometry{MaxPeers: maxPeers, ALSlotBytes: alSlotBytes(), DataSize: dataSize / BlockSize * BlockSize}
	g.BitmapBytes = bitmapBytes(g.DataSize)
	g.SBOffset = 0
	g.ALOffset = 2 * sbSize
	g.BMOffset = g.ALOffset + 2*g.ALSlotBytes
	g.MDSize = g.BMOffset + int64(maxPeers)*g.BitmapBytes
	if g.MDSize > mdDevSize {
		return Geometry{}, fmt.Errorf("meta-disk too small: %d bytes, need %d", mdDevSize, g.MDSize)
	}
	if g.DataSize < 1<<20 {
		return Geometry{}, fmt.Errorf("data device of %d bytes is too small", dataSize)
	}
	return g, nil
}

// MDFlags are node-level metadata flags.
type MDFlags uint32

const (
	MDConsistent  MDFlags = 1 << iota // data is not mid-resync nor never-synced
	MDWasUpToDate                     // data was UpToDate when last known
	MDOutdated                        // data is known to be older than a peer's
	MDPrimaryInd                      // node is (or was, at a crash) Primary
	MDUnclean                         // attached and possibly writing: a crash leaves this set
	MDNoAL                            // attached with al-updates no: a crash dirties everything
)

// PeerFlags are per peer-slot metadata flags.
type PeerFlags uint32

const (
	// PeerResyncPending: this slot's bits must be resynced even if generations match
	// (set after a crash, when the activity log was applied to the bitmap).
	PeerResyncPending PeerFlags = 1 << iota
	// PeerCrashedPrimary: that pending resync comes from our crash while Primary.
	PeerCrashedPrimary
	// PeerOutdated: the peer's data is known to be outdated.
	PeerOutdated
)

// PeerSlot is one peer's metadata: which node, its bitmap generation and flags.
type PeerSlot struct {
	NodeID     int // -1 = unused
	Flags      PeerFlags
	BitmapUUID uint64
}

// Superblock is the node's persistent state for one resource.
type Superblock struct {
	Seq        uint64
	Flags      MDFlags
	NodeID     int
	DataSize   int64
	MaxPeers   int
	DeviceUUID uint64
	Current    uint64
	History    [HistoryLen]uint64
	Peers      [MaxNodes - 1]PeerSlot // slot i owns bitmap slot i
	Geometry   Geometry               // copied into the superblock for validation
}

// Slot returns the slot index of a peer node, or -1.
func (sb *Superblock) Slot(nodeID int) int {
	for i := 0; i < sb.MaxPeers; i++ {
		if sb.Peers[i].NodeID == nodeID {
			return i
		}
	}
	return -1
}

// DiskStateFromFlags is the disk state a freshly attached device starts in.
func DiskStateFromFlags(f MDFlags) DiskState {
	switch {
	case f&MDConsistent == 0:
		return Inconsistent
	case f&MDOutdated != 0:
		return Outdated
	case f&MDWasUpToDate != 0:
		return UpToDate
	}
	return Consistent
}

// Superblock layout (big-endian).
const (
	offMagic     = 0
	offVersion   = 8
	offCRC       = 12
	offSeq       = 16
	offFlags     = 24
	offNodeID    = 28
	offDataSize  = 32
	offMaxPeers  = 40
	offInternal  = 44
	offDevUUID   = 48
	offCurrent   = 56
	offHistory   = 64
	offBMOff     = offHistory + 8*HistoryLen
	offALOff     = offBMOff + 8
	offSBOff     = offALOff + 8
	offBMBytes   = offSBOff + 8
	offALSlot    = offBMBytes + 8
	offMDSize    = offALSlot + 8
	offPeers     = offMDSize + 8
	peerSlotSize = 16
)

// EncodeSuperblock renders sb into a sbSize block with its CRC.
func EncodeSuperblock(sb *Superblock) []byte {
	b := make([]byte, sbSize)
	be := binary.BigEndian
	be.PutUint64(b[offMagic:], sbMagic)
	be.PutUint32(b[offVersion:], sbVersion)
	be.PutUint64(b[offSeq:], sb.Seq)
	be.PutUint32(b[offFlags:], uint32(sb.Flags))
	be.PutUint32(b[offNodeID:], uint32(sb.NodeID))
	be.PutUint64(b[offDataSize:], uint64(sb.DataSize))
	be.PutUint32(b[offMaxPeers:], uint32(sb.MaxPeers))
	if sb.Geometry.Internal {
		be.PutUint32(b[offInternal:], 1)
	}
	be.PutUint64(b[offDevUUID:], sb.DeviceUUID)
	be.PutUint64(b[offCurrent:], sb.Current)
	for i, h := range sb.History {
		be.PutUint64(b[offHistory+8*i:], h)
	}
	g := &sb.Geometry
	be.PutUint64(b[offBMOff:], uint64(g.BMOffset))
	be.PutUint64(b[offALOff:], uint64(g.ALOffset))
	be.PutUint64(b[offSBOff:], uint64(g.SBOffset))
	be.PutUint64(b[offBMBytes:], uint64(g.BitmapBytes))
	be.PutUint64(b[offALSlot:], uint64(g.ALSlotBytes))
	be.PutUint64(b[offMDSize:], uint64(g.MDSize))
	for i, p := range sb.Peers {
		o := offPeers + peerSlotSize*i
		be.PutUint32(b[o:], uint32(int32(p.NodeID)))
		be.PutUint32(b[o+4:], uint32(p.Flags))
		be.PutUint64(b[o+8:], p.BitmapUUID)
	}
	be.PutUint32(b[offCRC:], crc32.Checksum(b, castagnoli))
	return b
}

// DecodeSuperblock parses and verifies one superblock slot.
func DecodeSuperblock(b []byte) (*Superblock, error) {
	if len(b) != sbSize {
		return nil, fmt.Errorf("superblock: %d bytes, want %d", len(b), sbSize)
	}
	be := binary.BigEndian
	if be.Uint64(b[offMagic:]) != sbMagic {
		return nil, fmt.Errorf("%w: bad magic", ErrNoMetadata)
	}
	if v := be.Uint32(b[offVersion:]); v != sbVersion {
		return nil, fmt.Errorf("superblock version %d not supported (want %d)", v, sbVersion)
	}
	want := be.Uint32(b[offCRC:])
	c := crc32.Update(0, castagnoli, b[:offCRC])
	c = crc32.Update(c, castagnoli, []byte{0, 0, 0, 0})
	c = crc32.Update(c, castagnoli, b[offCRC+4:])
	if c != want {
		return nil, fmt.Errorf("%w: superblock checksum mismatch", ErrNoMetadata)
	}
	sb := &Superblock{
		Seq:        be.Uint64(b[offSeq:]),
		Flags:      MDFlags(be.Uint32(b[offFlags:])),
		NodeID:     int(be.Uint32(b[offNodeID:])),
		DataSize:   int64(be.Uint64(b[offDataSize:])),
		MaxPeers:   int(be.Uint32(b[offMaxPeers:])),
		DeviceUUID: be.Uint64(b[offDevUUID:]),
		Current:    be.Uint64(b[offCurrent:]),
	}
	for i := range sb.History {
		sb.History[i] = be.Uint64(b[offHistory+8*i:])
	}
	g := &sb.Geometry
	g.Internal = be.Uint32(b[offInternal:]) == 1
	g.DataSize, g.MaxPeers = sb.DataSize, sb.MaxPeers
	g.BMOffset = int64(be.Uint64(b[offBMOff:]))
	g.ALOffset = int64(be.Uint64(b[offALOff:]))
	g.SBOffset = int64(be.Uint64(b[offSBOff:]))
	g.BitmapBytes = int64(be.Uint64(b[offBMBytes:]))
	g.ALSlotBytes = int64(be.Uint64(b[offALSlot:]))
	g.MDSize = int64(be.Uint64(b[offMDSize:]))
	for i := range sb.Peers {
		o := offPeers + peerSlotSize*i
		sb.Peers[i] = PeerSlot{
			NodeID:     int(int32(be.Uint32(b[o:]))),
			Flags:      PeerFlags(be.Uint32(b[o+4:])),
			BitmapUUID: be.Uint64(b[o+8:]),
		}
	}
	if err := sb.validate(); err != nil {
		return nil, err
	}
	return sb, nil
}

func (sb *Superblock) validate() error {
	g := &sb.Geometry
	switch {
	case sb.NodeID < 0 || sb.NodeID >= MaxNodes:
		return fmt.Errorf("superblock: node-id %d out of range", sb.NodeID)
	case sb.MaxPeers < 1 || sb.MaxPeers > MaxNodes-1:
		return fmt.Errorf("superblock: max-peers %d out of range", sb.MaxPeers)
	case sb.DataSize <= 0 || sb.DataSize%BlockSize != 0:
		return fmt.Errorf("superblock: bad data size %d", sb.DataSize)
	case g.BitmapBytes < bitmapBytes(sb.DataSize) || g.BitmapBytes%pageSize != 0:
		return fmt.Errorf("superblock: bitmap of %d bytes too small for %d bytes of data", g.BitmapBytes, sb.DataSize)
	case g.ALSlotBytes != alSlotBytes():
		return fmt.Errorf("superblock: bad activity-log size %d", g.ALSlotBytes)
	case g.BMOffset < 0 || g.ALOffset < 0 || g.SBOffset < 0:
		return fmt.Errorf("superblock: bad offsets")
	}
	for i := 0; i < sb.MaxPeers; i++ {
		if n := sb.Peers[i].NodeID; n < -1 || n >= MaxNodes || n == sb.NodeID {
			return fmt.Errorf("superblock: peer slot %d has bad node-id %d", i, n)
		}
	}
	return nil
}

// encodeALTransaction renders the set of active extents into an AL slot image.
func encodeALTransaction(seq uint64, extents []uint32, buf []byte) []byte {
	n := alHeaderSize + 4*len(extents)
	size := int(roundUp(int64(n), pageSize))
	if cap(buf) < size {
		buf = make([]byte, size)
	}
	b := buf[:size]
	clear(b)
	be := binary.BigEndian
	be.PutUint32(b[0:], alMagic)
	be.PutUint64(b[8:], seq)
	be.PutUint32(b[16:], uint32(len(extents)))
	for i, e := range extents {
		be.PutUint32(b[alHeaderSize+4*i:], e)
	}
	be.PutUint32(b[4:], crc32.Checksum(b[:n], castagnoli))
	return b
}

// decodeALTransaction parses an AL slot image; ok is false for a torn or empty slot.
func decodeALTransaction(b []byte) (seq uint64, extents []uint32, ok bool) {
	if len(b) < alHeaderSize {
		return 0, nil, false
	}
	be := binary.BigEndian
	if be.Uint32(b[0:]) != alMagic {
		return 0, nil, false
	}
	cnt := int(be.Uint32(b[16:]))
	if cnt > MaxALExtents || alHeaderSize+4*cnt > len(b) {
		return 0, nil, false
	}
	n := alHeaderSize + 4*cnt
	want := be.Uint32(b[4:])
	c := crc32.Update(0, castagnoli, b[:4])
	c = crc32.Update(c, castagnoli, []byte{0, 0, 0, 0})
	c = crc32.Update(c, castagnoli, b[8:n])
	if c != want {
		return 0, nil, false
	}
	extents = make([]uint32, cnt)
	for i := range extents {
		extents[i] = be.Uint32(b[alHeaderSize+4*i:])
	}
	return be.Uint64(b[8:]), extents, true
}
