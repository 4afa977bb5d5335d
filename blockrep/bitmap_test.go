package blockrep

import (
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"testing"
)

// bitmapPageSpan is the data covered by one 4 KiB bitmap page.
const bitmapPageSpan = int64(wordsPerPage) * 64 * BlockSize

// setBlocks lists the set blocks of b.
func setBlocks(b *Bitmap) []int64 {
	var out []int64
	for blk := int64(0); blk < b.Bits(); blk++ {
		if b.Test(blk) {
			out = append(out, blk)
		}
	}
	return out
}

// bitmapWords snapshots the raw words, including any stray bit beyond the end.
func bitmapWords(b *Bitmap) []uint64 {
	out := make([]uint64, len(b.words))
	for i := range b.words {
		out[i] = b.words[i].Load()
	}
	return out
}

func popcount(words []uint64) int64 {
	var n int64
	for _, w := range words {
		n += int64(bits.OnesCount64(w))
	}
	return n
}

func blockList(first, last int64) []int64 {
	var out []int64
	for b := first; b <= last; b++ {
		out = append(out, b)
	}
	return out
}

func TestNewBitmapCoversEveryBlock(t *testing.T) {
	for _, c := range []struct{ size, bits int64 }{
		{0, 0}, {1, 1}, {4095, 1}, {4096, 1}, {4097, 2}, {64 * 4096, 64}, {64*4096 + 1, 65}, {1 << 30, 1 << 18},
	} {
		b := NewBitmap(c.size)
		if b.Bits() != c.bits || b.Count() != 0 {
			t.Errorf("NewBitmap(%d): Bits %d Count %d, want %d and 0", c.size, b.Bits(), b.Count(), c.bits)
		}
	}
}

func TestSetRangeMarksEveryTouchedBlock(t *testing.T) {
	const size = 200 * BlockSize
	cases := []struct {
		name   string
		off, n int64
		want   []int64
	}{
		{"one byte", 0, 1, []int64{0}},
		{"one full block", 4096, 4096, []int64{1}},
		{"last byte of a block", 4095, 1, []int64{0}},
		{"two bytes across a block boundary", 4095, 2, []int64{0, 1}},
		{"unaligned range touching three blocks", 4000, 5000, []int64{0, 1, 2}},
		{"empty range", 8192, 0, nil},
		{"negative length", 8192, -5, nil},
		{"across a word boundary", 63 * 4096, 2 * 4096, []int64{63, 64}},
		{"exactly one word", 64 * 4096, 64 * 4096, blockList(64, 127)},
		{"spanning three words", 60 * 4096, 80 * 4096, blockList(60, 139)},
		{"running past the end is clipped", 198 * 4096, 10 * 4096, []int64{198, 199}},
		{"the whole device", 0, size, blockList(0, 199)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBitmap(size)
			added := b.SetRange(tc.off, tc.n)
			if got := setBlocks(b); !slices.Equal(got, tc.want) {
				t.Fatalf("SetRange(%d, %d) set %v, want %v", tc.off, tc.n, got, tc.want)
			}
			if added != int64(len(tc.want)) || b.Count() != added {
				t.Fatalf("SetRange returned %d, Count %d, want %d", added, b.Count(), len(tc.want))
			}
			if again := b.SetRange(tc.off, tc.n); again != 0 || b.Count() != added {
				t.Fatalf("setting the same range again returned %d (Count %d), want 0", again, b.Count())
			}
		})
	}
}

func TestClearRangeClearsOnlyFullyCoveredBlocks(t *testing.T) {
	const size = 200 * BlockSize
	cases := []struct {
		name    string
		off, n  int64
		cleared []int64
	}{
		{"one full block", 4096, 4096, []int64{1}},
		{"less than a block clears nothing", 0, 4095, nil},
		{"a block minus its first byte clears nothing", 1, 4095, nil},
		{"unaligned range clears only the blocks inside", 1, 3*4096 - 2, []int64{1}},
		{"two bytes across a boundary clear nothing", 4095, 2, nil},
		{"empty range", 4096, 0, nil},
		{"negative length", 4096, -4096, nil},
		{"across a word boundary", 63 * 4096, 2 * 4096, []int64{63, 64}},
		{"spanning three words", 60 * 4096, 80 * 4096, blockList(60, 139)},
		{"running past the end is clipped", 198 * 4096, 10 * 4096, []int64{198, 199}},
		{"the whole device", 0, size, blockList(0, 199)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBitmap(size)
			b.SetAll()
			n := b.ClearRange(tc.off, tc.n)
			var want []int64
			for blk := int64(0); blk < 200; blk++ {
				if !slices.Contains(tc.cleared, blk) {
					want = append(want, blk)
				}
			}
			if got := setBlocks(b); !slices.Equal(got, want) {
				t.Fatalf("ClearRange(%d, %d) left %v set, want %v", tc.off, tc.n, got, want)
			}
			if n != int64(len(tc.cleared)) || b.Count() != 200-n {
				t.Fatalf("ClearRange returned %d (Count %d), want %d", n, b.Count(), len(tc.cleared))
			}
			if again := b.ClearRange(tc.off, tc.n); again != 0 {
				t.Fatalf("clearing the same range again returned %d", again)
			}
		})
	}
}

