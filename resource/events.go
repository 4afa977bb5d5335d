package resource

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/blockrep/blockrep/blockrep"
	"github.com/blockrep/blockrep/internal/feed"
	"github.com/blockrep/blockrep/resource/control"
)

// resEvent is one committed change of a resource as the feed carries it: the status
// before and after (nil when the resource was down before, or is down after).
type resEvent struct {
	at       time.Time
	name     string
	old, new *control.ResourceStatus
}

// feedSize is how many events a reader may fall behind before it loses its place and
// is sent a fresh dump.
const feedSize = 4096

// publish records the resource's current status as a change (or its end, with gone).
// Serialized per resource: changes of one resource reach every reader in order.
func (r *running) publish(gone bool) {
	r.evMu.Lock()
	defer r.evMu.Unlock()
	var snap *control.ResourceStatus
	if !gone {
		s := r.status()
		snap = &s
	}
	if r.last == nil && snap == nil {
		return
	}
	r.d.events.Publish(resEvent{at: time.Now(), name: r.cfg.Name, old: r.last, new: snap})
	r.last = snap
}

// onChange is the volume's observer of committed state changes (blockrep.Config.OnChange).
func (r *running) onChange(_, _ blockrep.State) {
	r.publish(false)
	if p := r.promoterOf(); p != nil {
		p.poke()
	}
}

// watchProgress publishes resync progress once a second while a resync runs: done%
// changes without a state change.
func (r *running) watchProgress(stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			vol := r.volume()
			if vol == nil {
				continue
			}
			_, peers := vol.Status()
			for _, p := range peers {
				if p.Repl.IsSyncSource() || p.Repl.IsSyncTarget() {
					r.publish(false)
					break
				}
			}
		}
	}
}

// streamEvents serves the events verb on c: the initial dump of the selected resources
// (exists lines, then "exists -"), then their change lines as they happen, until the
// client goes away. A client that stops reading only delays itself: the feed never
// waits for it, and once it has fallen too far behind it is sent a fresh dump.
func (d *Daemon) streamEvents(c net.Conn, req control.Request) {
	name := req.Resource
	if name == "" {
		name = "all"
	}
	if name != "all" && d.get(name) == nil {
		if _, err := d.lookup(name); err != nil {
			json.NewEncoder(c).Encode(fail(codeOf(err), err))
			return
		}
	}
	c.SetDeadline(time.Time{})
	enc := json.NewEncoder(c)
	if enc.Encode(control.Response{OK: true}) != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // the client closing its end ends the stream
		io.Copy(io.Discard, c)
		cancel()
	}()
	cursor := d.events.Cursor() // before the dump: nothing published after it is missed
	if !d.dump(enc, name, req.Statistics) || req.Now {
		return
	}
	for {
		ev, next, err := d.events.Read(ctx, cursor)
		cursor = next
		switch {
		case errors.Is(err, feed.ErrLost):
			if !d.dump(enc, name, req.Statistics) {
				return
			}
			continue
		case err != nil:
			return
		}
		if name != "all" && ev.name != name {
			continue
		}
		for _, l := range control.ChangeLines(ev.old, ev.new, req.Statistics, ev.at) {
			if enc.Encode(l) != nil {
				return
			}
		}
	}
}

// dump writes the exists lines of the selected resources that are up, then "exists -".
func (d *Daemon) dump(enc *json.Encoder, name string, statistics bool) bool {
	now := time.Now()
	for _, n := range d.sortedNames() {
		if name != "all" && n != name {
			continue
		}
		r := d.get(n)
		if r == nil {
			continue
		}
		st := r.status()
		for _, l := range control.ExistsLines(&st, statistics, now) {
			if enc.Encode(l) != nil {
				return false
			}
		}
	}
	return enc.Encode(control.EndOfDump(now)) == nil
}

// eventState is the per-resource part of the feed: the last published status.
type eventState struct {
	evMu sync.Mutex
	last *control.ResourceStatus
	stop chan struct{}
}
