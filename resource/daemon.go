package resource

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/blockrep/blockrep/blockrep"
	"github.com/blockrep/blockrep/blockrep/nbd"
	"github.com/blockrep/blockrep/fence"
	"github.com/blockrep/blockrep/internal/feed"
	"github.com/blockrep/blockrep/resource/config"
	"github.com/blockrep/blockrep/resource/control"
	"github.com/blockrep/blockrep/transport"
)

// Daemon is blockrepd: it serves the control socket and runs every resource that is up
// on this node — its volume, its peer listener and its NBD exports.
type Daemon struct {
	ConfigDir string
	Node      string
	RunDir    string
	Log       *slog.Logger
	// FaultInjection wraps every backing device in a blockrep.FaultyDevice that the
	// "fault" verb configures: for the fault harness only.
	FaultInjection bool
	// MetricsAddr, when set, serves Prometheus metrics on http://MetricsAddr/metrics.
	MetricsAddr string
	// Ready, if set, is called once the control socket listens (systemd's READY=1).
	Ready func()

	cmdMu sync.Mutex // serializes operator commands
	mu    sync.Mutex // guards res and every running.vol (held briefly)
	res   map[string]*running
	ctl   net.Listener
	done  chan struct{}
	// events is the feed of committed changes of every resource: events, and every
	// other consumer, read it (never the engine's internals).
	events  *feed.Feed[resEvent]
	metrics *metrics // nil unless MetricsAddr is set
}

// running is one resource that is up.
type running struct {
	d    *Daemon
	cfg  *config.Resource
	host *config.Host
	vcfg blockrep.Config
	log  *slog.Logger

	vol    *blockrep.Volume // nil while detached (Diskless)
	wanted bool             // connections wanted (up/connect) — restored on attach
	faulty []*blockrep.FaultyDevice
	// shared is set instead of vol for a shared-storage resource (one LUN, no
	// replication, the writer protected by a SCSI persistent reservation).
	shared *fence.Shared
	// witness is set instead of vol for a diskless tiebreaker (disk none).
	witness *blockrep.Witness
	// promoter runs the service stack when the resource has a promoter section.
	promoter *promoterRun

	peerLn    net.Listener
	serverTLS *tls.Config // the listener's TLS configuration (net { tls yes; }), or nil
	exports   *nbd.Server
	expLns    []net.Listener
	wg        sync.WaitGroup

	eventState
}

// Run serves until ctx is cancelled, then takes every resource down.
func (d *Daemon) Run(ctx context.Context) error {
	if d.Log == nil {
		d.Log = slog.Default()
	}
	d.res = make(map[string]*running)
	d.done = make(chan struct{})
	d.events = feed.New[resEvent](feedSize)
	if err := os.MkdirAll(d.RunDir, 0o755); err != nil {
		return err
	}
	// Validate the configuration once at start so mistakes show in the log early.
	if cfg, err := config.Load(d.ConfigDir); err != nil {
		d.Log.Warn("configuration has errors; resources cannot be brought up until fixed", "err", err)
	} else {
		for _, w := range cfg.Warnings {
			d.Log.Warn(w.String())
		}
	}
	ln, err := listenControl(control.SocketPath(d.RunDir))
	if err != nil {
		return err
	}
	if err := d.serveMetrics(ctx); err != nil {
		ln.Close()
		os.Remove(control.SocketPath(d.RunDir))
		return err
	}
	d.ctl = ln
	d.Log.Info("blockrepd started", "config", d.ConfigDir, "run-dir", d.RunDir, "pid", os.Getpid())
	if d.Ready != nil {
		d.Ready()
	}
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			break
		}
		go d.serveControl(c)
	}
	d.shutdown()
	os.Remove(control.SocketPath(d.RunDir))
	return nil
}

// listenControl opens the control socket, root-only, refusing to steal it from a live daemon.
func listenControl(path string) (net.Listener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another blockrepd already serves %s", path)
	}
	os.Remove(path)
	old := syscall.Umask(0o077)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

func (d *Daemon) shutdown() {
	d.cmdMu.Lock()
	defer d.cmdMu.Unlock()
	for _, name := range d.sortedNames() {
		r := d.get(name)
		if err := r.down(true); err != nil {
			r.log.Error("shutdown", "err", err)
		}
		d.set(name, nil)
		r.publish(true)
	}
	d.Log.Info("blockrepd stopped")
}

func (d *Daemon) get(name string) *running {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.res[name]
}