// TestClearRangeToTheEndClearsAPartialLastBlock: a range that reaches the end of the
// device covers its last, partial block completely. DRBD (__drbd_change_sync: "if
// (esector == nr_sectors-1) ebnr = lbnr") clears that bit; otherwise a resync of the
// whole device could never finish. Latent: blockrep's data sizes are block multiples.
func TestClearRangeToTheEndClearsAPartialLastBlock(t *testing.T) {
	const size = 3*BlockSize + 100
	b := NewBitmap(size)
	b.SetAll()
	b.ClearRange(0, size)
	if b.Count() != 0 {
		t.Fatalf("after clearing the whole device %v stay set", setBlocks(b))
	}
}

func TestSetAllAndClearAll(t *testing.T) {
	for _, size := range []int64{0, 4096, 100 * 4096, 64 * 4096, 12345678} {
		b := NewBitmap(size)
		b.SetAll()
		if b.Count() != b.Bits() || int64(len(setBlocks(b))) != b.Bits() {
			t.Errorf("size %d: SetAll: Count %d, Bits %d", size, b.Count(), b.Bits())
		}
		if popcount(bitmapWords(b)) != b.Bits() {
			t.Errorf("size %d: SetAll set bits beyond the end", size)
		}
		b.ClearAll()
		if b.Count() != 0 || popcount(bitmapWords(b)) != 0 {
			t.Errorf("size %d: ClearAll left %d set", size, b.Count())
		}
	}
}

func TestNextSetAndNextClear(t *testing.T) {
	b := NewBitmap(300 * BlockSize)
	b.SetRange(5*4096, 4096)    // block 5
	b.SetRange(62*4096, 4*4096) // blocks 62..65
	b.SetRange(200*4096, 100*4096)
	for _, c := range []struct{ from, next int64 }{
		{-7, 5}, {0, 5}, {5, 5}, {6, 62}, {63, 63}, {65, 65}, {66, 200}, {199, 200}, {299, 299}, {300, -1}, {10000, -1},
	} {
		if got := b.NextSet(c.from); got != c.next {
			t.Errorf("NextSet(%d) = %d, want %d", c.from, got, c.next)
		}
	}
	for _, c := range []struct{ from, next int64 }{
		{0, 0}, {5, 6}, {62, 66}, {64, 66}, {200, 300}, {250, 300}, {300, 300}, {10000, 300},
	} {
		if got := b.NextClear(c.from); got != c.next {
			t.Errorf("NextClear(%d) = %d, want %d", c.from, got, c.next)
		}
	}
	empty := NewBitmap(100 * BlockSize)
	if empty.NextSet(0) != -1 || empty.NextClear(0) != 0 {
		t.Error("empty bitmap: NextSet must be -1 and NextClear 0")
	}
	full := NewBitmap(100 * BlockSize)
	full.SetAll()
	if full.NextSet(0) != 0 || full.NextClear(0) != 100 || full.NextClear(99) != 100 {
		t.Errorf("full bitmap: NextSet %d NextClear %d", full.NextSet(0), full.NextClear(0))
	}
}

// TestNextClearAcceptsANegativeStart: like NextSet, "the first clear block at or after
// blk" is well defined for blk < 0.
func TestNextClearAcceptsANegativeStart(t *testing.T) {
	b := NewBitmap(100 * BlockSize)
	b.SetRange(0, 4096)
	defer func() {
		if p := recover(); p != nil {
			t.Fatalf("NextClear(-1) panicked: %v", p)
		}
	}()
	if got := b.NextClear(-1); got != 1 {
		t.Fatalf("NextClear(-1) = %d, want 1", got)
	}
}

