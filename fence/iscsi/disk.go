package iscsi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/blockrep/blockrep/blockrep"
	"github.com/blockrep/blockrep/fence/scsi"
)

// DiskOptions tune a Disk.
type DiskOptions struct {
	// Timeout bounds each request (blockrep.Device methods carry no context). Default
	// 2 minutes: long enough to ride out a reconnect.
	Timeout time.Duration
	// MaxTransfer caps the bytes of one READ(16)/WRITE(16); the LU's own maximum
	// transfer length (Block Limits VPD) lowers it further. Default 8 MiB.
	MaxTransfer int64
	// Retries bounds re-sends after UNIT ATTENTION, BUSY or TASK SET FULL. Default 5.
	Retries int
	// OnUnitAttention sees each UNIT ATTENTION consumed; 2A/03 and 2A/05 say this
	// node's reservation or registration was preempted.
	OnUnitAttention func(scsi.Sense)
}

// Disk is a blockrep.Device over a SCSI block device: an iSCSI LUN through a Session
// (or any scsi.Device, e.g. fence/sgio). Requests are byte-granular; partial blocks at
// the edges are read, patched and written back under a lock on those blocks, so
// concurrent writes to neighbouring bytes of one block cannot undo each other.
//
// Writes use WRITE(16) only: some targets (tgtd) do not check WRITE SAME or WRITE AND
// VERIFY against persistent reservations, and a fenced node must not get data through.
// A write refused because of a reservation returns an error wrapping
// scsi.ErrReservationConflict.
type Disk struct {
	dev   scsi.Device
	owned io.Closer // closed by Close when the Disk dialed the session itself

	capacity  scsi.Capacity
	bs        int64
	size      int64
	maxXfer   int64 // bytes, a multiple of bs
	unmap     bool  // UNMAP that leaves zeroes behind (LBPME, LBPU, LBPRZ)
	unmapMax  uint32
	unmapDesc uint32
	unmapGran uint32
	unmapAlig uint32

	opts   DiskOptions
	ctx    context.Context
	cancel context.CancelFunc
	locks  rangeLock

	zeroOnce sync.Once
	zero     []byte
}

var _ blockrep.Device = (*Disk)(nil)

// OpenDisk dials the URL and returns a Disk over its LUN that owns the session.
func OpenDisk(ctx context.Context, rawurl string, opts Options, dopts DiskOptions) (*Disk, error) {
	s, err := Dial(ctx, rawurl, opts)
	if err != nil {
		return nil, err
	}
	d, err := NewDisk(ctx, s, dopts)
	if err != nil {
		s.Close()
		return nil, err
	}
	d.owned = s
	return d, nil
}

// NewDisk reads the geometry (READ CAPACITY(16)) and limits (Block Limits and Logical
// Block Provisioning VPD pages, when the LU has them) of dev.
func NewDisk(ctx context.Context, dev scsi.Device, opts DiskOptions) (*Disk, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Minute
	}
	if opts.MaxTransfer <= 0 {
		opts.MaxTransfer = 8 << 20
	}
	if opts.Retries <= 0 {
		opts.Retries = 5
	}
	d := &Disk{dev: dev, opts: opts}
	d.ctx, d.cancel = context.WithCancel(context.Background())

	buf := make([]byte, 32)
	n, err := d.exec(ctx, scsi.ReadCapacity16(32), scsi.In, buf)
	if err != nil {
		return nil, fmt.Errorf("iscsi disk: READ CAPACITY(16): %w", err)
	}
	c, err := scsi.ParseReadCapacity16(buf[:n])
	if err != nil {
		return nil, fmt.Errorf("iscsi disk: %w", err)
	}
	if c.BlockSize < 512 || c.BlockSize&(c.BlockSize-1) != 0 {
		return nil, fmt.Errorf("iscsi disk: logical block size %d is not a power of two >= 512", c.BlockSize)
	}
	d.capacity = c
	d.bs = int64(c.BlockSize)
	d.size = int64(c.Bytes())
	d.maxXfer = opts.MaxTransfer / d.bs * d.bs
	if d.maxXfer < d.bs {
		d.maxXfer = d.bs
	}

	pages := d.vpdPages(ctx)
	var lbpu bool
	if pages[scsi.VPDBlockLimits] {
		if b, err := d.vpd(ctx, scsi.VPDBlockLimits); err == nil {
			if l, err := scsi.ParseBlockLimits(b); err == nil {
				if l.MaxTransfer > 0 && int64(l.MaxTransfer)*d.bs < d.maxXfer {
					d.maxXfer = int64(l.MaxTransfer) * d.bs
				}
				d.unmapMax, d.unmapDesc = l.MaxUnmapBlocks, l.MaxUnmapDescriptors
				d.unmapGran = max(l.UnmapGranularity, 1)
				if l.UnmapAlignmentValid {
					d.unmapAlig = l.UnmapAlignment
				}
			}
		}
	}
	if pages[scsi.VPDProvisioning] {
		if b, err := d.vpd(ctx, scsi.VPDProvisioning); err == nil {
			if p, err := scsi.ParseProvisioning(b); err == nil {
				lbpu = p.LBPU
			}
		}
	}
	// Trim must read back as zeroes (blockrep.Device contract): only an LU that
	// promises zeroes for unmapped blocks gets UNMAP; otherwise Trim writes zeroes and
	// Caps.Trim stays false so nobody relies on it being cheap.
	d.unmap = c.LBPME && c.LBPRZ && lbpu && d.unmapMax > 0
	if d.unmapDesc == 0 {
		d.unmapDesc = 1
	}
	return d, nil
}

