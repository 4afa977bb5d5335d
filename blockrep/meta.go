package blockrep

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
)

// Meta is a node's metadata for one resource: the superblock, one bitmap per peer slot
// and the activity log's storage, on a metadata device (the backing device itself for
// internal metadata).
type Meta struct {
	dev Device
	geo Geometry

	mu sync.Mutex // serializes superblock and bitmap writes
	sb Superblock

	bitmaps []*Bitmap // per slot
	pageBuf []byte

	// failed: the device failed (on-io-error detach); metadata changes stay in memory.
	failed atomic.Bool
	// bmWrites counts bitmap pages written (bm-writes in status --statistics).
	bmWrites atomic.Int64
}

// NewUUID returns a random generation identifier, never 0 or UUIDJustCreated.
func NewUUID() uint64 {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic(err)
		}
		u := binary.LittleEndian.Uint64(b[:]) &^ UUIDPrimaryBit
		if u > UUIDJustCreated {
			return u
		}
	}
}

// CreateMetadata initializes metadata: Inconsistent data, generation UUIDJustCreated,
// empty bitmaps, empty activity log. peers are the peer node ids known now; spare slots
// stay free for peers added later.
func CreateMetadata(dev Device, geo Geometry, nodeID int, peers []int) error {
	if len(peers) > geo.MaxPeers {
		return fmt.Errorf("%d peers but metadata has %d peer slots", len(peers), geo.MaxPeers)
	}
	if nodeID < 0 || nodeID >= MaxNodes {
		return fmt.Errorf("node-id %d out of range", nodeID)
	}
	for i, p := range peers {
		if p < 0 || p >= MaxNodes || p == nodeID || slices.Contains(peers[:i], p) {
			return fmt.Errorf("bad peer node-id %d", p)
		}
	}
	sb := Superblock{NodeID: nodeID, DataSize: geo.DataSize, MaxPeers: geo.MaxPeers,
		DeviceUUID: NewUUID(), Current: UUIDJustCreated, Geometry: geo}
	for i := range sb.Peers {
		sb.Peers[i].NodeID = -1
	}
	for i, p := range peers {
		sb.Peers[i].NodeID = p
	}
	// Zero bitmaps and AL slots, then write both superblock slots.
	zero := make([]byte, 1<<20)
	zeroRange := func(off, n int64) error {
		for n > 0 {
			c := min(n, int64(len(zero)))
			if err := dev.WriteAt(zero[:c], off, 0); err != nil {
				return err
			}
			off, n = off+c, n-c
		}
		return nil
	}
	if err := zeroRange(geo.BMOffset, int64(geo.MaxPeers)*geo.BitmapBytes); err != nil {
		return err
	}
	if err := zeroRange(geo.ALOffset, 2*geo.ALSlotBytes); err != nil {
		return err
	}
	// Sequence s lives in slot s%2, as Update writes it.
	for seq := uint64(1); seq <= 2; seq++ {
		sb.Seq = seq
		if err := dev.WriteAt(EncodeSuperblock(&sb), geo.SBOffset+int64(seq%2)*sbSize, 0); err != nil {
			return err
		}
	}
	return dev.Flush()
}

// ReadSuperblock returns the newest valid superblock at the given offset.
func ReadSuperblock(dev Device, sbOffset int64) (*Superblock, error) {
	var best *Superblock
	var firstErr error
	buf := make([]byte, sbSize)
	for i := int64(0); i < 2; i++ {
		if sbOffset+(i+1)*sbSize > dev.Size() || sbOffset < 0 {
			return nil, fmt.Errorf("%w: device too small", ErrNoMetadata)
		}
		if err := dev.ReadAt(buf, sbOffset+i*sbSize); err != nil {
			return nil, err
		}
		sb, err := DecodeSuperblock(buf)
		if err != nil {
			if firstErr == nil || !errors.Is(err, ErrNoMetadata) {
				firstErr = err
			}
			continue
		}
		if best == nil || sb.Seq > best.Seq {
			best = sb
		}
	}
	if best == nil {
		return nil, firstErr
	}
	return best, nil
}

// InternalSBOffset is where internal metadata keeps its superblocks on a device of devSize bytes.
func InternalSBOffset(devSize int64) int64 { return devSize/BlockSize*BlockSize - 2*sbSize }