func (d *Daemon) set(name string, r *running) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if r == nil {
		delete(d.res, name)
	} else {
		d.res[name] = r
	}
}

func (r *running) volume() *blockrep.Volume {
	r.d.mu.Lock()
	defer r.d.mu.Unlock()
	return r.vol
}

func (r *running) setVolume(v *blockrep.Volume) {
	r.d.mu.Lock()
	r.vol = v
	r.d.mu.Unlock()
}

func (d *Daemon) sortedNames() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var names []string
	for n := range d.res {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// serveControl answers one request, from root (or our own uid) only.
func (d *Daemon) serveControl(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Minute))
	if err := checkPeerCred(c); err != nil {
		json.NewEncoder(c).Encode(control.Response{Error: err.Error(), Code: control.CodeUsage})
		return
	}
	var req control.Request
	if err := json.NewDecoder(c).Decode(&req); err != nil {
		json.NewEncoder(c).Encode(control.Response{Error: "malformed request: " + err.Error(), Code: control.CodeUsage})
		return
	}
	if req.Verb == "events" {
		d.streamEvents(c, req)
		return
	}
	resp := d.handle(req)
	json.NewEncoder(c).Encode(resp)
}

func checkPeerCred(c net.Conn) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return errors.New("not a unix connection")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *syscall.Ucred
	var cerr error
	raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if cerr != nil {
		return cerr
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Geteuid() {
		return fmt.Errorf("permission denied: uid %d may not control blockrepd", cred.Uid)
	}
	return nil
}

// handle runs one verb on one resource or all of them.
func (d *Daemon) handle(req control.Request) control.Response {
	if req.Verb == "status" {
		return d.status(req.Resource)
	}
	d.cmdMu.Lock()
	defer d.cmdMu.Unlock()
	if req.Verb == "fence-status" {
		return d.fenceStatus(req)
	}
	if req.Resource == "" {
		return fail(control.CodeUsage, fmt.Errorf("%s needs a resource name or \"all\"", req.Verb))
	}
	var names []string
	if req.Resource == "all" {
		if req.Verb == "up" {
			cfg, err := config.Load(d.configOf(req))
			if err != nil {
				return fail(control.CodeConfig, err)
			}
			for _, r := range cfg.Resources {
				// up all brings up what is not up yet; up of one resource that is up fails.
				if _, err := r.Host(d.Node); err == nil && d.get(r.Name) == nil {
					names = append(names, r.Name)
				}
			}
		} else {
			names = d.sortedNames()
		}
	} else {
		names = []string{req.Resource}
	}
	if req.Verb == "adjust" {
		return d.adjust(req, names)
	}
	for _, n := range names {
		if err := d.do(req, n); err != nil {
			return fail(codeOf(err), err)
		}
	}
	return control.Response{OK: true}
}

func fail(code int, err error) control.Response {
	return control.Response{Error: err.Error(), Code: code}
}

func codeOf(err error) int {
	var ce *config.Error
	var se *blockrep.StateError
	switch {
	case errors.As(err, &ce), errors.As(err, new(configError)):
		return control.CodeConfig
	case errors.Is(err, blockrep.ErrNotUpToDate):
		return control.CodeNotUpToDate
	case errors.As(err, &se):
		return control.CodeState
	}
	return control.CodeOther
}

