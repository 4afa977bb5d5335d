// Package feed is an ordered, bounded, non-blocking event feed: publishers never wait,
// and each reader follows at its own pace with its own cursor. A reader that falls
// further behind than the feed holds loses its place (ErrLost) and starts again from
// a fresh snapshot of whatever the events describe, so a slow or stuck consumer can
// never slow the publisher (the engine's I/O).
package feed

import (
	"context"
	"errors"
	"sync"
)

// ErrLost means the reader's cursor points at events the feed no longer holds.
var ErrLost = errors.New("feed: events were dropped before this reader read them")

// Feed holds the last size events.
type Feed[T any] struct {
	mu   sync.Mutex
	ring []T
	next uint64        // sequence number of the next event
	wake chan struct{} // closed at the next publish
}

// New returns a feed that keeps size events.
func New[T any](size int) *Feed[T] {
	return &Feed[T]{ring: make([]T, size), wake: make(chan struct{})}
}

// Publish appends v. It never blocks.
func (f *Feed[T]) Publish(v T) {
	f.mu.Lock()
	f.ring[f.next%uint64(len(f.ring))] = v
	f.next++
	w := f.wake
	f.wake = make(chan struct{})
	f.mu.Unlock()
	close(w)
}

// Cursor is the sequence number the next Publish will get: read from it to see only
// what comes after now.
func (f *Feed[T]) Cursor() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.next
}

// Read returns the event at cursor, waiting for it if it is not published yet, and the
// cursor of the one after it. ErrLost means the reader fell behind.
func (f *Feed[T]) Read(ctx context.Context, cursor uint64) (T, uint64, error) {
	var zero T
	for {
		f.mu.Lock()
		size := uint64(len(f.ring))
		switch {
		case f.next > size && cursor < f.next-size:
			f.mu.Unlock()
			return zero, f.next, ErrLost
		case cursor < f.next:
			v := f.ring[cursor%size]
			f.mu.Unlock()
			return v, cursor + 1, nil
		}
		w := f.wake
		f.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			return zero, cursor, ctx.Err()
		}
	}
}
