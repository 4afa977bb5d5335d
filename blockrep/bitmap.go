package blockrep

import (
	"encoding/binary"
	"errors"
	"math/bits"
	"sync/atomic"
)

// Bitmap records, for one peer, which 4 KiB blocks the peer is missing. It is safe for
// concurrent use without locks: writers set bits, resync clears them, a writeback saves
// dirty pages. Bits are stored in 64-bit words, little-endian on disk as in DRBD.
type Bitmap struct {
	words []atomic.Uint64
	nbits int64
	size  int64 // bytes covered
	count atomic.Int64
	dirty []atomic.Uint64 // one bit per 4 KiB page of words not yet written to disk
}

const wordsPerPage = pageSize / 8 // 512 words = 32768 bits = 128 MiB of data

// NewBitmap returns an empty bitmap for size bytes of data.
func NewBitmap(size int64) *Bitmap {
	nbits := (size + BlockSize - 1) / BlockSize
	nwords := (nbits + 63) / 64
	npages := (nwords + wordsPerPage - 1) / wordsPerPage
	return &Bitmap{words: make([]atomic.Uint64, nwords), nbits: nbits, size: size, dirty: make([]atomic.Uint64, (npages+63)/64)}
}

// Bits returns the number of blocks covered.
func (b *Bitmap) Bits() int64 { return b.nbits }

// Count returns the number of set bits (blocks out of sync).
func (b *Bitmap) Count() int64 { return b.count.Load() }

// blockRange converts a byte range to the blocks it touches: [first, last].
func blockRange(off, n int64) (int64, int64) {
	return off >> blockShift, (off + n - 1) >> blockShift
}

// fullBlockRange converts a byte range to the blocks it covers completely; empty if first > last.
func fullBlockRange(off, n int64) (int64, int64) {
	first := (off + BlockSize - 1) >> blockShift
	last := (off+n)>>blockShift - 1
	return first, last
}

// SetRange marks every block touched by [off, off+n) out of sync; it returns the number
// of newly set bits.
func (b *Bitmap) SetRange(off, n int64) int64 {
	if n <= 0 {
		return 0
	}
	first, last := blockRange(off, n)
	return b.setBits(first, last)
}

// ClearRange marks the blocks completely covered by [off, off+n) in sync; it returns the
// number of bits cleared. Partly covered blocks stay out of sync.
func (b *Bitmap) ClearRange(off, n int64) int64 {
	first, last := fullBlockRange(off, n)
	if n > 0 && off+n >= b.size && b.size%BlockSize != 0 {
		last = b.nbits - 1 // a partial last block is covered by a range to the end
	}
	if first > last {
		return 0
	}
	return b.clearBits(first, last)
}

// SetAll marks every block out of sync.
func (b *Bitmap) SetAll() { b.setBits(0, b.nbits-1) }

// ClearAll marks every block in sync.
func (b *Bitmap) ClearAll() {
	if b.nbits > 0 {
		b.clearBits(0, b.nbits-1)
	}
}

func (b *Bitmap) setBits(first, last int64) int64 {
	last = min(last, b.nbits-1)
	var added int64
	for w := first >> 6; w <= last>>6; w++ {
		m := wordMask(w, first, last)
		old := b.words[w].Or(m)
		if nb := m &^ old; nb != 0 {
			added += int64(bits.OnesCount64(nb))
			b.markDirty(w)
		}
	}
	b.count.Add(added)
	return added
}

func (b *Bitmap) clearBits(first, last int64) int64 {
	last = min(last, b.nbits-1)
	var removed int64
	for w := first >> 6; w <= last>>6; w++ {
		m := wordMask(w, first, last)
		old := b.words[w].And(^m)
		if gone := m & old; gone != 0 {
			removed += int64(bits.OnesCount64(gone))
			b.markDirty(w)
		}
	}
	b.count.Add(-removed)
	return removed
}

// wordMask returns the bits of word w that lie within [first, last].
func wordMask(w, first, last int64) uint64 {
	lo, hi := w<<6, w<<6+63
	m := ^uint64(0)
	if first > lo {
		m &= ^uint64(0) << uint(first-lo)
	}
	if last < hi {
		m &= ^uint64(0) >> uint(hi-last)
	}
	return m
}

func (b *Bitmap) markDirty(w int64) {
	p := w / wordsPerPage
	if b.dirty[p>>6].Load()&(1<<uint(p&63)) == 0 {
		b.dirty[p>>6].Or(1 << uint(p&63))
	}
}

// Test reports whether block blk is out of sync.
func (b *Bitmap) Test(blk int64) bool {
	return b.words[blk>>6].Load()&(1<<uint(blk&63)) != 0
}

// AnySet reports whether any block touched by [off, off+n) is out of sync.
func (b *Bitmap) AnySet(off, n int64) bool {
	if n <= 0 {
		return false
	}
	first, last := blockRange(off, n)
	last = min(last, b.nbits-1)
	for w := first >> 6; w <= last>>6; w++ {
		if b.words[w].Load()&wordMask(w, first, last) != 0 {
			return true
		}
	}
	return false
}