func (d *Daemon) do(req control.Request, name string) error {
	r := d.get(name)
	if req.Verb == "up" {
		if r != nil {
			return &blockrep.StateError{Msg: fmt.Sprintf("%s is already up", name)}
		}
		r, err := d.up(name, d.configOf(req))
		if err != nil {
			return err
		}
		if r.vol != nil {
			p, err := newPromoter(r)
			if err != nil {
				r.down(true)
				return err
			}
			r.setPromoter(p)
		}
		d.set(name, r)
		r.publish(false)
		r.stop = make(chan struct{})
		go r.watchProgress(r.stop)
		return nil
	}
	if r == nil {
		if _, err := d.lookup(name); err != nil {
			return err
		}
		if req.Verb == "down" {
			return nil // drbdadm down of a resource that is not up succeeds
		}
		return fmt.Errorf("%s is not up (run: blockrepadm up %s)", name, name)
	}
	if r.shared != nil {
		return r.doShared(req)
	}
	if r.witnessOf() != nil {
		return r.doWitness(req)
	}
	switch req.Verb {
	case "pg-init":
		return r.pgInit(req)
	case "switchover":
		return r.switchover(req.Target)

	case "down":
		if err := r.down(req.Force); err != nil {
			return err
		}
		d.set(name, nil)
		r.publish(true)
		return nil
	case "attach":
		defer r.publish(false)
		return r.attach()
	case "detach":
		defer r.publish(false)
		return r.detach()
	case "connect":
		if r.vol == nil {
			return fmt.Errorf("%s: no local disk (attach it first)", name)
		}
		r.wanted = true
		return r.vol.Connect(-1, req.DiscardMyData)
	case "disconnect":
		r.wanted = false
		if r.vol == nil {
			return nil
		}
		return r.vol.Disconnect(-1)
	case "primary":
		if r.vol == nil {
			return fmt.Errorf("%s: no local disk", name)
		}
		return r.vol.Promote(req.Force)
	case "secondary":
		return r.secondary(req.Force)
	case "invalidate":
		if r.vol == nil {
			return fmt.Errorf("%s: no local disk", name)
		}
		return r.vol.Invalidate()
	case "fault":
		return r.setFault(req.Fault)
	case "resume-io":
		if r.vol == nil {
			return fmt.Errorf("%s: no local disk", name)
		}
		return r.vol.ResumeIO()
	case "outdate", "new-current-uuid":
		return r.generationVerb(req)
	}
	return fmt.Errorf("unknown verb %q", req.Verb)
}

// lookup reads the configuration fresh and finds the resource and our part in it.
func (d *Daemon) lookup(name string) (*config.Resource, error) {
	return d.lookupIn(d.ConfigDir, name)
}

// lookupIn is lookup in the configuration at path (a directory or a file).
func (d *Daemon) lookupIn(path, name string) (*config.Resource, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, configError{err}
	}
	res, err := cfg.Resource(name)
	if err != nil {
		return nil, configError{err}
	}
	if _, err := res.Host(d.Node); err != nil {
		return nil, configError{err}
	}
	for _, w := range cfg.Warnings {
		if w.Pos.File != "" {
			d.Log.Warn(w.String())
		}
	}
	return res, nil
}

// up brings a resource up: attach the disk, listen for peers, serve the export socket
// (which refuses clients until this node is Primary) and connect.
func (d *Daemon) up(name, configPath string) (*running, error) {
	res, err := d.lookupIn(configPath, name)
	if err != nil {
		return nil, err
	}
	host, _ := res.Host(d.Node)
	log := d.Log.With("resource", name)
	if res.Shared() {
		return d.upShared(res, host, log)
	}
	if host.Disk == "none" {
		return d.upWitness(res, host, log)
	}
	vcfg, err := volumeConfig(res, d.Node, d.Log)
	if err != nil {
		return nil, err
	}
	for _, o := range res.NotHonoured(d.Node) {
		log.Warn("option accepted but not honoured by this version: " + o)
	}
	if err := checkExposure(res, host); err != nil {
		return nil, err
	}
	cpeers, err := res.Peers(host.Name)
	if err != nil {
		return nil, err
	}
	_, serverTLS, err := tlsConfigs(host, cpeers)
	if err != nil {
		return nil, err
	}
	for _, p := range vcfg.Peers {
		if p.Secret == "" {
			log.Warn("no shared-secret: peers of this resource are not authenticated", "peer", p.Name)
		}
	}
	r := &running{d: d, cfg: res, host: host, vcfg: vcfg, log: log, wanted: true, serverTLS: serverTLS}
	r.vcfg.OnChange = r.onChange
	d.metrics.instrument(name, &r.vcfg)
	vcfg = r.vcfg
	if d.FaultInjection {
		r.vcfg.OpenDevice = r.openFaulty
		vcfg = r.vcfg
	}
	if r.vol, err = blockrep.Open(vcfg); err != nil { // not yet visible to other goroutines
		return nil, fmt.Errorf("%s: attach %s: %w", name, host.Disk, err)
	}
	if err := r.listen(); err != nil {
		r.vol.Close()
		return nil, err
	}
	if err := r.vol.Connect(-1, false); err != nil {
		r.stopListening()
		r.vol.Close()
		return nil, err
	}
	log.Info("up")
	return r, nil
}

// listenPeers starts the peer listener.
func (r *running) listenPeers() error {
	if len(r.vcfg.Peers) > 0 && r.host.Address != "" {
		ln, err := net.Listen("tcp", r.host.Address)
		if err != nil {
			return fmt.Errorf("%s: listen on %s: %w", r.cfg.Name, r.host.Address, err)
		}
		r.peerLn = ln
		r.wg.Add(1)
		go r.acceptPeers(ln)
	}
	return nil
}