func (d *Disk) vpdPages(ctx context.Context) map[byte]bool {
	b, err := d.vpd(ctx, scsi.VPDSupportedPages)
	if err != nil {
		return nil
	}
	list, err := scsi.ParseSupportedVPDPages(b)
	if err != nil {
		return nil
	}
	m := map[byte]bool{}
	for _, p := range list {
		m[p] = true
	}
	return m
}

func (d *Disk) vpd(ctx context.Context, page byte) ([]byte, error) {
	buf := make([]byte, 252)
	n, err := d.exec(ctx, scsi.Inquiry(true, page, uint16(len(buf))), scsi.In, buf)
	return buf[:n], err
}

// Capacity is the LU's READ CAPACITY(16) data.
func (d *Disk) Capacity() scsi.Capacity { return d.capacity }

// BlockSize is the logical block size in bytes.
func (d *Disk) BlockSize() int64 { return d.bs }

// MaxTransfer is the largest single READ/WRITE in bytes.
func (d *Disk) MaxTransfer() int64 { return d.maxXfer }

func (d *Disk) Size() int64 { return d.size }

func (d *Disk) Caps() blockrep.Caps {
	// SYNCHRONIZE CACHE flushes the LU's cache whichever nexus wrote: MultiConn holds.
	return blockrep.Caps{Flush: true, FUA: true, Trim: d.unmap, MultiConn: true}
}

// Close stops outstanding requests and closes the session if the Disk opened it.
func (d *Disk) Close() error {
	d.cancel()
	if d.owned != nil {
		return d.owned.Close()
	}
	return nil
}

func (d *Disk) exec(ctx context.Context, cdb []byte, dir scsi.Direction, data []byte) (int, error) {
	return scsi.Exec(ctx, d.dev, cdb, dir, data, d.opts.Retries, d.opts.OnUnitAttention)
}

// request runs one command with the per-request timeout and maps its error.
func (d *Disk) request(op string, off int64, cdb []byte, dir scsi.Direction, data []byte) error {
	ctx, cancel := context.WithTimeout(d.ctx, d.opts.Timeout)
	defer cancel()
	n, err := d.exec(ctx, cdb, dir, data)
	if err == nil && dir == scsi.In && n < len(data) {
		// A short read would leave stale bytes in the caller's buffer.
		err = fmt.Errorf("short transfer: %d of %d bytes", n, len(data))
		return fmt.Errorf("%w: iscsi %s at %d: %v", blockrep.ErrIO, op, off, err)
	}
	if err != nil {
		return mapError(op, off, err)
	}
	return nil
}

