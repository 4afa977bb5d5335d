package blockrep

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blockrep/blockrep/transport"
)

// Config is one node's view of a resource's volume.
type Config struct {
	Resource  string
	NodeID    int
	NodeName  string
	Disk      string // backing file or block device
	MetaDisk  string // "internal" or a path
	ALExtents int
	ALUpdates bool
	Peers     []PeerConfig
	Logger    *slog.Logger
	// OpenDevice opens the backing and metadata devices; nil opens files and block
	// devices through the page cache (OpenFile). Tests use it to inject faults.
	OpenDevice func(path string) (Device, error)
	// OnIOError is the policy for a failed local read or write: "detach" (default: stop
	// using the disk, serve through the peers) or "pass_on" (return the error).
	OnIOError string
	// Handlers are DRBD's handlers (fence-peer, unfence-peer) by name: shell commands.
	Handlers map[string]string
}

// PeerConfig is one connection of the volume.
type PeerConfig struct {
	NodeID       int
	Name         string
	Address      string // the peer's address
	LocalAddress string // ours, for this connection
	Protocol     Protocol
	Secret       string
	HMACAlg      string
	Policy       SplitBrainPolicy
	// Timeout: a peer silent this long is dead. PingInt: idle keepalive interval.
	Timeout    time.Duration
	PingInt    time.Duration
	ConnectInt time.Duration
	MaxBuffers int // writes in flight to the peer before the sender blocks
	// SndBuf and RcvBuf size the socket buffers (sndbuf-size/rcvbuf-size); 0 = auto.
	SndBuf, RcvBuf int
	Resync         ResyncConfig
	// Settings must be equal on both sides; a mismatch refuses the connection.
	Settings string
	// Fencing: dont-care (default), resource-only (run fence-peer when the connection
	// to an UpToDate peer is lost while Primary), resource-and-stonith (also freeze
	// writes until fence-peer confirms).
	Fencing string
}

// ResyncConfig controls resync speed (DRBD's resync-rate and c-* options, in bytes).
type ResyncConfig struct {
	Rate       int64         // fixed rate, bytes/s, when PlanAhead is 0
	PlanAhead  time.Duration // 0 = fixed Rate; else the dynamic controller
	FillTarget int64         // bytes in flight the dynamic controller aims for
	MaxRate    int64         // bytes/s cap, 0 = none
	MinRate    int64         // bytes/s resync keeps while the application writes
}

func (c *Config) metaInternal() bool { return c.MetaDisk == "" || c.MetaDisk == "internal" }

// Volume is one node's replica of a resource: backing disk, metadata, activity log and
// the connections to its peers. As a Backend it is the Primary's write path: overlapping
// writes are ordered, each write goes to the peers first, then to the local disk, and
// completes when the local disk and every protocol-C (received, for B) peer have it.
type Volume struct {
	cfg  Config
	log  *slog.Logger
	dev  Device // backing device (internal metadata lives at its end)
	mdev Device // metadata device; == dev for internal metadata
	data Device // the data region of dev
	meta *Meta
	al   *ActivityLog
	size int64

	conf    *conflicts
	flusher *groupCommit[*Request]
	overlap *overlapper

	// gate: Submit holds it shared; handshakes and generation changes hold it
	// exclusively so that a bitmap or generation snapshot sees no write half-submitted.
	// Lock order: gate, mu, Peer.pendMu, link write lock.
	gate sync.RWMutex
	// handshaking holds a token while a connection handshakes (peer.go, session).
	handshaking chan struct{}
	primary     atomic.Bool
	closed      atomic.Bool
	// diskFailed: the local disk was detached after an I/O error (on-io-error detach);
	// the volume serves through its peers.
	diskFailed atomic.Bool
	susp       suspension

	mu        sync.Mutex
	state     State
	peers     []*Peer
	promoting bool
	onChange  func(old, new State)

	// Counters for status.
	readBytes, writtenBytes atomic.Int64
}

