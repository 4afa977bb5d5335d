// Package agent is fence_blockrep, a ClusterLabs fence agent (FenceAgentAPI) for
// blockrep shared-storage resources: it fences a node by removing its SCSI-3
// persistent-reservation key from the shared LUN, with fence_scsi's parameter names.
// It acts through the local blockrepd's registered session when one serves the
// resource, and opens its own iSCSI session otherwise.
package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/blockrep/blockrep/fence"
	"github.com/blockrep/blockrep/fence/iscsi"
	"github.com/blockrep/blockrep/fence/scsi"
	"github.com/blockrep/blockrep/resource/config"
	"github.com/blockrep/blockrep/resource/control"
)

// FenceAgentAPI exit codes.
const (
	exitOK     = 0
	exitFail   = 1
	exitStatus = 2 // status: the plug is off
)

var actions = []string{"on", "off", "status", "monitor", "list", "metadata", "validate-all"}

// params are the agent's options, from stdin (key=value) or --key=value arguments.
type params map[string]string

func parseArgs(args []string, stdin io.Reader) (params, error) {
	p := params{}
	if len(args) == 0 && stdin != nil {
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				return nil, fmt.Errorf("bad input line %q (want key=value)", line)
			}
			p[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
		return p, sc.Err()
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-o" && i+1 < len(args):
			p["action"] = args[i+1]
			i++
		case a == "-n" && i+1 < len(args):
			p["plug"] = args[i+1]
			i++
		case strings.HasPrefix(a, "--"):
			k, v, ok := strings.Cut(a[2:], "=")
			if !ok {
				if i+1 < len(args) && !strings.HasPrefix(args[i+1], "--") {
					v = args[i+1]
					i++
				} else {
					v = "1"
				}
			}
			p[k] = v
		default:
			return nil, fmt.Errorf("unexpected argument %q", a)
		}
	}
	return p, nil
}

// Main runs the agent and returns its exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "fence_blockrep: "+format+"\n", a...)
		return exitFail
	}
	// Help is answered before anything is parsed or read: it must work without a
	// configuration.
	for _, a := range args {
		if a == "-h" || a == "--help" || a == "-?" {
			io.WriteString(stdout, usage)
			return exitOK
		}
	}
	p, err := parseArgs(args, stdin)
	if err != nil {
		return fail("%v", err)
	}
	if p["port"] != "" && p["plug"] == "" {
		p["plug"] = p["port"] // fence_scsi's old name
	}
	action := p["action"]
	if action == "" {
		action = "off"
	}
	if !slices.Contains(actions, action) {
		return fail("unknown action %q (one of %s)", action, strings.Join(actions, ", "))
	}
	if action == "metadata" {
		io.WriteString(stdout, metadata)
		return exitOK
	}
	a, err := newAgent(p)
	if err != nil {
		return fail("%v", err)
	}
	needPlug := action == "on" || action == "off" || action == "status"
	if needPlug && p["plug"] == "" {
		return fail("action %s needs plug", action)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	switch action {
	case "validate-all":
		if needPlugHost := p["plug"]; needPlugHost != "" {
			if _, err := a.res.Host(needPlugHost); err != nil {
				return fail("%v", err)
			}
		}
		return exitOK
	case "list":
		for _, h := range a.res.Hosts {
			fmt.Fprintf(stdout, "%s,%#x\n", h.Name, fence.Key(a.res.Name, h.NodeID))
		}
		return exitOK
	case "monitor":
		if err := a.monitor(ctx); err != nil {
			return fail("monitor: %v", err)
		}
		return exitOK
	case "status":
		on, err := a.status(ctx, p["plug"])
		if err != nil {
			return fail("status: %v", err)
		}
		if on {
			fmt.Fprintln(stdout, "Status: ON")
			return exitOK
		}
		fmt.Fprintln(stdout, "Status: OFF")
		return exitStatus
	case "off":
		if err := a.off(ctx, p["plug"]); err != nil {
			return fail("off %s: %v", p["plug"], err)
		}
		fmt.Fprintln(stdout, "Success: Powered OFF")
		return exitOK
	case "on":
		if err := a.on(ctx, p["plug"]); err != nil {
			return fail("on %s: %v", p["plug"], err)
		}
		fmt.Fprintln(stdout, "Success: Powered ON")
		return exitOK
	}
	return fail("unhandled action %q", action)
}

// agent resolves the resource and how to reach its LUN.
type agent struct {
	p      params
	res    *config.Resource
	node   string // the local node
	client *control.Client
	key    uint64 // the key this agent acts as (the local node's, unless overridden)
}

