package scsi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// PR issues persistent reservation commands on a Device.
//
// Every method sends its command, re-sends it after a UNIT ATTENTION (up to Retries
// times: a UNIT ATTENTION means the command was not executed) or after BUSY / TASK SET
// FULL, and reports RESERVATION CONFLICT as an error wrapping ErrReservationConflict.
// PR holds no state of its own besides its settings; one PR may be shared by goroutines.
type PR struct {
	Dev Device
	// APTPL asks the device server to keep registrations across power loss. Not every
	// target supports it (tgtd does not); leave false unless REPORT CAPABILITIES says
	// PTPL_C.
	APTPL bool
	// AllTgtPt registers the key on every target port of the LU, so the registration
	// survives a path change (multipath).
	AllTgtPt bool
	// Retries bounds re-sends after UNIT ATTENTION or BUSY; default 5.
	Retries int
	// OnUnitAttention, if set, sees every UNIT ATTENTION consumed. 2A/03 (reservations
	// preempted) and 2A/05 (registrations preempted) tell a node it has been fenced.
	OnUnitAttention func(Sense)
	Logger          *slog.Logger
}

// NewPR returns a PR over dev with default settings.
func NewPR(dev Device) *PR { return &PR{Dev: dev} }

func (p *PR) retries() int {
	if p.Retries > 0 {
		return p.Retries
	}
	return 5
}

func (p *PR) log() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// Exec runs cdb with the PR retry policy and returns the number of bytes transferred
// (In) and the status as an error.
func (p *PR) Exec(ctx context.Context, cdb []byte, dir Direction, data []byte) (int, error) {
	return Exec(ctx, p.Dev, cdb, dir, data, p.retries(), p.OnUnitAttention)
}

