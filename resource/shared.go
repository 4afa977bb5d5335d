package resource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/blockrep/blockrep/blockrep"
	"github.com/blockrep/blockrep/fence"
	"github.com/blockrep/blockrep/resource/config"
	"github.com/blockrep/blockrep/resource/control"
)

// upShared brings a shared-storage resource up: log in to the LUN, register our key,
// serve the export socket (refusing clients until we hold the reservation).
func (d *Daemon) upShared(res *config.Resource, host *config.Host, log *slog.Logger) (*running, error) {
	scfg, err := sharedConfig(res, d.Node, d.Log)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sh, err := fence.OpenShared(ctx, scfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", res.Name, redactURL(host.Disk), err)
	}
	r := &running{d: d, cfg: res, host: host, log: log, shared: sh}
	if err := r.listen(); err != nil {
		sh.Close(ctx)
		return nil, err
	}
	log.Info("up (shared storage)", "key", fmt.Sprintf("%#x", sh.Key()))
	return r, nil
}

func redactURL(u string) string {
	if i := indexByte(u, '@'); i > 0 {
		return "iscsi://…@" + u[i+1:]
	}
	return u
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

// doShared runs a verb on a shared-storage resource.
func (r *running) doShared(req control.Request) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sh := r.shared
	switch req.Verb {
	case "primary":
		err := sh.Promote(ctx, req.Force)
		if errors.Is(err, fence.ErrHeld) {
			return &blockrep.StateError{Err: blockrep.ErrPeerIsPrimary, Msg: err.Error()}
		}
		return err
	case "secondary":
		if n := r.exports.Clients(r.cfg.Name); n > 0 {
			if !req.Force {
				return &blockrep.StateError{Msg: fmt.Sprintf("%s: device is held open by %d NBD client(s) (disconnect them, or secondary --force)", r.cfg.Name, n)}
			}
			r.exports.Disconnect(r.cfg.Name)
		}
		return sh.Demote(ctx)
	case "down":
		if n := r.exports.Clients(r.cfg.Name); n > 0 && !req.Force {
			return &blockrep.StateError{Msg: fmt.Sprintf("%s: device is held open by %d NBD client(s)", r.cfg.Name, n)}
		}
		r.stopListening()
		err := sh.Close(ctx)
		r.d.set(r.cfg.Name, nil)
		r.log.Info("down")
		return err
	case "fence-off", "fence-on", "fence-status":
		return r.fenceVerb(ctx, req)
	}
	return fmt.Errorf("%s: %s does not apply to a shared-storage resource", r.cfg.Name, req.Verb)
}

func (r *running) sharedStatus(rs control.ResourceStatus) control.ResourceStatus {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st := r.shared.Status(ctx)
	rs.SizeBytes = r.shared.Size()
	rs.Disk = blockrep.UpToDate.String()
	if r.shared.Primary() {
		rs.Role = blockrep.Primary.String()
	}
	rs.Reservation = &control.ReservationStatus{Key: fmt.Sprintf("%#x", st.Key), Holder: st.Holder, State: st.State}
	if st.State == fence.StateFenced {
		rs.Suspended = "fenced"
	}
	return rs
}

// fenceVerb serves fence_blockrep through the daemon's registered session: off
// preempts the plug's key (fencing that node), on registers our own key again.
func (r *running) fenceVerb(ctx context.Context, req control.Request) error {
	sh := r.shared
	victim, err := r.cfg.Host(req.Plug)
	if err != nil {
		return err
	}
	key := fence.Key(r.cfg.Name, victim.NodeID)
	switch req.Verb {
	case "fence-off":
		if victim.NodeID == r.host.NodeID {
			return fmt.Errorf("%s: refusing to fence this node itself", r.cfg.Name)
		}
		scfg, err := sharedConfig(r.cfg, r.d.Node, r.log)
		if err != nil {
			return err
		}
		if err := sh.PR().PreemptAndAbort(ctx, sh.Key(), key, scfg.Type); err != nil {
			return fmt.Errorf("preempting %s: %w", req.Plug, err)
		}
		if ok, err := sh.PR().Registered(ctx, key); err != nil || ok {
			return fmt.Errorf("%s's key %#x is still registered after the preempt (%v)", req.Plug, key, err)
		}
		r.log.Warn("fenced by request", "plug", req.Plug, "key", fmt.Sprintf("%#x", key))
		return nil
	case "fence-on":
		if victim.NodeID != r.host.NodeID {
			return fmt.Errorf("%s: on registers a node's own key: run it on %s (a registration belongs to that node's session)", r.cfg.Name, req.Plug)
		}
		return sh.Register(ctx)
	}
	return fmt.Errorf("unknown fence verb %q", req.Verb)
}

// fenceStatus answers whether the plug's key is registered on a shared resource.
func (d *Daemon) fenceStatus(req control.Request) control.Response {
	r := d.get(req.Resource)
	if r == nil || r.shared == nil {
		return fail(control.CodeOther, fmt.Errorf("%s is not an up shared-storage resource", req.Resource))
	}
	victim, err := r.cfg.Host(req.Plug)
	if err != nil {
		return fail(control.CodeConfig, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ok, err := r.shared.PR().Registered(ctx, fence.Key(r.cfg.Name, victim.NodeID))
	if err != nil {
		return fail(control.CodeOther, err)
	}
	return control.Response{OK: true, Registered: &ok}
}