// OpenMeta reads and checks metadata and loads the bitmaps. want is the geometry the
// caller derived from its configuration; it must match what create-md wrote.
func OpenMeta(dev Device, want Geometry) (*Meta, error) {
	sb, err := ReadSuperblock(dev, want.SBOffset)
	if err != nil {
		return nil, err
	}
	g := sb.Geometry
	if g.Internal != want.Internal || g.BMOffset != want.BMOffset || g.ALOffset != want.ALOffset ||
		g.BitmapBytes != want.BitmapBytes || g.DataSize != want.DataSize {
		return nil, fmt.Errorf("metadata geometry does not match the device (was it resized, or created with other max-peers?): data %d vs %d bytes",
			g.DataSize, want.DataSize)
	}
	m := &Meta{dev: dev, geo: g, sb: *sb, pageBuf: make([]byte, pageSize)}
	img := make([]byte, g.BitmapBytes)
	for i := 0; i < g.MaxPeers; i++ {
		bm := NewBitmap(g.DataSize)
		if err := dev.ReadAt(img, g.BMOffset+int64(i)*g.BitmapBytes); err != nil {
			return nil, fmt.Errorf("reading bitmap slot %d: %w", i, err)
		}
		bm.load(img)
		m.bitmaps = append(m.bitmaps, bm)
	}
	return m, nil
}

// Geometry returns the metadata layout.
func (m *Meta) Geometry() Geometry { return m.geo }

// Superblock returns a copy of the in-memory superblock.
func (m *Meta) Superblock() Superblock {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sb
}

// Bitmap returns the bitmap of a slot.
func (m *Meta) Bitmap(slot int) *Bitmap { return m.bitmaps[slot] }

// Update applies fn to the superblock and writes it durably (to the older slot).
func (m *Meta) Update(fn func(sb *Superblock)) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	next := m.sb
	fn(&next)
	next.Seq = m.sb.Seq + 1
	if m.failed.Load() {
		m.sb = next
		return nil
	}
	if err := m.dev.WriteAt(EncodeSuperblock(&next), m.geo.SBOffset+int64(next.Seq%2)*sbSize, 0); err != nil {
		return err
	}
	if err := m.dev.Flush(); err != nil {
		return err
	}
	m.sb = next
	return nil
}

// WriteBitmaps writes every dirty bitmap page of every slot and makes them durable.
func (m *Meta) WriteBitmaps() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failed.Load() {
		return nil
	}
	wrote := false
	for i, bm := range m.bitmaps {
		pages := bm.dirtyPages()
		for j, p := range pages {
			bm.encodePage(p, m.pageBuf)
			if err := m.dev.WriteAt(m.pageBuf, m.geo.BMOffset+int64(i)*m.geo.BitmapBytes+p*pageSize, 0); err != nil {
				// Every page not written yet stays dirty, so a retry writes it.
				for _, q := range pages[j:] {
					bm.markDirty(q * wordsPerPage)
				}
				for _, later := range m.bitmaps[i+1:] {
					for _, q := range later.dirtyPages() {
						later.markDirty(q * wordsPerPage)
					}
				}
				return err
			}
			wrote = true
			m.bmWrites.Add(1)
		}
	}
	if wrote {
		return m.dev.Flush()
	}
	return nil
}

// readAL returns the newest valid activity-log transaction.
func (m *Meta) readAL() (seq uint64, extents []uint32, err error) {
	buf := make([]byte, m.geo.ALSlotBytes)
	found := false
	for i := int64(0); i < 2; i++ {
		if err := m.dev.ReadAt(buf, m.geo.ALOffset+i*m.geo.ALSlotBytes); err != nil {
			return 0, nil, err
		}
		if s, ex, ok := decodeALTransaction(buf); ok && (!found || s > seq) {
			seq, extents, found = s, ex, true
		}
	}
	return seq, extents, nil
}

// writeAL writes one activity-log transaction durably.
func (m *Meta) writeAL(img []byte, seq uint64) error {
	if m.failed.Load() {
		return nil
	}
	if err := m.dev.WriteAt(img, m.geo.ALOffset+int64(seq%2)*m.geo.ALSlotBytes, 0); err != nil {
		return err
	}
	return m.dev.Flush()
}
