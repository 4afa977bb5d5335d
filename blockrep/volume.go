package blockrep

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blockrep/blockrep/internal/clock"
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
	// OnIOError is the policy for a failed local read or write.
	OnIOError IOErrorPolicy
	// Handlers are DRBD's handlers (fence-peer, unfence-peer) by name: shell commands.
	Handlers map[string]string
	// HandlerTimeout bounds a handler's run; a timeout counts as the handler's failure.
	// 0 means DefaultHandlerTimeout.
	HandlerTimeout time.Duration
	// Quorum is the resource's quorum policy (off by default).
	Quorum QuorumPolicy
	// Clock is the engine's time source; nil is the system's monotonic clock.
	Clock clock.Clock
	// Dial opens a link to a peer's address; nil dials TCP (tests use an in-memory network).
	Dial transport.DialFunc
	// OnChange observes every committed state change, OLD and NEW, in order. It is called
	// outside the engine's locks and must not block (the event feed buffers).
	OnChange func(old, new State)
}

// DefaultHandlerTimeout bounds a handler when the configuration gives no timeout.
const DefaultHandlerTimeout = 60 * time.Second

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
	// PingInt: idle keepalive interval; a peer silent for PingInt+PingTimeout is dead,
	// and one silent for Timeout while requests to it are in flight.
	Timeout     time.Duration
	PingInt     time.Duration
	PingTimeout time.Duration
	ConnectInt  time.Duration
	MaxBuffers  int // writes in flight to the peer before the sender blocks
	// SndBuf and RcvBuf size the socket buffers (sndbuf-size/rcvbuf-size); 0 = auto.
	SndBuf, RcvBuf int
	Resync         ResyncConfig
	// Settings must be equal on both sides; a mismatch refuses the connection.
	Settings string
	// Fencing: what losing this peer while Primary triggers.
	Fencing FencingPolicy
	// Tiebreaker: the peer is a diskless tiebreaker (disk none): it counts for quorum,
	// arbitrates promotions and receives no data.
	Tiebreaker bool
	// TLS, when set, is the client configuration of the link (TLS 1.3, mutual
	// certificates; the peer's must name the peer's host, Name).
	TLS *tls.Config
	// AckLatency, when set, gets the time from sending each application write to this
	// peer until its final ack (metrics). It runs in the receive loop: it must not block.
	AckLatency func(time.Duration)
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
	// Lock order: gate, ctl, mu, Peer.pendMu.
	gate sync.RWMutex
	// handshaking holds a token while a connection handshakes (session.go).
	handshaking chan struct{}
	// writable: Primary writes are accepted (the core's SetWritable); noQuorum: they fail
	// for want of quorum (on-no-quorum io-error).
	writable atomic.Bool
	noQuorum atomic.Bool
	closed   atomic.Bool
	// diskFailed: the local disk was detached after an I/O error (on-io-error detach);
	// the volume serves through its peers. Set at the error, before the core hears of it.
	diskFailed atomic.Bool
	susp       suspension
	clock      clock.Clock

	// ctl serializes the control plane: one Step and the execution of its effects at a
	// time, in order. mu guards core for readers (State, Status, queries).
	ctl  sync.Mutex
	mu   sync.Mutex
	core *Core
	// peers is replaced whole (Reconfigure), never changed in place: readers take
	// the current slice with peersNow.
	peers atomic.Pointer[[]*Peer]

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
	v.clock = cfg.Clock
	if v.clock == nil {
		v.clock = clock.System()
	}
	var cps []CorePeerConfig
	for _, pc := range cfg.Peers {
		cps = append(cps, CorePeerConfig{NodeID: pc.NodeID, Name: pc.Name, Protocol: pc.Protocol, Fencing: pc.Fencing, Tiebreaker: pc.Tiebreaker})
	}
	v.core = NewCore(cfg.NodeID, cfg.NodeName, cfg.ALUpdates, cfg.Quorum, cps, sbNow, NewUUID)
	peers := make([]*Peer, 0, len(cfg.Peers))
	for i := range cfg.Peers {
		pc := &cfg.Peers[i]
		peers = append(peers, newPeer(v, *pc, sbNow.Slot(pc.NodeID)))
	}
	v.peers.Store(&peers)
	for _, p := range peers {
		go p.run()
	}
	v.handshaking = make(chan struct{}, 1)
	v.flusher = newFlusher(v)
	v.overlap = newOverlapper(v.data, 2)
	log.Info("attached", "disk", cfg.Disk, "size", v.size, "disk-state", v.core.State.Disk,
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
	for _, p := range v.peersNow() {
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

// step applies one event to the core and carries out its effects, in order, before the
// next event's; then the observer hears of the committed change. The caller may hold the
// gate (lock order: gate, ctl, mu).
func (v *Volume) step(ev Event) error {
	v.ctl.Lock()
	defer v.ctl.Unlock()
	v.mu.Lock()
	old := v.core.State.Clone()
	fx, err := v.core.Step(ev)
	next := v.core.State.Clone()
	v.mu.Unlock()
	v.execute(fx)
	if v.cfg.OnChange != nil && !old.Equal(next) {
		v.cfg.OnChange(old, next)
	}
	return err
}

// stepLogged is step for events nobody waits on (a link or the disk failed, a handler
// finished): a refusal there has no caller to return to, so it is logged.
func (v *Volume) stepLogged(ev Event) {
	if err := v.step(ev); err != nil {
		v.log.Error("event refused", "event", fmt.Sprintf("%T", ev), "err", err)
	}
}

// query reads the core under its lock.
func query[T any](v *Volume, fn func(c *Core) T) T {
	v.mu.Lock()
	defer v.mu.Unlock()
	return fn(v.core)
}

// execute carries out a step's effects. A failed metadata or data write stops the rest
// of them (nothing that depends on it may follow) and is a local I/O error.
func (v *Volume) execute(fx []Effect) {
	for _, e := range fx {
		if err := v.do(e); err != nil {
			v.log.Error("carrying out a state change failed; the rest of it is dropped", "effect", e.String(), "err", err)
			v.localIOError("metadata", 0, err)
			return
		}
	}
}

func (v *Volume) do(e Effect) error {
	switch e := e.(type) {
	case Persist:
		return v.meta.Update(func(sb *Superblock) {
			sb.Current, sb.History, sb.Flags = e.Meta.Current, e.Meta.History, e.Meta.Flags
			for i, p := range v.peersNow() {
				if p.slot >= 0 {
					sb.Peers[p.slot].BitmapUUID, sb.Peers[p.slot].Flags = e.Meta.Slots[i].BitmapUUID, e.Meta.Slots[i].Flags
				}
			}
		})
	case FlushData:
		if v.diskFailed.Load() {
			return nil
		}
		return v.data.Flush()
	case WriteBitmaps:
		return v.meta.WriteBitmaps()
	case Bits:
		v.peerByID(e.Peer).bits(e.Op, e.From)
	case Send:
		v.peerByID(e.Peer).post(e.Type, e.Body.Encode())
	case CloseLink:
		v.peerByID(e.Peer).closeLink(e.Reason)
	case Wake:
		v.peerByID(e.Peer).wake()
	case StartResync:
		v.peerByID(e.Peer).startResync(e.Session)
	case ResyncStats:
		p := v.peerByID(e.Peer)
		if e.Begin {
			p.rs.begin(v.clock.Now(), p.bm.Count())
		} else {
			p.rs.end(v.clock.Now())
		}
	case RequestSync:
		go v.peerByID(e.Peer).requestSync(e.SenderIsSource)
	case RunHandler:
		p := v.peerByID(e.Peer)
		if v.cfg.Handlers[e.Name] == "" && e.Name != "fence-peer" {
			return nil // optional handlers (unfence-peer) run only when configured
		}
		go func() {
			code, err := p.runHandler(e.Name)
			v.stepLogged(EvHandlerDone{Name: e.Name, Peer: e.Peer, Purpose: e.Purpose, Exit: code, Err: err})
		}()
	case Freeze:
		v.susp.freeze(e.Reason)
	case Thaw:
		held := v.susp.thaw()
		go completeHeld(held) // completing writes may block on NBD clients: not here
	case SetWritable:
		v.writable.Store(e.On)
	case QuorumIO:
		v.noQuorum.Store(e.Fail)
	case Log:
		v.log.Log(context.Background(), e.Level, e.Msg, e.Args...)
	}
	return nil
}

func (v *Volume) peerByID(id int) *Peer {
	for _, p := range v.peersNow() {
		if p.cfg.NodeID == id {
			return p
		}
	}
	panic(fmt.Sprintf("blockrep: effect for unknown peer %d", id))
}

// State returns a copy of the current state.
func (v *Volume) State() State {
	return query(v, func(c *Core) State { return c.State.Clone() })
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
	if !v.writable.Load() {
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
	if !v.writable.Load() {
		r.Owner.Complete(r, ErrNotPrimary, b)
		return
	}
	if v.noQuorum.Load() {
		r.Owner.Complete(r, fmt.Errorf("%w: writes refused (on-no-quorum io-error)", ErrNoQuorum), b)
		return
	}
	if r.Op != OpFlush {
		if err := CheckRange(r.Off, r.Len, v.size); err != nil {
			r.Owner.Complete(r, err, b)
			return
		}
	}
	r.eng.reset(v, r)
	// Every wait below goes through b, which sends what this goroutine queued first.
	v.susp.waitThawed(b)
	b.RLock(&v.gate)
	if !v.writable.Load() { // demoted while we waited for the gate
		v.gate.RUnlock()
		r.Owner.Complete(r, ErrNotPrimary, b)
		return
	}
	diskless := v.diskFailed.Load()
	if r.Op == OpFlush {
		for _, p := range v.peersNow() {
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
	overlapped := !diskless && r.Op == OpWrite && r.Len >= overlapMin && len(v.peersNow()) > 0 && v.overlap.start(r)
	for _, p := range v.peersNow() {
		p.submitData(r, b, diskless)
	}
	if r.Idle {
		// Last of a burst: let the peers start on it while we write locally. Only the
		// links: the client's replies wait for this one, one send for all of them.
		for _, p := range v.peersNow() {
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
		err = b.Recv(r.eng.applied)
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
				for _, p := range e.v.peersNow() {
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

// Promote makes this node Primary (drbdadm primary [--force]). The core decides each
// phase; between them this fences unreachable peers where the policy asks for it, then
// asks every connected peer, then commits under the I/O gate.
func (v *Volume) Promote(force bool) error {
	switch err := v.step(EvPromote{Force: force}); {
	case errors.Is(err, errNoop):
		return nil
	case err != nil:
		return err
	}
	for _, id := range query(v, (*Core).NeedsFence) {
		p := v.peerByID(id)
		code, err := p.runHandler("fence-peer")
		if err := v.step(EvHandlerDone{Name: "fence-peer", Peer: id, Purpose: PurposePromote, Exit: code, Err: err}); err != nil {
			return err
		}
	}
	ask, err := query2(v, (*Core).PromotePeers)
	if err == nil {
		for _, id := range ask {
			if err = v.peerByID(id).askPromote(); err != nil {
				break
			}
		}
	}
	if err != nil {
		return v.step(EvPromoteAbort{Err: err})
	}
	if force {
		// A SyncTarget forced UpToDate abandons its source: whatever that link's receive
		// loop still applies must land before we are Primary.
		for _, p := range v.peersNow() {
			if query(v, func(c *Core) bool { return c.State.Peer(p.cfg.NodeID).Repl.IsSyncTarget() }) {
				p.stopLink("forced to Primary while SyncTarget", 5*time.Second)
			}
		}
	}
	v.gate.Lock()
	defer v.gate.Unlock()
	return v.step(EvPromoteCommit{})
}

func query2[T any](v *Volume, fn func(c *Core) (T, error)) (T, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return fn(v.core)
}

// Demote makes this node Secondary: no new writes, every completed write flushed on
// the local disk and the peers, then the Primary indicator cleared.
func (v *Volume) Demote() error {
	switch err := v.step(EvDemote{}); {
	case errors.Is(err, errNoop):
		return nil
	case err != nil:
		return err
	}
	// Writers send what they queued before they block (Batch), so nothing in flight sits
	// unsent; a caller that abandoned its batch unflushed is covered too.
	v.gate.Lock()
	defer v.gate.Unlock()
	for _, p := range v.peersNow() {
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
	return v.step(EvDemoteCommit{FlushErr: err})
}

// flushAll makes everything written so far durable locally and on every peer.
func (v *Volume) flushAll() error {
	done := make(chan error, 1)
	r := &Request{Op: OpFlush, Owner: chanCompleter(done)}
	r.eng.reset(v, r)
	diskless := v.diskFailed.Load()
	for _, p := range v.peersNow() {
		p.submitFlush(r, diskless)
	}
	if diskless {
		var b Batch
		r.eng.localDone(nil, false, &b)
	} else {
		v.submitLocalFlush(r)
	}
	t := v.clock.NewTimer(30 * time.Second)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C():
		return errors.New("timed out")
	}
}

// anyReplicating reports whether some peer receives our writes now.
func (v *Volume) anyReplicating() bool {
	for _, p := range v.peersNow() {
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
	return v.step(EvInvalidate{})
}

// Outdate marks the local data Outdated (drbdadm outdate); Outdated or worse data is
// left as it is.
func (v *Volume) Outdate() error {
	if err := v.step(EvOutdate{}); err != nil && !errors.Is(err, errNoop) {
		return err
	}
	return nil
}

// NewCurrentUUID starts a new current generation (drbdadm new-current-uuid); with
// clearBitmap, on a just-created resource, it skips the initial resync (EvNewCurrentUUID).
// Writes are held meanwhile so that none straddles the generation change.
func (v *Volume) NewCurrentUUID(clearBitmap bool) error {
	v.gate.Lock()
	defer v.gate.Unlock()
	return v.step(EvNewCurrentUUID{ClearBitmap: clearBitmap})
}

// Extents reports holes of the local backing file (block status for NBD clients), or
// everything as data once the disk is detached.
func (v *Volume) Extents(off, n int64, fn func(off, n int64, hole bool) bool) error {
	if !v.writable.Load() {
		return ErrNotPrimary
	}
	if err := CheckRange(off, n, v.size); err != nil {
		return err
	}
	// A detached disk no longer describes the data (what was written through the peers
	// since would look like holes): everything is data then.
	if m, ok := v.dev.(ExtentMapper); ok && !v.diskFailed.Load() {
		return m.Extents(off, n, fn)
	}
	fn(off, n, false)
	return nil
}

// peersNow is the current set of peers, in configuration order.
func (v *Volume) peersNow() []*Peer {
	if p := v.peers.Load(); p != nil {
		return *p
	}
	return nil
}

// Reconfigure replaces a peer's connection settings (blockrepadm adjust): address,
// secret, timeouts, buffers, resync rates, the settings both ends must agree on. The
// peer's link is closed and made again with them; writes meanwhile are recorded in its
// bitmap as for any disconnection. What the core keeps of the peer (name, protocol,
// fencing, tiebreaker) cannot change this way.
func (v *Volume) Reconfigure(pc PeerConfig) error {
	peers := v.peersNow()
	i := slices.IndexFunc(peers, func(p *Peer) bool { return p.cfg.NodeID == pc.NodeID })
	if i < 0 {
		return fmt.Errorf("node-id %d is not a peer of %s", pc.NodeID, v.cfg.Resource)
	}
	old := peers[i]
	if pc.Name != old.cfg.Name || pc.Protocol != old.cfg.Protocol || pc.Fencing != old.cfg.Fencing || pc.Tiebreaker != old.cfg.Tiebreaker {
		return fmt.Errorf("peer %s: a change of name, protocol, fencing or disk none needs down and up", old.cfg.Name)
	}
	old.log.Info("reconfiguring the connection")
	old.shutdown()
	next := slices.Clone(peers)
	next[i] = newPeer(v, pc, old.slot)
	// Session numbers go on where the old link's ended: the core counts them per peer.
	old.pendMu.Lock()
	next[i].sessionNo = old.sessionNo
	old.pendMu.Unlock()
	// Submit holds the gate shared while it walks the peers.
	v.gate.Lock()
	v.peers.Store(&next)
	v.gate.Unlock()
	go next[i].run()
	return nil
}

// AddPeer adds a connection to a node that joined the resource's configuration while
// the volume is up (blockrepadm adjust): it claims a free bitmap slot in the metadata
// (create-md --max-peers reserves them), then the core and the peer list learn of the
// node in one step, so no effect ever meets a peer the other does not know.
func (v *Volume) AddPeer(pc PeerConfig, want bool) error {
	if pc.NodeID == v.cfg.NodeID || slices.ContainsFunc(v.peersNow(), func(p *Peer) bool { return p.cfg.NodeID == pc.NodeID }) {
		return fmt.Errorf("node-id %d is already a node of %s", pc.NodeID, v.cfg.Resource)
	}
	sb := v.meta.Superblock()
	slot := sb.Slot(pc.NodeID)
	if slot < 0 {
		err := v.meta.Update(func(sb *Superblock) {
			for i := 0; i < sb.MaxPeers; i++ {
				if sb.Peers[i].NodeID < 0 {
					sb.Peers[i] = PeerSlot{NodeID: pc.NodeID}
					slot = i
					return
				}
			}
		})
		if err != nil {
			return err
		}
		if slot < 0 {
			return fmt.Errorf("the metadata has no free peer slot for %s (re-create it with create-md --max-peers)", pc.Name)
		}
		// What a former user of the slot left there means nothing for this node.
		v.meta.Bitmap(slot).ClearAll()
	}
	p := newPeer(v, pc, slot)
	// Lock order: gate, ctl, mu. Writes wait while the peer list grows.
	v.gate.Lock()
	v.ctl.Lock()
	next := append(slices.Clone(v.peersNow()), p)
	v.peers.Store(&next)
	v.mu.Lock()
	old := v.core.State.Clone()
	fx, err := v.core.Step(EvAddPeer{Config: CorePeerConfig{NodeID: pc.NodeID, Name: pc.Name, Protocol: pc.Protocol,
		Fencing: pc.Fencing, Tiebreaker: pc.Tiebreaker}, Want: want})
	now := v.core.State.Clone()
	v.mu.Unlock()
	if err != nil {
		prev := next[:len(next)-1]
		v.peers.Store(&prev)
	}
	v.gate.Unlock()
	if err == nil {
		v.execute(fx)
	}
	v.ctl.Unlock()
	if err != nil {
		return err
	}
	if v.cfg.OnChange != nil && !old.Equal(now) {
		v.cfg.OnChange(old, now)
	}
	go p.run()
	return nil
}