// Exec sends cdb, re-sending it up to retries times after a UNIT ATTENTION or a BUSY /
// TASK SET FULL status (with a short backoff for the latter). It returns the bytes
// transferred and the final status as an error (see Result.Err). onUA, if not nil, sees
// each UNIT ATTENTION consumed.
func Exec(ctx context.Context, dev Device, cdb []byte, dir Direction, data []byte, retries int, onUA func(Sense)) (int, error) {
	backoff := 10 * time.Millisecond
	for attempt := 0; ; attempt++ {
		res, err := dev.Execute(ctx, cdb, dir, data)
		if err != nil {
			return 0, err
		}
		err = res.Err()
		n := len(data) - res.Residual
		if n < 0 || n > len(data) {
			n = len(data)
		}
		if err == nil || attempt >= retries {
			return n, err
		}
		var cc *CheckCondition
		var se *StatusError
		switch {
		case errors.As(err, &cc) && cc.IsUnitAttention():
			if onUA != nil {
				onUA(cc.Sense)
			}
		case errors.As(err, &cc) && cc.Sense.Key == SenseNotReady && cc.Sense.ASC == 0x04 && cc.Sense.ASCQ == 0x01:
			// becoming ready: wait like BUSY
			if err := sleep(ctx, backoff); err != nil {
				return 0, err
			}
			backoff *= 2
		case errors.As(err, &se) && se.Temporary():
			if err := sleep(ctx, backoff); err != nil {
				return 0, err
			}
			backoff *= 2
		default:
			return n, err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// out sends one PERSISTENT RESERVE OUT.
func (p *PR) out(ctx context.Context, sa PROutAction, typ ReservationType, params []byte) error {
	cdb := PersistentReserveOut(sa, ScopeLU, typ, uint32(len(params)))
	_, err := p.Exec(ctx, cdb, Out, params)
	if err != nil {
		return fmt.Errorf("PERSISTENT RESERVE OUT %s: %w", sa, err)
	}
	return nil
}

func (p *PR) params(key, sakey uint64) []byte {
	return PROutParams{Key: key, ServiceKey: sakey, APTPL: p.APTPL, AllTgtPt: p.AllTgtPt}.Marshal()
}

// Register registers key for this I_T nexus, which must not be registered yet (a
// registered nexus gets RESERVATION CONFLICT; use RegisterIgnore to replace a key).
func (p *PR) Register(ctx context.Context, key uint64) error {
	if key == 0 {
		return errors.New("scsi: PR register: key 0 is not a key")
	}
	return p.out(ctx, PROutRegister, 0, p.params(0, key))
}

// RegisterIgnore registers key with REGISTER AND IGNORE EXISTING KEY: it works whether
// or not the nexus is registered, and is how an initiator re-registers after a target
// forgot its registration (tgtd forgets it on every new iSCSI session).
func (p *PR) RegisterIgnore(ctx context.Context, key uint64) error {
	if key == 0 {
		return errors.New("scsi: PR register: key 0 is not a key")
	}
	return p.out(ctx, PROutRegisterAndIgnoreExisting, 0, p.params(0, key))
}

// Unregister removes this nexus' registration, whatever its key (REGISTER AND IGNORE
// EXISTING KEY with service action key 0). Unregistering the reservation holder of a
// registrants-only reservation releases the reservation.
func (p *PR) Unregister(ctx context.Context) error {
	return p.out(ctx, PROutRegisterAndIgnoreExisting, 0, p.params(0, 0))
}

// Reserve creates a reservation of type typ held by this nexus, registered with key.
// Reserving again with the same type is a no-op; a different holder gives
// RESERVATION CONFLICT.
func (p *PR) Reserve(ctx context.Context, key uint64, typ ReservationType) error {
	return p.out(ctx, PROutReserve, typ, p.params(key, 0))
}

// Release releases the reservation this nexus holds (type must match).
func (p *PR) Release(ctx context.Context, key uint64, typ ReservationType) error {
	return p.out(ctx, PROutRelease, typ, p.params(key, 0))
}

// Clear removes the reservation and every registration; key must be this nexus' key.
func (p *PR) Clear(ctx context.Context, key uint64) error {
	return p.out(ctx, PROutClear, 0, p.params(key, 0))
}

// Preempt removes every registration with key victim; if a victim holds the
// reservation, this nexus (registered with key) takes it over with type typ. This is how
// a survivor fences a peer.
func (p *PR) Preempt(ctx context.Context, key, victim uint64, typ ReservationType) error {
	return p.out(ctx, PROutPreempt, typ, p.params(key, victim))
}

// PreemptAndAbort is Preempt that also aborts the victim's outstanding commands, so no
// write the victim queued before being fenced can still land. A target that rejects it
// with ILLEGAL REQUEST (tgtd does) gets a plain PREEMPT instead: the registration is
// still removed, and later victim commands still fail, only queued ones are not
// aborted.
func (p *PR) PreemptAndAbort(ctx context.Context, key, victim uint64, typ ReservationType) error {
	err := p.out(ctx, PROutPreemptAndAbort, typ, p.params(key, victim))
	var cc *CheckCondition
	if errors.As(err, &cc) && cc.IsIllegalRequest() {
		p.log().Info("PREEMPT AND ABORT not supported, falling back to PREEMPT", "sense", cc.Sense.String())
		return p.Preempt(ctx, key, victim, typ)
	}
	return err
}

// RegisterAndMove registers the initiator port tid (on relative target port rtp) with
// newKey and moves this nexus' reservation to it; unreg also unregisters this nexus.
func (p *PR) RegisterAndMove(ctx context.Context, key, newKey uint64, typ ReservationType, tid []byte, rtp uint16, unreg bool) error {
	params := RegisterAndMoveParams{Key: key, ServiceKey: newKey, Unreg: unreg, APTPL: p.APTPL,
		RelativeTargetPort: rtp, TransportID: tid}.Marshal()
	return p.out(ctx, PROutRegisterAndMove, typ, params)
}

// in runs PERSISTENT RESERVE IN, growing the allocation length until the parameter data
// fits (up to the 64 KiB the CDB can ask for).
func (p *PR) in(ctx context.Context, sa PRInAction, parse func([]byte) error) error {
	alloc := 1024
	for {
		buf := make([]byte, alloc)
		n, err := p.Exec(ctx, PersistentReserveIn(sa, uint16(alloc)), In, buf)
		if err != nil {
			return fmt.Errorf("PERSISTENT RESERVE IN %s: %w", prinName(sa), err)
		}
		err = parse(buf[:n])
		var te *TruncatedError
		if errors.As(err, &te) && alloc < 0xffff && te.Need > alloc {
			alloc = min(te.Need, 0xffff)
			continue
		}
		if err != nil {
			return fmt.Errorf("PERSISTENT RESERVE IN %s: %w", prinName(sa), err)
		}
		return nil
	}
}

func prinName(sa PRInAction) string {
	switch sa {
	case PRInReadKeys:
		return "READ KEYS"
	case PRInReadReservation:
		return "READ RESERVATION"
	case PRInReportCapabilities:
		return "REPORT CAPABILITIES"
	case PRInReadFullStatus:
		return "READ FULL STATUS"
	}
	return fmt.Sprintf("service action %d", sa)
}

// ReadKeys returns the registered keys, one per registered I_T nexus.
func (p *PR) ReadKeys(ctx context.Context) (Keys, error) {
	var k Keys
	err := p.in(ctx, PRInReadKeys, func(b []byte) (err error) { k, err = ParseReadKeys(b); return })
	return k, err
}

// ReadReservation returns the current reservation, if any.
func (p *PR) ReadReservation(ctx context.Context) (Reservation, error) {
	var r Reservation
	err := p.in(ctx, PRInReadReservation, func(b []byte) (err error) { r, err = ParseReadReservation(b); return })
	return r, err
}

// ReportCapabilities returns what the device server supports.
func (p *PR) ReportCapabilities(ctx context.Context) (Capabilities, error) {
	var c Capabilities
	err := p.in(ctx, PRInReportCapabilities, func(b []byte) (err error) { c, err = ParseReportCapabilities(b); return })
	return c, err
}

// ReadFullStatus returns every registration with its TransportID. Not every target
// implements it (tgtd does not: ILLEGAL REQUEST).
func (p *PR) ReadFullStatus(ctx context.Context) (FullStatus, error) {
	var fs FullStatus
	err := p.in(ctx, PRInReadFullStatus, func(b []byte) (err error) { fs, err = ParseReadFullStatus(b); return })
	return fs, err
}

// Registered reports whether key is among the registered keys. A node checks it after
// reconnecting: a key still present means nobody preempted it, and the node may
// re-register its new nexus with RegisterIgnore; a missing key means it was fenced and
// must not.
func (p *PR) Registered(ctx context.Context, key uint64) (bool, error) {
	k, err := p.ReadKeys(ctx)
	if err != nil {
		return false, err
	}
	return k.Has(key), nil
}
