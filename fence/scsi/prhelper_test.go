package scsi

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

// scripted is a Device that answers from a script and records every command.
type scripted struct {
	t       *testing.T
	replies []reply
	cdbs    [][]byte
	params  [][]byte
}

type reply struct {
	res  Result
	data []byte // copied into the In buffer
	err  error
}

func (s *scripted) Execute(ctx context.Context, cdb []byte, dir Direction, data []byte) (Result, error) {
	s.cdbs = append(s.cdbs, bytes.Clone(cdb))
	if dir == Out {
		s.params = append(s.params, bytes.Clone(data))
	}
	if len(s.replies) == 0 {
		s.t.Fatalf("unexpected command % x", cdb)
	}
	r := s.replies[0]
	s.replies = s.replies[1:]
	res := r.res
	if dir == In {
		n := copy(data, r.data)
		res.Residual = len(data) - n
	}
	return res, r.err
}

var (
	good     = reply{}
	conflict = reply{res: Result{Status: StatusReservationConflict}}
	uaReset  = reply{res: Result{Status: StatusCheckCondition, Sense: h("70 00 06 00000000 0a 00000000 29 00 00 000000")}}
	uaPreemp = reply{res: Result{Status: StatusCheckCondition, Sense: h("70 00 06 00000000 0a 00000000 2a 03 00 000000")}}
	illegal  = reply{res: Result{Status: StatusCheckCondition, Sense: h("70 00 05 00000000 0a 00000000 24 00 00 000000")}}
	busy     = reply{res: Result{Status: StatusBusy}}
)

func TestPRConsumesUnitAttentionAndRetries(t *testing.T) {
	dev := &scripted{t: t, replies: []reply{uaReset, uaPreemp, good}}
	var seen []Sense
	pr := &PR{Dev: dev, OnUnitAttention: func(s Sense) { seen = append(seen, s) }}
	if err := pr.RegisterIgnore(context.Background(), 0xabc); err != nil {
		t.Fatal(err)
	}
	if len(dev.cdbs) != 3 || len(seen) != 2 || !seen[1].Is(0x2a, 0x03) {
		t.Fatalf("cdbs %d, UAs %v", len(dev.cdbs), seen)
	}
	want := h("5f 06 00 00 00 00 00 00 18 00")
	for _, c := range dev.cdbs {
		if !bytes.Equal(c, want) {
			t.Fatalf("cdb % x", c)
		}
	}
	if !bytes.Equal(dev.params[0], PROutParams{ServiceKey: 0xabc}.Marshal()) {
		t.Fatalf("params % x", dev.params[0])
	}
}

func TestPRUnitAttentionRetriesAreBounded(t *testing.T) {
	dev := &scripted{t: t, replies: []reply{uaReset, uaReset, uaReset}}
	pr := &PR{Dev: dev, Retries: 2}
	err := pr.Register(context.Background(), 1)
	var cc *CheckCondition
	if !errors.As(err, &cc) || !cc.IsUnitAttention() || len(dev.cdbs) != 3 {
		t.Fatalf("err %v after %d commands", err, len(dev.cdbs))
	}
}

func TestPRBusyIsRetried(t *testing.T) {
	dev := &scripted{t: t, replies: []reply{busy, good}}
	if err := NewPR(dev).Reserve(context.Background(), 1, WriteExclusive); err != nil {
		t.Fatal(err)
	}
}

func TestPRReservationConflictIsErrReservationConflict(t *testing.T) {
	dev := &scripted{t: t, replies: []reply{conflict}}
	err := NewPR(dev).Reserve(context.Background(), 1, WriteExclusiveRegistrantsOnly)
	if !errors.Is(err, ErrReservationConflict) {
		t.Fatalf("%v", err)
	}
	if err.Error() != "PERSISTENT RESERVE OUT RESERVE: scsi: RESERVATION CONFLICT" {
		t.Fatalf("message %q", err)
	}
}

func TestPRPreemptAndAbortFallsBackToPreempt(t *testing.T) {
	dev := &scripted{t: t, replies: []reply{illegal, good}}
	if err := NewPR(dev).PreemptAndAbort(context.Background(), 0xb, 0xa, WriteExclusive); err != nil {
		t.Fatal(err)
	}
	if len(dev.cdbs) != 2 || dev.cdbs[0][1] != byte(PROutPreemptAndAbort) || dev.cdbs[1][1] != byte(PROutPreempt) || dev.cdbs[1][2] != 1 {
		t.Fatalf("cdbs % x", dev.cdbs)
	}
	if !bytes.Equal(dev.params[1], PROutParams{Key: 0xb, ServiceKey: 0xa}.Marshal()) {
		t.Fatalf("params % x", dev.params[1])
	}
}

func TestPRPreemptAndAbortConflictIsNotRetriedAsPreempt(t *testing.T) {
	dev := &scripted{t: t, replies: []reply{conflict}}
	if err := NewPR(dev).PreemptAndAbort(context.Background(), 0xb, 0xa, WriteExclusive); !errors.Is(err, ErrReservationConflict) {
		t.Fatalf("%v", err)
	}
}

func TestPRReadKeysGrowsTheAllocation(t *testing.T) {
	keys := make([]byte, 8+8*200)
	copy(keys, h("00000004 00000640"))
	for i := 0; i < 200; i++ {
		keys[8+8*i+7] = byte(i + 1)
	}
	dev := &scripted{t: t, replies: []reply{{data: keys}, {data: keys}}}
	k, err := NewPR(dev).ReadKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(k.Keys) != 200 || k.Keys[199] != 200 || k.Generation != 4 {
		t.Fatalf("%d keys, gen %d", len(k.Keys), k.Generation)
	}
	if got := dev.cdbs[1][7:9]; !bytes.Equal(got, []byte{0x06, 0x48}) {
		t.Fatalf("second allocation length % x", got)
	}
}

func TestPRUnregisterUsesRegisterAndIgnoreWithKeyZero(t *testing.T) {
	dev := &scripted{t: t, replies: []reply{good}}
	if err := NewPR(dev).Unregister(context.Background()); err != nil {
		t.Fatal(err)
	}
	if dev.cdbs[0][1] != byte(PROutRegisterAndIgnoreExisting) || !bytes.Equal(dev.params[0], make([]byte, 24)) {
		t.Fatalf("% x / % x", dev.cdbs[0], dev.params[0])
	}
}

func TestPRTransportErrorIsReturned(t *testing.T) {
	boom := errors.New("connection lost")
	dev := &scripted{t: t, replies: []reply{{err: boom}}}
	if _, err := NewPR(dev).ReadReservation(context.Background()); !errors.Is(err, boom) {
		t.Fatalf("%v", err)
	}
}

func TestPRRegisteredReadsKeys(t *testing.T) {
	dev := &scripted{t: t, replies: []reply{{data: h("00000001 00000008 0000000000000abc")}, {data: h("00000001 00000000")}}}
	pr := NewPR(dev)
	if ok, err := pr.Registered(context.Background(), 0xabc); !ok || err != nil {
		t.Fatalf("%v %v", ok, err)
	}
	if ok, err := pr.Registered(context.Background(), 0xabc); ok || err != nil {
		t.Fatalf("%v %v", ok, err)
	}
}
