package blockrep

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

// ext returns the byte offset of activity-log extent e.
func extOff(e int64) int64 { return e * ALExtentSize }

// newTestAL opens an activity log on fresh internal metadata of a 64 MiB device
// (15 extents of data, one peer slot).
func newTestAL(t *testing.T, capacity int) (*hookDev, Geometry, *Meta, *ActivityLog) {
	t.Helper()
	dev, geo, m := newInternalMeta(t, 64<<20, 1, 1)
	al, hot, err := NewActivityLog(m, capacity)
	if err != nil {
		t.Fatal(err)
	}
	if len(hot) != 0 {
		t.Fatalf("fresh metadata has hot extents %v", hot)
	}
	return dev, geo, m, al
}

// onDiskAL returns the extents of the newest valid transaction on the device.
func onDiskAL(t *testing.T, m *Meta) []uint32 {
	t.Helper()
	_, ext, err := m.readAL()
	if err != nil {
		t.Fatal(err)
	}
	return ext
}

func mustBegin(t *testing.T, al *ActivityLog, off, n int64) {
	t.Helper()
	if err := al.Begin(off, n); err != nil {
		t.Fatalf("Begin(%d, %d): %v", off, n, err)
	}
}

// within fails the test if fn does not return in time.
func finishesWithin(t *testing.T, d time.Duration, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not finish within %v", what, d)
	}
}

func isALWrite(geo Geometry, off int64) bool {
	return off >= geo.ALOffset && off < geo.ALOffset+2*geo.ALSlotBytes
}

func TestBeginMakesAColdExtentDurableBeforeReturning(t *testing.T) {
	dev, geo, m, al := newTestAL(t, 8)
	var durable []uint32 // the on-disk log each time Begin's transaction lands
	dev.setHook(func(p []byte, off int64) ([]byte, error) {
		if isALWrite(geo, off) {
			_, ext, _ := decodeALTransaction(p)
			durable = ext
		}
		return nil, nil
	})
	mustBegin(t, al, extOff(3)+100, 4096)
	if al.Writes != 1 || !slices.Equal(durable, []uint32{3}) || !slices.Equal(onDiskAL(t, m), []uint32{3}) {
		t.Fatalf("after Begin: %d transactions, written %v, on disk %v; want 1 and [3]", al.Writes, durable, onDiskAL(t, m))
	}
	// A range across an extent boundary pins both extents, in one transaction.
	mustBegin(t, al, extOff(5)-1, 2)
	if al.Writes != 2 || !slices.Equal(onDiskAL(t, m), []uint32{3, 4, 5}) {
		t.Fatalf("after Begin across extents 4 and 5: %d transactions, on disk %v", al.Writes, onDiskAL(t, m))
	}
	if al.Hot() != 3 {
		t.Fatalf("Hot() = %d, want 3", al.Hot())
	}
}

func TestBeginOnAHotExtentWritesNothing(t *testing.T) {
	dev, _, _, al := newTestAL(t, 8)
	mustBegin(t, al, extOff(2), 4096)
	al.End(extOff(2), 4096)
	dev.takeWritesIn(0, 0)
	flushes := dev.Device.(*MemDevice).Flushes
	for i := 0; i < 10; i++ {
		mustBegin(t, al, extOff(2)+int64(i)*8192, 8192)
		al.End(extOff(2)+int64(i)*8192, 8192)
	}
	if w := dev.takeWritesIn(0, 1<<62); len(w) != 0 || al.Writes != 1 || dev.Device.(*MemDevice).Flushes != flushes {
		t.Fatalf("writes to a hot extent caused device writes %v, %d transactions", w, al.Writes)
	}
	// Zero-length requests (flush-like) still pin the extent at their offset.
	mustBegin(t, al, extOff(2), 0)
	al.End(extOff(2), 0)
	if al.Writes != 1 {
		t.Fatalf("a zero-length Begin on a hot extent wrote a transaction")
	}
}

