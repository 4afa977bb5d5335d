package blockrep

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
)

// hookDev wraps a Device and lets a test see, replace (torn write) or fail writes.
type hookDev struct {
	Device
	mu      sync.Mutex
	writes  []hookWrite
	onWrite func(p []byte, off int64) ([]byte, error) // nil result: write p unchanged
}

type hookWrite struct{ off, n int64 }

func (d *hookDev) WriteAt(p []byte, off int64, flags ReqFlags) error {
	d.mu.Lock()
	d.writes = append(d.writes, hookWrite{off, int64(len(p))})
	hook := d.onWrite
	d.mu.Unlock()
	if hook != nil {
		q, err := hook(p, off)
		if err != nil {
			return err
		}
		if q != nil {
			p = q
		}
	}
	return d.Device.WriteAt(p, off, flags)
}

func (d *hookDev) setHook(h func(p []byte, off int64) ([]byte, error)) {
	d.mu.Lock()
	d.onWrite = h
	d.mu.Unlock()
}

// writesIn returns the writes that overlap [off, off+n), and forgets all writes.
func (d *hookDev) takeWritesIn(off, n int64) []hookWrite {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []hookWrite
	for _, w := range d.writes {
		if w.off < off+n && off < w.off+w.n {
			out = append(out, w)
		}
	}
	d.writes = nil
	return out
}

var errInjectedWrite = errors.New("injected write error")

func junkBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	return b
}

// newInternalMeta creates internal metadata on a fresh memory device and opens it.
func newInternalMeta(t *testing.T, devSize int64, maxPeers int, peers ...int) (*hookDev, Geometry, *Meta) {
	t.Helper()
	geo, err := InternalGeometry(devSize, maxPeers)
	if err != nil {
		t.Fatal(err)
	}
	dev := &hookDev{Device: NewMemDevice(devSize)}
	if err := CreateMetadata(dev, geo, 0, peers); err != nil {
		t.Fatal(err)
	}
	m, err := OpenMeta(dev, geo)
	if err != nil {
		t.Fatal(err)
	}
	return dev, geo, m
}

// newExternalMeta creates external metadata for dataSize bytes of data; only the
// metadata device exists, so large data sizes cost little memory.
func newExternalMeta(t *testing.T, dataSize int64, maxPeers int, peers ...int) (*hookDev, Geometry, *Meta) {
	t.Helper()
	probe, err := ExternalGeometry(dataSize, 1<<40, maxPeers)
	if err != nil {
		t.Fatal(err)
	}
	geo, err := ExternalGeometry(dataSize, probe.MDSize, maxPeers)
	if err != nil {
		t.Fatal(err)
	}
	dev := &hookDev{Device: NewMemDevice(geo.MDSize)}
	if err := CreateMetadata(dev, geo, 0, peers); err != nil {
		t.Fatal(err)
	}
	m, err := OpenMeta(dev, geo)
	if err != nil {
		t.Fatal(err)
	}
	return dev, geo, m
}

func aligned(n int64) bool { return n%BlockSize == 0 }

func TestInternalGeometryPutsMetadataAfterTheData(t *testing.T) {
	for _, devSize := range []int64{2 << 20, 2<<20 + 12345, 64 << 20, 1<<30 + 511, 1 << 40, 16 << 40} {
		for _, peers := range []int{1, 2, 7, MaxNodes - 1} {
			g, err := InternalGeometry(devSize, peers)
			if err != nil {
				if devSize >= 64<<20 {
					t.Errorf("InternalGeometry(%d, %d): %v", devSize, peers, err)
				}
				continue
			}
			bad := func(what string) {
				t.Errorf("InternalGeometry(%d, %d) = %+v: %s", devSize, peers, g, what)
			}
			switch {
			case !g.Internal || g.MaxPeers != peers:
				bad("not internal / wrong max-peers")
			case !aligned(g.DataSize) || !aligned(g.BMOffset) || !aligned(g.ALOffset) || !aligned(g.SBOffset) || g.BitmapBytes%pageSize != 0:
				bad("not 4 KiB aligned")
			case g.DataSize < 1<<20 || g.DataSize > g.BMOffset:
				bad("data overlaps the bitmaps")
			case g.BMOffset+int64(peers)*g.BitmapBytes != g.ALOffset:
				bad("bitmaps do not end where the activity log starts")
			case g.ALOffset+2*g.ALSlotBytes != g.SBOffset:
				bad("activity log does not end where the superblocks start")
			case g.SBOffset+2*sbSize > devSize || g.SBOffset != InternalSBOffset(devSize):
				bad("superblocks not at the last 4 KiB-aligned blocks")
			case g.BitmapBytes < bitmapBytes(g.DataSize):
				bad("bitmap slot too small for the data")
			case g.ALSlotBytes < alHeaderSize+4*MaxALExtents:
				bad("activity-log slot cannot hold MaxALExtents")
			case g.MDSize != int64(peers)*g.BitmapBytes+2*g.ALSlotBytes+2*sbSize || g.DataSize+g.MDSize > devSize:
				bad("metadata size does not add up")
			}
		}
	}
	// 1 bit per 4 KiB per peer: 1 TiB with one peer needs 32 MiB of bitmap.
	if g, _ := InternalGeometry(1<<40, 1); g.BitmapBytes != 32<<20 {
		t.Errorf("1 TiB bitmap = %d bytes, want 32 MiB", g.BitmapBytes)
	}
	for _, c := range []struct {
		size  int64
		peers int
		msg   string
	}{
		{64 << 20, 0, "max-peers 0 out of range"},
		{64 << 20, MaxNodes, "max-peers 32 out of range"},
		{1 << 20, 1, "too small"},
		{100 << 10, 1, "too small"},
	} {
		if _, err := InternalGeometry(c.size, c.peers); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("InternalGeometry(%d, %d) error %v, want %q", c.size, c.peers, err, c.msg)
		}
	}
}

