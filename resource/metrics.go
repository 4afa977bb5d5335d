package resource

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/blockrep/blockrep/blockrep"
	"github.com/blockrep/blockrep/blockrep/nbd"
	"github.com/blockrep/blockrep/resource/control"
)

// metrics is blockrepd's Prometheus registry (--metrics-addr). States are read from
// the daemon's status at scrape time; per-request figures are counted as they happen.
// A nil *metrics is valid and instruments nothing.
type metrics struct {
	reg *prometheus.Registry
	d   *Daemon

	nbdRequests *prometheus.CounterVec
	nbdErrors   *prometheus.CounterVec
	nbdBytes    *prometheus.CounterVec
	nbdDuration *prometheus.HistogramVec
	ackDuration *prometheus.HistogramVec
	suspensions *prometheus.CounterVec
}

// latencyBuckets span 10 µs (a page-cache hit) to about 10 s (a peer timing out).
var latencyBuckets = prometheus.ExponentialBuckets(10e-6, 4, 11)

func newMetrics(d *Daemon) *metrics {
	m := &metrics{reg: prometheus.NewRegistry(), d: d}
	m.nbdRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "blockrep_nbd_requests_total",
		Help: "NBD requests the backend answered, by kind."}, []string{"resource", "kind"})
	m.nbdErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "blockrep_nbd_request_errors_total",
		Help: "NBD requests answered with an error, by kind."}, []string{"resource", "kind"})
	m.nbdBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "blockrep_nbd_bytes_total",
		Help: "Bytes covered by NBD requests: the payload of reads and writes, the range of trims and zeroes."},
		[]string{"resource", "kind"})
	m.nbdDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "blockrep_nbd_request_duration_seconds",
		Help:    "Time from receiving an NBD request (with its payload) to answering it, by kind.",
		Buckets: latencyBuckets}, []string{"resource", "kind"})
	m.ackDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "blockrep_peer_ack_duration_seconds",
		Help:    "Time from sending an application write to a peer until its write ack.",
		Buckets: latencyBuckets}, []string{"resource", "peer"})
	m.suspensions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "blockrep_resource_suspensions_total",
		Help: "Transitions into suspended I/O (writes frozen), by reason: fencing or quorum."},
		[]string{"resource", "reason"})
	m.reg.MustRegister(m.nbdRequests, m.nbdErrors, m.nbdBytes, m.nbdDuration, m.ackDuration, m.suspensions,
		statusCollector{d}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// serveMetrics starts the /metrics listener when --metrics-addr is set; it stops with ctx.
func (d *Daemon) serveMetrics(ctx context.Context) error {
	if d.MetricsAddr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", d.MetricsAddr)
	if err != nil {
		return fmt.Errorf("--metrics-addr: %w", err)
	}
	if ap, err := netip.ParseAddrPort(ln.Addr().String()); err == nil && !ap.Addr().IsLoopback() {
		d.Log.Warn("metrics are served without authentication beyond this host", "addr", ln.Addr().String())
	}
	d.metrics = newMetrics(d)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.metrics.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.Log.Error("metrics server", "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	d.Log.Info("serving metrics", "addr", ln.Addr().String())
	return nil
}

// instrument hooks a resource's engine configuration: per-peer ack latency and the
// count of suspensions. It wraps the OnChange already set.
func (m *metrics) instrument(resource string, cfg *blockrep.Config) {
	if m == nil {
		return
	}
	for i := range cfg.Peers {
		h := m.ackDuration.WithLabelValues(resource, cfg.Peers[i].Name)
		cfg.Peers[i].AckLatency = func(d time.Duration) { h.Observe(d.Seconds()) }
	}
	next := cfg.OnChange
	cfg.OnChange = func(old, new blockrep.State) {
		if old.Suspended == "" && new.Suspended != "" {
			m.suspensions.WithLabelValues(resource, new.Suspended).Inc()
		}
		if next != nil {
			next(old, new)
		}
	}
}

// nbdObserver counts the requests of one resource's export; nil without metrics.
func (m *metrics) nbdObserver(resource string) nbd.Observer {
	if m == nil {
		return nil
	}
	o := &nbdObserver{}
	for k := range nbd.NumKinds {
		kind := k.String()
		o.requests[k] = m.nbdRequests.WithLabelValues(resource, kind)
		o.errors[k] = m.nbdErrors.WithLabelValues(resource, kind)
		o.bytes[k] = m.nbdBytes.WithLabelValues(resource, kind)
		o.duration[k] = m.nbdDuration.WithLabelValues(resource, kind)
	}
	return o
}

// nbdObserver holds its series resolved, so a request costs atomic adds, no lookups.
type nbdObserver struct {
	requests, errors, bytes [nbd.NumKinds]prometheus.Counter
	duration                [nbd.NumKinds]prometheus.Observer
}

func (o *nbdObserver) Observe(k nbd.Kind, n int64, d time.Duration, failed bool) {
	o.requests[k].Inc()
	if n > 0 {
		o.bytes[k].Add(float64(n))
	}
	if failed {
		o.errors[k].Inc()
	}
	o.duration[k].Observe(d.Seconds())
}

// The state-set values: every name the engine can report.
var (
	roleValues    = enumValues(func(i int) string { return blockrep.Role(i).String() })
	diskValues    = enumValues(func(i int) string { return blockrep.DiskState(i).String() })
	connValues    = enumValues(func(i int) string { return blockrep.ConnState(i).String() })
	replValues    = enumValues(func(i int) string { return blockrep.ReplState(i).String() })
	serviceValues = []string{"running", "starting", "stopping", "stopped", "failed"}
)

// enumValues lists an engine enum's names (out of range they read "?N").
func enumValues(name func(int) string) []string {
	var out []string
	for i := 0; !strings.HasPrefix(name(i), "?"); i++ {
		out = append(out, name(i))
	}
	return out
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	resLabel    = []string{"resource"}
	peerLabels  = []string{"resource", "peer"}
	descRole    = desc("blockrep_resource_role", "Role of this node: 1 for the current one (state set).", "resource", "role")
	descDisk    = desc("blockrep_resource_disk_state", "Local disk state: 1 for the current one (state set).", "resource", "disk")
	descQuorum  = desc("blockrep_resource_quorum", "1 if this node has quorum (always 1 with quorum off).", resLabel...)
	descSusp    = desc("blockrep_resource_suspended", "1 while writes are frozen (fencing, quorum, or a fenced shared node).", resLabel...)
	descClients = desc("blockrep_resource_export_clients", "NBD clients attached to the export.", resLabel...)
	descSize    = desc("blockrep_resource_size_bytes", "Usable size of the volume.", resLabel...)
	descRead    = desc("blockrep_resource_read_bytes_total", "Bytes read through the volume since the disk was attached.", resLabel...)
	descWritten = desc("blockrep_resource_written_bytes_total", "Bytes written through the volume since the disk was attached.", resLabel...)
	descService = desc("blockrep_service_state", "Promoter's service stack on this node: 1 for the current state (state set).", "resource", "state")
	descConn    = desc("blockrep_peer_connection_state", "Connection to the peer: 1 for the current state (state set).", "resource", "peer", "state")
	descRepl    = desc("blockrep_peer_replication_state", "Replication towards the peer: 1 for the current state (state set).", "resource", "peer", "state")
	descPDisk   = desc("blockrep_peer_disk_state", "The peer's disk as this node knows it: 1 for the current one (state set).", "resource", "peer", "disk")
	descOOS     = desc("blockrep_peer_out_of_sync_bytes", "Bytes this node knows the peer lacks (4 KiB granularity).", peerLabels...)
	descRate    = desc("blockrep_peer_resync_rate_bytes_per_second", "Current resync rate with the peer (0 when none runs).", peerLabels...)
	descSB      = desc("blockrep_peer_split_brain", "1 when the last handshake with the peer found split brain.", peerLabels...)
	descInfl    = desc("blockrep_peer_inflight_requests", "Requests sent to the peer and not acknowledged yet (the send window's fill).", peerLabels...)
	descMaxInfl = desc("blockrep_peer_inflight_requests_max", "Size of the send window (max-buffers): writers block when it is full.", peerLabels...)
)

// statusCollector reads the daemon's status at each scrape.
type statusCollector struct{ d *Daemon }

func (statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRole, descDisk, descQuorum, descSusp, descClients, descSize, descRead,
		descWritten, descService, descConn, descRepl, descPDisk, descOOS, descRate, descSB, descInfl, descMaxInfl} {
		ch <- d
	}
}

func (c statusCollector) Collect(ch chan<- prometheus.Metric) {
	for _, name := range c.d.sortedNames() {
		r := c.d.get(name)
		if r == nil {
			continue
		}
		collectResource(ch, r.status(), r.volume())
	}
}

func collectResource(ch chan<- prometheus.Metric, rs control.ResourceStatus, vol *blockrep.Volume) {
	res := rs.Name
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	stateSet(gauge, descRole, roleValues, rs.Role, res)
	stateSet(gauge, descDisk, diskValues, rs.Disk, res)
	gauge(descQuorum, b2f(rs.Quorum), res)
	gauge(descSusp, b2f(rs.Suspended != ""), res)
	gauge(descClients, float64(rs.Clients), res)
	gauge(descSize, float64(rs.SizeBytes), res)
	counter(descRead, float64(rs.ReadBytes), res)
	counter(descWritten, float64(rs.WrittenBytes), res)
	if rs.Service != nil {
		stateSet(gauge, descService, serviceValues, rs.Service.State, res)
	}
	// The resync rate and the send window are engine figures status does not carry.
	engine := map[int]blockrep.PeerStatus{}
	if vol != nil {
		_, peers := vol.Status()
		for _, p := range peers {
			engine[p.NodeID] = p
		}
	}
	for _, p := range rs.Peers {
		stateSet(gauge, descConn, connValues, p.Connection, res, p.Node)
		stateSet(gauge, descRepl, replValues, p.Replication, res, p.Node)
		stateSet(gauge, descPDisk, diskValues, p.PeerDisk, res, p.Node)
		gauge(descOOS, float64(p.OutOfSyncBytes), res, p.Node)
		gauge(descSB, b2f(p.SplitBrain), res, p.Node)
		if e, ok := engine[p.NodeID]; ok {
			gauge(descRate, e.RateBytes, res, p.Node)
			gauge(descInfl, float64(e.InFlight), res, p.Node)
			gauge(descMaxInfl, float64(e.MaxInFlight), res, p.Node)
		}
	}
}

// stateSet emits one series per possible value, 1 for the current one; a value outside
// the known set still shows, so a new state is never silently dropped.
func stateSet(gauge func(*prometheus.Desc, float64, ...string), d *prometheus.Desc, values []string, cur string, labels ...string) {
	known := false
	for _, v := range values {
		gauge(d, b2f(v == cur), append(labels, v)...)
		known = known || v == cur
	}
	if !known && cur != "" {
		gauge(d, 1, append(labels, cur)...)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