func TestLeastRecentlyUsedIdleExtentIsEvicted(t *testing.T) {
	_, _, m, al := newTestAL(t, 2)
	for _, e := range []int64{0, 1, 0} { // extent 0 is used again, so 1 is the oldest
		mustBegin(t, al, extOff(e), 4096)
		al.End(extOff(e), 4096)
	}
	mustBegin(t, al, extOff(2), 4096)
	al.End(extOff(2), 4096)
	if got := onDiskAL(t, m); !slices.Equal(got, []uint32{0, 2}) {
		t.Fatalf("on disk %v, want [0 2] (extent 1 evicted)", got)
	}
	if al.Hot() != 2 {
		t.Fatalf("Hot() = %d, want the capacity 2", al.Hot())
	}
}

func TestPinnedExtentsAreNeverEvicted(t *testing.T) {
	_, _, m, al := newTestAL(t, 2)
	mustBegin(t, al, extOff(0), 4096) // in flight until the end of the test
	mustBegin(t, al, extOff(1), 4096)
	al.End(extOff(1), 4096)
	mustBegin(t, al, extOff(2), 4096)
	al.End(extOff(2), 4096)
	if got := onDiskAL(t, m); !slices.Equal(got, []uint32{0, 2}) {
		t.Fatalf("on disk %v, want [0 2]: the pinned extent 0 must stay", got)
	}
	// Everything pinned: the log grows beyond its capacity instead of stalling.
	mustBegin(t, al, extOff(3), 4096)
	finishesWithin(t, 5*time.Second, "Begin with every extent pinned", func() {
		if err := al.Begin(extOff(4), 4096); err != nil {
			t.Error(err)
		}
	})
	if got := onDiskAL(t, m); !slices.Equal(got, []uint32{0, 3, 4}) {
		t.Fatalf("on disk %v, want [0 3 4]", got)
	}
	al.End(extOff(0), 4096)
	al.End(extOff(3), 4096)
	al.End(extOff(4), 4096)
	mustBegin(t, al, extOff(5), 4096)
	if al.Hot() > 2 {
		t.Fatalf("after unpinning, Hot() = %d: the log did not shrink back to its capacity", al.Hot())
	}
}

// TestEvictionWritesTheBitmapBeforeTheTransactionThatDropsTheExtent: bitmap-on-disk ∪
// AL must always cover every block that may differ from a peer; the bits of an evicted
// extent must be durable on disk before the transaction without that extent is written.
func TestEvictionWritesTheBitmapBeforeTheTransactionThatDropsTheExtent(t *testing.T) {
	dev, geo, m, al := newTestAL(t, 1)
	mustBegin(t, al, extOff(0), 3*BlockSize)
	// The write reached only our disk: the peer's bitmap records it (first three blocks
	// and the last block of extent 0).
	m.Bitmap(0).SetRange(0, 3*BlockSize)
	m.Bitmap(0).SetRange(ALExtentSize-BlockSize, BlockSize)
	al.End(extOff(0), 3*BlockSize)

	mem := dev.Device.(*MemDevice)
	var checked bool
	var problem error
	dev.setHook(func(p []byte, off int64) ([]byte, error) {
		if !isALWrite(geo, off) {
			return nil, nil
		}
		_, hot, ok := decodeALTransaction(p)
		if !ok || slices.Contains(hot, 0) {
			return nil, nil
		}
		checked = true
		img := make([]byte, 16*8)
		if err := mem.ReadAt(img, geo.BMOffset); err != nil {
			problem = err
		} else if w0, w15 := binary.LittleEndian.Uint64(img), binary.LittleEndian.Uint64(img[15*8:]); w0&7 != 7 || w15>>63 != 1 {
			problem = fmt.Errorf("transaction %v drops extent 0 while the on-disk bitmap has words %#x / %#x", hot, w0, w15)
		}
		return nil, nil
	})
	mustBegin(t, al, extOff(1), 4096)
	dev.setHook(nil)
	if !checked {
		t.Fatalf("extent 0 was not evicted (on disk %v)", onDiskAL(t, m))
	}
	if problem != nil {
		t.Fatal(problem)
	}
	if got := onDiskAL(t, m); !slices.Equal(got, []uint32{1}) {
		t.Fatalf("on disk %v, want [1]", got)
	}
}