// dataRegion limits a device to its first size bytes (internal metadata follows).
type dataRegion struct {
	Device
	size int64
}

func (d dataRegion) Size() int64 { return d.size }

// OpenMetaDevice opens the backing and metadata devices of cfg and locates the
// metadata, without loading it.
func (c *Config) open(path string) (Device, error) {
	if c.OpenDevice != nil {
		return c.OpenDevice(path)
	}
	return OpenFile(path, 0, false)
}

func openDevices(cfg *Config) (dev, mdev Device, geo Geometry, sb *Superblock, err error) {
	dev, err = cfg.open(cfg.Disk)
	if err != nil {
		return nil, nil, Geometry{}, nil, fmt.Errorf("backing disk: %w", err)
	}
	fail := func(e error) (Device, Device, Geometry, *Superblock, error) {
		dev.Close()
		if mdev != nil && mdev != dev {
			mdev.Close()
		}
		return nil, nil, Geometry{}, nil, e
	}
	if cfg.metaInternal() {
		mdev = dev
		sb, err = ReadSuperblock(dev, InternalSBOffset(dev.Size()))
		if err != nil {
			return fail(err)
		}
		geo, err = InternalGeometry(dev.Size(), sb.MaxPeers)
	} else {
		if mdev, err = cfg.open(cfg.MetaDisk); err != nil {
			return fail(fmt.Errorf("meta-disk: %w", err))
		}
		sb, err = ReadSuperblock(mdev, 0)
		if err != nil {
			return fail(err)
		}
		geo, err = ExternalGeometry(dev.Size(), mdev.Size(), sb.MaxPeers)
	}
	if err != nil {
		return fail(err)
	}
	return dev, mdev, geo, sb, nil
}

// CreateMD writes fresh metadata for cfg (drbdadm create-md). It refuses to overwrite
// valid metadata unless force is set.
func CreateMD(cfg Config, maxPeers int, force bool) (Geometry, error) {
	if maxPeers <= 0 {
		maxPeers = max(1, len(cfg.Peers))
	}
	if maxPeers < len(cfg.Peers) {
		return Geometry{}, fmt.Errorf("--max-peers %d is less than the %d peers configured", maxPeers, len(cfg.Peers))
	}
	dev, err := cfg.open(cfg.Disk)
	if err != nil {
		return Geometry{}, fmt.Errorf("backing disk: %w", err)
	}
	defer dev.Close()
	mdev := dev
	var geo Geometry
	var sbOff int64
	if cfg.metaInternal() {
		sbOff = InternalSBOffset(dev.Size())
		geo, err = InternalGeometry(dev.Size(), maxPeers)
	} else {
		if mdev, err = cfg.open(cfg.MetaDisk); err != nil {
			return Geometry{}, fmt.Errorf("meta-disk: %w", err)
		}
		defer mdev.Close()
		geo, err = ExternalGeometry(dev.Size(), mdev.Size(), maxPeers)
	}
	if err != nil {
		return Geometry{}, err
	}
	if !force {
		if sb, err := ReadSuperblock(mdev, sbOff); err == nil {
			return Geometry{}, fmt.Errorf("%s already holds blockrep metadata (node-id %d, %s); use --force to overwrite it",
				mdPath(&cfg), sb.NodeID, DiskStateFromFlags(sb.Flags))
		}
	}
	var peers []int
	for _, p := range cfg.Peers {
		peers = append(peers, p.NodeID)
	}
	return geo, CreateMetadata(mdev, geo, cfg.NodeID, peers)
}

func mdPath(cfg *Config) string {
	if cfg.metaInternal() {
		return cfg.Disk
	}
	return cfg.MetaDisk
}