func TestAnySet(t *testing.T) {
	b := NewBitmap(200 * BlockSize)
	b.SetRange(70*4096, 4096)
	for _, c := range []struct {
		off, n int64
		want   bool
	}{
		{0, 70 * 4096, false}, {0, 70*4096 + 1, true}, {71 * 4096, 4096, false}, {70*4096 + 4095, 1, true},
		{60 * 4096, 20 * 4096, true}, {0, 200 * 4096, true}, {190 * 4096, 50 * 4096, false},
	} {
		if got := b.AnySet(c.off, c.n); got != c.want {
			t.Errorf("AnySet(%d, %d) = %v, want %v", c.off, c.n, got, c.want)
		}
	}
}

// TestAnySetOfAnEmptyRangeIsFalse: an empty range touches no block.
func TestAnySetOfAnEmptyRangeIsFalse(t *testing.T) {
	b := NewBitmap(10 * BlockSize)
	b.SetAll()
	if b.AnySet(100, 0) {
		t.Fatal("AnySet(100, 0) = true for an empty range")
	}
}

func TestMergeIsAUnionAndCountsNewBitsOnce(t *testing.T) {
	a, o := NewBitmap(500*BlockSize), NewBitmap(500*BlockSize)
	a.SetRange(0, 10*4096)
	o.SetRange(5*4096, 10*4096)
	o.SetRange(400*4096, 4096)
	a.Merge(o)
	want := append(blockList(0, 14), 400)
	if got := setBlocks(a); !slices.Equal(got, want) || a.Count() != int64(len(want)) {
		t.Fatalf("Merge: %v (Count %d), want %v", got, a.Count(), want)
	}
	if o.Count() != 11 {
		t.Fatalf("Merge changed its argument: Count %d", o.Count())
	}
	a.Merge(o)
	if a.Count() != int64(len(want)) {
		t.Fatalf("merging again changed Count to %d", a.Count())
	}
}

// TestBitmapAgreesWithASimpleModel drives random operations against a []bool model.
func TestBitmapAgreesWithASimpleModel(t *testing.T) {
	seed := propSeed(t)
	r := rand.New(rand.NewPCG(seed, 7))
	for round := 0; round < 200; round++ {
		nbits := int64(1 + r.IntN(700))
		b := NewBitmap(nbits * BlockSize)
		model := make([]bool, nbits)
		for op := 0; op < 60; op++ {
			off := r.Int64N(nbits*BlockSize + 8192)
			n := r.Int64N(min(nbits*BlockSize, 70*BlockSize)+2) - 1
			switch r.IntN(5) {
			case 0, 1:
				var want int64
				if n > 0 {
					for blk := off / BlockSize; blk <= (off+n-1)/BlockSize && blk < nbits; blk++ {
						if !model[blk] {
							model[blk] = true
							want++
						}
					}
				}
				if got := b.SetRange(off, n); got != want {
					t.Fatalf("seed %d: SetRange(%d, %d) = %d, want %d", seed, off, n, got, want)
				}
			case 2, 3:
				var want int64
				for blk := (off + BlockSize - 1) / BlockSize; (blk+1)*BlockSize <= off+n && blk < nbits; blk++ {
					if model[blk] {
						model[blk] = false
						want++
					}
				}
				if got := b.ClearRange(off, n); got != want {
					t.Fatalf("seed %d: ClearRange(%d, %d) = %d, want %d", seed, off, n, got, want)
				}
			case 4:
				o := NewBitmap(nbits * BlockSize)
				for i := 0; i < 5; i++ {
					blk := r.Int64N(nbits)
					o.SetRange(blk*BlockSize, BlockSize)
					model[blk] = true
				}
				b.Merge(o)
			}
			var count int64
			for _, v := range model {
				if v {
					count++
				}
			}
			if b.Count() != count || popcount(bitmapWords(b)) != count {
				t.Fatalf("seed %d: Count %d, popcount %d, model %d", seed, b.Count(), popcount(bitmapWords(b)), count)
			}
		}
		for blk := int64(0); blk < nbits; blk++ {
			if b.Test(blk) != model[blk] {
				t.Fatalf("seed %d: block %d is %v, model %v", seed, blk, b.Test(blk), model[blk])
			}
		}
		from := r.Int64N(nbits + 2)
		wantSet, wantClear := int64(-1), nbits
		for blk := from; blk < nbits; blk++ {
			if model[blk] && wantSet < 0 {
				wantSet = blk
			}
			if !model[blk] && wantClear == nbits {
				wantClear = blk
			}
		}
		if b.NextSet(from) != wantSet || b.NextClear(from) != wantClear {
			t.Fatalf("seed %d: from %d NextSet %d NextClear %d, want %d %d", seed, from, b.NextSet(from), b.NextClear(from), wantSet, wantClear)
		}
		c := NewBitmap(nbits * BlockSize)
		if err := c.MergeRLE(b.EncodeRLE()); err != nil || !slices.Equal(setBlocks(c), setBlocks(b)) || c.Count() != b.Count() {
			t.Fatalf("seed %d: RLE round trip: err %v, %d bits vs %d", seed, err, c.Count(), b.Count())
		}
	}
}