func TestConcurrentBeginsShareTransactions(t *testing.T) {
	dev, geo, m, al := newTestAL(t, 16)
	release := make(chan struct{})
	var once sync.Once
	dev.setHook(func(p []byte, off int64) ([]byte, error) {
		if isALWrite(geo, off) {
			once.Do(func() { <-release }) // hold the first transaction in flight
		}
		return nil, nil
	})
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	for e := int64(0); e < 5; e++ {
		if e == 1 {
			// Wait until the first transaction is being written.
			pollUntil(t, "first commit in flight", func() bool { al.mu.Lock(); defer al.mu.Unlock(); return al.committing })
		}
		wg.Add(1)
		go func(e int64) {
			defer wg.Done()
			errs <- al.Begin(extOff(e), 4096)
		}(e)
	}
	pollUntil(t, "all five writers registered", func() bool { return al.Hot() == 5 })
	close(release)
	finishesWithin(t, 5*time.Second, "the Begin calls", wg.Wait)
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if al.Writes != 2 {
		t.Fatalf("%d transactions for 5 concurrent cold extents, want 2 (the four waiting writers share one)", al.Writes)
	}
	if got := onDiskAL(t, m); !slices.Equal(got, []uint32{0, 1, 2, 3, 4}) {
		t.Fatalf("on disk %v", got)
	}
}

func pollUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCleanEmptiesTheLogAndSavesTheBitmaps(t *testing.T) {
	dev, geo, m, al := newTestAL(t, 8)
	for _, e := range []int64{1, 4, 7} {
		mustBegin(t, al, extOff(e), BlockSize)
		m.Bitmap(0).SetRange(extOff(e), BlockSize)
		al.End(extOff(e), BlockSize)
	}
	if err := al.Clean(); err != nil {
		t.Fatal(err)
	}
	if al.Hot() != 0 || len(onDiskAL(t, m)) != 0 {
		t.Fatalf("after Clean: Hot %d, on disk %v", al.Hot(), onDiskAL(t, m))
	}
	m2, err := OpenMeta(dev, geo)
	if err != nil {
		t.Fatal(err)
	}
	_, hot, err := NewActivityLog(m2, 8)
	if err != nil || len(hot) != 0 {
		t.Fatalf("reopened after Clean: hot %v, %v", hot, err)
	}
	if got, want := setBlocks(m2.Bitmap(0)), []int64{extOff(1) / BlockSize, extOff(4) / BlockSize, extOff(7) / BlockSize}; !slices.Equal(got, want) {
		t.Fatalf("bitmap after Clean and reopen: %v, want %v", got, want)
	}
	// The log keeps working after Clean.
	mustBegin(t, al, extOff(2), 1)
	if got := onDiskAL(t, m); !slices.Equal(got, []uint32{2}) {
		t.Fatalf("after Clean and Begin: on disk %v", got)
	}
}

func TestCleanWaitsForWritesInFlight(t *testing.T) {
	_, _, m, al := newTestAL(t, 8)
	mustBegin(t, al, extOff(1), 4096)
	done := make(chan error, 1)
	go func() { done <- al.Clean() }()
	select {
	case err := <-done:
		t.Fatalf("Clean returned (%v) while a write was in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	if got := onDiskAL(t, m); !slices.Equal(got, []uint32{1}) {
		t.Fatalf("Clean emptied the log under a write in flight: on disk %v", got)
	}
	al.End(extOff(1), 4096)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Clean did not finish after the write ended")
	}
}

