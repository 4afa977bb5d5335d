package nbd

import (
	"sync"
	"time"
)

// The unsent-output watch (tests): a connection whose replies sit buffered while no
// flush happens for too long has a goroutine that queued them and then blocked.
var watched struct {
	sync.Mutex
	on    bool
	conns map[*conn]*watchState
}

type watchState struct {
	flushes uint64
	since   time.Time // when replies were first seen buffered at this flush count
}

// Watch starts registering connections for Stale (tests only).
func Watch() {
	watched.Lock()
	defer watched.Unlock()
	watched.on = true
	if watched.conns == nil {
		watched.conns = map[*conn]*watchState{}
	}
}

func watch(c *conn) {
	watched.Lock()
	if watched.on {
		watched.conns[c] = &watchState{}
	}
	watched.Unlock()
}

func unwatch(c *conn) {
	watched.Lock()
	delete(watched.conns, c)
	watched.Unlock()
}

// Stale samples every watched connection and returns the longest time one has held
// buffered replies with no flush since; call it periodically.
func Stale() time.Duration {
	watched.Lock()
	defer watched.Unlock()
	var worst time.Duration
	now := time.Now()
	for c, w := range watched.conns {
		if !c.mu.TryLock() {
			continue // a flush or a reply in progress
		}
		buffered := c.bw.Buffered() > 0 && !c.failed
		c.mu.Unlock()
		f := c.flushes.Load()
		switch {
		case !buffered || f != w.flushes:
			w.flushes, w.since = f, time.Time{}
			if buffered {
				w.since = now
			}
		case w.since.IsZero():
			w.since = now
		default:
			worst = max(worst, now.Sub(w.since))
		}
	}
	return worst
}