// Open attaches the backing disk: it loads and checks the metadata, recovers from an
// unclean shutdown, and returns a Secondary volume with every peer StandAlone.
func Open(cfg Config) (*Volume, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	log := cfg.Logger.With("resource", cfg.Resource)
	dev, mdev, geo, sb, err := openDevices(&cfg)
	if err != nil {
		return nil, err
	}
	v := &Volume{cfg: cfg, log: log, dev: dev, mdev: mdev, conf: newConflicts()}
	v.susp.init()
	closeAll := func() {
		dev.Close()
		if mdev != dev {
			mdev.Close()
		}
	}
	if sb.NodeID != cfg.NodeID {
		closeAll()
		return nil, fmt.Errorf("metadata on %s belongs to node-id %d, but this node is node-id %d", mdPath(&cfg), sb.NodeID, cfg.NodeID)
	}
	if v.meta, err = OpenMeta(mdev, geo); err != nil {
		closeAll()
		return nil, err
	}
	v.size = geo.DataSize
	v.data = dataRegion{Device: dev, size: v.size}
	if err := v.assignSlots(); err != nil {
		closeAll()
		return nil, err
	}
	hot := []uint32(nil)
	if v.al, hot, err = NewActivityLog(v.meta, max(cfg.ALExtents, 67)); err != nil {
		closeAll()
		return nil, err
	}
	if err := v.recover(hot); err != nil {
		closeAll()
		return nil, err
	}
	sbNow := v.meta.Superblock()
	v.state = State{Role: Secondary, Disk: DiskStateFromFlags(sbNow.Flags)}
	for i := range cfg.Peers {
		pc := &cfg.Peers[i]
		p := newPeer(v, *pc, sbNow.Slot(pc.NodeID))
		v.peers = append(v.peers, p)
		v.state.Peers = append(v.state.Peers, PeerState{NodeID: pc.NodeID, Name: pc.Name, Conn: StandAlone, Disk: DUnknown})
	}
	v.handshaking = make(chan struct{}, 1)
	v.flusher = newFlusher(v)
	v.overlap = newOverlapper(v.data, 2)
	log.Info("attached", "disk", cfg.Disk, "size", v.size, "disk-state", v.state.Disk,
		"generation", fmt.Sprintf("%016X", sbNow.Current))
	return v, nil
}