// TestBeginDuringCleanIsNotLost: Clean drops the lock while it writes; a Begin arriving
// then must still end up with its extent in a committed transaction.
func TestBeginDuringCleanIsNotLost(t *testing.T) {
	dev, geo, m, al := newTestAL(t, 8)
	release := make(chan struct{})
	var once sync.Once
	dev.setHook(func(p []byte, off int64) ([]byte, error) {
		if isALWrite(geo, off) {
			once.Do(func() { <-release }) // hold Clean's empty transaction
		}
		return nil, nil
	})
	cleaned := make(chan error, 1)
	go func() { cleaned <- al.Clean() }()
	pollUntil(t, "Clean writing", func() bool { al.mu.Lock(); defer al.mu.Unlock(); return al.committing })
	begun := make(chan error, 1)
	go func() { begun <- al.Begin(extOff(3), 4096) }()
	pollUntil(t, "Begin registered", func() bool { return al.Hot() == 1 })
	close(release)
	if err := <-cleaned; err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-begun:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Second):
		// Stop the spinning goroutine before failing.
		dev.setHook(func([]byte, int64) ([]byte, error) { return nil, errInjectedWrite })
		<-begun
		t.Fatalf("Begin during Clean never returned (%d transactions written meanwhile)", al.Writes)
	}
	if got := onDiskAL(t, m); !slices.Contains(got, 3) {
		t.Fatalf("Begin returned but extent 3 is not in the on-disk log %v", got)
	}
}

func TestReopenedLogReportsTheNewestTransaction(t *testing.T) {
	dev, geo, _, al := newTestAL(t, 8)
	for _, e := range []int64{5, 3, 9} {
		mustBegin(t, al, extOff(e), 4096)
	}
	// Crash: nothing ends, nothing is cleaned.
	m2, err := OpenMeta(dev, geo)
	if err != nil {
		t.Fatal(err)
	}
	al2, hot, err := NewActivityLog(m2, 8)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(hot, []uint32{3, 5, 9}) || al2.Hot() != 3 {
		t.Fatalf("reopened: hot %v, Hot() %d; want [3 5 9]", hot, al2.Hot())
	}
	// The reopened extents are hot: using them needs no transaction, and the next
	// transaction keeps them until they are evicted with their bitmap.
	mustBegin(t, al2, extOff(5), 4096)
	if al2.Writes != 0 {
		t.Fatalf("a reopened hot extent needed a transaction")
	}
	mustBegin(t, al2, extOff(1), 4096)
	if got := onDiskAL(t, m2); !slices.Equal(got, []uint32{1, 3, 5, 9}) {
		t.Fatalf("next transaction %v, want [1 3 5 9]", got)
	}
}

func TestTornTransactionFallsBackToThePreviousExtents(t *testing.T) {
	dev, geo, _, al := newTestAL(t, 8)
	mustBegin(t, al, extOff(0), 4096)
	mustBegin(t, al, extOff(1), 4096)
	// The crash tears the transaction that adds extent 2: only its first 16 bytes land.
	dev.setHook(func(p []byte, off int64) ([]byte, error) {
		if isALWrite(geo, off) {
			torn := junkBytes(len(p))
			copy(torn, p[:16])
			return torn, nil
		}
		return nil, nil
	})
	mustBegin(t, al, extOff(2), 4096) // the device "acknowledged" the torn write, then we crash
	dev.setHook(nil)
	m2, err := OpenMeta(dev, geo)
	if err != nil {
		t.Fatal(err)
	}
	_, hot, err := NewActivityLog(m2, 8)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(hot, []uint32{0, 1}) {
		t.Fatalf("after a torn transaction: hot %v, want the previous transaction's [0 1]", hot)
	}
}

func TestBeginFailsWhenTheLogCannotBeWritten(t *testing.T) {
	dev, geo, _, al := newTestAL(t, 8)
	mustBegin(t, al, extOff(0), 4096)
	al.End(extOff(0), 4096)
	dev.setHook(func(p []byte, off int64) ([]byte, error) {
		if isALWrite(geo, off) {
			return nil, errInjectedWrite
		}
		return nil, nil
	})
	if err := al.Begin(extOff(1), 4096); !errors.Is(err, errInjectedWrite) {
		t.Fatalf("Begin with a failing log: %v, want the injected error", err)
	}
	if err := al.Begin(extOff(2), 4096); !errors.Is(err, errInjectedWrite) {
		t.Fatalf("the next cold Begin: %v, want the error again", err)
	}
	// An extent that is already durable can still be written.
	if err := al.Begin(extOff(0), 4096); err != nil {
		t.Fatalf("Begin on a committed extent: %v", err)
	}
	al.End(extOff(0), 4096)
	// A failed Begin leaves nothing pinned: Clean does not hang.
	finishesWithin(t, 5*time.Second, "Clean after failed Begins", func() { _ = al.Clean() })
}