func TestExternalGeometryPutsSuperblocksFirst(t *testing.T) {
	g, err := ExternalGeometry(64<<20+100, 1<<30, 2)
	if err != nil {
		t.Fatal(err)
	}
	want := Geometry{Internal: false, DataSize: 64 << 20, MaxPeers: 2, BitmapBytes: 4096, ALSlotBytes: alSlotBytes(),
		SBOffset: 0, ALOffset: 2 * sbSize, BMOffset: 2*sbSize + 2*alSlotBytes()}
	want.MDSize = want.BMOffset + 2*4096
	if g != want {
		t.Fatalf("ExternalGeometry = %+v\nwant %+v", g, want)
	}
	if _, err := ExternalGeometry(64<<20, want.MDSize, 2); err != nil {
		t.Errorf("a meta-disk of exactly MDSize is enough: %v", err)
	}
	for _, c := range []struct {
		data, md int64
		peers    int
		msg      string
	}{
		{64 << 20, want.MDSize - 1, 2, "meta-disk too small"},
		{1<<20 - 1, 1 << 30, 2, "too small"},
		{64 << 20, 1 << 30, 0, "out of range"},
		{64 << 20, 1 << 30, 32, "out of range"},
	} {
		if _, err := ExternalGeometry(c.data, c.md, c.peers); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("ExternalGeometry(%d, %d, %d) error %v, want %q", c.data, c.md, c.peers, err, c.msg)
		}
	}
}

// sampleSuperblock has every field set to a distinct value.
func sampleSuperblock(t *testing.T) *Superblock {
	t.Helper()
	g, err := InternalGeometry(64<<20, 3)
	if err != nil {
		t.Fatal(err)
	}
	sb := &Superblock{Seq: 0x0102030405060708, Flags: MDConsistent | MDWasUpToDate | MDUnclean, NodeID: 5,
		DataSize: g.DataSize, MaxPeers: 3, DeviceUUID: 0xDEADBEEFCAFEF00D, Current: pri(uB), Geometry: g}
	for i := range sb.History {
		sb.History[i] = uint64(0x1000 + 2*i)
	}
	for i := range sb.Peers {
		sb.Peers[i] = PeerSlot{NodeID: -1}
	}
	sb.Peers[0] = PeerSlot{NodeID: 1, Flags: PeerResyncPending | PeerCrashedPrimary, BitmapUUID: pri(uA)}
	sb.Peers[1] = PeerSlot{NodeID: 31, Flags: PeerOutdated, BitmapUUID: uC}
	sb.Peers[2] = PeerSlot{NodeID: -1}
	return sb
}

func TestSuperblockRoundTrip(t *testing.T) {
	sb := sampleSuperblock(t)
	img := EncodeSuperblock(sb)
	if len(img) != sbSize {
		t.Fatalf("encoded %d bytes, want %d", len(img), sbSize)
	}
	got, err := DecodeSuperblock(img)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, sb) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, sb)
	}
	if !bytes.Equal(EncodeSuperblock(got), img) {
		t.Fatal("re-encoding a decoded superblock changes the image")
	}
}

