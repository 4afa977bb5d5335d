package blockrep

import (
	"slices"
	"sync"
)

// ActivityLog keeps the set of "hot" 4 MiB extents durable: a write may only reach the
// disk once its extent is in a committed AL transaction. After a crash, every hot extent
// is marked out of sync for every peer, so only those are resynced instead of the whole
// device. An extent leaves the log only when no write to it is in flight and after the
// bitmap pages covering it are durable, so bitmap-on-disk ∪ AL always covers every block
// that may differ from a peer.
type ActivityLog struct {
	meta     *Meta
	capacity int

	mu         sync.Mutex
	cond       sync.Cond
	entries    map[uint32]*alEntry
	committing bool
	seq        uint64
	tick       uint64
	err        error
	img        []byte
	scratch    []uint32

	// Writes counts AL transactions (al-writes in status).
	Writes uint64
}

type alEntry struct {
	refs      int32
	lastUse   uint64
	committed bool
}

// NewActivityLog opens the log stored in m, keeping at most capacity extents hot.
// It returns the extents that were hot in the newest valid transaction.
func NewActivityLog(m *Meta, capacity int) (*ActivityLog, []uint32, error) {
	seq, hot, err := m.readAL()
	if err != nil {
		return nil, nil, err
	}
	capacity = max(1, min(capacity, MaxALExtents))
	al := &ActivityLog{meta: m, capacity: capacity, entries: make(map[uint32]*alEntry), seq: seq}
	al.cond.L = &al.mu
	for _, e := range hot {
		al.entries[e] = &alEntry{committed: true}
	}
	return al, hot, nil
}

func extentRange(off, n int64) (uint32, uint32) {
	if n <= 0 {
		n = 1
	}
	return uint32(off >> alExtentShift), uint32((off + n - 1) >> alExtentShift)
}

// Begin makes the extents of [off, off+n) hot, writing an AL transaction if needed, and
// pins them until End. Concurrent callers share one transaction.
func (al *ActivityLog) Begin(off, n int64) error {
	first, last := extentRange(off, n)
	al.mu.Lock()
	defer al.mu.Unlock()
	al.tick++
	ready := true
	for e := first; e <= last; e++ {
		ent := al.entries[e]
		if ent == nil {
			ent = &alEntry{}
			al.entries[e] = ent
		}
		ent.refs++
		ent.lastUse = al.tick
		ready = ready && ent.committed
	}
	for !ready {
		if al.err != nil {
			err := al.err
			al.unpin(first, last)
			return err
		}
		if !al.committing {
			al.commitLocked()
		} else {
			al.cond.Wait()
		}
		ready = true
		for e := first; e <= last; e++ {
			ent := al.entries[e]
			if ent == nil {
				// Removed by a Clean that ran meanwhile: pin it again.
				ent = &alEntry{refs: 1, lastUse: al.tick}
				al.entries[e] = ent
			}
			ready = ready && ent.committed
		}
	}
	return nil
}

// End unpins the extents of [off, off+n).
func (al *ActivityLog) End(off, n int64) {
	first, last := extentRange(off, n)
	al.mu.Lock()
	al.unpin(first, last)
	al.mu.Unlock()
}

func (al *ActivityLog) unpin(first, last uint32) {
	woke := false
	for e := first; e <= last; e++ {
		if ent := al.entries[e]; ent != nil {
			ent.refs--
			woke = woke || ent.refs == 0
		}
	}
	if woke {
		al.cond.Broadcast()
	}
}

// commitLocked writes one transaction holding every pinned or recently used extent,
// evicting cold ones beyond capacity. Called with al.mu held; drops it during I/O.
func (al *ActivityLog) commitLocked() {
	al.committing = true
	var evicted bool
	for len(al.entries) > al.capacity {
		victim, ok := al.lruIdle()
		if !ok {
			if len(al.entries) <= MaxALExtents {
				break // everything is pinned: exceed the target rather than stall
			}
			al.committing = false
			al.cond.Wait()
			return
		}
		delete(al.entries, victim)
		evicted = true
	}
	set := al.scratch[:0]
	for e := range al.entries {
		set = append(set, e)
	}
	slices.Sort(set)
	al.scratch = set
	al.seq++
	seq := al.seq
	al.img = encodeALTransaction(seq, set, al.img)
	img := al.img
	al.mu.Unlock()

	var err error
	if evicted {
		// Bits recorded for the evicted extents must be durable before they leave the log.
		err = al.meta.WriteBitmaps()
	}
	if err == nil {
		err = al.meta.writeAL(img, seq)
	}

	al.mu.Lock()
	al.committing = false
	if err != nil {
		al.err = err
		al.seq-- // the slot of this seq may be torn; the next try reuses it, never the newest
	} else {
		al.Writes++
		for _, e := range set {
			if ent := al.entries[e]; ent != nil {
				ent.committed = true
			}
		}
	}
	al.cond.Broadcast()
}

func (al *ActivityLog) lruIdle() (uint32, bool) {
	var victim uint32
	var best uint64
	found := false
	for e, ent := range al.entries {
		if ent.refs == 0 && ent.committed && (!found || ent.lastUse < best) {
			victim, best, found = e, ent.lastUse, true
		}
	}
	return victim, found
}

// Clean waits for every write to finish, saves the bitmaps and empties the log: the
// state of a clean shutdown, after which no extent needs a resync.
func (al *ActivityLog) Clean() error {
	al.mu.Lock()
	for {
		busy := al.committing
		for _, ent := range al.entries {
			busy = busy || ent.refs > 0
		}
		if !busy {
			break
		}
		al.cond.Wait()
	}
	al.committing = true
	al.seq++
	seq := al.seq
	img := encodeALTransaction(seq, nil, nil)
	al.mu.Unlock()

	err := al.meta.WriteBitmaps()
	if err == nil {
		err = al.meta.writeAL(img, seq)
	}

	al.mu.Lock()
	defer al.mu.Unlock()
	al.committing = false
	al.cond.Broadcast()
	if err != nil {
		al.seq--
		return err
	}
	al.Writes++
	// Entries pinned while the empty transaction was written are not in it.
	for e, ent := range al.entries {
		if ent.refs == 0 {
			delete(al.entries, e)
		} else {
			ent.committed = false
		}
	}
	return nil
}

// HotExtents returns the extents in the log, in no particular order.
func (al *ActivityLog) HotExtents() []uint32 {
	al.mu.Lock()
	defer al.mu.Unlock()
	out := make([]uint32, 0, len(al.entries))
	for e := range al.entries {
		out = append(out, e)
	}
	return out
}

// Hot returns the number of extents in the log.
func (al *ActivityLog) Hot() int {
	al.mu.Lock()
	defer al.mu.Unlock()
	return len(al.entries)
}
