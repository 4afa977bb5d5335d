package resource

import (
	"fmt"

	"github.com/blockrep/blockrep/resource/control"
)

// generationVerb runs outdate and new-current-uuid, the verbs that change what the
// local data is declared to be without moving any of it.
func (r *running) generationVerb(req control.Request) error {
	vol := r.volume()
	if vol == nil {
		return fmt.Errorf("%s: no local disk", r.cfg.Name)
	}
	if req.Verb == "outdate" {
		return vol.Outdate()
	}
	return vol.NewCurrentUUID(req.ClearBitmap)
}

// configOf is the configuration an up request reads: blockrepadm -c FILE when given.
func (d *Daemon) configOf(req control.Request) string {
	if req.Config != "" {
		return req.Config
	}
	return d.ConfigDir
}

// configError marks a configuration that cannot be read, or that lacks the resource or
// this node: exit code 10, like a syntax error.
type configError struct{ error }

func (e configError) Unwrap() error { return e.error }