func TestDecodeSuperblockRejectsDamage(t *testing.T) {
	img := EncodeSuperblock(sampleSuperblock(t))
	for _, c := range []struct {
		name       string
		off        int
		noMetadata bool // errors.Is(err, ErrNoMetadata)
	}{
		{"magic", offMagic + 3, true},
		{"checksum", offCRC, true},
		{"sequence number", offSeq + 7, true},
		{"current generation", offCurrent, true},
		{"a history generation", offHistory + 8*HistoryLen - 1, true},
		{"a peer slot", offPeers + 5, true},
		{"the last byte of the block", sbSize - 1, true},
		{"version", offVersion + 3, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			bad := slices.Clone(img)
			bad[c.off] ^= 0x10
			sb, err := DecodeSuperblock(bad)
			if err == nil {
				t.Fatalf("decoded a damaged superblock: %+v", sb)
			}
			if errors.Is(err, ErrNoMetadata) != c.noMetadata {
				t.Fatalf("error %q: errors.Is(ErrNoMetadata) = %v, want %v", err, !c.noMetadata, c.noMetadata)
			}
		})
	}
	for _, n := range []int{0, sbSize - 1, sbSize + 1} {
		if _, err := DecodeSuperblock(make([]byte, n)); err == nil {
			t.Errorf("decoded %d bytes", n)
		}
	}
	if _, err := DecodeSuperblock(make([]byte, sbSize)); !errors.Is(err, ErrNoMetadata) {
		t.Errorf("a zeroed block: %v, want ErrNoMetadata", err)
	}
}

func TestDecodeSuperblockValidatesFields(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(sb *Superblock)
		msg  string
	}{
		{"node id too large", func(sb *Superblock) { sb.NodeID = MaxNodes }, "node-id"},
		{"node id negative", func(sb *Superblock) { sb.NodeID = -1 }, "node-id"},
		{"no peer slots", func(sb *Superblock) { sb.MaxPeers = 0 }, "max-peers"},
		{"too many peer slots", func(sb *Superblock) { sb.MaxPeers = MaxNodes }, "max-peers"},
		{"unaligned data size", func(sb *Superblock) { sb.DataSize += 512 }, "data size"},
		{"no data", func(sb *Superblock) { sb.DataSize = 0 }, "data size"},
		{"bitmap too small for the data", func(sb *Superblock) { sb.DataSize = 1 << 40 }, "bitmap"},
		{"unaligned bitmap slot", func(sb *Superblock) { sb.Geometry.BitmapBytes += 8 }, "bitmap"},
		{"activity log of another size", func(sb *Superblock) { sb.Geometry.ALSlotBytes += pageSize }, "activity-log"},
		{"negative offset", func(sb *Superblock) { sb.Geometry.ALOffset = -4096 }, "offsets"},
		{"a peer slot naming ourselves", func(sb *Superblock) { sb.Peers[1].NodeID = sb.NodeID }, "peer slot 1"},
		{"a peer slot with a bad node id", func(sb *Superblock) { sb.Peers[2].NodeID = MaxNodes }, "peer slot 2"},
		{"a peer slot below -1", func(sb *Superblock) { sb.Peers[0].NodeID = -2 }, "peer slot 0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			sb := sampleSuperblock(t)
			c.edit(sb)
			got, err := DecodeSuperblock(EncodeSuperblock(sb))
			if err == nil || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("decode: %+v, error %v, want one containing %q", got, err, c.msg)
			}
		})
	}
	// Slots beyond max-peers are not in use and not checked.
	sb := sampleSuperblock(t)
	sb.Peers[20].NodeID = 12345
	if _, err := DecodeSuperblock(EncodeSuperblock(sb)); err != nil {
		t.Errorf("an unused slot beyond max-peers was validated: %v", err)
	}
}

// writeSlot writes a superblock image into slot i at sbOffset.
func writeSlot(t *testing.T, dev Device, sbOffset int64, i int, img []byte) {
	t.Helper()
	if err := dev.WriteAt(img, sbOffset+int64(i)*sbSize, 0); err != nil {
		t.Fatal(err)
	}
}

func TestReadSuperblockPicksTheNewestValidSlot(t *testing.T) {
	dev := NewMemDevice(64 << 10)
	const at = 16 << 10
	withSeq := func(seq uint64, cur uint64) []byte {
		sb := sampleSuperblock(t)
		sb.Seq, sb.Current = seq, cur
		return EncodeSuperblock(sb)
	}
	writeSlot(t, dev, at, 0, withSeq(7, uB))
	writeSlot(t, dev, at, 1, withSeq(5, uA))
	if sb, err := ReadSuperblock(dev, at); err != nil || sb.Seq != 7 || sb.Current != uB {
		t.Fatalf("newest in slot 0: %+v, %v", sb, err)
	}
	writeSlot(t, dev, at, 1, withSeq(8, uC))
	if sb, err := ReadSuperblock(dev, at); err != nil || sb.Seq != 8 || sb.Current != uC {
		t.Fatalf("newest in slot 1: %+v, %v", sb, err)
	}
	writeSlot(t, dev, at, 1, junkBytes(sbSize))
	if sb, err := ReadSuperblock(dev, at); err != nil || sb.Seq != 7 {
		t.Fatalf("torn slot 1: %+v, %v; want the older slot 0", sb, err)
	}
	writeSlot(t, dev, at, 0, make([]byte, sbSize))
	if sb, err := ReadSuperblock(dev, at); !errors.Is(err, ErrNoMetadata) {
		t.Fatalf("both slots bad: %+v, %v; want ErrNoMetadata", sb, err)
	}
	if _, err := ReadSuperblock(dev, 64<<10-sbSize); !errors.Is(err, ErrNoMetadata) {
		t.Fatalf("slots beyond the device: %v, want ErrNoMetadata", err)
	}
	if _, err := ReadSuperblock(dev, -sbSize); !errors.Is(err, ErrNoMetadata) {
		t.Fatalf("negative offset: %v, want ErrNoMetadata", err)
	}
	// A slot of a newer format is reported as such, not as missing metadata.
	newer := withSeq(9, uD)
	binary.BigEndian.PutUint32(newer[offVersion:], sbVersion+1)
	writeSlot(t, dev, at, 0, newer)
	if _, err := ReadSuperblock(dev, at); err == nil || errors.Is(err, ErrNoMetadata) || !strings.Contains(err.Error(), "version") {
		t.Fatalf("newer format: %v", err)
	}
}

