// Package fence holds blockrep's fencing: SCSI-3 persistent reservations (fence/scsi,
// over fence/sgio or the userspace initiator fence/iscsi) and, here, the shared-storage
// volume that uses them — one LUN seen by every node, no replication, the writer
// protected by a reservation — plus the registration-key scheme every tool shares.
package fence

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blockrep/blockrep/blockrep"
	"github.com/blockrep/blockrep/fence/iscsi"
	"github.com/blockrep/blockrep/fence/scsi"
)

// Key is the registration key of node nodeID for a resource: "BR" (0x4252) in the top
// 16 bits, the CRC32-C of the resource name in the next 32, node-id + 1 in the low 16.
// Stable across restarts, unique per resource and node, never zero.
func Key(resource string, nodeID int) uint64 {
	h := uint64(crc32.Checksum([]byte(resource), crc32.MakeTable(crc32.Castagnoli)))
	return 0x4252<<48 | h<<16 | uint64(nodeID+1)
}

// NodeOfKey returns the node id a key of resource belongs to, or false for a foreign key.
func NodeOfKey(resource string, key uint64) (int, bool) {
	if key&^0xffff != Key(resource, 0)&^0xffff || key&0xffff == 0 {
		return 0, false
	}
	return int(key&0xffff) - 1, true
}

// Reservation states of a node, as status reports them.
const (
	StateHolder       = "holder"       // this node holds the reservation
	StateRegistered   = "registered"   // registered, another node (or none) holds it
	StateFenced       = "fenced"       // our key was removed: we must not write
	StateUnregistered = "unregistered" // not registered (down, or a target that forgot us)
)

// ErrHeld is returned when another node holds the reservation.
var ErrHeld = errors.New("reservation held by another node")

// SharedConfig configures a node's view of a shared LUN.
type SharedConfig struct {
	Resource      string
	NodeID        int
	URL           string // iscsi://host:port/iqn/lun
	InitiatorName string
	Type          scsi.ReservationType
	// NodeName maps node ids to names for messages ("held by alpha").
	NodeName func(id int) string
	// CheckInterval is how often a Primary checks that its key is still registered.
	CheckInterval time.Duration
	Logger        *slog.Logger
}

// Shared is one node's access to a shared LUN. It is a blockrep.Backend: only the
// reservation holder writes, and once its key is gone every write fails at once with
// blockrep.ErrFenced — nothing more reaches the LUN — until the operator demotes and
// promotes again.
type Shared struct {
	cfg  SharedConfig
	log  *slog.Logger
	key  uint64
	sess *iscsi.Session
	disk *iscsi.Disk
	pr   *scsi.PR

	mu      sync.Mutex // serializes role changes
	primary atomic.Bool
	fenced  atomic.Bool
	stop    chan struct{}
	wg      sync.WaitGroup
}

// OpenShared logs in to the LUN and registers this node's key.
func OpenShared(ctx context.Context, cfg SharedConfig) (*Shared, error) {
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Type == 0 {
		cfg.Type = scsi.WriteExclusive
	}
	s := &Shared{cfg: cfg, log: cfg.Logger.With("resource", cfg.Resource), key: Key(cfg.Resource, cfg.NodeID)}
	sess, err := iscsi.Dial(ctx, cfg.URL, iscsi.Options{InitiatorName: cfg.InitiatorName,
		OnReconnect: iscsi.KeepRegistration(s.key), Logger: s.log})
	if err != nil {
		return nil, err
	}
	s.sess = sess
	s.pr = scsi.NewPR(sess)
	s.pr.Logger = s.log
	s.disk, err = iscsi.NewDisk(ctx, sess, iscsi.DiskOptions{OnUnitAttention: s.unitAttention})
	if err != nil {
		sess.Close()
		return nil, err
	}
	if err := s.pr.RegisterIgnore(ctx, s.key); err != nil {
		sess.Close()
		return nil, fmt.Errorf("registering key %#x: %w", s.key, err)
	}
	s.log.Info("registered on the shared LUN", "key", fmt.Sprintf("%#x", s.key), "initiator", cfg.InitiatorName)
	return s, nil
}

// Key returns this node's registration key.
func (s *Shared) Key() uint64 { return s.key }

func (s *Shared) unitAttention(sense scsi.Sense) {
	if sense.ASC == 0x2a && (sense.ASCQ == 0x03 || sense.ASCQ == 0x05) && s.primary.Load() {
		s.markFenced("unit attention: reservations preempted")
	}
}

func (s *Shared) markFenced(why string) {
	if s.fenced.CompareAndSwap(false, true) {
		s.log.Error("FENCED: this node's key is gone from the shared LUN; all writes now fail", "reason", why)
	}
}

// holderName names the node that holds key.
func (s *Shared) holderName(key uint64) string {
	if id, ok := NodeOfKey(s.cfg.Resource, key); ok {
		if s.cfg.NodeName != nil {
			if n := s.cfg.NodeName(id); n != "" {
				return n
			}
		}
		return fmt.Sprintf("node-id %d", id)
	}
	return fmt.Sprintf("a foreign initiator (key %#x)", key)
}

