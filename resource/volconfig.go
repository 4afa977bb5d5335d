package resource

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/blockrep/blockrep/blockrep"
	"github.com/blockrep/blockrep/fence"
	"github.com/blockrep/blockrep/fence/iscsi"
	"github.com/blockrep/blockrep/fence/scsi"
	"github.com/blockrep/blockrep/resource/config"
)

// volumeConfig is the engine's configuration of resource r on node: the local host's
// disk and every connection with its effective options.
func volumeConfig(r *config.Resource, node string, log *slog.Logger) (blockrep.Config, error) {
	h, err := r.Host(node)
	if err != nil {
		return blockrep.Config{}, err
	}
	if h.Disk == "none" || h.Disk == "" {
		return blockrep.Config{}, fmt.Errorf("%s: %s is a diskless tiebreaker (disk none): it has no disk or metadata", h.Pos, node)
	}
	if r.Shared() {
		return blockrep.Config{}, fmt.Errorf("%s: %s is a shared-storage resource (no replication, no metadata)", r.Pos, r.Name)
	}
	onIOError, err := blockrep.ParseIOErrorPolicy(r.Disk.OnIOError)
	if err != nil {
		return blockrep.Config{}, fmt.Errorf("%s: %v", r.Pos, err)
	}
	quorum, err := blockrep.ParseQuorumPolicy(r.Options.Quorum, r.Options.OnNoQuorum)
	if err != nil {
		return blockrep.Config{}, fmt.Errorf("%s: %v", r.Pos, err)
	}
	peers, err := peerConfigs(r, h)
	if err != nil {
		return blockrep.Config{}, err
	}
	return blockrep.Config{
		Quorum: quorum, HandlerTimeout: r.Options.HandlerTimeout, Resource: r.Name, NodeID: h.NodeID, NodeName: h.Name, Disk: h.Disk, MetaDisk: h.MetaDisk,
		ALExtents: r.Disk.ALExtents, ALUpdates: r.Disk.ALUpdates, Logger: log,
		OnIOError: onIOError, Handlers: r.Handlers,
		OpenDevice: deviceOpener(h),
		Peers:      peers,
	}, nil
}

// witnessConfig is the tiebreaker's configuration of resource r on node (disk none).
func witnessConfig(r *config.Resource, h *config.Host, log *slog.Logger) (blockrep.WitnessConfig, error) {
	quorum, err := blockrep.ParseQuorumPolicy(r.Options.Quorum, r.Options.OnNoQuorum)
	if err != nil {
		return blockrep.WitnessConfig{}, fmt.Errorf("%s: %v", r.Pos, err)
	}
	peers, err := peerConfigs(r, h)
	if err != nil {
		return blockrep.WitnessConfig{}, err
	}
	return blockrep.WitnessConfig{Resource: r.Name, NodeID: h.NodeID, NodeName: h.Name, Logger: log, Peers: peers, Quorum: quorum}, nil
}

// peerConfigs are the engine's connections of host h, each with its effective options.
func peerConfigs(r *config.Resource, h *config.Host) ([]blockrep.PeerConfig, error) {
	peers, err := r.Peers(h.Name)
	if err != nil {
		return nil, err
	}
	tlsClient, _, err := tlsConfigs(h, peers)
	if err != nil {
		return nil, err
	}
	var out []blockrep.PeerConfig
	for _, p := range peers {
		n := &p.Net
		if p.PeerAddress == "" || p.LocalAddress == "" {
			return nil, fmt.Errorf("%s: connection %s - %s has no address", p.Pos, h.Name, p.Host.Name)
		}
		pol, err := blockrep.ParseSplitBrainPolicy(n.AfterSB0Pri, n.AfterSB1Pri, n.AfterSB2Pri, n.RRConflict, n.AlwaysASBP)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", p.Pos, err)
		}
		fencing, err := blockrep.ParseFencingPolicy(n.Fencing)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", p.Pos, err)
		}
		out = append(out, blockrep.PeerConfig{
			NodeID: p.Host.NodeID, Name: p.Host.Name, Address: p.PeerAddress, LocalAddress: p.LocalAddress,
			Protocol: n.Protocol, Secret: n.SharedSecret, HMACAlg: n.CramHMACAlg, Policy: pol,
			Timeout: n.Timeout, PingInt: n.PingInt, PingTimeout: n.PingTimeout, ConnectInt: n.ConnectInt, MaxBuffers: n.MaxBuffers,
			SndBuf: int(n.SndBufSize), RcvBuf: int(n.RcvBufSize),
			Resync: blockrep.ResyncConfig{Rate: p.Disk.ResyncRate, PlanAhead: p.Disk.CPlanAhead,
				FillTarget: p.Disk.CFillTarget, MaxRate: p.Disk.CMaxRate, MinRate: p.Disk.CMinRate},
			Settings: settings(n), Fencing: fencing, TLS: tlsClient,
			Tiebreaker: p.Host.Disk == "none",
		})
	}
	return out, nil
}

// settings are the options both ends of a connection must agree on.
func settings(n *config.NetOptions) string {
	return fmt.Sprintf("after-sb-0pri=%s;after-sb-1pri=%s;after-sb-2pri=%s;always-asbp=%t;rr-conflict=%s;csums-alg=%s;verify-alg=%s;compression=%s",
		n.AfterSB0Pri, n.AfterSB1Pri, n.AfterSB2Pri, n.AlwaysASBP, n.RRConflict, n.CsumsAlg, n.VerifyAlg, n.Compression)
}

// deviceOpener opens backing devices: iscsi:// URLs through the userspace initiator
// (as the host's initiator name), everything else as a file or block device.
func deviceOpener(h *config.Host) func(path string) (blockrep.Device, error) {
	return func(path string) (blockrep.Device, error) {
		if strings.HasPrefix(path, "iscsi://") {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			return iscsi.OpenDisk(ctx, path, iscsi.Options{InitiatorName: h.Initiator()}, iscsi.DiskOptions{})
		}
		return blockrep.OpenFile(path, 0, false)
	}
}

// sharedConfig is node's view of a shared-storage resource.
func sharedConfig(r *config.Resource, node string, log *slog.Logger) (fence.SharedConfig, error) {
	h, err := r.Host(node)
	if err != nil {
		return fence.SharedConfig{}, err
	}
	if !strings.HasPrefix(h.Disk, "iscsi://") {
		return fence.SharedConfig{}, fmt.Errorf("%s: shared storage needs an iscsi:// disk, not %q", h.Pos, h.Disk)
	}
	typ := scsi.WriteExclusive
	if r.Disk.Reservation != "" {
		if typ, err = scsi.ParseReservationType(r.Disk.Reservation); err != nil {
			return fence.SharedConfig{}, fmt.Errorf("%s: %v", r.Pos, err)
		}
	}
	names := map[int]string{}
	for _, o := range r.Hosts {
		names[o.NodeID] = o.Name
	}
	return fence.SharedConfig{Resource: r.Name, NodeID: h.NodeID, URL: h.Disk, InitiatorName: h.Initiator(),
		Type: typ, NodeName: func(id int) string { return names[id] }, Logger: log}, nil
}