// listen starts the peer listener and the export sockets.
func (r *running) listen() error {
	name := r.cfg.Name
	if err := r.listenPeers(); err != nil {
		return err
	}
	r.exports = &nbd.Server{Logger: r.log, Lookup: r.lookupExport, List: func() []string { return []string{name} },
		Observer: r.d.metrics.nbdObserver(name)}
	path := control.ExportPath(r.d.RunDir, name)
	os.Remove(path)
	old := syscall.Umask(0o077)
	uln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		r.stopListening()
		return fmt.Errorf("%s: export socket: %w", name, err)
	}
	r.expLns = append(r.expLns, uln)
	var tcpTLS nbd.TLSPolicy
	if r.host.Export != "" {
		if r.host.ExportTLS != "" {
			cfg, err := exportTLS(r.cfg, r.host)
			if err != nil {
				r.stopListening()
				return err
			}
			tcpTLS = nbd.TLSPolicy{Config: cfg, Require: r.host.ExportTLS == "require"}
		}
		tln, err := net.Listen("tcp", r.host.Export)
		if err != nil {
			r.stopListening()
			return fmt.Errorf("%s: export on %s: %w", name, r.host.Export, err)
		}
		r.expLns = append(r.expLns, tln)
	}
	for i, l := range r.expLns {
		tp := nbd.TLSPolicy{}
		if i > 0 { // the TCP export; the unix socket is local and root-only
			tp = tcpTLS
		}
		r.wg.Add(1)
		go func(l net.Listener) {
			defer r.wg.Done()
			r.exports.ServeTLS(l, tp)
		}(l)
	}
	return nil
}

func (r *running) acceptPeers(ln net.Listener) {
	defer r.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			tc, err := transport.AcceptTLS(c, r.serverTLS, r.identify)
			if err != nil {
				r.log.Warn("peer connection refused", "err", err)
				return
			}
			if vol := r.volume(); vol != nil {
				vol.Incoming(tc)
			} else if w := r.witnessOf(); w != nil {
				w.Incoming(tc)
			} else {
				tc.Close()
			}
		}()
	}
}

// identify maps a dialing peer's claim to the secret of that connection.
func (r *running) identify(h transport.Hello) (transport.Identity, error) {
	if h.Resource != r.cfg.Name {
		return transport.Identity{}, fmt.Errorf("resource %q is not served on this address", h.Resource)
	}
	if h.LocalID != r.host.NodeID {
		return transport.Identity{}, fmt.Errorf("node-id %d is not this node (%d)", h.LocalID, r.host.NodeID)
	}
	for _, p := range r.vcfgNow().Peers {
		if p.NodeID == h.PeerID {
			return transport.Identity{Resource: r.cfg.Name, LocalID: r.host.NodeID, PeerID: p.NodeID, Secret: p.Secret, Alg: p.HMACAlg, PeerName: p.Name}, nil
		}
	}
	return transport.Identity{}, fmt.Errorf("node-id %d is not a peer of %s here", h.PeerID, r.cfg.Name)
}

// lookupExport serves the export only while this node is Primary.
func (r *running) lookupExport(name string) (*nbd.Export, error) {
	if name != "" && name != r.cfg.Name {
		return nil, fmt.Errorf("%w: %q (this socket serves %s)", nbd.ErrUnknownExport, name, r.cfg.Name)
	}
	if r.shared != nil {
		if !r.shared.Primary() {
			return nil, fmt.Errorf("%s: %s does not hold the reservation; the export is served by the Primary", r.cfg.Name, r.d.Node)
		}
		return &nbd.Export{Name: r.cfg.Name, Description: fmt.Sprintf("blockrep %s (shared) on %s", r.cfg.Name, r.d.Node), Backend: r.shared}, nil
	}
	vol := r.volume()
	if vol == nil {
		return nil, fmt.Errorf("%s: no local disk on %s", r.cfg.Name, r.d.Node)
	}
	if vol.State().Role != blockrep.Primary {
		return nil, fmt.Errorf("%s: %s is Secondary; the export is served by the Primary", r.cfg.Name, r.d.Node)
	}
	return &nbd.Export{Name: r.cfg.Name, Description: fmt.Sprintf("blockrep %s on %s", r.cfg.Name, r.d.Node), Backend: vol}, nil
}