func TestActivityLogCapacityIsClamped(t *testing.T) {
	_, _, m, _ := newTestAL(t, 8)
	for _, c := range []struct{ in, want int }{{0, 1}, {-5, 1}, {1, 1}, {1237, 1237}, {MaxALExtents + 1, MaxALExtents}, {1 << 30, MaxALExtents}} {
		al, _, err := NewActivityLog(m, c.in)
		if err != nil {
			t.Fatal(err)
		}
		if al.capacity != c.want {
			t.Errorf("NewActivityLog(capacity %d): %d, want %d", c.in, al.capacity, c.want)
		}
	}
}

// TestConcurrentWritersAlwaysSeeTheirExtentsDurable: whenever Begin returns, every extent
// of the range is in the newest transaction on disk, however many writers race.
func TestConcurrentWritersAlwaysSeeTheirExtentsDurable(t *testing.T) {
	_, _, m, al := newTestAL(t, 4)
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 99))
			for i := 0; i < 150; i++ {
				off := r.Int64N(14 * ALExtentSize)
				n := 1 + r.Int64N(ALExtentSize+ALExtentSize/2)
				if err := al.Begin(off, n); err != nil {
					errc <- err
					return
				}
				_, durable, err := m.readAL()
				if err != nil {
					errc <- err
					return
				}
				first, last := extentRange(off, n)
				for e := first; e <= last; e++ {
					if !slices.Contains(durable, e) {
						errc <- fmt.Errorf("extent %d pinned but not in the on-disk log %v", e, durable)
						al.End(off, n)
						return
					}
				}
				al.End(off, n)
			}
		}(g)
	}
	finishesWithin(t, 30*time.Second, "concurrent writers", wg.Wait)
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if err := al.Clean(); err != nil {
		t.Fatal(err)
	}
	if al.Hot() != 0 {
		t.Fatalf("Hot() = %d after Clean", al.Hot())
	}
}

// TestFailedCleanDoesNotMakeTheNextTransactionOverwriteTheNewest: transactions alternate
// between two slots so that a torn write leaves the newest valid one intact. Clean
// advances the sequence number even when its write fails, and a failed Clean does not
// stop the log, so the next transaction lands in the slot of the newest valid one.
func TestFailedCleanDoesNotMakeTheNextTransactionOverwriteTheNewest(t *testing.T) {
	dev, geo, m, al := newTestAL(t, 8)
	mustBegin(t, al, extOff(1), 4096)
	al.End(extOff(1), 4096)
	mustBegin(t, al, extOff(2), 4096)
	al.End(extOff(2), 4096)
	newestSeq, _, _ := m.readAL()
	newestSlot := geo.ALOffset + int64(newestSeq%2)*geo.ALSlotBytes
	before := make([]byte, geo.ALSlotBytes)
	if err := dev.ReadAt(before, newestSlot); err != nil {
		t.Fatal(err)
	}
	dev.setHook(func(p []byte, off int64) ([]byte, error) {
		if isALWrite(geo, off) {
			return nil, errInjectedWrite
		}
		return nil, nil
	})
	if err := al.Clean(); !errors.Is(err, errInjectedWrite) {
		t.Fatalf("Clean: %v, want the injected error", err)
	}
	dev.setHook(nil)
	mustBegin(t, al, extOff(3), 4096)
	after := make([]byte, geo.ALSlotBytes)
	if err := dev.ReadAt(after, newestSlot); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(before, after) {
		t.Fatalf("the transaction after a failed Clean overwrote the newest valid transaction (seq %d)", newestSeq)
	}
}
