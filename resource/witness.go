package resource

import (
	"fmt"
	"log/slog"

	"github.com/blockrep/blockrep/blockrep"
	"github.com/blockrep/blockrep/resource/config"
	"github.com/blockrep/blockrep/resource/control"
)

// upWitness brings up a diskless tiebreaker (disk none): connections to the data
// nodes and a vote, no disk, no metadata, no export.
func (d *Daemon) upWitness(res *config.Resource, host *config.Host, log *slog.Logger) (*running, error) {
	wcfg, err := witnessConfig(res, host, d.Log)
	if err != nil {
		return nil, err
	}
	if len(wcfg.Peers) == 0 {
		return nil, fmt.Errorf("%s: %s is a diskless tiebreaker but the resource has no other node", host.Pos, host.Name)
	}
	cpeers, err := res.Peers(host.Name)
	if err != nil {
		return nil, err
	}
	_, serverTLS, err := tlsConfigs(host, cpeers)
	if err != nil {
		return nil, err
	}
	r := &running{d: d, cfg: res, host: host, log: log, serverTLS: serverTLS,
		vcfg: blockrep.Config{Resource: res.Name, NodeID: host.NodeID, NodeName: host.Name, Peers: wcfg.Peers}}
	wcfg.OnChange = func() { r.publish(false) }
	if err := r.listenPeers(); err != nil {
		return nil, err
	}
	r.setWitness(blockrep.OpenWitness(wcfg))
	log.Info("up (diskless tiebreaker)")
	return r, nil
}

// doWitness runs a verb on a tiebreaker: it has no disk to promote, attach or detach.
func (r *running) doWitness(req control.Request) error {
	switch req.Verb {
	case "down":
		r.downWitness()
		r.d.set(r.cfg.Name, nil)
		r.publish(true)
		return nil
	case "secondary", "connect":
		return nil
	case "primary":
		return &blockrep.StateError{Msg: fmt.Sprintf("%s: %s is a diskless tiebreaker (disk none) and cannot be Primary", r.cfg.Name, r.host.Name)}
	}
	return fmt.Errorf("%s: %s is a diskless tiebreaker (disk none): %s does not apply", r.cfg.Name, r.host.Name, req.Verb)
}

func (r *running) witnessStatus(rs control.ResourceStatus) control.ResourceStatus {
	w := r.witnessOf()
	if w == nil {
		return rs
	}
	st := w.State()
	rs.Quorum = !st.NoQuorum
	rs.Tiebreaker = true
	for _, p := range st.Peers {
		rs.Peers = append(rs.Peers, control.PeerStatus{Node: p.Name, NodeID: p.NodeID, Connection: p.Conn.String(),
			Replication: p.Repl.String(), PeerDisk: p.Disk.String(), PeerRole: p.Role.String()})
	}
	return rs
}

func (r *running) witnessOf() *blockrep.Witness {
	r.d.mu.Lock()
	defer r.d.mu.Unlock()
	return r.witness
}

func (r *running) setWitness(w *blockrep.Witness) {
	r.d.mu.Lock()
	r.witness = w
	r.d.mu.Unlock()
}

func (r *running) downWitness() {
	w := r.witnessOf()
	r.stopListening()
	r.setWitness(nil)
	if w != nil {
		w.Close()
	}
	r.log.Info("down")
}