// Promote takes the reservation. If another node holds it, Promote refuses naming that
// node, unless force: then it preempts the holder — fences it — and takes over.
func (s *Shared) Promote(ctx context.Context, force bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.primary.Load() {
		return nil
	}
	if s.fenced.Load() {
		return fmt.Errorf("%s: this node was fenced; run secondary first", s.cfg.Resource)
	}
	// A target may have forgotten us (restart, re-login): make sure we are registered.
	if err := s.pr.RegisterIgnore(ctx, s.key); err != nil {
		return fmt.Errorf("registering key %#x: %w", s.key, err)
	}
	res, err := s.pr.ReadReservation(ctx)
	if err != nil {
		return err
	}
	switch {
	case res.Reserved && res.Key == s.key:
	case res.Reserved && !force:
		return fmt.Errorf("%w: %s holds the reservation on %s (key %#x); primary --force preempts it",
			ErrHeld, s.holderName(res.Key), s.cfg.Resource, res.Key)
	case res.Reserved:
		s.log.Warn("preempting the reservation holder (fencing it)", "holder", s.holderName(res.Key), "key", fmt.Sprintf("%#x", res.Key))
		if err := s.pr.PreemptAndAbort(ctx, s.key, res.Key, s.cfg.Type); err != nil {
			return fmt.Errorf("preempting %s: %w", s.holderName(res.Key), err)
		}
	default:
		if err := s.pr.Reserve(ctx, s.key, s.cfg.Type); err != nil {
			if errors.Is(err, scsi.ErrReservationConflict) {
				return fmt.Errorf("%w: another node reserved %s meanwhile", ErrHeld, s.cfg.Resource)
			}
			return err
		}
	}
	s.primary.Store(true)
	s.stop = make(chan struct{})
	s.wg.Add(1)
	go s.watch(s.stop)
	s.log.Info("holding the reservation", "type", s.cfg.Type)
	return nil
}

// watch checks every CheckInterval that our key is still registered.
func (s *Shared) watch(stop chan struct{}) {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ok, err := s.pr.Registered(ctx, s.key)
		cancel()
		switch {
		case err != nil:
			s.log.Warn("cannot check the registration", "err", err)
		case !ok:
			s.markFenced("key no longer registered")
		}
	}
}

// Demote releases the reservation (keeping the registration); after being fenced it
// registers again, so that a later Promote can compete.
func (s *Shared) Demote(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.primary.Load() {
		s.primary.Store(false)
		close(s.stop)
		s.wg.Wait()
	}
	if s.fenced.Load() {
		if err := s.pr.RegisterIgnore(ctx, s.key); err != nil {
			return fmt.Errorf("registering again after being fenced: %w", err)
		}
		s.fenced.Store(false)
		s.log.Info("registered again after being fenced")
		return nil
	}
	if err := s.disk.Flush(); err != nil && !errors.Is(err, scsi.ErrReservationConflict) {
		return err
	}
	res, err := s.pr.ReadReservation(ctx)
	if err != nil {
		return err
	}
	if res.Reserved && res.Key == s.key {
		return s.pr.Release(ctx, s.key, res.Type)
	}
	return nil
}

// Register registers this node's key again (a fence agent's "on"). A Primary that was
// fenced stays fenced until the operator demotes it: its view of the data is stale.
func (s *Shared) Register(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.pr.RegisterIgnore(ctx, s.key); err != nil {
		return err
	}
	if !s.primary.Load() {
		s.fenced.Store(false)
	}
	return nil
}

// Close demotes, unregisters and logs out.
func (s *Shared) Close(ctx context.Context) error {
	err := s.Demote(ctx)
	if uerr := s.pr.Unregister(ctx); uerr != nil && err == nil && !errors.Is(uerr, scsi.ErrReservationConflict) {
		err = uerr
	}
	s.sess.Close()
	return err
}

// ReservationStatus is what status reports about the reservation.
type ReservationStatus struct {
	Key    uint64
	Holder string // node name, "none", or a foreign key
	State  string // StateHolder, StateRegistered, StateFenced, StateUnregistered
}

// Status reads the LUN's reservation state.
func (s *Shared) Status(ctx context.Context) ReservationStatus {
	st := ReservationStatus{Key: s.key, Holder: "none", State: StateUnregistered}
	if s.fenced.Load() {
		st.State = StateFenced
	}
	res, err := s.pr.ReadReservation(ctx)
	if err == nil && res.Reserved {
		if res.Key == s.key {
			st.Holder = s.cfg.NodeName(s.cfg.NodeID)
		} else {
			st.Holder = s.holderName(res.Key)
		}
	}
	if st.State == StateFenced {
		return st
	}
	if ok, err := s.pr.Registered(ctx, s.key); err == nil && ok {
		st.State = StateRegistered
		if res.Reserved && res.Key == s.key {
			st.State = StateHolder
		}
	}
	return st
}

// Primary reports whether this node holds (or thinks it holds) the reservation.
func (s *Shared) Primary() bool { return s.primary.Load() }

// Fenced reports whether this node was fenced.
func (s *Shared) Fenced() bool { return s.fenced.Load() }

// PR returns the reservation commands on this node's session (the fence agent acts
// through the daemon's registered nexus).
func (s *Shared) PR() *scsi.PR { return s.pr }

// Backend: only the reservation holder writes.

func (s *Shared) Size() int64 { return s.disk.Size() }

func (s *Shared) Caps() blockrep.Caps {
	c := s.disk.Caps()
	c.MultiConn = true
	return c
}

func (s *Shared) ReadAt(p []byte, off int64) error {
	if !s.primary.Load() {
		return blockrep.ErrNotPrimary
	}
	return s.disk.ReadAt(p, off)
}

func (s *Shared) Submit(r *blockrep.Request, b *blockrep.Batch) {
	var err error
	switch {
	case !s.primary.Load():
		err = blockrep.ErrNotPrimary
	case s.fenced.Load():
		err = blockrep.ErrFenced
	default:
		err = blockrep.ApplyTo(s.disk, r)
		if errors.Is(err, scsi.ErrReservationConflict) {
			s.markFenced("write refused: reservation conflict")
			err = fmt.Errorf("%w: %v", blockrep.ErrFenced, err)
		}
	}
	r.Owner.Complete(r, err, b)
}
