package soak

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
)

// BlockSize is the unit of the workload: every write is one aligned 4 KiB block.
const BlockSize = 4096

// History is the oracle's record of one lineage of data (what one Primary, and the
// Primaries that took over from it, were asked to store): every write issued to every
// block, when it was issued, and whether and when it was acknowledged or failed.
//
// Time is a logical clock: every issue, acknowledgement, failure and read start or end
// takes the next tick, so "a was acknowledged before b was issued" is a comparison of
// ticks. From that order alone the history decides which contents a block may hold:
// the content of write w is possible unless some write issued after w ended (was
// acknowledged or seen to fail) has been acknowledged — that write landed after w on
// every replica, because the Primary orders overlapping writes and acknowledges under
// protocol C only once every connected replica has written.
type History struct {
	Lineage int // distinguishes a split-brain fork's writes from its parent's

	clock atomic.Uint64
	mu    sync.Mutex
	// blocks holds every write to a block in issue order.
	blocks map[int64][]*Write
	byID   map[uint64]*Write
	// ids is shared by every lineage of a trial, so a write id names one content.
	ids *atomic.Uint64
	// flushes counts acknowledged FLUSHes and the writes they covered.
	flushes, covered int
}

// Write is one 4 KiB write of unique content.
type Write struct {
	ID      uint64
	Lineage int
	Off     int64
	Sum     [32]byte
	Issued  uint64 // tick before the request was sent
	Acked   uint64 // tick after its acknowledgement, 0 if none
	Ended   uint64 // tick at which the client saw it fail, 0 if not
	Flushed bool   // a FLUSH issued after its acknowledgement was acknowledged
}

// NewHistory starts lineage 0 of a trial.
func NewHistory() *History {
	return &History{blocks: map[int64][]*Write{}, byID: map[uint64]*Write{}, ids: new(atomic.Uint64)}
}

// Tick returns the next logical time.
func (h *History) Tick() uint64 { return h.clock.Add(1) }

// NextID reserves a write id (unique across the trial's lineages).
func (h *History) NextID() uint64 { return h.ids.Add(1) }

// Issue records a write about to be sent.
func (h *History) Issue(id uint64, off int64, sum [32]byte) *Write {
	w := &Write{ID: id, Lineage: h.Lineage, Off: off, Sum: sum}
	h.mu.Lock()
	w.Issued = h.Tick() // under mu: a block's list stays in issue order
	h.blocks[off] = append(h.blocks[off], w)
	h.byID[id] = w
	h.mu.Unlock()
	return w
}

// Ack records that w was acknowledged.
func (h *History) Ack(w *Write) {
	h.mu.Lock()
	w.Acked = h.Tick()
	h.mu.Unlock()
}

// Fail records that the client saw w fail (an error reply or a lost connection): it
// may or may not have landed, but nothing it did can land after this.
func (h *History) Fail(w *Write) {
	h.mu.Lock()
	w.Ended = h.Tick()
	h.mu.Unlock()
}

// FlushStart is taken before a FLUSH is sent; FlushDone, after its acknowledgement,
// marks every write acknowledged before the FLUSH was sent as covered by it.
func (h *History) FlushStart() uint64 { return h.Tick() }

// FlushDone: see FlushStart.
func (h *History) FlushDone(start uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.flushes++
	for _, ws := range h.blocks {
		for _, w := range ws {
			if !w.Flushed && w.Acked != 0 && w.Acked < start {
				w.Flushed = true
				h.covered++
			}
		}
	}
}

// end is the tick after which w can no longer land: its acknowledgement or failure,
// or never while it is in flight.
func (w *Write) end() uint64 {
	switch {
	case w.Acked != 0:
		return w.Acked
	case w.Ended != 0:
		return w.Ended
	}
	return math.MaxUint64
}

// possible reports whether w's content (nil: the initial zeros) may be what a read
// of the block returns when it is issued at from and answered at to. A write not yet
// issued when the read was answered is impossible; so is one superseded before the
// read began: some other write issued after w ended was acknowledged before from.
func possible(ws []*Write, w *Write, from, to uint64) bool {
	end := uint64(0) // the zeros "ended" before anything was issued
	if w != nil {
		if w.Issued >= to {
			return false
		}
		end = w.end()
	}
	for _, o := range ws {
		if o != w && o.Acked != 0 && o.Acked < from && o.Issued > end {
			return false
		}
	}
	return true
}

