package iscsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/blockrep/blockrep/blockrep"
	"github.com/blockrep/blockrep/fence/scsi"
)

// memLU is an in-memory SCSI block device: enough SBC to drive Disk, with knobs for
// block size, limits, provisioning and injected statuses.
type memLU struct {
	mu        sync.Mutex
	bs        int
	data      []byte
	maxXfer   uint32 // blocks; Block Limits VPD
	unmapGran uint32
	lbprz     bool
	thin      bool

	inject  []scsi.Result // answered to the next commands instead of executing them
	maxSeen int           // largest data transfer seen
	ops     map[byte]int
	unmaps  []scsi.UnmapDescriptor
}

func newMemLU(bs, blocks int) *memLU {
	return &memLU{bs: bs, data: make([]byte, bs*blocks), maxXfer: 16, unmapGran: 1, ops: map[byte]int{}}
}

var (
	senseLBARange   = []byte{0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0, 0, 0, 0, 0}
	senseUA         = []byte{0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0, 0, 0, 0, 0}
	senseProtect    = []byte{0x70, 0, 0x07, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x27, 0, 0, 0, 0, 0}
	checkConditionR = func(s []byte) scsi.Result { return scsi.Result{Status: scsi.StatusCheckCondition, Sense: s} }
)

func (m *memLU) Execute(ctx context.Context, cdb []byte, dir scsi.Direction, data []byte) (scsi.Result, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ops[cdb[0]]++
	m.maxSeen = max(m.maxSeen, len(data))
	if len(m.inject) > 0 {
		r := m.inject[0]
		m.inject = m.inject[1:]
		return r, nil
	}
	blocks := len(m.data) / m.bs
	rw := func() (int, int, bool) {
		lba := int(binary.BigEndian.Uint64(cdb[2:10]))
		n := int(binary.BigEndian.Uint32(cdb[10:14]))
		return lba * m.bs, n * m.bs, lba+n <= blocks && n*m.bs == len(data)
	}
	switch cdb[0] {
	case scsi.OpServiceActionIn16:
		b := make([]byte, 32)
		binary.BigEndian.PutUint64(b, uint64(blocks-1))
		binary.BigEndian.PutUint32(b[8:], uint32(m.bs))
		if m.thin {
			b[14] |= 0x80
		}
		if m.lbprz {
			b[14] |= 0x40
		}
		copy(data, b)
	case scsi.OpInquiry:
		var page []byte
		switch cdb[2] {
		case 0x00:
			page = []byte{0, 0, 0, 3, 0, 0xb0, 0xb2}
		case 0xb0:
			page = make([]byte, 64)
			page[1], page[3] = 0xb0, 60
			binary.BigEndian.PutUint32(page[8:], m.maxXfer)
			binary.BigEndian.PutUint32(page[20:], 1<<20)
			binary.BigEndian.PutUint32(page[24:], 4)
			binary.BigEndian.PutUint32(page[28:], m.unmapGran)
		case 0xb2:
			page = []byte{0, 0xb2, 0, 4, 0, 0, 0, 2}
			if m.thin {
				page[5] = 0x80
			}
		}
		n := copy(data, page)
		return scsi.Result{Residual: len(data) - n}, nil
	case scsi.OpRead16:
		off, n, ok := rw()
		if !ok {
			return checkConditionR(senseLBARange), nil
		}
		copy(data, m.data[off:off+n])
	case scsi.OpWrite16:
		off, n, ok := rw()
		if !ok {
			return checkConditionR(senseLBARange), nil
		}
		copy(m.data[off:off+n], data)
	case scsi.OpSynchronizeCache16:
	case scsi.OpUnmap:
		n := int(binary.BigEndian.Uint16(data[2:4])) / 16
		for i := 0; i < n; i++ {
			d := data[8+16*i:]
			u := scsi.UnmapDescriptor{LBA: binary.BigEndian.Uint64(d), Blocks: binary.BigEndian.Uint32(d[8:])}
			m.unmaps = append(m.unmaps, u)
			clear(m.data[int(u.LBA)*m.bs : (int(u.LBA)+int(u.Blocks))*m.bs])
		}
	default:
		return checkConditionR([]byte{0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0}), nil
	}
	return scsi.Result{}, nil
}