// rle builds an image: uvarint nbits, then alternating run lengths, clear first.
func rle(nbits uint64, runs ...uint64) []byte {
	out := binary.AppendUvarint(nil, nbits)
	for _, r := range runs {
		out = binary.AppendUvarint(out, r)
	}
	return out
}

func TestEncodeRLE(t *testing.T) {
	b := NewBitmap(100 * BlockSize)
	if got, want := b.EncodeRLE(), rle(100, 100); !slices.Equal(got, want) {
		t.Errorf("empty: %v, want %v", got, want)
	}
	b.SetRange(0, 3*4096)
	b.SetRange(10*4096, 4096)
	b.SetRange(98*4096, 2*4096)
	if got, want := b.EncodeRLE(), rle(100, 0, 3, 7, 1, 87, 2); !slices.Equal(got, want) {
		t.Errorf("runs: %v, want %v", got, want)
	}
	b.SetAll()
	if got, want := b.EncodeRLE(), rle(100, 0, 100); !slices.Equal(got, want) {
		t.Errorf("full: %v, want %v", got, want)
	}
	if got, want := NewBitmap(0).EncodeRLE(), rle(0); !slices.Equal(got, want) {
		t.Errorf("no blocks: %v, want %v", got, want)
	}
	big := NewBitmap(1 << 40) // 1 TiB
	big.SetAll()
	if n := len(big.EncodeRLE()); n > 16 {
		t.Errorf("a full 1 TiB bitmap encodes to %d bytes; runs should make it tiny", n)
	}
}

func TestMergeRLEOrsTheImageIn(t *testing.T) {
	b := NewBitmap(100 * BlockSize)
	b.SetRange(50*4096, 4096)
	if err := b.MergeRLE(rle(100, 0, 3, 7, 1, 89)); err != nil {
		t.Fatal(err)
	}
	want := []int64{0, 1, 2, 10, 50}
	if got := setBlocks(b); !slices.Equal(got, want) || b.Count() != 5 {
		t.Fatalf("after MergeRLE: %v (Count %d), want %v", got, b.Count(), want)
	}
	// Zero-length runs are legal anywhere, also after the last block.
	if err := b.MergeRLE(rle(100, 0, 0, 99, 1, 0, 0)); err != nil {
		t.Fatalf("zero-length runs: %v", err)
	}
	if !b.Test(99) || b.Count() != 6 {
		t.Fatalf("zero-length runs: Count %d", b.Count())
	}
}

func TestMergeRLERejectsMalformedImagesAndChangesNothing(t *testing.T) {
	cases := []struct {
		name string
		img  []byte
	}{
		{"empty input", nil},
		{"wrong number of blocks", rle(99, 0, 99)},
		{"more blocks than ours", rle(101, 0, 101)},
		{"header only", rle(100)},
		{"runs short of the end", rle(100, 10, 5, 84)},
		{"a run past the end", rle(100, 10, 5, 86)},
		{"a run after the end", rle(100, 10, 5, 85, 1)},
		{"a truncated run", append(rle(100, 10, 5), 0x80)},
		{"a truncated header", []byte{0xe4}},
		{"an overflowing run", append(rle(100, 10, 5), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01)},
		{"a run of 2^64-1", append(rle(100, 10), binary.AppendUvarint(nil, ^uint64(0))...)},
		{"a header of 2^64-1", rle(^uint64(0), 10, 5)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBitmap(100 * BlockSize)
			b.SetRange(90*4096, 2*4096)
			b.dirtyPages()
			before, count := bitmapWords(b), b.Count()
			if err := b.MergeRLE(tc.img); err == nil {
				t.Fatalf("MergeRLE(%x) accepted a malformed image", tc.img)
			}
			if !slices.Equal(bitmapWords(b), before) || b.Count() != count {
				t.Fatalf("a rejected image changed the bitmap: %v (Count %d)", setBlocks(b), b.Count())
			}
			if d := b.dirtyPages(); len(d) != 0 {
				t.Fatalf("a rejected image dirtied pages %v", d)
			}
		})
	}
}