// assignSlots gives every configured peer a bitmap slot, persisting new assignments.
func (v *Volume) assignSlots() error {
	sb := v.meta.Superblock()
	var missing []int
	for _, p := range v.cfg.Peers {
		if p.NodeID == v.cfg.NodeID {
			return fmt.Errorf("peer %s has this node's node-id %d", p.Name, p.NodeID)
		}
		if sb.Slot(p.NodeID) < 0 {
			missing = append(missing, p.NodeID)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	free := 0
	for i := 0; i < sb.MaxPeers; i++ {
		if sb.Peers[i].NodeID < 0 {
			free++
		}
	}
	if free < len(missing) {
		return fmt.Errorf("metadata has %d peer slots but %d more peers are configured (re-run create-md with --max-peers)",
			sb.MaxPeers, len(missing)-free)
	}
	return v.meta.Update(func(sb *Superblock) {
		for _, id := range missing {
			for i := 0; i < sb.MaxPeers; i++ {
				if sb.Peers[i].NodeID < 0 {
					sb.Peers[i] = PeerSlot{NodeID: id}
					break
				}
			}
		}
	})
}

// recover handles an unclean shutdown: every extent hot in the activity log may differ
// from every peer, so its blocks are marked out of sync in all slots and flagged to be
// resynced even if generations match.
func (v *Volume) recover(hot []uint32) error {
	sb := v.meta.Superblock()
	if sb.Flags&MDUnclean != 0 {
		wasPrimary := sb.Flags&MDPrimaryInd != 0
		noAL := sb.Flags&MDNoAL != 0
		for i := 0; i < sb.MaxPeers; i++ {
			if noAL {
				v.meta.Bitmap(i).SetAll()
				continue
			}
			for _, e := range hot {
				off := int64(e) << alExtentShift
				if off < v.size {
					v.meta.Bitmap(i).SetRange(off, min(ALExtentSize, v.size-off))
				}
			}
		}
		if noAL {
			hot = []uint32{0} // anything non-empty: the slots need a resync
		}
		if err := v.meta.WriteBitmaps(); err != nil {
			return err
		}
		err := v.meta.Update(func(sb *Superblock) {
			for i := 0; i < sb.MaxPeers; i++ {
				if sb.Peers[i].NodeID >= 0 && len(hot) > 0 {
					sb.Peers[i].Flags |= PeerResyncPending
					if wasPrimary {
						sb.Peers[i].Flags |= PeerCrashedPrimary
					}
				}
			}
			sb.Flags &^= MDPrimaryInd
		})
		if err != nil {
			return err
		}
		v.log.Warn("recovered from an unclean shutdown: activity-log extents marked out of sync",
			"extents", len(hot), "was-primary", wasPrimary, "al-updates", !noAL)
	}
	return v.meta.Update(func(sb *Superblock) {
		sb.Flags |= MDUnclean
		if v.cfg.ALUpdates {
			sb.Flags &^= MDNoAL
		} else {
			sb.Flags |= MDNoAL
		}
	})
}

// Close detaches the disk cleanly: the volume must be Secondary and disconnected.
func (v *Volume) Close() error {
	if !v.closed.CompareAndSwap(false, true) {
		return nil
	}
	for _, p := range v.peers {
		p.shutdown()
	}
	v.flusher.stop()
	v.overlap.close()
	err := v.al.Clean()
	if err == nil {
		err = v.meta.Update(func(sb *Superblock) { sb.Flags &^= MDUnclean | MDPrimaryInd })
	}
	v.dev.Close()
	if v.mdev != v.dev {
		v.mdev.Close()
	}
	v.log.Info("detached")
	return err
}

// OnChange registers the observer of committed state changes (events, logs).
func (v *Volume) OnChange(fn func(old, new State)) {
	v.mu.Lock()
	v.onChange = fn
	v.mu.Unlock()
}

// change applies fn to a copy of the state, validates and commits it. Called with v.mu held.
func (v *Volume) changeLocked(fn func(s *State)) error {
	old := v.state
	next := old.Clone()
	fn(&next)
	next.Sanitize()
	if err := Validate(old, next); err != nil {
		return err
	}
	v.state = next
	if d := Diff(old, next); len(d) > 0 {
		v.log.Info("state change", "change", d)
		if v.onChange != nil {
			v.onChange(old, next.Clone())
		}
	}
	// Every peer hears of our role and disk changes, not just the one involved: a
	// third node must not go on believing a resynced peer is Inconsistent.
	if old.Role != next.Role || old.Disk != next.Disk {
		for _, p := range v.peers {
			p.sendStateLocked()
		}
	}
	return nil
}

// State returns a copy of the current state.
func (v *Volume) State() State {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.state.Clone()
}

// Size is the exported size in bytes.
func (v *Volume) Size() int64 { return v.size }

func (v *Volume) Caps() Caps {
	c := v.dev.Caps()
	c.MultiConn = true
	c.ReadOnly = false
	return c
}

// ReadAt reads from the local disk: a Primary's data is UpToDate.
func (v *Volume) ReadAt(p []byte, off int64) error {
	if !v.primary.Load() {
		return ErrNotPrimary
	}
	if err := CheckRange(off, int64(len(p)), v.size); err != nil {
		return err
	}
	v.readBytes.Add(int64(len(p)))
	if !v.diskFailed.Load() {
		err := v.data.ReadAt(p, off)
		if err == nil || !v.localIOError("read", off, err) {
			return err
		}
	}
	return v.remoteRead(p, off)
}

// Submit is the Primary's write path (see Volume).
func (v *Volume) Submit(r *Request, b *Batch) {
	if !v.primary.Load() {
		r.Owner.Complete(r, ErrNotPrimary, b)
		return
	}
	if r.Op != OpFlush {
		if err := CheckRange(r.Off, r.Len, v.size); err != nil {
			r.Owner.Complete(r, err, b)
			return
		}
	}
	r.eng.reset(v, r)
	v.susp.waitThawed()
	v.gate.RLock()
	if !v.primary.Load() { // demoted while we waited for the gate
		v.gate.RUnlock()
		r.Owner.Complete(r, ErrNotPrimary, b)
		return
	}
	diskless := v.diskFailed.Load()
	if r.Op == OpFlush {
		for _, p := range v.peers {
			p.submitFlush(r, diskless)
		}
		v.gate.RUnlock()
		switch {
		case diskless:
			r.eng.localDone(nil, false, b)
		case r.Idle:
			// Nothing queued behind it: fdatasync here, in parallel with the peers'.
			b.Flush()
			err := v.data.Flush()
			r.eng.localDone(err, err == nil, b)
		default:
			v.submitLocalFlush(r)
		}
		return
	}
	v.conf.acquire(r.Off, r.Len, r, b)
	r.eng.conflict = true
	if v.cfg.ALUpdates && !diskless {
		if err := v.al.Begin(r.Off, r.Len); err != nil {
			if !v.localIOError("activity log", r.Off, err) {
				v.gate.RUnlock()
				r.eng.partDone(err, b)
				return
			}
			diskless = true // detached: this write goes to the peers only
		} else {
			r.eng.al = true
		}
	}
	overlapped := !diskless && r.Op == OpWrite && r.Len >= overlapMin && len(v.peers) > 0 && v.overlap.start(r)
	for _, p := range v.peers {
		p.submitData(r, b, diskless)
	}
	if r.Idle {
		// Last of a burst: let the peers start on it while we write locally. Only the
		// links: the client's replies wait for this one, one send for all of them.
		for _, p := range v.peers {
			p.flushLink()
		}
	}
	if diskless {
		v.gate.RUnlock()
		r.eng.localDone(nil, false, b)
		return
	}
	var err error
	if overlapped {
		err = <-r.eng.applied
	} else {
		err = ApplyTo(v.data, r)
	}
	v.gate.RUnlock()
	if err == nil && r.Op == OpWrite {
		v.writtenBytes.Add(r.Len)
	}
	r.eng.localDone(err, err == nil, b)
}

// reqEngine is a request's bookkeeping in the write path, kept inside the Request so
// that the hot path allocates nothing.
type reqEngine struct {
	v        *Volume
	req      *Request
	parts    atomic.Int32 // local part + one per peer that must acknowledge
	copies   atomic.Int32 // replicas known to hold the data
	err      atomic.Pointer[error]
	localErr atomic.Pointer[error] // a local I/O error the detach policy may forgive
	conflict bool
	al       bool
	applied  chan error // the overlapped local write's result
}

func (e *reqEngine) reset(v *Volume, r *Request) {
	e.v, e.req = v, r
	e.parts.Store(1)
	e.copies.Store(0)
	e.err.Store(nil)
	e.localErr.Store(nil)
	e.conflict, e.al = false, false
}

// localDone finishes the local part. A local I/O error fails the request under
// on-io-error pass_on; under detach the disk is detached and the request succeeds if
// some peer has the data.
func (e *reqEngine) localDone(err error, copied bool, b *Batch) {
	if err != nil {
		r := e.req
		if e.v.localIOError(r.Op.String(), r.Off, err) {
			e.localErr.Store(boxErr(err))
			err = nil
			if r.Op != OpFlush {
				for _, p := range e.v.peers {
					p.sendOutOfSync(r.Off, r.Len)
				}
			}
		}
	}
	if copied {
		e.copies.Add(1)
	}
	e.partDone(err, b)
}

// peerDone finishes a peer's part; copied says whether the peer has the data.
func (e *reqEngine) peerDone(copied bool, b *Batch) {
	if copied {
		e.copies.Add(1)
	}
	e.partDone(nil, b)
}

// boxErr puts an error on the heap for an atomic.Pointer; taking the address of a
// parameter instead would move it to the heap on every call, errors or not.
func boxErr(err error) *error {
	p := new(error)
	*p = err
	return p
}

// partDone finishes one part; the last one completes the request.
func (e *reqEngine) partDone(err error, b *Batch) {
	if err != nil {
		e.err.CompareAndSwap(nil, boxErr(err))
	}
	if e.parts.Add(-1) != 0 {
		return
	}
	r, v := e.req, e.v
	if e.al {
		v.al.End(r.Off, r.Len)
	}
	if e.conflict {
		v.conf.release(r)
	}
	var final error
	if p := e.err.Load(); p != nil {
		final = *p
	} else if e.copies.Load() == 0 {
		// Nobody holds the data: the local copy failed (or there is no disk) and no
		// peer confirmed it.
		if p := e.localErr.Load(); p != nil {
			final = *p
		} else {
			final = fmt.Errorf("%w: no replica holds the data (local disk detached, no peer connected)", ErrIO)
		}
	}
	if v.susp.hold(r, final) {
		return
	}
	r.Owner.Complete(r, final, b)
}

// Promote makes this node Primary (drbdadm primary [--force]).
func (v *Volume) Promote(force bool) error {
	v.mu.Lock()
	if err := CanPromote(v.state, force); err != nil {
		v.mu.Unlock()
		return err
	}
	if v.state.Role == Primary {
		v.mu.Unlock()
		return nil
	}
	if v.promoting {
		v.mu.Unlock()
		return errors.New("a promotion is already in progress")
	}
	v.promoting = true
	v.mu.Unlock()
	defer func() {
		v.mu.Lock()
		v.promoting = false
		v.mu.Unlock()
	}()

	// With fencing, a peer we cannot reach must be known Outdated (or fenced now) before
	// we write without it; --force takes the operator's word for it, as in DRBD.
	if !force {
		for _, p := range v.peers {
			if err := p.fenceBeforePromotion(); err != nil {
				return err
			}
		}
	}
	// Cluster-wide phase: every connected peer must agree that it is not Primary.
	for _, p := range v.peers {
		if err := p.askPromote(); err != nil {
			return err
		}
	}

	v.gate.Lock()
	defer v.gate.Unlock()
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := CanPromote(v.state, force); err != nil {
		return err
	}
	forced := force && v.state.Disk != UpToDate
	if forced {
		// A SyncTarget that is forced UpToDate abandons its resync source.
		for _, p := range v.peers {
			if ps := v.state.Peer(p.cfg.NodeID); ps != nil && ps.Repl.IsSyncTarget() {
				p.dropLink("forced to Primary while SyncTarget")
			}
		}
	}
	err := v.meta.Update(func(sb *Superblock) {
		sb.Flags |= MDPrimaryInd
		// Blocks that may differ after a lost Primary (markPrimaryLossLocked) are
		// resynced from us now: our data is the truth, so we are not "unclean" any more.
		// The bits stay; a crashed Primary's own flags stay too.
		for i := range sb.Peers {
			if sb.Peers[i].Flags&PeerCrashedPrimary == 0 {
				sb.Peers[i].Flags &^= PeerResyncPending
			}
		}
		if forced {
			sb.Flags |= MDConsistent | MDWasUpToDate
			sb.Flags &^= MDOutdated
		}
	})
	if err != nil {
		return err
	}
	if forced || v.anyPeerBehindLocked() {
		if err := v.newGenerationLocked(forced, false); err != nil {
			return err
		}
	}
	err = v.changeLocked(func(s *State) {
		s.Role = Primary
		if forced {
			s.Disk = UpToDate
		}
	})
	if err != nil {
		return err
	}
	v.primary.Store(true)
	for _, p := range v.peers {
		if forced {
			p.startFullSyncAsSourceLocked()
		}
	}
	// Peers whose resync was deferred to a Primary (that is us now), and connected peers
	// with blocks to resync from us (marked when the last Primary went away).
	v.rehandshakeLocked(func(o *Peer) bool {
		return o.deferred || v.state.Peer(o.cfg.NodeID).Repl == Established && o.bm.Count() > 0
	}, "promoted: resyncing the peers that waited for a Primary")
	v.log.Info("promoted", "force", force)
	return nil
}

// anyPeerBehindLocked reports whether some peer would not receive our writes.
func (v *Volume) anyPeerBehindLocked() bool {
	for _, p := range v.peers {
		if !p.inSyncLocked() {
			return true
		}
	}
	return false
}

// newGenerationLocked starts a new current generation: the old one becomes the bitmap
// generation of every peer that does not have our data (unless its bitmap already
// started earlier), and in-sync connected peers adopt the new one. Needs gate and mu.
func (v *Volume) newGenerationLocked(forced, diskless bool) error {
	sb := v.meta.Superblock()
	old := sb.Current
	next := NewUUID()
	if v.state.Role == Primary || v.promoting {
		next |= UUIDPrimaryBit
	}
	var adopters []*Peer
	err := v.meta.Update(func(sb *Superblock) {
		sb.Current = next
		pushHistory(&sb.History, old)
		for _, p := range v.peers {
			if !forced && p.inSyncLocked() {
				adopters = append(adopters, p)
				continue
			}
			if p.slot >= 0 && sb.Peers[p.slot].BitmapUUID == 0 && mask(old) != UUIDJustCreated {
				sb.Peers[p.slot].BitmapUUID = old
			}
		}
	})
	if err != nil {
		return err
	}
	v.log.Info("new current generation", "old", fmt.Sprintf("%016X", old), "new", fmt.Sprintf("%016X", next))
	var flags uint32
	if diskless {
		flags = transport.GenSenderDiskless
	}
	for _, p := range adopters {
		p.sendNewUUID(next, old, flags)
	}
	return nil
}

// Demote makes this node Secondary: no new writes, every completed write flushed on
// the local disk and the peers, then the Primary indicator cleared.
func (v *Volume) Demote() error {
	v.mu.Lock()
	if v.state.Role != Primary {
		v.mu.Unlock()
		return nil
	}
	v.mu.Unlock()
	if r := v.Suspended(); r != "" {
		return refuse(nil, "I/O is suspended (%s): the peer is not confirmed fenced; fix that or run resume-io first", r)
	}
	v.primary.Store(false)
	v.gate.Lock() // waits for submissions in progress
	defer v.gate.Unlock()
	// Writes queued by an NBD goroutine that now waits for the gate may sit unsent on a
	// link, and drain would wait for their acknowledgements until a keepalive.
	for _, p := range v.peers {
		p.flushLink()
	}
	v.conf.drain()
	var err error
	if v.diskFailed.Load() && !v.anyReplicating() {
		// No disk and no peer: every write since the last replica went away failed,
		// so there is nothing to flush — and refusing would leave a Primary that can
		// neither write nor step down.
		v.log.Warn("demoting a diskless Primary with no replica connected: nothing to flush")
	} else {
		err = v.flushAll()
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err != nil {
		v.primary.Store(true)
		return fmt.Errorf("flush before demotion failed: %w", err)
	}
	if err := v.meta.Update(func(sb *Superblock) { sb.Flags &^= MDPrimaryInd }); err != nil {
		v.primary.Store(true)
		return err
	}
	if err := v.changeLocked(func(s *State) { s.Role = Secondary }); err != nil {
		return err
	}
	v.log.Info("demoted")
	return nil
}

// flushAll makes everything written so far durable locally and on every peer.
func (v *Volume) flushAll() error {
	done := make(chan error, 1)
	r := &Request{Op: OpFlush, Owner: chanCompleter(done)}
	r.eng.reset(v, r)
	diskless := v.diskFailed.Load()
	for _, p := range v.peers {
		p.submitFlush(r, diskless)
	}
	if diskless {
		var b Batch
		r.eng.localDone(nil, false, &b)
	} else {
		v.submitLocalFlush(r)
	}
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		return errors.New("timed out")
	}
}

// anyReplicating reports whether some peer receives our writes now.
func (v *Volume) anyReplicating() bool {
	for _, p := range v.peers {
		p.pendMu.Lock()
		r := p.replicating
		p.pendMu.Unlock()
		if r {
			return true
		}
	}
	return false
}

type chanCompleter chan error

func (c chanCompleter) Complete(_ *Request, err error, b *Batch) {
	b.Flush()
	c <- err
}

// Invalidate discards local data: everything is resynced from a peer with UpToDate
// data, now if one is connected, else at the next connection.
func (v *Volume) Invalidate() error {
	v.gate.Lock()
	defer v.gate.Unlock()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.state.Role == Primary {
		return refuse(nil, "cannot invalidate a Primary (demote it first)")
	}
	for _, ps := range v.state.Peers {
		if ps.Repl.IsSyncSource() {
			return refuse(nil, "cannot invalidate while SyncSource to %s", ps.Name)
		}
	}
	var source *Peer
	for _, p := range v.peers {
		ps := v.state.Peer(p.cfg.NodeID)
		if ps.Conn == Connected && ps.Disk == UpToDate && ps.Repl == Established {
			source = p
			break
		}
	}
	if err := v.markInconsistentLocked(true); err != nil {
		return err
	}
	if source != nil {
		source.requestFullSyncAsTargetLocked()
	}
	return nil
}

// markInconsistentLocked persists Inconsistent (before any resync data may arrive);
// with all, every block is marked out of sync for every peer.
func (v *Volume) markInconsistentLocked(all bool) error {
	if all {
		for _, p := range v.peers {
			if p.bm != nil {
				p.bm.SetAll()
			}
		}
		if err := v.meta.WriteBitmaps(); err != nil {
			return err
		}
	}
	if err := v.meta.Update(func(sb *Superblock) { sb.Flags &^= MDConsistent | MDWasUpToDate }); err != nil {
		return err
	}
	return v.changeLocked(func(s *State) { s.Disk = Inconsistent })
}

// markUpToDateLocked persists UpToDate.
func (v *Volume) markUpToDateLocked() error {
	if v.state.Disk == UpToDate {
		return nil
	}
	if err := v.meta.Update(func(sb *Superblock) {
		sb.Flags |= MDConsistent | MDWasUpToDate
		sb.Flags &^= MDOutdated
	}); err != nil {
		return err
	}
	return v.changeLocked(func(s *State) { s.Disk = UpToDate })
}

// markOutdatedLocked persists Outdated (a Secondary that lost its Primary gracefully).
func (v *Volume) markOutdatedLocked() error {
	if v.state.Disk != UpToDate && v.state.Disk != Consistent {
		return nil
	}
	if err := v.meta.Update(func(sb *Superblock) { sb.Flags |= MDOutdated }); err != nil {
		return err
	}
	return v.changeLocked(func(s *State) { s.Disk = Outdated })
}

// Extents reports holes of the local backing file (block status for NBD clients).
func (v *Volume) Extents(off, n int64, fn func(off, n int64, hole bool) bool) error {
	if !v.primary.Load() {
		return ErrNotPrimary
	}
	if err := CheckRange(off, n, v.size); err != nil {
		return err
	}
	if m, ok := v.dev.(ExtentMapper); ok {
		return m.Extents(off, n, fn)
	}
	fn(off, n, false)
	return nil
}