func TestCreateMetadataStartsInconsistentAndJustCreated(t *testing.T) {
	dev, geo, m := newInternalMeta(t, 64<<20, 3, 1, 2)
	sb := m.Superblock()
	if sb.Current != UUIDJustCreated || sb.NodeID != 0 || sb.DataSize != geo.DataSize || sb.MaxPeers != 3 {
		t.Fatalf("created superblock: %+v", sb)
	}
	if sb.DeviceUUID == 0 || sb.History != ([HistoryLen]uint64{}) {
		t.Fatalf("device uuid %x, history %x", sb.DeviceUUID, sb.History)
	}
	if DiskStateFromFlags(sb.Flags) != Inconsistent {
		t.Fatalf("fresh metadata attaches as %v, want Inconsistent", DiskStateFromFlags(sb.Flags))
	}
	if sb.Slot(1) != 0 || sb.Slot(2) != 1 || sb.Slot(5) != -1 || sb.Peers[2].NodeID != -1 {
		t.Fatalf("peer slots: %+v", sb.Peers[:3])
	}
	for i := 0; i < 3; i++ {
		if m.Bitmap(i).Count() != 0 || m.Bitmap(i).Bits() != geo.DataSize/BlockSize {
			t.Fatalf("bitmap slot %d: Count %d Bits %d", i, m.Bitmap(i).Count(), m.Bitmap(i).Bits())
		}
	}
	if m.Geometry() != geo {
		t.Fatalf("Geometry() = %+v", m.Geometry())
	}
	// Another configuration must not open this metadata.
	other, _ := InternalGeometry(64<<20, 2)
	other.SBOffset = geo.SBOffset
	if _, err := OpenMeta(dev, other); err == nil {
		t.Fatal("opened metadata created with other max-peers")
	}
	if err := CreateMetadata(NewMemDevice(64<<20), geo, 0, []int{1, 2, 3, 4}); err == nil {
		t.Fatal("created metadata with more peers than slots")
	}
	if _, err := OpenMeta(NewMemDevice(64<<20), geo); !errors.Is(err, ErrNoMetadata) {
		t.Fatalf("OpenMeta on an empty device: %v, want ErrNoMetadata", err)
	}
}

func TestCreateMetadataClearsOldBitmapsAndActivityLog(t *testing.T) {
	geo, _ := InternalGeometry(64<<20, 2)
	mem := NewMemDevice(64 << 20)
	// Leftovers of an earlier life.
	if err := mem.WriteAt(bytes.Repeat([]byte{0xff}, int(geo.SBOffset-geo.BMOffset)), geo.BMOffset, 0); err != nil {
		t.Fatal(err)
	}
	if err := CreateMetadata(mem, geo, 0, []int{1}); err != nil {
		t.Fatal(err)
	}
	m, err := OpenMeta(mem, geo)
	if err != nil {
		t.Fatal(err)
	}
	if m.Bitmap(0).Count() != 0 || m.Bitmap(1).Count() != 0 {
		t.Fatal("create-md kept old bitmap bits")
	}
	if _, hot, err := m.readAL(); err != nil || len(hot) != 0 {
		t.Fatalf("create-md kept an activity log: %v %v", hot, err)
	}
}