// NextSet returns the first set block at or after blk, or -1.
func (b *Bitmap) NextSet(blk int64) int64 {
	if blk < 0 {
		blk = 0
	}
	for w := blk >> 6; w < int64(len(b.words)); w++ {
		v := b.words[w].Load()
		if w == blk>>6 {
			v &= ^uint64(0) << uint(blk&63)
		}
		if v != 0 {
			r := w<<6 + int64(bits.TrailingZeros64(v))
			if r >= b.nbits {
				return -1
			}
			return r
		}
	}
	return -1
}

// NextClear returns the first clear block at or after blk, or Bits().
func (b *Bitmap) NextClear(blk int64) int64 {
	blk = max(blk, 0)
	for w := blk >> 6; w < int64(len(b.words)); w++ {
		v := ^b.words[w].Load()
		if w == blk>>6 {
			v &= ^uint64(0) << uint(blk&63)
		}
		if v != 0 {
			return min(w<<6+int64(bits.TrailingZeros64(v)), b.nbits)
		}
	}
	return b.nbits
}

// Merge sets every bit set in o (same size).
func (b *Bitmap) Merge(o *Bitmap) {
	var added int64
	for w := range b.words {
		if v := o.words[w].Load(); v != 0 {
			old := b.words[w].Or(v)
			if nb := v &^ old; nb != 0 {
				added += int64(bits.OnesCount64(nb))
				b.markDirty(int64(w))
			}
		}
	}
	b.count.Add(added)
}

// dirtyPages returns and forgets the pages changed since the last call.
func (b *Bitmap) dirtyPages() []int64 {
	var pages []int64
	for i := range b.dirty {
		v := b.dirty[i].Swap(0)
		for v != 0 {
			t := bits.TrailingZeros64(v)
			pages = append(pages, int64(i)*64+int64(t))
			v &^= 1 << uint(t)
		}
	}
	return pages
}

// markAllDirty makes the next writeback write every page.
func (b *Bitmap) markAllDirty() {
	for w := int64(0); w < int64(len(b.words)); w += wordsPerPage {
		b.markDirty(w)
	}
}

// encodePage renders page p (little-endian words) into buf (pageSize bytes).
func (b *Bitmap) encodePage(p int64, buf []byte) {
	clear(buf)
	for i := int64(0); i < wordsPerPage; i++ {
		w := p*wordsPerPage + i
		if w >= int64(len(b.words)) {
			break
		}
		binary.LittleEndian.PutUint64(buf[8*i:], b.words[w].Load())
	}
}

// load replaces the contents from an on-disk image, ignoring bits beyond the end.
func (b *Bitmap) load(img []byte) {
	var n int64
	for w := range b.words {
		var v uint64
		if 8*w+8 <= len(img) {
			v = binary.LittleEndian.Uint64(img[8*w:])
		}
		if int64(w) == int64(len(b.words))-1 && b.nbits&63 != 0 {
			v &= (1 << uint(b.nbits&63)) - 1
		}
		b.words[w].Store(v)
		n += int64(bits.OnesCount64(v))
	}
	b.count.Store(n)
}

// EncodeRLE renders the bitmap as alternating run lengths (clear first) in uvarints:
// compact for the mostly-empty or mostly-full bitmaps a handshake exchanges.
func (b *Bitmap) EncodeRLE() []byte {
	out := binary.AppendUvarint(nil, uint64(b.nbits))
	var pos int64
	set := false
	for pos < b.nbits {
		var next int64
		if set {
			next = b.NextClear(pos)
		} else {
			next = b.NextSet(pos)
			if next < 0 {
				next = b.nbits
			}
		}
		out = binary.AppendUvarint(out, uint64(next-pos))
		pos, set = next, !set
	}
	return out
}

var errBadRLE = errors.New("malformed bitmap encoding")

// MergeRLE ORs an EncodeRLE image into b; the image must describe the same number of
// blocks. A malformed image changes nothing.
func (b *Bitmap) MergeRLE(img []byte) error {
	if err := b.walkRLE(img, nil); err != nil {
		return err
	}
	return b.walkRLE(img, func(first, last int64) { b.setBits(first, last) })
}

func (b *Bitmap) walkRLE(img []byte, set func(first, last int64)) error {
	nbits, n := binary.Uvarint(img)
	if n <= 0 || int64(nbits) != b.nbits {
		return errBadRLE
	}
	img = img[n:]
	var pos int64
	isSet := false
	for len(img) > 0 {
		run, n := binary.Uvarint(img)
		if n <= 0 || run > uint64(b.nbits-pos) {
			return errBadRLE
		}
		img = img[n:]
		if isSet && run > 0 && set != nil {
			set(pos, pos+int64(run)-1)
		}
		pos += int64(run)
		isSet = !isSet
	}
	if pos != b.nbits {
		return errBadRLE
	}
	return nil
}