// mapError turns SCSI and transport errors into blockrep's sentinels, keeping the
// original in the chain (a RESERVATION CONFLICT stays errors.Is-able as
// scsi.ErrReservationConflict: the daemon reads it as "this node is fenced").
func mapError(op string, off int64, err error) error {
	var cc *scsi.CheckCondition
	switch {
	case errors.Is(err, scsi.ErrReservationConflict):
		return fmt.Errorf("iscsi %s at %d: %w", op, off, err)
	case errors.Is(err, ErrSessionClosed):
		return fmt.Errorf("%w: iscsi %s at %d: %w", blockrep.ErrClosed, op, off, err)
	case errors.Is(err, scsi.ASCLBAOutOfRange):
		return fmt.Errorf("%w: iscsi %s at %d: %w", blockrep.ErrOutOfRange, op, off, err)
	case errors.Is(err, scsi.ASCSpaceAllocationFailed):
		return fmt.Errorf("%w: iscsi %s at %d: %w", blockrep.ErrNoSpace, op, off, err)
	case errors.As(err, &cc) && cc.Sense.Key == scsi.SenseDataProtect:
		return fmt.Errorf("%w: iscsi %s at %d: %w", blockrep.ErrReadOnly, op, off, err)
	case errors.As(err, &cc) && cc.IsIllegalRequest() && cc.Sense.Is(0x20, 0):
		return fmt.Errorf("%w: iscsi %s: %w", blockrep.ErrNotSupported, op, err)
	}
	return fmt.Errorf("%w: iscsi %s at %d: %w", blockrep.ErrIO, op, off, err)
}

