package transport

import (
	"sync"
	"time"
)

// The unsent-output watch: tests register every Conn and look for output that waited
// too long, which means a goroutine queued a message and then blocked without sending it.
var watched struct {
	sync.Mutex
	on    bool
	conns map[*Conn]struct{}
}

// Watch starts registering new connections for Stale (tests only).
func Watch() {
	watched.Lock()
	defer watched.Unlock()
	watched.on = true
	if watched.conns == nil {
		watched.conns = map[*Conn]struct{}{}
	}
}

func watch(c *Conn) {
	watched.Lock()
	if watched.on {
		watched.conns[c] = struct{}{}
	}
	watched.Unlock()
}

func unwatch(c *Conn) {
	watched.Lock()
	delete(watched.conns, c)
	watched.Unlock()
}

// Stale returns the longest time any open watched connection has held unsent output.
func Stale() time.Duration {
	watched.Lock()
	conns := make([]*Conn, 0, len(watched.conns))
	for c := range watched.conns {
		conns = append(conns, c)
	}
	watched.Unlock()
	var worst time.Duration
	for _, c := range conns {
		worst = max(worst, c.Unsent())
	}
	return worst
}