// secondary demotes, refusing while NBD clients are attached unless forced.
func (r *running) secondary(force bool) error {
	if r.vol == nil {
		return nil
	}
	if n := r.exports.Clients(r.cfg.Name); n > 0 {
		if !force {
			return &blockrep.StateError{Msg: fmt.Sprintf("%s: device is held open by %d NBD client(s) (disconnect them, or secondary --force)", r.cfg.Name, n)}
		}
		r.exports.Disconnect(r.cfg.Name)
	}
	return r.vol.Demote()
}

// down: Secondary, disconnected, detached, no sockets.
func (r *running) down(force bool) error {
	// The promoter's service goes first: it is what holds the device open.
	if p := r.promoterOf(); p != nil {
		p.close()
		r.setPromoter(nil)
	}
	if r.witnessOf() != nil {
		r.downWitness()
		return nil
	}
	if r.vol != nil {
		if err := r.secondary(force); err != nil {
			return err
		}
		r.vol.Disconnect(-1)
	}
	r.stopListening()
	if vol := r.vol; vol != nil {
		r.setVolume(nil)
		if err := vol.Close(); err != nil {
			return err
		}
	}
	r.log.Info("down")
	return nil
}

func (r *running) stopListening() {
	if r.stop != nil {
		select {
		case <-r.stop:
		default:
			close(r.stop)
		}
	}
	if r.peerLn != nil {
		r.peerLn.Close()
	}
	if r.exports != nil {
		r.exports.Close()
	}
	for _, l := range r.expLns {
		l.Close()
	}
	r.wg.Wait()
	os.Remove(control.ExportPath(r.d.RunDir, r.cfg.Name))
}

func (r *running) detach() error {
	if r.vol == nil {
		return nil
	}
	if r.vol.State().Role == blockrep.Primary {
		return &blockrep.StateError{Msg: fmt.Sprintf("%s: cannot detach the disk of a Primary (run secondary first)", r.cfg.Name)}
	}
	vol := r.vol
	vol.Disconnect(-1)
	r.setVolume(nil)
	return vol.Close()
}

func (r *running) attach() error {
	if r.vol != nil && r.vol.DiskFailed() {
		// Replace a disk detached after I/O errors.
		if r.vol.State().Role == blockrep.Primary {
			return &blockrep.StateError{Msg: fmt.Sprintf("%s: the failed disk of a Primary cannot be re-attached (run secondary first)", r.cfg.Name)}
		}
		old := r.vol
		old.Disconnect(-1)
		r.setVolume(nil)
		old.Close()
	}
	if r.vol != nil {
		return fmt.Errorf("%s: already attached", r.cfg.Name)
	}
	r.faulty = nil
	vol, err := blockrep.Open(r.vcfg)
	if err != nil {
		return fmt.Errorf("%s: attach %s: %w", r.cfg.Name, r.host.Disk, err)
	}
	r.setVolume(vol)
	if r.wanted {
		return vol.Connect(-1, false)
	}
	return nil
}

// status reports the resources that are up (one or all).
func (d *Daemon) status(name string) control.Response {
	st := &control.Status{Resources: []control.ResourceStatus{}}
	names := d.sortedNames()
	if name != "" && name != "all" {
		if d.get(name) == nil {
			if _, err := d.lookup(name); err != nil {
				return fail(codeOf(err), err)
			}
			return fail(control.CodeOther, fmt.Errorf("%s is not up", name))
		}
		names = []string{name}
	}
	for _, n := range names {
		if r := d.get(n); r != nil {
			st.Resources = append(st.Resources, r.status())
		}
	}
	return control.Response{OK: true, Status: st}
}