// ReadAt reads len(p) bytes at off. Whole blocks go straight into p; partial edge
// blocks go through a block-sized buffer.
func (d *Disk) ReadAt(p []byte, off int64) error {
	if err := blockrep.CheckRange(off, int64(len(p)), d.size); err != nil {
		return err
	}
	for len(p) > 0 {
		if head := off % d.bs; head != 0 || int64(len(p)) < d.bs {
			blk := make([]byte, d.bs)
			if err := d.readBlocks(off-head, blk); err != nil {
				return err
			}
			n := copy(p, blk[head:])
			p, off = p[n:], off+int64(n)
			continue
		}
		n := int64(len(p)) / d.bs * d.bs
		if err := d.readBlocks(off, p[:n]); err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

// readBlocks reads whole blocks at a block-aligned offset, split at the transfer limit.
func (d *Disk) readBlocks(off int64, p []byte) error {
	for len(p) > 0 {
		n := min(int64(len(p)), d.maxXfer)
		cdb := scsi.Read16(uint64(off/d.bs), uint32(n/d.bs), false)
		if err := d.request("READ(16)", off, cdb, scsi.In, p[:n]); err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

func (d *Disk) writeBlocks(off int64, p []byte, fua bool) error {
	for len(p) > 0 {
		n := min(int64(len(p)), d.maxXfer)
		cdb := scsi.Write16(uint64(off/d.bs), uint32(n/d.bs), fua)
		if err := d.request("WRITE(16)", off, cdb, scsi.Out, p[:n]); err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

// WriteAt writes p at off; with FlagFUA every WRITE(16) carries the FUA bit.
func (d *Disk) WriteAt(p []byte, off int64, flags blockrep.ReqFlags) error {
	if err := blockrep.CheckRange(off, int64(len(p)), d.size); err != nil {
		return err
	}
	if len(p) == 0 {
		return nil
	}
	first, end := off/d.bs, (off+int64(len(p))+d.bs-1)/d.bs
	d.locks.lock(first, end)
	defer d.locks.unlock(first, end)
	return d.writeLocked(p, off, flags&blockrep.FlagFUA != 0)
}

// writeLocked writes with the blocks of [off, off+len(p)) locked.
func (d *Disk) writeLocked(p []byte, off int64, fua bool) error {
	for len(p) > 0 {
		if head := off % d.bs; head != 0 || int64(len(p)) < d.bs {
			// Read-modify-write of a partial block.
			blk := make([]byte, d.bs)
			start := off - head
			if err := d.readBlocks(start, blk); err != nil {
				return err
			}
			n := copy(blk[head:], p)
			if err := d.writeBlocks(start, blk, fua); err != nil {
				return err
			}
			p, off = p[n:], off+int64(n)
			continue
		}
		n := int64(len(p)) / d.bs * d.bs
		if err := d.writeBlocks(off, p[:n], fua); err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

// Flush is SYNCHRONIZE CACHE(16) over the whole medium.
func (d *Disk) Flush() error {
	return d.request("SYNCHRONIZE CACHE(16)", 0, scsi.SynchronizeCache16(0, 0, false), scsi.None, nil)
}

func (d *Disk) zeroes() []byte {
	d.zeroOnce.Do(func() { d.zero = make([]byte, min(d.maxXfer, 1<<20)) })
	return d.zero
}

// Zero writes zeroes with WRITE(16). There is no fast path (WRITE SAME escapes
// reservations on some targets), so FlagFastZero gets ErrNotSupported.
func (d *Disk) Zero(off, n int64, flags blockrep.ReqFlags) error {
	if err := blockrep.CheckRange(off, n, d.size); err != nil {
		return err
	}
	if flags&blockrep.FlagFastZero != 0 {
		return blockrep.ErrNotSupported
	}
	if n == 0 {
		return nil
	}
	first, end := off/d.bs, (off+n+d.bs-1)/d.bs
	d.locks.lock(first, end)
	defer d.locks.unlock(first, end)
	return d.zeroLocked(off, n)
}

func (d *Disk) zeroLocked(off, n int64) error {
	z := d.zeroes()
	for n > 0 {
		k := min(n, int64(len(z)))
		if err := d.writeLocked(z[:k], off, false); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// Trim discards a range so that it reads back as zeroes: UNMAP for the whole unmap
// granules inside it when the LU guarantees zeroes for unmapped blocks (LBPRZ), zeroes
// written for the rest.
func (d *Disk) Trim(off, n int64) error {
	if err := blockrep.CheckRange(off, n, d.size); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	first, end := off/d.bs, (off+n+d.bs-1)/d.bs
	d.locks.lock(first, end)
	defer d.locks.unlock(first, end)
	if !d.unmap {
		return d.zeroLocked(off, n)
	}
	// Whole unmap granules inside [off, off+n), aligned as the LU asks.
	g := int64(d.unmapGran) * d.bs
	a := int64(d.unmapAlig) * d.bs
	ustart := alignUp(off-a, g) + a
	uend := alignDown(off+n-a, g) + a
	if ustart >= uend {
		return d.zeroLocked(off, n)
	}
	if ustart > off {
		if err := d.zeroLocked(off, ustart-off); err != nil {
			return err
		}
	}
	if err := d.unmapRange(ustart, uend-ustart); err != nil {
		return err
	}
	if uend < off+n {
		return d.zeroLocked(uend, off+n-uend)
	}
	return nil
}

func alignUp(x, a int64) int64 {
	if x < 0 {
		return -alignDown(-x, a)
	}
	return (x + a - 1) / a * a
}

func alignDown(x, a int64) int64 {
	if x < 0 {
		return -alignUp(-x, a)
	}
	return x / a * a
}

func (d *Disk) unmapRange(off, n int64) error {
	lba, blocks := uint64(off/d.bs), uint64(n/d.bs)
	for blocks > 0 {
		var ds []scsi.UnmapDescriptor
		for blocks > 0 && uint32(len(ds)) < d.unmapDesc {
			k := min(blocks, uint64(d.unmapMax), 1<<32-1)
			ds = append(ds, scsi.UnmapDescriptor{LBA: lba, Blocks: uint32(k)})
			lba, blocks = lba+k, blocks-k
		}
		params := scsi.UnmapParams(ds)
		if err := d.request("UNMAP", int64(ds[0].LBA)*d.bs, scsi.Unmap(uint16(len(params))), scsi.Out, params); err != nil {
			return err
		}
	}
	return nil
}

// rangeLock serializes writers of overlapping block ranges [a, b).
type rangeLock struct {
	mu   sync.Mutex
	cond *sync.Cond
	held [][2]int64
}

func (l *rangeLock) lock(a, b int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cond == nil {
		l.cond = sync.NewCond(&l.mu)
	}
	for l.overlaps(a, b) {
		l.cond.Wait()
	}
	l.held = append(l.held, [2]int64{a, b})
}

func (l *rangeLock) overlaps(a, b int64) bool {
	for _, r := range l.held {
		if a < r[1] && r[0] < b {
			return true
		}
	}
	return false
}

func (l *rangeLock) unlock(a, b int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, r := range l.held {
		if r[0] == a && r[1] == b {
			l.held[i] = l.held[len(l.held)-1]
			l.held = l.held[:len(l.held)-1]
			break
		}
	}
	l.cond.Broadcast()
}