func TestDirtyPagesTrackWhatChangedSinceTheLastWriteback(t *testing.T) {
	b := NewBitmap(3 * bitmapPageSpan)
	if d := b.dirtyPages(); len(d) != 0 {
		t.Fatalf("a new bitmap has dirty pages %v", d)
	}
	b.SetRange(0, 4096)
	b.SetRange(2*bitmapPageSpan+8192, 4096)
	if d := b.dirtyPages(); !slices.Equal(d, []int64{0, 2}) {
		t.Fatalf("dirty pages %v, want [0 2]", d)
	}
	if d := b.dirtyPages(); len(d) != 0 {
		t.Fatalf("dirtyPages does not forget: %v", d)
	}
	b.SetRange(0, 4096)
	b.ClearRange(bitmapPageSpan, 4096)
	if d := b.dirtyPages(); len(d) != 0 {
		t.Fatalf("no-op set/clear dirtied pages %v", d)
	}
	b.ClearRange(0, 4096)
	if d := b.dirtyPages(); !slices.Equal(d, []int64{0}) {
		t.Fatalf("clearing a bit: dirty pages %v, want [0]", d)
	}
	b.SetRange(bitmapPageSpan-4096, 2*4096) // last block of page 0, first of page 1
	if d := b.dirtyPages(); !slices.Equal(d, []int64{0, 1}) {
		t.Fatalf("range across pages: dirty %v, want [0 1]", d)
	}
	o := NewBitmap(3 * bitmapPageSpan)
	o.SetRange(bitmapPageSpan-4096, 4096) // already set in b
	o.SetRange(2*bitmapPageSpan, 4096)    // new
	b.Merge(o)
	if d := b.dirtyPages(); !slices.Equal(d, []int64{2}) {
		t.Fatalf("Merge: dirty %v, want [2]", d)
	}
	if err := b.MergeRLE(rle(uint64(b.Bits()), 5, 1, uint64(b.Bits())-6)); err != nil {
		t.Fatal(err)
	}
	if d := b.dirtyPages(); !slices.Equal(d, []int64{0}) {
		t.Fatalf("MergeRLE: dirty %v, want [0]", d)
	}
	b.markAllDirty()
	if d := b.dirtyPages(); !slices.Equal(d, []int64{0, 1, 2}) {
		t.Fatalf("markAllDirty: %v", d)
	}
	// More than 64 pages: the dirty set spans several words.
	huge := NewBitmap(130 * bitmapPageSpan)
	huge.SetRange(129*bitmapPageSpan, 4096)
	huge.SetRange(64*bitmapPageSpan, 4096)
	if d := huge.dirtyPages(); !slices.Equal(d, []int64{64, 129}) {
		t.Fatalf("130 pages: dirty %v", d)
	}
}

func TestEncodePageAndLoadRoundTrip(t *testing.T) {
	b := NewBitmap(2*bitmapPageSpan - 3*BlockSize) // the last word is partial
	b.SetRange(0, 4096)
	b.SetRange(bitmapPageSpan-64*4096, 130*4096)
	b.SetRange(2*bitmapPageSpan-4*BlockSize, BlockSize) // the last block
	img := make([]byte, 2*pageSize)
	b.encodePage(0, img[:pageSize])
	b.encodePage(1, img[pageSize:])
	if got := binary.LittleEndian.Uint64(img); got != 1 {
		t.Fatalf("word 0 on disk = %#x, want 1 (little-endian, bit 0 = block 0)", got)
	}
	c := NewBitmap(2*bitmapPageSpan - 3*BlockSize)
	c.load(img)
	if !slices.Equal(setBlocks(c), setBlocks(b)) || c.Count() != b.Count() {
		t.Fatalf("load(encodePage) differs: Count %d vs %d", c.Count(), b.Count())
	}
	// Bits beyond the end in the image are ignored.
	for i := range img {
		img[i] = 0xff
	}
	c.load(img)
	if c.Count() != c.Bits() || popcount(bitmapWords(c)) != c.Bits() {
		t.Fatalf("load of an all-ones image: Count %d, popcount %d, Bits %d", c.Count(), popcount(bitmapWords(c)), c.Bits())
	}
	// A short image reads as zeroes beyond its end.
	c.load(img[:8])
	if c.Count() != 64 {
		t.Fatalf("load of one word: Count %d, want 64", c.Count())
	}
}

