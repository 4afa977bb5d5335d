package resource

import (
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/blockrep/blockrep/blockrep"
	"github.com/blockrep/blockrep/resource/control"
)

// adjust runs adjust on each named resource, collecting the plans.
func (d *Daemon) adjust(req control.Request, names []string) control.Response {
	var out strings.Builder
	for _, n := range names {
		r := d.get(n)
		if r == nil {
			if _, err := d.lookup(n); err != nil {
				return fail(codeOf(err), err)
			}
			return fail(control.CodeOther, fmt.Errorf("%s is not up (run: blockrepadm up %s)", n, n))
		}
		plan, err := r.adjust(req.DryRun)
		out.WriteString(plan)
		if err != nil {
			resp := fail(codeOf(err), err)
			resp.Output = out.String()
			return resp
		}
	}
	return control.Response{OK: true, Output: out.String()}
}

// adjust applies what changed in the resource's .res file since it was brought up,
// without taking it down (drbdadm adjust): a connection whose options or address
// changed is made again with the new ones. What cannot change live (the local disk,
// node ids, removing a node, protocol, fencing, quorum) is refused, naming it; a node
// added gets a connection (the metadata must have a free peer slot); with
// dryRun nothing is applied. It returns the plan, one line per change.
func (r *running) adjust(dryRun bool) (string, error) {
	name := r.cfg.Name
	if r.shared != nil || r.witnessOf() != nil {
		return "", fmt.Errorf("%s: adjust applies to replicated data nodes; take this one down and up instead", name)
	}
	vol := r.volume()
	if vol == nil {
		return "", fmt.Errorf("%s: no local disk (attach it first)", name)
	}
	res, err := r.d.lookup(name)
	if err != nil {
		return "", err
	}
	host, _ := res.Host(r.d.Node)
	nv, err := volumeConfig(res, r.d.Node, r.d.Log)
	if err != nil {
		return "", err
	}
	old := r.vcfgNow()
	var refuse []string
	for _, f := range []struct {
		what     string
		was, now any
	}{
		{"disk", old.Disk, nv.Disk}, {"meta-disk", old.MetaDisk, nv.MetaDisk}, {"node-id", old.NodeID, nv.NodeID},
		{"address", r.host.Address, host.Address}, {"quorum", old.Quorum, nv.Quorum},
		{"on-io-error", old.OnIOError, nv.OnIOError}, {"al-extents", old.ALExtents, nv.ALExtents},
		{"tls-certificate", r.host.TLSCertificate, host.TLSCertificate}, {"tls-key", r.host.TLSKey, host.TLSKey},
	} {
		if !reflect.DeepEqual(f.was, f.now) {
			refuse = append(refuse, f.what)
		}
	}
	for _, p := range old.Peers {
		if !slices.ContainsFunc(nv.Peers, func(q blockrep.PeerConfig) bool { return q.NodeID == p.NodeID }) {
			refuse = append(refuse, "node "+p.Name+" removed")
		}
	}
	var plan []string
	var apply, add []blockrep.PeerConfig
	for _, q := range nv.Peers {
		i := slices.IndexFunc(old.Peers, func(p blockrep.PeerConfig) bool { return p.NodeID == q.NodeID })
		if i < 0 {
			plan = append(plan, fmt.Sprintf("%s: node %s added (node-id %d, %s)", name, q.Name, q.NodeID, q.Address))
			add = append(add, q)
			continue
		}
		diff, fixed := peerDiff(old.Peers[i], q)
		refuse = append(refuse, fixed...)
		if len(diff) > 0 {
			plan = append(plan, fmt.Sprintf("%s: connection to %s: %s (reconnect)", name, q.Name, strings.Join(diff, ", ")))
			apply = append(apply, q)
		}
	}
	if len(refuse) > 0 {
		return "", fmt.Errorf("%s: cannot adjust while up (take it down and up): %s", name, strings.Join(refuse, "; "))
	}
	if len(plan) == 0 {
		plan = append(plan, name+": nothing to adjust")
	}
	out := strings.Join(plan, "\n") + "\n"
	if dryRun {
		return out, nil
	}
	for _, q := range apply {
		if err := vol.Reconfigure(q); err != nil {
			return "", fmt.Errorf("%s: %v", name, err)
		}
		r.setPeerConfig(q)
	}
	for _, q := range add {
		// Known to the listener first: the new node may dial us as soon as we dial it.
		r.setPeerConfig(q)
		if err := vol.AddPeer(q, r.wanted); err != nil {
			r.removePeerConfig(q.NodeID)
			return "", fmt.Errorf("%s: adding %s: %v", name, q.Name, err)
		}
	}
	r.log.Info("adjusted", "changed", len(apply), "added", len(add))
	return out, nil
}

// peerDiff lists what differs between two configurations of one connection: changes
// adjust applies (secrets by name only), and those it cannot (fixed).
func peerDiff(was, now blockrep.PeerConfig) (diff, fixed []string) {
	show := func(field string, a, b any) string {
		switch field {
		case "Secret":
			return "shared-secret changed"
		case "Settings":
			return "settings both ends must agree on changed"
		}
		return fmt.Sprintf("%s %v -> %v", optionName(field), a, b)
	}
	wv, nvv := reflect.ValueOf(was), reflect.ValueOf(now)
	for i := 0; i < wv.NumField(); i++ {
		f := wv.Type().Field(i).Name
		a, b := wv.Field(i).Interface(), nvv.Field(i).Interface()
		if f == "TLS" || reflect.DeepEqual(a, b) {
			continue // TLS follows the host's certificate files, compared on their own
		}
		switch f {
		case "Name", "Protocol", "Fencing", "Tiebreaker", "NodeID":
			fixed = append(fixed, fmt.Sprintf("%s of %s", optionName(f), was.Name))
		default:
			diff = append(diff, show(f, a, b))
		}
	}
	return diff, fixed
}

// optionName is a PeerConfig field's name in the .res file.
func optionName(field string) string {
	switch field {
	case "PingInt":
		return "ping-int"
	case "PingTimeout":
		return "ping-timeout"
	case "ConnectInt":
		return "connect-int"
	case "MaxBuffers":
		return "max-buffers"
	case "SndBuf":
		return "sndbuf-size"
	case "RcvBuf":
		return "rcvbuf-size"
	case "HMACAlg":
		return "cram-hmac-alg"
	case "Address":
		return "peer address"
	case "LocalAddress":
		return "local address"
	case "Resync":
		return "resync options"
	case "Policy":
		return "after-sb policies"
	case "Tiebreaker":
		return "disk none"
	}
	return strings.ToLower(field)
}

func (r *running) vcfgNow() blockrep.Config {
	r.d.mu.Lock()
	defer r.d.mu.Unlock()
	c := r.vcfg
	c.Peers = slices.Clone(c.Peers)
	return c
}

func (r *running) setPeerConfig(pc blockrep.PeerConfig) {
	r.d.mu.Lock()
	defer r.d.mu.Unlock()
	peers := slices.Clone(r.vcfg.Peers)
	if i := slices.IndexFunc(peers, func(p blockrep.PeerConfig) bool { return p.NodeID == pc.NodeID }); i >= 0 {
		peers[i] = pc
	} else {
		peers = append(peers, pc)
	}
	r.vcfg.Peers = peers
}

func (r *running) removePeerConfig(id int) {
	r.d.mu.Lock()
	defer r.d.mu.Unlock()
	r.vcfg.Peers = slices.DeleteFunc(slices.Clone(r.vcfg.Peers), func(p blockrep.PeerConfig) bool { return p.NodeID == id })
}
