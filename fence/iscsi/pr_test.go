package iscsi

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/blockrep/blockrep/blockrep"
	"github.com/blockrep/blockrep/fence/scsi"
)

// TestPersistentReservationFencing plays the fencing scenario against tgtd with three
// sessions (distinct initiator names, so distinct I_T nexuses): A and B register, A
// reserves Write Exclusive, an unregistered C cannot write, B preempts A (PREEMPT AND
// ABORT, which tgtd refuses, so PREEMPT), after which A cannot write either and learns
// of the preemption from UNIT ATTENTION 2A/03.
func TestPersistentReservationFencing(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, targetOpts{})
	const keyA, keyB = 0xA0A0, 0xB0B0
	ctx := ctxT(t, 60*time.Second)

	sa := dial(t, tg, 1, testOpts(t, "node-a"))
	sb := dial(t, tg, 1, testOpts(t, "node-b"))
	sc := dial(t, tg, 1, testOpts(t, "node-c"))
	prA, prB, prC := scsi.NewPR(sa), scsi.NewPR(sb), scsi.NewPR(sc)
	prA.Logger, prB.Logger = testLogger(t), testLogger(t)
	da, db, dc := newDisk(t, sa), newDisk(t, sb), newDisk(t, sc)
	block := make([]byte, 512)

	caps, err := prA.ReportCapabilities(ctx)
	if err != nil {
		t.Fatalf("REPORT CAPABILITIES: %v", err)
	}
	t.Logf("tgtd PR capabilities: %+v", caps)
	if !caps.Supports(scsi.WriteExclusive) {
		t.Fatal("tgtd claims not to support Write Exclusive")
	}

	if err := prA.Register(ctx, keyA); err != nil {
		t.Fatalf("A REGISTER: %v", err)
	}
	if err := prB.RegisterIgnore(ctx, keyB); err != nil {
		t.Fatalf("B REGISTER AND IGNORE EXISTING KEY: %v", err)
	}
	if err := prA.Reserve(ctx, keyA, scsi.WriteExclusive); err != nil {
		t.Fatalf("A RESERVE: %v", err)
	}
	keys, err := prC.ReadKeys(ctx)
	if err != nil {
		t.Fatalf("READ KEYS: %v", err)
	}
	slices.Sort(keys.Keys)
	if !slices.Equal(keys.Keys, []uint64{keyA, keyB}) {
		t.Fatalf("keys %x, want A and B", keys.Keys)
	}
	res, err := prC.ReadReservation(ctx)
	if err != nil || !res.Reserved || res.Key != keyA || res.Type != scsi.WriteExclusive {
		t.Fatalf("reservation %+v, %v; want A's Write Exclusive", res, err)
	}

	// Write Exclusive: only the holder writes; everyone else, registered or not, gets
	// RESERVATION CONFLICT. Reads stay allowed.
	if err := da.WriteAt(fill(block, 'A'), 0, 0); err != nil {
		t.Fatalf("holder A cannot write: %v", err)
	}
	if err := dc.WriteAt(fill(block, 'C'), 0, 0); !errors.Is(err, scsi.ErrReservationConflict) {
		t.Fatalf("unregistered C's write: %v, want RESERVATION CONFLICT", err)
	}
	if err := dc.ReadAt(block, 0); err != nil {
		t.Fatalf("C cannot read under Write Exclusive: %v", err)
	}

	// B fences A.
	if err := prB.PreemptAndAbort(ctx, keyB, keyA, scsi.WriteExclusive); err != nil {
		t.Fatalf("B PREEMPT AND ABORT: %v", err)
	}
	keys, err = prB.ReadKeys(ctx)
	if err != nil || !slices.Equal(keys.Keys, []uint64{keyB}) {
		t.Fatalf("keys after preempt %x, %v; want only B", keys.Keys, err)
	}
	res, err = prB.ReadReservation(ctx)
	if err != nil || !res.Reserved || res.Key != keyB || res.Type != scsi.WriteExclusive {
		t.Fatalf("reservation after preempt %+v, %v; want B's Write Exclusive", res, err)
	}
	if err := db.WriteAt(fill(block, 'B'), 0, blockrep.FlagFUA); err != nil {
		t.Fatalf("new holder B cannot write: %v", err)
	}

	// A is fenced: its next command reports the preemption and its writes conflict.
	var sawPreempted, sawConflict bool
	for i := 0; i < 3 && !(sawPreempted && sawConflict); i++ {
		r, err := sa.Execute(ctx, scsi.Write16(0, 1, false), scsi.Out, fill(block, 'a'))
		if err != nil {
			t.Fatal(err)
		}
		err = r.Err()
		switch {
		case errors.Is(err, scsi.ASCReservationsPreempted):
			sawPreempted = true
		case errors.Is(err, scsi.ErrReservationConflict):
			sawConflict = true
		default:
			t.Fatalf("A's write after being preempted: %v", err)
		}
		t.Logf("A's write %d: %v", i+1, err)
	}
	if !sawPreempted || !sawConflict {
		t.Fatalf("A saw UNIT ATTENTION 2A/03: %v, RESERVATION CONFLICT: %v", sawPreempted, sawConflict)
	}
	if err := da.WriteAt(fill(block, 'a'), 0, 0); !errors.Is(err, scsi.ErrReservationConflict) {
		t.Fatalf("fenced A's Disk write: %v, want an error wrapping ErrReservationConflict", err)
	}
	if ok, err := prA.Registered(ctx, keyA); err != nil || ok {
		t.Fatalf("A still registered: %v %v", ok, err)
	}
	if got := tg.lunFile(1)[0]; got != 'B' {
		t.Fatalf("LUN block 0 starts with %q, want B's write", got)
	}

	// READ FULL STATUS is not implemented by tgtd; the helper must report that as an
	// error, not as an empty registration list.
	if fs, err := prB.ReadFullStatus(ctx); err == nil {
		t.Logf("READ FULL STATUS: %+v", fs)
	} else {
		var cc *scsi.CheckCondition
		if !errors.As(err, &cc) || !cc.IsIllegalRequest() {
			t.Fatalf("READ FULL STATUS: %v", err)
		}
		t.Logf("READ FULL STATUS: %v", err)
	}

	// Clean up the way an operator would: B clears everything.
	if err := prB.Clear(ctx, keyB); err != nil {
		t.Fatalf("CLEAR: %v", err)
	}
	if keys, err := prC.ReadKeys(ctx); err != nil || len(keys.Keys) != 0 {
		t.Fatalf("keys after CLEAR %x, %v", keys.Keys, err)
	}
}

func fill(b []byte, c byte) []byte {
	for i := range b {
		b[i] = c
	}
	return b
}

func newDisk(t *testing.T, s *Session) *Disk {
	t.Helper()
	d, err := NewDisk(ctxT(t, 10*time.Second), s, DiskOptions{Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return d
}
