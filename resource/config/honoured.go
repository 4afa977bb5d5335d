package config

import (
	"fmt"
	"slices"
)

// NotHonoured lists the options of r that are set for node to something this version
// of blockrep parses and validates but does not act on yet (the docs list them). The
// daemon logs each at up, so nobody believes e.g. fencing is active when it is not.
func (r *Resource) NotHonoured(node string) []string {
	var out []string
	add := func(format string, a ...any) {
		if s := fmt.Sprintf(format, a...); !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	if q := r.Options.QuorumMinimumRedundancy; q != "" && q != "off" {
		add("quorum-minimum-redundancy %s (not implemented: quorum counts nodes, not UpToDate replicas)", q)
	}
	for name := range r.Handlers {
		if name != "fence-peer" && name != "unfence-peer" {
			add("handler %s (only fence-peer and unfence-peer are run)", name)
		}
	}
	for name := range r.Startup {
		add("startup option %s", name)
	}
	dd := DefaultDiskOptions()
	if r.Disk.OnIOError == "call-local-io-error" {
		add("on-io-error call-local-io-error (the handler is not run; the disk is detached)")
	}
	if !r.Disk.DiskFlushes || !r.Disk.MDFlushes {
		add("disk-flushes/md-flushes no (blockrep always flushes)")
	}
	if r.Disk.DiskTimeout != dd.DiskTimeout {
		add("disk-timeout")
	}
	if r.Disk.CDelayTarget != dd.CDelayTarget {
		add("c-delay-target")
	}
	if h, err := r.Host(node); err == nil && h.DiskOptions != nil {
		d := h.DiskOptions
		if d.OnIOError != r.Disk.OnIOError || d.ALExtents != r.Disk.ALExtents || d.ALUpdates != r.Disk.ALUpdates ||
			d.DiskFlushes != r.Disk.DiskFlushes || d.MDFlushes != r.Disk.MDFlushes || d.DiskTimeout != r.Disk.DiskTimeout {
			add("disk options of on %s other than the resync ones (the resource's disk options are used)", h.Name)
		}
	}
	peers, _ := r.Peers(node)
	dn := DefaultNetOptions()
	for _, p := range peers {
		n := p.Net
		if n.Fencing != dn.Fencing && r.Handlers["fence-peer"] == "" {
			add("fencing %s without a fence-peer handler: promotion with an unreachable peer is refused, and I/O frozen by resource-and-stonith needs resume-io", n.Fencing)
		}
		for _, alg := range []struct{ name, v string }{{"csums-alg", n.CsumsAlg}, {"verify-alg", n.VerifyAlg}, {"data-integrity-alg", n.DataIntegrityAlg}} {
			if alg.v != "" {
				add("%s %s", alg.name, alg.v)
			}
		}
		if n.Compression != "" && n.Compression != "none" {
			add("compression %s", n.Compression)
		}
		if n.OnCongestion != dn.OnCongestion || n.CongestionFill != 0 || n.CongestionExtents != dn.CongestionExtents {
			add("on-congestion/congestion-fill/congestion-extents (writes always block when the send buffer is full)")
		}
		if n.KoCount != dn.KoCount {
			add("ko-count (a peer silent for timeout with writes pending, or for ping-int + ping-timeout, is dropped)")
		}
		switch n.RRConflict {
		case "disconnect", "violently":
		default:
			add("rr-conflict %s (behaves as disconnect)", n.RRConflict)
		}
		if n.AfterSB1Pri == "call-pri-lost-after-sb" || n.AfterSB2Pri == "call-pri-lost-after-sb" {
			add("call-pri-lost-after-sb (behaves as disconnect)")
		}
	}
	return out
}