func TestConcurrentSetClearAndMergeKeepCountExact(t *testing.T) {
	b := NewBitmap(2 * bitmapPageSpan)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			o := NewBitmap(2 * bitmapPageSpan)
			for i := 0; i < 3000; i++ {
				off, n := r.Int64N(2*bitmapPageSpan), r.Int64N(300*BlockSize)
				switch r.IntN(4) {
				case 0, 1:
					b.SetRange(off, n)
				case 2:
					b.ClearRange(off, n)
				case 3:
					o.SetRange(off, BlockSize)
					b.Merge(o)
				}
				if i%500 == 0 {
					b.dirtyPages()
				}
			}
		}(g)
	}
	wg.Wait()
	if got := popcount(bitmapWords(b)); got != b.Count() {
		t.Fatalf("Count %d, but %d bits are set", b.Count(), got)
	}
}

// rleModel decodes an EncodeRLE image for a bitmap of nbits blocks, by the rules the
// format states; ok is false for a malformed image.
func rleModel(img []byte, nbits int64) (set []bool, ok bool) {
	hdr, n := binary.Uvarint(img)
	if n <= 0 || hdr != uint64(nbits) {
		return nil, false
	}
	img = img[n:]
	set = make([]bool, nbits)
	var pos uint64
	on := false
	for len(img) > 0 {
		run, n := binary.Uvarint(img)
		if n <= 0 || run > uint64(nbits)-pos {
			return nil, false
		}
		img = img[n:]
		for i := pos; i < pos+run; i++ {
			set[i] = on
		}
		pos += run
		on = !on
	}
	return set, pos == uint64(nbits)
}

func FuzzMergeRLE(f *testing.F) {
	f.Add(uint16(100), []byte{0x01}, rle(100, 0, 3, 7, 1, 89))
	f.Add(uint16(100), []byte{}, rle(100, 10, 5, 86))
	f.Add(uint16(64), []byte{0xff, 0x00, 0x80}, rle(64, 64))
	f.Add(uint16(1), []byte{}, rle(1, 0, 1))
	f.Add(uint16(0), []byte{}, rle(0))
	f.Add(uint16(4000), []byte{0xaa, 0x55}, append(rle(4000, 10), 0x80))
	f.Fuzz(func(t *testing.T, nb uint16, pre []byte, img []byte) {
		nbits := int64(nb % 5000)
		b := NewBitmap(nbits * BlockSize)
		for i, by := range pre {
			for j := 0; j < 8; j++ {
				if blk := int64(8*i + j); by&(1<<j) != 0 && blk < nbits {
					b.SetRange(blk*BlockSize, BlockSize)
				}
			}
		}
		before, count := bitmapWords(b), b.Count()
		b.dirtyPages()
		err := b.MergeRLE(img)
		runs, ok := rleModel(img, nbits)
		if (err == nil) != ok {
			t.Fatalf("MergeRLE err = %v, but the image is well-formed: %v", err, ok)
		}
		if err != nil {
			if !slices.Equal(bitmapWords(b), before) || b.Count() != count || len(b.dirtyPages()) != 0 {
				t.Fatalf("a rejected image changed the bitmap")
			}
			return
		}
		for blk := int64(0); blk < nbits; blk++ {
			wasSet := before[blk>>6]&(1<<(blk&63)) != 0
			if b.Test(blk) != (wasSet || runs[blk]) {
				t.Fatalf("block %d: %v, want %v | %v", blk, b.Test(blk), wasSet, runs[blk])
			}
		}
		if popcount(bitmapWords(b)) != b.Count() {
			t.Fatalf("Count %d, popcount %d", b.Count(), popcount(bitmapWords(b)))
		}
		c := NewBitmap(nbits * BlockSize)
		if err := c.MergeRLE(b.EncodeRLE()); err != nil || !reflect.DeepEqual(bitmapWords(c), bitmapWords(b)) {
			t.Fatalf("EncodeRLE round trip: %v", err)
		}
	})
}
