// Package clock is the time source of blockrep's engine: keepalives, timeouts, backoff
// and resync pacing read a Clock instead of the wall clock. Production uses System, a
// monotonic clock (a step of the wall clock never drops or keeps a link); tests use
// Fake and advance it instead of sleeping.
package clock

import (
	"sync"
	"time"
)

// Clock is a monotonic time source with timers.
type Clock interface {
	// Now is the time since an arbitrary origin; it never goes backwards.
	Now() time.Duration
	// NewTimer fires once after d on the returned timer's channel.
	NewTimer(d time.Duration) Timer
	// AfterFunc calls f in its own goroutine after d.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending event of a Clock.
type Timer interface {
	// C delivers the clock's Now when the timer fires (nil for AfterFunc timers).
	C() <-chan time.Duration
	// Stop prevents the timer from firing; false if it already fired or was stopped.
	Stop() bool
}

// Sleep waits d on c unless done is closed first; false means done.
func Sleep(c Clock, d time.Duration, done <-chan struct{}) bool {
	t := c.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return true
	case <-done:
		return false
	}
}

// System is the process's monotonic clock.
func System() Clock { return system{} }

var origin = time.Now()

type system struct{}

func (system) Now() time.Duration { return time.Since(origin) }

func (system) NewTimer(d time.Duration) Timer {
	t := &sysTimer{c: make(chan time.Duration, 1)}
	t.t = time.AfterFunc(d, func() {
		select {
		case t.c <- time.Since(origin):
		default:
		}
	})
	return t
}

func (system) AfterFunc(d time.Duration, f func()) Timer {
	return &sysTimer{t: time.AfterFunc(d, f)}
}

type sysTimer struct {
	t *time.Timer
	c chan time.Duration
}

func (t *sysTimer) C() <-chan time.Duration { return t.c }
func (t *sysTimer) Stop() bool              { return t.t.Stop() }

// Fake is a Clock that moves only when Advance is called: tests drive keepalives and
// timeouts without sleeping. Its zero value is not usable; use NewFake.
type Fake struct {
	mu     sync.Mutex
	now    time.Duration
	timers []*fakeTimer
}

// NewFake returns a fake clock at time start.
func NewFake(start time.Duration) *Fake { return &Fake{now: start} }

func (f *Fake) Now() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *Fake) NewTimer(d time.Duration) Timer {
	return f.add(d, nil)
}

func (f *Fake) AfterFunc(d time.Duration, fn func()) Timer {
	return f.add(d, fn)
}

func (f *Fake) add(d time.Duration, fn func()) *fakeTimer {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := &fakeTimer{f: f, at: f.now + d, fn: fn}
	if fn == nil {
		t.c = make(chan time.Duration, 1)
	}
	f.timers = append(f.timers, t)
	if d <= 0 {
		f.fireLocked()
	}
	return t
}

// Advance moves the clock by d, firing every timer that falls due, in order.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now += d
	f.fireLocked()
}

// Pending is the number of timers not fired yet (tests wait for a goroutine to arm one).
func (f *Fake) Pending() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.timers)
}

func (f *Fake) fireLocked() {
	for {
		first := -1
		for i, t := range f.timers {
			if t.at <= f.now && (first < 0 || t.at < f.timers[first].at) {
				first = i
			}
		}
		if first < 0 {
			return
		}
		t := f.timers[first]
		f.timers = append(f.timers[:first], f.timers[first+1:]...)
		if t.fn != nil {
			go t.fn()
		} else {
			select {
			case t.c <- f.now:
			default:
			}
		}
	}
}

type fakeTimer struct {
	f  *Fake
	at time.Duration
	fn func()
	c  chan time.Duration
}

func (t *fakeTimer) C() <-chan time.Duration { return t.c }

func (t *fakeTimer) Stop() bool {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	for i, o := range t.f.timers {
		if o == t {
			t.f.timers = append(t.f.timers[:i], t.f.timers[i+1:]...)
			return true
		}
	}
	return false
}
