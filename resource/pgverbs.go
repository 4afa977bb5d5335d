package resource

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/blockrep/blockrep/blockrep"
	"github.com/blockrep/blockrep/pgagent"
	"github.com/blockrep/blockrep/resource/control"
)

func (r *running) promoterOf() *promoterRun {
	r.d.mu.Lock()
	defer r.d.mu.Unlock()
	return r.promoter
}

func (r *running) setPromoter(p *promoterRun) {
	r.d.mu.Lock()
	r.promoter = p
	r.d.mu.Unlock()
}

// pgInit prepares a new volume for PostgreSQL (blockrepadm pg-init): promote, make the
// filesystem, initdb with the superuser's password, check that it starts, stop,
// demote. The promoter holds off meanwhile and takes over afterwards.
func (r *running) pgInit(req control.Request) error {
	p := r.promoterOf()
	if p == nil {
		return fmt.Errorf("%s: no promoter section for %s: pg-init needs one", r.cfg.Name, r.host.Name)
	}
	if req.Password == "" {
		return fmt.Errorf("%s: pg-init needs the superuser's password (--password-file)", r.cfg.Name)
	}
	vol := r.volume()
	if vol == nil {
		return fmt.Errorf("%s: no local disk", r.cfg.Name)
	}
	st := vol.State()
	if st.Role == blockrep.Primary || p.stack.Status().State != pgagent.Stopped {
		return &blockrep.StateError{Msg: fmt.Sprintf("%s: %s is Primary or its service runs: pg-init is for a volume nobody uses", r.cfg.Name, r.host.Name)}
	}
	for _, ps := range st.Peers {
		if ps.Conn == blockrep.Connected && ps.Role == blockrep.Primary {
			return &blockrep.StateError{Err: blockrep.ErrPeerIsPrimary, Msg: fmt.Sprintf("%s: %s is Primary: pg-init is for a volume nobody uses", r.cfg.Name, ps.Name)}
		}
	}
	if !req.Force {
		if st.Disk != blockrep.UpToDate {
			return &blockrep.StateError{Err: blockrep.ErrNotUpToDate, Msg: fmt.Sprintf("%s: local data is %s, not UpToDate (pg-init --force on a just-created resource)", r.cfg.Name, st.Disk)}
		}
		if fs := filesystemOn(vol); fs != "" {
			return fmt.Errorf("%s: the volume already holds a filesystem (%s); pg-init --force overwrites it", r.cfg.Name, fs)
		}
	}
	p.hold("pg-init", 0)
	defer p.release()
	if err := vol.Promote(req.Force); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	err := pgagent.InitDB(ctx, pgagentConfig(r.d, r.cfg.Name, p.pc, r.log), req.Password, req.Force)
	if derr := r.secondary(true); derr != nil && err == nil {
		err = derr
	}
	if err != nil {
		return fmt.Errorf("%s: pg-init: %v", r.cfg.Name, err)
	}
	r.log.Info("pg-init: database cluster created", "pgdata", p.pc.PGData)
	return nil
}

// filesystemOn names the filesystem at the start of the volume's local data (ext4,
// xfs), or "". It reads the local disk: no promotion is needed to look.
func filesystemOn(vol *blockrep.Volume) string {
	b := make([]byte, 2048)
	if err := vol.ReadAt(b, 0); err != nil {
		return ""
	}
	switch {
	case bytes.Equal(b[:4], []byte("XFSB")):
		return "xfs"
	case binary.LittleEndian.Uint16(b[1024+56:]) == 0xEF53:
		return "ext2/3/4"
	}
	return ""
}

// switchover moves the service to target (or the best other node): stop the stack
// here, demote, and wait until the other node is Primary. This node's promoter holds
// off meanwhile.
func (r *running) switchover(target string) error {
	p := r.promoterOf()
	if p == nil {
		return fmt.Errorf("%s: no promoter section for %s: switchover needs one", r.cfg.Name, r.host.Name)
	}
	vol := r.volume()
	if vol == nil {
		return fmt.Errorf("%s: no local disk", r.cfg.Name)
	}
	st := vol.State()
	if st.Role != blockrep.Primary {
		holder := "no node"
		for _, ps := range st.Peers {
			if ps.Conn == blockrep.Connected && ps.Role == blockrep.Primary {
				holder = ps.Name
			}
		}
		return &blockrep.StateError{Msg: fmt.Sprintf("%s: run switchover on the Primary (%s is Secondary; Primary: %s)", r.cfg.Name, r.host.Name, holder)}
	}
	if target == r.host.Name {
		return fmt.Errorf("%s: %s already serves", r.cfg.Name, target)
	}
	pick := ""
	for _, ps := range st.Peers {
		if target != "" && ps.Name != target {
			continue
		}
		if ps.Conn == blockrep.Connected && ps.Disk == blockrep.UpToDate && ps.Repl == blockrep.Established {
			pick = ps.Name
			break
		}
		if target != "" {
			return &blockrep.StateError{Err: blockrep.ErrNotUpToDate, Msg: fmt.Sprintf("%s: %s has no UpToDate data to take over (%s, %s)", r.cfg.Name, target, ps.Conn, ps.Disk)}
		}
	}
	if pick == "" {
		if target != "" {
			return fmt.Errorf("%s: %s is not a node of this resource", r.cfg.Name, target)
		}
		return &blockrep.StateError{Err: blockrep.ErrNotUpToDate, Msg: fmt.Sprintf("%s: no other node has UpToDate data to take over", r.cfg.Name)}
	}
	r.log.Info("switchover", "to", pick)
	p.hold("switchover", switchoverWindow)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p.stopStack(ctx)
	if err := r.secondary(true); err != nil {
		p.release()
		return err
	}
	deadline := time.Now().Add(switchoverWindow)
	for time.Now().Before(deadline) {
		for _, ps := range vol.State().Peers {
			if ps.Conn == blockrep.Connected && ps.Role == blockrep.Primary {
				if ps.Name != pick {
					r.log.Warn("switchover: another node took over", "wanted", pick, "got", ps.Name)
				}
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s: %s did not become Primary within %s; this node's promoter takes part again", r.cfg.Name, pick, switchoverWindow)
}