func (r *running) status() control.ResourceStatus {
	rs := control.ResourceStatus{Name: r.cfg.Name, NodeID: r.host.NodeID, Role: blockrep.Secondary.String(), Quorum: true,
		Disk: blockrep.Diskless.String(), Peers: []control.PeerStatus{}}
	if r.exports != nil {
		rs.Clients = r.exports.Clients(r.cfg.Name)
	}
	if r.shared != nil {
		return r.sharedStatus(rs)
	}
	if r.witnessOf() != nil {
		return r.witnessStatus(rs)
	}
	vol := r.volume()
	if vol == nil {
		for _, p := range r.vcfg.Peers {
			rs.Peers = append(rs.Peers, control.PeerStatus{Node: p.Name, NodeID: p.NodeID, Connection: blockrep.StandAlone.String(),
				Replication: blockrep.ReplOff.String(), PeerDisk: blockrep.DUnknown.String(), PeerRole: blockrep.RoleUnknown.String(),
				Protocol: p.Protocol.String(), Reason: "local disk detached"})
		}
		return rs
	}
	if p := r.promoterOf(); p != nil {
		rs.Service = p.status()
	}
	st, peers := vol.Status()
	rs.Role, rs.Disk, rs.SizeBytes = st.Role.String(), st.Disk.String(), vol.Size()
	rs.Quorum = !st.NoQuorum
	rs.ReadBytes, rs.WrittenBytes = vol.Counters()
	rs.ALWrites, rs.BMWrites = vol.MetaCounters()
	rs.DiskFailed = vol.DiskFailed()
	rs.Suspended = st.Suspended
	for _, p := range peers {
		ps := control.PeerStatus{Node: p.Name, NodeID: p.NodeID, Connection: p.Conn.String(), Replication: p.Repl.String(),
			PeerDisk: p.Disk.String(), PeerRole: p.Role.String(), Protocol: p.Protocol.String(),
			OutOfSyncBytes: p.OutOfSyncBytes, SyncDonePercent: p.SyncDonePercent, ResyncBytes: p.ResyncBytes,
			SplitBrain: p.SplitBrain, Reason: p.Reason, SentBytes: p.SentBytes, ReceivedBytes: p.ReceivedBytes, Pending: p.Pending}
		if p.SyncETA > 0 {
			ps.SyncETASeconds = p.SyncETA.Seconds()
		}
		rs.Peers = append(rs.Peers, ps)
	}
	return rs
}

// CreateMD writes fresh metadata for resource name on node (blockrepadm create-md).
func CreateMD(configDir, node, name string, maxPeers int, force bool) (blockrep.Geometry, error) {
	cfg, err := config.Load(configDir)
	if err != nil {
		return blockrep.Geometry{}, err
	}
	res, err := cfg.Resource(name)
	if err != nil {
		return blockrep.Geometry{}, err
	}
	vcfg, err := volumeConfig(res, node, slog.Default())
	if err != nil {
		return blockrep.Geometry{}, err
	}
	return blockrep.CreateMD(vcfg, maxPeers, force)
}

// openFaulty opens a device wrapped for fault injection (--fault-injection).
func (r *running) openFaulty(path string) (blockrep.Device, error) {
	d, err := deviceOpener(r.host)(path)
	if err != nil {
		return nil, err
	}
	f := &blockrep.FaultyDevice{Device: d}
	r.faulty = append(r.faulty, f)
	return f, nil
}

// setFault installs (or with "" clears) a disk fault rule on the resource's devices.
func (r *running) setFault(rule string) error {
	if !r.d.FaultInjection {
		return errors.New("fault injection is not enabled (blockrepd --fault-injection)")
	}
	var rules []blockrep.FaultRule
	if rule != "" {
		fr, err := blockrep.ParseFaultRule(rule)
		if err != nil {
			return err
		}
		rules = append(rules, fr)
	}
	for _, f := range r.faulty {
		f.SetRules(rules...)
	}
	r.log.Warn("fault injection", "rule", rule)
	return nil
}

// checkExposure refuses to bring up a resource that would take unauthenticated peers
// from beyond this host, or serve its export on every address, unless the configuration
// says the operator chose it: secure by default.
func checkExposure(res *config.Resource, host *config.Host) error {
	peers, err := res.Peers(host.Name)
	if err != nil {
		return err
	}
	for _, p := range peers {
		if p.Net.SharedSecret != "" || p.Net.TLS || p.Net.AllowUnauthenticated {
			continue
		}
		for _, a := range []string{p.PeerAddress, p.LocalAddress} {
			if ap, err := netip.ParseAddrPort(a); err == nil && !ap.Addr().IsLoopback() {
				return &config.Error{Pos: p.Pos, Msg: fmt.Sprintf("connection %s - %s on %s has no authentication: set net { shared-secret \"…\"; } or net { tls yes; … } (or net { allow-unauthenticated yes; } to accept any peer that can reach it)",
					host.Name, p.Host.Name, ap.Addr())}
			}
		}
	}
	if host.Export != "" && !host.ExportAllowAny {
		if ap, err := netip.ParseAddrPort(host.Export); err == nil && ap.Addr().IsUnspecified() {
			return &config.Error{Pos: host.Pos, Msg: fmt.Sprintf("export %s serves the volume on every address: name one address, or add export-allow-any yes; to the on %s section",
				host.Export, host.Name)}
		}
	}
	return nil
}
