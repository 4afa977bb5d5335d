package feed

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestReadersFollowInOrder(t *testing.T) {
	f := New[int](8)
	c := f.Cursor()
	go func() {
		for i := range 5 {
			f.Publish(i)
		}
	}()
	for want := range 5 {
		v, next, err := f.Read(context.Background(), c)
		if err != nil || v != want {
			t.Fatalf("read %d: %v %v", want, v, err)
		}
		c = next
	}
}

// A reader that stops reading never blocks the publisher; it loses its place instead.
func TestStuckReaderLosesItsPlaceWithoutSlowingThePublisher(t *testing.T) {
	f := New[int](16)
	stuck := f.Cursor()
	done := make(chan struct{})
	go func() {
		for i := range 100000 {
			f.Publish(i)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("publishing waited for a reader that never reads")
	}
	_, next, err := f.Read(context.Background(), stuck)
	if !errors.Is(err, ErrLost) {
		t.Fatalf("stuck reader: %v, want ErrLost", err)
	}
	if next != f.Cursor() {
		t.Fatalf("after losing its place the reader restarts at %d, want the feed's cursor %d", next, f.Cursor())
	}
	// The last size events are still readable.
	v, _, err := f.Read(context.Background(), f.Cursor()-16)
	if err != nil || v != 100000-16 {
		t.Fatalf("oldest kept event: %v %v", v, err)
	}
}

func TestReadWaitsAndHonoursCancellation(t *testing.T) {
	f := New[string](4)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := f.Read(ctx, f.Cursor()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read with nothing published: %v", err)
	}
}