func newAgent(p params) (*agent, error) {
	cfgDir := or(p["config"], control.DefaultConfigDir)
	node := or(p["nodename"], p["node"], control.DefaultNode())
	cfg, err := config.Load(cfgDir)
	if err != nil {
		return nil, err
	}
	res, err := findResource(cfg, p["resource"], p["devices"])
	if err != nil {
		return nil, err
	}
	if !res.Shared() {
		return nil, fmt.Errorf("resource %s is not a shared-storage resource (options { storage shared; })", res.Name)
	}
	me, err := res.Host(node)
	if err != nil {
		return nil, err
	}
	a := &agent{p: p, res: res, node: node, client: control.NewClient(or(p["run-dir"], control.DefaultRunDir)),
		key: fence.Key(res.Name, me.NodeID)}
	if k := p["key"]; k != "" {
		if a.key, err = strconv.ParseUint(strings.TrimPrefix(k, "0x"), 16, 64); err != nil || a.key == 0 {
			return nil, fmt.Errorf("bad key %q (hex, non-zero)", k)
		}
	}
	return a, nil
}

func or(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// findResource picks the shared resource by name, or by one of the devices it uses.
func findResource(cfg *config.Config, name, devices string) (*config.Resource, error) {
	if name != "" {
		return cfg.Resource(name)
	}
	if devices == "" {
		return nil, errors.New("devices (or resource) is required")
	}
	for _, dev := range strings.Split(devices, ",") {
		dev = strings.TrimSpace(dev)
		for _, r := range cfg.Resources {
			for _, h := range r.Hosts {
				if h.Disk == dev {
					return r, nil
				}
			}
		}
	}
	return nil, fmt.Errorf("no resource uses %s", devices)
}

// viaDaemon reports whether the local blockrepd serves the resource (its session is a
// registered nexus, so the agent acts through it).
func (a *agent) viaDaemon() bool {
	resp, err := a.client.Do(control.Request{Verb: "status", Resource: a.res.Name})
	return err == nil && len(resp.Status.Resources) == 1 && resp.Status.Resources[0].Reservation != nil
}

// session opens the agent's own session to the LUN as the local node.
func (a *agent) session(ctx context.Context) (*iscsi.Session, *scsi.PR, error) {
	me, _ := a.res.Host(a.node)
	url := me.Disk
	if d := a.p["devices"]; d != "" {
		url = strings.TrimSpace(strings.Split(d, ",")[0])
	}
	if !strings.HasPrefix(url, "iscsi://") {
		return nil, nil, fmt.Errorf("device %q: this agent reaches LUNs through iscsi:// URLs", url)
	}
	s, err := iscsi.Dial(ctx, url, iscsi.Options{InitiatorName: me.Initiator() + ":fence", ReconnectTimeout: -1})
	if err != nil {
		return nil, nil, err
	}
	return s, scsi.NewPR(s), nil
}

func (a *agent) plugKey(plug string) (uint64, error) {
	h, err := a.res.Host(plug)
	if err != nil {
		return 0, err
	}
	return fence.Key(a.res.Name, h.NodeID), nil
}

func (a *agent) monitor(ctx context.Context) error {
	if a.viaDaemon() {
		return nil
	}
	s, _, err := a.session(ctx)
	if err != nil {
		return err
	}
	defer s.Close()
	_, err = s.Execute(ctx, scsi.TestUnitReady(), scsi.None, nil)
	return err
}

func (a *agent) status(ctx context.Context, plug string) (bool, error) {
	key, err := a.plugKey(plug)
	if err != nil {
		return false, err
	}
	if a.viaDaemon() {
		resp, err := a.client.Do(control.Request{Verb: "fence-status", Resource: a.res.Name, Plug: plug})
		if err != nil {
			return false, err
		}
		return *resp.Registered, nil
	}
	s, pr, err := a.session(ctx)
	if err != nil {
		return false, err
	}
	defer s.Close()
	return pr.Registered(ctx, key)
}

func (a *agent) off(ctx context.Context, plug string) error {
	victim, err := a.plugKey(plug)
	if err != nil {
		return err
	}
	if a.viaDaemon() {
		_, err := a.client.Do(control.Request{Verb: "fence-off", Resource: a.res.Name, Plug: plug})
		return err
	}
	if victim == a.key {
		return errors.New("refusing to fence the local node")
	}
	s, pr, err := a.session(ctx)
	if err != nil {
		return err
	}
	defer s.Close()
	// Only a registered nexus may preempt: register as the local node's key.
	if err := pr.RegisterIgnore(ctx, a.key); err != nil {
		return fmt.Errorf("registering the agent's key: %w", err)
	}
	typ := scsi.WriteExclusive
	if t := a.res.Disk.Reservation; t != "" {
		typ, _ = scsi.ParseReservationType(t)
	}
	if err := pr.PreemptAndAbort(ctx, a.key, victim, typ); err != nil {
		return err
	}
	if ok, err := pr.Registered(ctx, victim); err != nil || ok {
		return fmt.Errorf("key %#x is still registered (%v)", victim, err)
	}
	return nil
}

func (a *agent) on(ctx context.Context, plug string) error {
	if plug != a.node {
		return fmt.Errorf("on registers a node's own key and must run on %s (a registration belongs to that node's session)", plug)
	}
	if a.viaDaemon() {
		_, err := a.client.Do(control.Request{Verb: "fence-on", Resource: a.res.Name, Plug: plug})
		return err
	}
	return errors.New("the local blockrepd does not serve the resource: start it and run blockrepadm up, which registers the key")
}

const usage = `Usage: fence_blockrep [options]   (or key=value lines on stdin)
Fences a node of a blockrep shared-storage resource by removing its SCSI-3
persistent reservation key from the shared LUN.

  -o, --action=ACTION    on, off (default), status, monitor, list, metadata, validate-all
  -n, --plug=NODE        the node to fence (its on section; --port is the old name)
      --devices=URLS     iscsi:// URLs of the shared LUNs, comma separated (selects the resource)
      --resource=NAME    the resource (instead of --devices)
      --key=HEX          the key this agent registers as (default: the local node's)
      --nodename=NAME    the local node (default: the hostname; --node is the same)
      --config=DIR       directory of .res files (default /etc/blockrep)
      --run-dir=DIR      blockrepd's run directory (default /run/blockrep)
  -h, --help             this help
`

const metadata = `<?xml version="1.0" ?>
<resource-agent name="fence_blockrep" shortdesc="Fence agent for blockrep shared storage (SCSI-3 persistent reservations)">
<longdesc>fence_blockrep fences a node of a blockrep shared-storage resource by removing its SCSI-3 persistent reservation key from the shared LUN (PREEMPT AND ABORT, or PREEMPT where the target refuses it). It acts through the local blockrepd's registered iSCSI session when one serves the resource, and through its own session otherwise. "on" registers a node's own key again and runs on that node (unfencing).</longdesc>
<vendor-url>https://github.com/blockrep/blockrep</vendor-url>
<parameters>
	<parameter name="action" unique="0" required="1">
		<getopt mixed="-o, --action=[action]" />
		<content type="string" default="off" />
		<shortdesc lang="en">Fencing action</shortdesc>
	</parameter>
	<parameter name="devices" unique="0" required="0">
		<getopt mixed="-d, --devices=[devices]" />
		<content type="string" />
		<shortdesc lang="en">List of iscsi:// URLs of the shared LUNs, comma separated (selects the resource)</shortdesc>
	</parameter>
	<parameter name="plug" unique="0" required="1" obsoletes="port">
		<getopt mixed="-n, --plug=[nodename]" />
		<content type="string" />
		<shortdesc lang="en">Name of the node to fence (its on section in the .res file)</shortdesc>
	</parameter>
	<parameter name="port" unique="0" required="0" deprecated="1">
		<getopt mixed="-n, --plug=[nodename]" />
		<content type="string" />
		<shortdesc lang="en">Name of the node to fence (old name of plug)</shortdesc>
	</parameter>
	<parameter name="key" unique="0" required="0">
		<getopt mixed="-k, --key=[key]" />
		<content type="string" />
		<shortdesc lang="en">Key this agent registers as (hex); default the local node's derived key</shortdesc>
	</parameter>
	<parameter name="nodename" unique="0" required="0">
		<getopt mixed="--nodename=[nodename]" />
		<content type="string" />
		<shortdesc lang="en">Name of the local node (default the hostname)</shortdesc>
	</parameter>
	<parameter name="resource" unique="0" required="0">
		<getopt mixed="--resource=[resource]" />
		<content type="string" />
		<shortdesc lang="en">blockrep resource name (instead of devices)</shortdesc>
	</parameter>
	<parameter name="config" unique="0" required="0">
		<getopt mixed="--config=[dir]" />
		<content type="string" default="/etc/blockrep" />
		<shortdesc lang="en">Directory of blockrep .res files</shortdesc>
	</parameter>
	<parameter name="node" unique="0" required="0">
		<getopt mixed="--node=[name]" />
		<content type="string" />
		<shortdesc lang="en">Same as nodename (blockrepadm's flag name)</shortdesc>
	</parameter>
	<parameter name="run-dir" unique="0" required="0">
		<getopt mixed="--run-dir=[dir]" />
		<content type="string" default="/run/blockrep" />
		<shortdesc lang="en">blockrepd's run directory (control socket)</shortdesc>
	</parameter>
</parameters>
<actions>
	<action name="on" on_target="1" automatic="1" />
	<action name="off" />
	<action name="status" />
	<action name="list" />
	<action name="monitor" />
	<action name="metadata" />
	<action name="validate-all" />
</actions>
</resource-agent>
`