func memDisk(t *testing.T, lu *memLU) *Disk {
	t.Helper()
	d, err := NewDisk(context.Background(), lu, DiskOptions{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestDiskByteGranularOn4KBlocks(t *testing.T) {
	lu := newMemLU(4096, 256) // 1 MiB, 64 KiB max transfer
	d := memDisk(t, lu)
	if d.Size() != 1<<20 || d.BlockSize() != 4096 || d.MaxTransfer() != 64<<10 {
		t.Fatalf("size %d bs %d max %d", d.Size(), d.BlockSize(), d.MaxTransfer())
	}
	model := make([]byte, d.Size())
	src := rand.NewChaCha8([32]byte{3, 4})
	rng := rand.New(src)
	for i := 0; i < 300; i++ {
		n := 1 + rng.IntN(300<<10)
		off := rng.Int64N(d.Size() - int64(n))
		p := make([]byte, n)
		src.Read(p)
		if err := d.WriteAt(p, off, 0); err != nil {
			t.Fatal(err)
		}
		copy(model[off:], p)
		m := 1 + rng.IntN(200<<10)
		roff := rng.Int64N(d.Size() - int64(m))
		got := make([]byte, m)
		if err := d.ReadAt(got, roff); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, model[roff:roff+int64(m)]) {
			t.Fatalf("read %d bytes at %d differs from the model", m, roff)
		}
	}
	if !bytes.Equal(lu.data, model) {
		t.Fatal("LU differs from the model")
	}
	if lu.maxSeen > 64<<10 {
		t.Fatalf("a transfer of %d bytes exceeds the LU's maximum", lu.maxSeen)
	}
}

func TestDiskConcurrentPartialBlockWrites(t *testing.T) {
	lu := newMemLU(4096, 16)
	d := memDisk(t, lu)
	var wg sync.WaitGroup
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				// Every writer patches its own 3 bytes of block 1 and of the 1/2 boundary.
				if err := d.WriteAt([]byte{byte(w), byte(w), byte(w)}, 4096+int64(w)*3, 0); err != nil {
					t.Error(err)
				}
				if err := d.WriteAt([]byte{byte(w), byte(w)}, 8192-64+int64(w)*2, blockrep.FlagFUA); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	for w := 0; w < 64; w++ {
		if b := lu.data[4096+w*3 : 4096+w*3+3]; !bytes.Equal(b, []byte{byte(w), byte(w), byte(w)}) {
			t.Fatalf("writer %d's bytes in block 1 were undone: % x", w, b)
		}
		if b := lu.data[8192-64+w*2 : 8192-64+w*2+2]; !bytes.Equal(b, []byte{byte(w), byte(w)}) {
			t.Fatalf("writer %d's bytes across blocks were undone: % x", w, b)
		}
	}
}

func TestDiskErrorMapping(t *testing.T) {
	lu := newMemLU(512, 64)
	d := memDisk(t, lu)
	tests := []struct {
		name   string
		inject []scsi.Result
		want   error
	}{
		{"RESERVATION CONFLICT stays ErrReservationConflict", []scsi.Result{{Status: scsi.StatusReservationConflict}}, scsi.ErrReservationConflict},
		{"DATA PROTECT is ErrReadOnly", []scsi.Result{checkConditionR(senseProtect)}, blockrep.ErrReadOnly},
		{"LBA out of range is ErrOutOfRange", []scsi.Result{checkConditionR(senseLBARange)}, blockrep.ErrOutOfRange},
		{"unit attention is retried", []scsi.Result{checkConditionR(senseUA), checkConditionR(senseUA)}, nil},
		{"BUSY is retried", []scsi.Result{{Status: scsi.StatusBusy}}, nil},
		{"TASK ABORTED is an I/O error", []scsi.Result{{Status: scsi.StatusTaskAborted}}, blockrep.ErrIO},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lu.inject = tc.inject
			err := d.WriteAt(make([]byte, 512), 0, 0)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
	if err := d.WriteAt(make([]byte, 10), d.Size()-5, 0); !errors.Is(err, blockrep.ErrOutOfRange) {
		t.Fatalf("write past the end: %v", err)
	}
	if err := d.Zero(0, 512, blockrep.FlagFastZero); !errors.Is(err, blockrep.ErrNotSupported) {
		t.Fatalf("fast zero: %v", err)
	}
}

func TestDiskTrim(t *testing.T) {
	for _, tc := range []struct {
		name       string
		thin, rz   bool
		gran       uint32
		wantUnmaps bool
	}{
		{"no thin provisioning: zeroes are written", false, false, 1, false},
		{"unmapped blocks not zero: zeroes are written, Trim not advertised", true, false, 1, false},
		{"LBPRZ: UNMAP of whole granules, zeroes at the edges", true, true, 8, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lu := newMemLU(512, 4096)
			lu.thin, lu.lbprz, lu.unmapGran = tc.thin, tc.rz, tc.gran
			for i := range lu.data {
				lu.data[i] = 0xff
			}
			d := memDisk(t, lu)
			if d.Caps().Trim != tc.wantUnmaps {
				t.Fatalf("Caps.Trim %v", d.Caps().Trim)
			}
			if err := d.Trim(1000, 100000); err != nil {
				t.Fatal(err)
			}
			for i, b := range lu.data {
				in := i >= 1000 && i < 101000
				if in && b != 0 || !in && b != 0xff {
					t.Fatalf("byte %d is %#x after Trim", i, b)
				}
			}
			if (len(lu.unmaps) > 0) != tc.wantUnmaps {
				t.Fatalf("UNMAP descriptors %v", lu.unmaps)
			}
			for _, u := range lu.unmaps {
				if u.LBA%uint64(tc.gran) != 0 || u.Blocks%tc.gran != 0 {
					t.Fatalf("UNMAP %+v not aligned to %d-block granules", u, tc.gran)
				}
			}
		})
	}
}