// Fork returns the lineage that a node cut off from the Primary at tick cut continues
// (a split-brain trial promotes it with --force): writes acknowledged before the cut
// are there (protocol C); writes issued before it but not yet acknowledged may or may
// not be, and nothing issued later reached it.
func (h *History) Fork(cut uint64) *History {
	h.mu.Lock()
	defer h.mu.Unlock()
	f := &History{Lineage: h.Lineage + 1, blocks: map[int64][]*Write{}, byID: map[uint64]*Write{}, ids: h.ids}
	f.clock.Store(h.clock.Load())
	for off, ws := range h.blocks {
		for _, w := range ws {
			if w.Issued >= cut {
				continue
			}
			c := *w
			if c.Acked >= cut || c.Acked == 0 {
				c.Acked, c.Ended, c.Flushed = 0, cut, false
			}
			f.blocks[off] = append(f.blocks[off], &c)
			f.byID[c.ID] = &c
		}
	}
	return f
}

// Check verifies one block's content against the history for a read issued at from
// and answered at to; nil if possible. The error describes what was found and what
// was expected.
func (h *History) Check(off int64, data []byte, from, to uint64) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	ws := h.blocks[off]
	found, what := h.identify(data)
	if what == "" && possible(ws, found, from, to) {
		return nil
	}
	if what == "" {
		what = describe(found)
	}
	return fmt.Errorf("block at %d holds %s; possible: %s", off, what, h.expected(ws, from, to))
}

// identify finds the write whose content data is (nil for zeros); what is non-empty
// when data is neither zeros nor the exact content of a write in this lineage.
func (h *History) identify(data []byte) (w *Write, what string) {
	id, lineage, ok := parseHeader(data)
	if !ok {
		if allZero(data) {
			return nil, ""
		}
		return nil, "unknown content (neither zeros nor a workload block: torn or corrupted)"
	}
	w = h.byID[id]
	switch {
	case w == nil:
		return nil, fmt.Sprintf("write %d of lineage %d, which this lineage never issued (data of a discarded split-brain side?)", id, lineage)
	case sha256.Sum256(data) != w.Sum:
		return nil, fmt.Sprintf("a torn or corrupted copy of write %d", id)
	}
	return w, ""
}

func describe(w *Write) string {
	if w == nil {
		return "zeros (never written)"
	}
	return "write " + w.String()
}

func (w *Write) String() string {
	s := fmt.Sprintf("%d (issued t%d", w.ID, w.Issued)
	switch {
	case w.Acked != 0:
		s += fmt.Sprintf(", acknowledged t%d", w.Acked)
	case w.Ended != 0:
		s += fmt.Sprintf(", failed t%d", w.Ended)
	default:
		s += ", in flight"
	}
	if w.Flushed {
		s += ", flushed"
	}
	return s + ")"
}

func (h *History) expected(ws []*Write, from, to uint64) string {
	var out []string
	if possible(ws, nil, from, to) {
		out = append(out, "zeros")
	}
	for _, w := range ws {
		if possible(ws, w, from, to) {
			out = append(out, "write "+w.String())
		}
	}
	if len(out) == 0 {
		return "nothing (history inconsistent)"
	}
	return strings.Join(out, " or ")
}

// Stats is what a history holds.
type Stats struct {
	Writes, Acked, Failed, InFlight int
	Flushes, FlushCovered           int
	Blocks                          int
}

// Stats counts the history's writes.
func (h *History) Stats() Stats {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := Stats{Flushes: h.flushes, FlushCovered: h.covered, Blocks: len(h.blocks)}
	for _, ws := range h.blocks {
		for _, w := range ws {
			s.Writes++
			switch {
			case w.Acked != 0:
				s.Acked++
			case w.Ended != 0:
				s.Failed++
			default:
				s.InFlight++
			}
		}
	}
	return s
}

// Block content: a header naming the write, then bytes drawn from a generator seeded
// by the write id, so that every write's content is unique and reproducible.
var magic = []byte("BRSOAK01")

const headerSize = 32

// Content returns the block written by write id of lineage at off.
func Content(id uint64, lineage int, off int64) []byte {
	b := make([]byte, BlockSize)
	copy(b, magic)
	binary.BigEndian.PutUint64(b[8:], id)
	binary.BigEndian.PutUint64(b[16:], uint64(lineage))
	binary.BigEndian.PutUint64(b[24:], uint64(off))
	r := rand.New(rand.NewPCG(id, uint64(off)))
	for i := headerSize; i < BlockSize; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}

func parseHeader(b []byte) (id uint64, lineage int, ok bool) {
	if len(b) < headerSize || !bytes.Equal(b[:8], magic) {
		return 0, 0, false
	}
	return binary.BigEndian.Uint64(b[8:]), int(binary.BigEndian.Uint64(b[16:])), true
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
