package resource

import (
	"fmt"
	"log/slog"

	"github.com/blockrep/blockrep/blockrep"
)

// VolumeConfig is the engine's configuration of resource r on node: the local host's
// disk and every connection with its effective options.
func (r *Resource) VolumeConfig(node string, log *slog.Logger) (blockrep.Config, error) {
	h, err := r.Host(node)
	if err != nil {
		return blockrep.Config{}, err
	}
	if h.Disk == "none" || h.Disk == "" {
		return blockrep.Config{}, fmt.Errorf("%s: %s has no disk (diskless nodes are not supported yet)", h.Pos, node)
	}
	if r.Options.Storage == "shared" {
		return blockrep.Config{}, fmt.Errorf("%s: storage shared is not supported yet", r.Pos)
	}
	peers, err := r.Peers(node)
	if err != nil {
		return blockrep.Config{}, err
	}
	cfg := blockrep.Config{
		Resource: r.Name, NodeID: h.NodeID, NodeName: h.Name, Disk: h.Disk, MetaDisk: h.MetaDisk,
		ALExtents: r.Disk.ALExtents, ALUpdates: r.Disk.ALUpdates, Logger: log,
		OnIOError: r.Disk.OnIOError, Handlers: r.Handlers,
	}
	if cfg.OnIOError == "call-local-io-error" {
		cfg.OnIOError = "detach" // handlers are not run: detach is the safe part of it
	}
	for _, p := range peers {
		n := &p.Net
		if p.PeerAddress == "" || p.LocalAddress == "" {
			return blockrep.Config{}, fmt.Errorf("%s: connection %s - %s has no address", p.Pos, node, p.Host.Name)
		}
		cfg.Peers = append(cfg.Peers, blockrep.PeerConfig{
			NodeID: p.Host.NodeID, Name: p.Host.Name, Address: p.PeerAddress, LocalAddress: p.LocalAddress,
			Protocol: n.Protocol, Secret: n.SharedSecret, HMACAlg: n.CramHMACAlg,
			Policy: blockrep.SplitBrainPolicy{After0Pri: n.AfterSB0Pri, After1Pri: n.AfterSB1Pri,
				After2Pri: n.AfterSB2Pri, AlwaysASBP: n.AlwaysASBP, RRConflict: n.RRConflict},
			Timeout: n.Timeout, PingInt: n.PingInt, ConnectInt: n.ConnectInt, MaxBuffers: n.MaxBuffers,
			Resync: blockrep.ResyncConfig{Rate: p.Disk.ResyncRate, PlanAhead: p.Disk.CPlanAhead,
				FillTarget: p.Disk.CFillTarget, MaxRate: p.Disk.CMaxRate, MinRate: p.Disk.CMinRate},
			Settings: settings(n), Fencing: n.Fencing,
		})
	}
	return cfg, nil
}

// settings are the options both ends of a connection must agree on.
func settings(n *NetOptions) string {
	return fmt.Sprintf("after-sb-0pri=%s;after-sb-1pri=%s;after-sb-2pri=%s;always-asbp=%t;rr-conflict=%s;csums-alg=%s;verify-alg=%s;compression=%s",
		n.AfterSB0Pri, n.AfterSB1Pri, n.AfterSB2Pri, n.AlwaysASBP, n.RRConflict, n.CsumsAlg, n.VerifyAlg, n.Compression)
}