func TestUpdateIsDurableAndSurvivesReopen(t *testing.T) {
	dev, geo, m := newInternalMeta(t, 64<<20, 2, 1)
	flushes := dev.Device.(*MemDevice).Flushes
	for i, u := range []uint64{uA, uB, uC} {
		err := m.Update(func(sb *Superblock) {
			pushHistory(&sb.History, sb.Current)
			sb.Current = u
			sb.Flags |= MDConsistent | MDWasUpToDate
			sb.Peers[0].BitmapUUID = uint64(i + 1)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if dev.Device.(*MemDevice).Flushes < flushes+3 {
		t.Fatal("Update does not flush")
	}
	m2, err := OpenMeta(dev, geo)
	if err != nil {
		t.Fatal(err)
	}
	got := m2.Superblock()
	if got.Current != uC || got.History[0] != uB || got.History[1] != uA || got.Peers[0].BitmapUUID != 3 {
		t.Fatalf("reopened: current %x history %x bitmap %x", got.Current, got.History[:3], got.Peers[0].BitmapUUID)
	}
	if got != m.Superblock() {
		t.Fatalf("reopened superblock differs from the in-memory one:\n%+v\n%+v", got, m.Superblock())
	}
	if DiskStateFromFlags(got.Flags) != UpToDate {
		t.Fatalf("disk state %v", DiskStateFromFlags(got.Flags))
	}
}

// slotSeqs decodes both superblock slots; -1 for an invalid one.
func slotSeqs(t *testing.T, dev Device, geo Geometry) [2]int64 {
	t.Helper()
	var out [2]int64
	buf := make([]byte, sbSize)
	for i := range out {
		if err := dev.ReadAt(buf, geo.SBOffset+int64(i)*sbSize); err != nil {
			t.Fatal(err)
		}
		out[i] = -1
		if sb, err := DecodeSuperblock(buf); err == nil {
			out[i] = int64(sb.Seq)
		}
	}
	return out
}

func TestTornSuperblockWriteFallsBackToThePreviousState(t *testing.T) {
	dev, geo, m := newInternalMeta(t, 64<<20, 2, 1)
	for _, u := range []uint64{uA, uB, uC} {
		if err := m.Update(func(sb *Superblock) { sb.Current = u }); err != nil {
			t.Fatal(err)
		}
	}
	seqs := slotSeqs(t, dev, geo)
	newest := 0
	if seqs[1] > seqs[0] {
		newest = 1
	}
	writeSlot(t, dev, geo.SBOffset, newest, junkBytes(sbSize))
	m2, err := OpenMeta(dev, geo)
	if err != nil {
		t.Fatal(err)
	}
	if got := m2.Superblock().Current; got != uB {
		t.Fatalf("after tearing the newest slot: current %x, want the previous state %x", got, uB)
	}
	// The reopened metadata keeps working: the next update lands in the torn slot.
	if err := m2.Update(func(sb *Superblock) { sb.Current = uD }); err != nil {
		t.Fatal(err)
	}
	m3, err := OpenMeta(dev, geo)
	if err != nil || m3.Superblock().Current != uD {
		t.Fatalf("after the next update: %v", err)
	}
	writeSlot(t, dev, geo.SBOffset, 1-newest, junkBytes(sbSize))
	writeSlot(t, dev, geo.SBOffset, newest, junkBytes(sbSize))
	if _, err := OpenMeta(dev, geo); !errors.Is(err, ErrNoMetadata) {
		t.Fatalf("both slots torn: %v, want ErrNoMetadata", err)
	}
}

func TestTornUpdateLeavesThePreviousStateReadable(t *testing.T) {
	dev, geo, m := newInternalMeta(t, 64<<20, 2, 1)
	for _, u := range []uint64{uA, uB} {
		if err := m.Update(func(sb *Superblock) { sb.Current = u }); err != nil {
			t.Fatal(err)
		}
	}
	// The crash tears the next superblock write: only its first 512 bytes land.
	dev.setHook(func(p []byte, off int64) ([]byte, error) {
		if off >= geo.SBOffset {
			torn := make([]byte, len(p))
			copy(torn, p[:512])
			return torn, nil
		}
		return nil, nil
	})
	if err := m.Update(func(sb *Superblock) { sb.Current = uC }); err != nil {
		t.Fatal(err)
	}
	dev.setHook(nil)
	m2, err := OpenMeta(dev, geo)
	if err != nil {
		t.Fatal(err)
	}
	if got := m2.Superblock().Current; got != uB {
		t.Fatalf("after a torn update: current %x, want %x", got, uB)
	}
}

// TestUpdateNeverOverwritesTheNewestSlot: "A torn write leaves the other slot, and so the
// previous state, intact" (md.go). CreateMetadata writes seq 1 to slot 0 and seq 2 to
// slot 1, but Update writes seq s to slot s%2: the first update (seq 3) overwrites slot
// 1, the newest. After a torn first update the node falls back to seq 1 in slot 0, and
// the next update (seq 2 → slot 0) overwrites the only valid copy: a second torn write
// leaves no metadata at all.
func TestUpdateNeverOverwritesTheNewestSlot(t *testing.T) {
	t.Run("no update overwrites the newest slot", func(t *testing.T) {
		dev, geo, m := newInternalMeta(t, 64<<20, 2, 1)
		for i := 0; i < 4; i++ {
			seqs := slotSeqs(t, dev, geo)
			newest := 0
			if seqs[1] > seqs[0] {
				newest = 1
			}
			before := make([]byte, sbSize)
			if err := dev.ReadAt(before, geo.SBOffset+int64(newest)*sbSize); err != nil {
				t.Fatal(err)
			}
			if err := m.Update(func(sb *Superblock) { sb.Current = uint64(0x100 + 2*i) }); err != nil {
				t.Fatal(err)
			}
			after := make([]byte, sbSize)
			if err := dev.ReadAt(after, geo.SBOffset+int64(newest)*sbSize); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(before, after) {
				t.Fatalf("update %d overwrote the newest slot %d (seqs before: %v)", i+1, newest, seqs)
			}
		}
	})
	t.Run("two torn updates in a row after create-md keep the created state", func(t *testing.T) {
		dev, geo, m := newInternalMeta(t, 64<<20, 2, 1)
		tear := func(p []byte, off int64) ([]byte, error) {
			if off >= geo.SBOffset {
				return junkBytes(len(p)), nil
			}
			return nil, nil
		}
		dev.setHook(tear)
		if err := m.Update(func(sb *Superblock) { sb.Current = uA }); err != nil {
			t.Fatal(err)
		}
		dev.setHook(nil)
		m, err := OpenMeta(dev, geo)
		if err != nil {
			t.Fatalf("after one torn update: %v", err)
		}
		dev.setHook(tear)
		if err := m.Update(func(sb *Superblock) { sb.Current = uB }); err != nil {
			t.Fatal(err)
		}
		dev.setHook(nil)
		if _, err := OpenMeta(dev, geo); err != nil {
			t.Fatalf("after a second torn update the previous state is gone: %v", err)
		}
	})
}

func TestWriteBitmapsWritesOnlyDirtyPagesAndReloads(t *testing.T) {
	dev, geo, m := newExternalMeta(t, 3*bitmapPageSpan, 2, 1, 2)
	bmRegion := int64(geo.MaxPeers) * geo.BitmapBytes
	dev.takeWritesIn(0, 0)
	m.Bitmap(0).SetRange(5*BlockSize, 3*BlockSize)
	m.Bitmap(0).SetRange(2*bitmapPageSpan+BlockSize, BlockSize)
	m.Bitmap(1).SetRange(bitmapPageSpan, 1)
	if err := m.WriteBitmaps(); err != nil {
		t.Fatal(err)
	}
	wantWrites := []hookWrite{
		{geo.BMOffset, pageSize},
		{geo.BMOffset + 2*pageSize, pageSize},
		{geo.BMOffset + geo.BitmapBytes + pageSize, pageSize},
	}
	if got := dev.takeWritesIn(geo.BMOffset, bmRegion); !slices.Equal(got, wantWrites) {
		t.Fatalf("bitmap writes %v, want %v", got, wantWrites)
	}
	flushes := dev.Device.(*MemDevice).Flushes
	if err := m.WriteBitmaps(); err != nil {
		t.Fatal(err)
	}
	if got := dev.takeWritesIn(0, 1<<62); len(got) != 0 || dev.Device.(*MemDevice).Flushes != flushes {
		t.Fatalf("a clean writeback wrote %v / flushed", got)
	}
	m2, err := OpenMeta(dev, geo)
	if err != nil {
		t.Fatal(err)
	}
	for slot := 0; slot < 2; slot++ {
		if got, want := setBlocks(m2.Bitmap(slot)), setBlocks(m.Bitmap(slot)); !slices.Equal(got, want) {
			t.Fatalf("slot %d reloaded %v, want %v", slot, got, want)
		}
	}
}

// TestFailedBitmapWritebackKeepsUnwrittenPagesDirty: after a failed writeback, the next
// one must still write every page that did not reach the disk; otherwise bits silently
// vanish from the on-disk bitmap and a resync after a crash misses those blocks.
func TestFailedBitmapWritebackKeepsUnwrittenPagesDirty(t *testing.T) {
	dev, geo, m := newExternalMeta(t, 3*bitmapPageSpan, 1, 1)
	for p := int64(0); p < 3; p++ {
		m.Bitmap(0).SetRange(p*bitmapPageSpan+7*BlockSize, BlockSize)
	}
	failing := geo.BMOffset + pageSize
	dev.setHook(func(p []byte, off int64) ([]byte, error) {
		if off == failing {
			return nil, errInjectedWrite
		}
		return nil, nil
	})
	if err := m.WriteBitmaps(); !errors.Is(err, errInjectedWrite) {
		t.Fatalf("WriteBitmaps: %v, want the injected error", err)
	}
	dev.setHook(nil)
	if err := m.WriteBitmaps(); err != nil {
		t.Fatal(err)
	}
	m2, err := OpenMeta(dev, geo)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := setBlocks(m2.Bitmap(0)), setBlocks(m.Bitmap(0)); !slices.Equal(got, want) {
		t.Fatalf("on disk after retry: %v, want %v", got, want)
	}
}

func TestDiskStateFromFlags(t *testing.T) {
	for _, c := range []struct {
		f    MDFlags
		want DiskState
	}{
		{0, Inconsistent},
		{MDWasUpToDate, Inconsistent},
		{MDConsistent, Consistent},
		{MDConsistent | MDWasUpToDate, UpToDate},
		{MDConsistent | MDOutdated, Outdated},
		{MDConsistent | MDWasUpToDate | MDOutdated, Outdated},
		{MDConsistent | MDWasUpToDate | MDPrimaryInd | MDUnclean, UpToDate},
	} {
		if got := DiskStateFromFlags(c.f); got != c.want {
			t.Errorf("DiskStateFromFlags(%b) = %v, want %v", c.f, got, c.want)
		}
	}
}

func TestNewUUIDIsNeverSpecial(t *testing.T) {
	seen := map[uint64]bool{}
	for i := 0; i < 10000; i++ {
		u := NewUUID()
		if u == 0 || mask(u) == UUIDJustCreated || u&UUIDPrimaryBit != 0 || seen[u] {
			t.Fatalf("NewUUID() = %#x", u)
		}
		seen[u] = true
	}
}

func TestALTransactionRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 64, 1017, 1018, MaxALExtents} {
		ext := make([]uint32, n)
		for i := range ext {
			ext[i] = uint32(i*3 + 1)
		}
		img := encodeALTransaction(uint64(n)+42, ext, nil)
		if len(img)%pageSize != 0 || len(img) < alHeaderSize+4*n || int64(len(img)) > alSlotBytes() {
			t.Fatalf("%d extents: image of %d bytes", n, len(img))
		}
		seq, got, ok := decodeALTransaction(img)
		if !ok || seq != uint64(n)+42 || !slices.Equal(got, ext) {
			t.Fatalf("%d extents: decoded seq %d, %d extents, ok %v", n, seq, len(got), ok)
		}
		// In a slot, stale bytes after the transaction do not matter.
		slot := append(slices.Clone(img), junkBytes(int(alSlotBytes())-len(img))...)
		if _, got, ok := decodeALTransaction(slot); !ok || !slices.Equal(got, ext) {
			t.Fatalf("%d extents in a slot with stale bytes: ok %v", n, ok)
		}
	}
	// Reusing a buffer clears what an earlier, longer transaction left in it.
	buf := encodeALTransaction(1, make([]uint32, 500), nil)
	for i := range buf {
		buf[i] = 0xee
	}
	img := encodeALTransaction(2, []uint32{7}, buf)
	if !bytes.Equal(img, encodeALTransaction(2, []uint32{7}, nil)) {
		t.Fatal("encoding into a used buffer differs from a fresh encoding")
	}
}

func TestDecodeALTransactionRejectsTornAndForeignSlots(t *testing.T) {
	img := encodeALTransaction(9, []uint32{1, 2, 300, 70000}, nil)
	n := alHeaderSize + 4*4
	for off := 0; off < n; off++ {
		bad := slices.Clone(img)
		bad[off] ^= 0x01
		if seq, ext, ok := decodeALTransaction(bad); ok {
			t.Fatalf("a flipped bit at byte %d decoded: seq %d, %v", off, seq, ext)
		}
	}
	bad := slices.Clone(img)
	binary.BigEndian.PutUint32(bad[16:], MaxALExtents+1)
	if _, _, ok := decodeALTransaction(bad); ok {
		t.Fatal("more than MaxALExtents decoded")
	}
	for _, b := range [][]byte{nil, img[:alHeaderSize-1], img[:alHeaderSize+4], make([]byte, pageSize), junkBytes(pageSize)} {
		if _, _, ok := decodeALTransaction(b); ok {
			t.Fatalf("decoded %d bytes of junk", len(b))
		}
	}
}

func TestReadALReturnsTheNewestValidTransaction(t *testing.T) {
	dev, geo, m := newInternalMeta(t, 64<<20, 1, 1)
	if _, hot, err := m.readAL(); err != nil || hot != nil {
		t.Fatalf("fresh metadata: %v, %v", hot, err)
	}
	for seq, ext := range [][]uint32{nil, {1}, {1, 2}, {2, 3}} {
		if seq == 0 {
			continue
		}
		if err := m.writeAL(encodeALTransaction(uint64(seq), ext, nil), uint64(seq)); err != nil {
			t.Fatal(err)
		}
	}
	if seq, hot, err := m.readAL(); err != nil || seq != 3 || !slices.Equal(hot, []uint32{2, 3}) {
		t.Fatalf("readAL = %d %v %v", seq, hot, err)
	}
	// Tear the newest transaction (seq 3 lives in slot 3%2).
	if err := dev.WriteAt(junkBytes(pageSize), geo.ALOffset+geo.ALSlotBytes, 0); err != nil {
		t.Fatal(err)
	}
	if seq, hot, err := m.readAL(); err != nil || seq != 2 || !slices.Equal(hot, []uint32{1, 2}) {
		t.Fatalf("after tearing the newest: %d %v %v, want 2 [1 2]", seq, hot, err)
	}
}

// fixSuperblockCRC stores the checksum DecodeSuperblock expects.
func fixSuperblockCRC(b []byte) {
	if len(b) != sbSize {
		return
	}
	binary.BigEndian.PutUint32(b[offCRC:], 0)
	binary.BigEndian.PutUint32(b[offCRC:], crc32.Checksum(b, castagnoli))
}

func FuzzDecodeSuperblock(f *testing.F) {
	valid := EncodeSuperblock(&Superblock{Seq: 1, NodeID: 1, DataSize: 1 << 20, MaxPeers: 1, Current: UUIDJustCreated,
		Geometry: Geometry{BitmapBytes: pageSize, ALSlotBytes: alSlotBytes(), Internal: true}})
	f.Add(valid, false)
	f.Add(valid[:100], false)
	f.Add(make([]byte, sbSize), true)
	flipped := slices.Clone(valid)
	flipped[offPeers] ^= 0x80
	f.Add(flipped, false)
	f.Add(flipped, true)
	f.Fuzz(func(t *testing.T, data []byte, fixCRC bool) {
		data = slices.Clone(data)
		if fixCRC {
			fixSuperblockCRC(data)
		}
		sb, err := DecodeSuperblock(data)
		if err != nil {
			if sb != nil {
				t.Fatal("a superblock with an error")
			}
			return
		}
		if sb.NodeID < 0 || sb.NodeID >= MaxNodes || sb.MaxPeers < 1 || sb.MaxPeers >= MaxNodes ||
			sb.DataSize <= 0 || sb.DataSize%BlockSize != 0 || sb.Geometry.BitmapBytes < bitmapBytes(sb.DataSize) {
			t.Fatalf("decoded an invalid superblock: %+v", sb)
		}
		img := EncodeSuperblock(sb)
		sb2, err := DecodeSuperblock(img)
		if err != nil {
			t.Fatalf("re-encoded superblock does not decode: %v", err)
		}
		if !reflect.DeepEqual(sb, sb2) {
			t.Fatalf("re-encoding changed the superblock:\n%+v\n%+v", sb, sb2)
		}
		if !bytes.Equal(EncodeSuperblock(sb2), img) {
			t.Fatal("encoding is not deterministic")
		}
	})
}

// fixALCRC stores the checksum decodeALTransaction expects, if the count fits.
func fixALCRC(b []byte) {
	if len(b) < alHeaderSize {
		return
	}
	cnt := int(binary.BigEndian.Uint32(b[16:]))
	if cnt > MaxALExtents || alHeaderSize+4*cnt > len(b) {
		return
	}
	n := alHeaderSize + 4*cnt
	binary.BigEndian.PutUint32(b[4:], 0)
	binary.BigEndian.PutUint32(b[4:], crc32.Checksum(b[:n], castagnoli))
}

func FuzzDecodeALTransaction(f *testing.F) {
	f.Add(encodeALTransaction(1, nil, nil), false)
	f.Add(encodeALTransaction(7, []uint32{0, 1, 2, 1 << 31}, nil), false)
	f.Add(encodeALTransaction(7, []uint32{0, 1, 2, 1 << 31}, nil)[:40], false)
	f.Add([]byte("ALTR\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x02"), true)
	f.Add([]byte{}, true)
	f.Fuzz(func(t *testing.T, data []byte, fixCRC bool) {
		data = slices.Clone(data)
		if fixCRC {
			fixALCRC(data)
		}
		seq, ext, ok := decodeALTransaction(data)
		if !ok {
			if seq != 0 || ext != nil {
				t.Fatalf("a rejected slot returned seq %d, %v", seq, ext)
			}
			return
		}
		if len(ext) > MaxALExtents || alHeaderSize+4*len(ext) > len(data) {
			t.Fatalf("decoded %d extents from %d bytes", len(ext), len(data))
		}
		img := encodeALTransaction(seq, ext, nil)
		seq2, ext2, ok := decodeALTransaction(img)
		if !ok || seq2 != seq || !slices.Equal(ext, ext2) {
			t.Fatalf("re-encoding changed the transaction: %d %v → %d %v (ok %v)", seq, ext, seq2, ext2, ok)
		}
	})
}
