package resource

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/blockrep/blockrep/blockrep"
	"github.com/blockrep/blockrep/blockrep/nbd"
	"github.com/blockrep/blockrep/resource/control"
)

// fixedStatus collects one given status, as statusCollector does for a live resource.
type fixedStatus struct {
	statusCollector
	rs control.ResourceStatus
}

func (f fixedStatus) Collect(ch chan<- prometheus.Metric) { collectResource(ch, f.rs, nil) }

// gather flattens a registry to "name{label=value,...}" → value, labels sorted.
func gather(t *testing.T, g prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if problems, err := promlint.NewWithMetricFamilies(mfs).Lint(); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", err, problems)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			var ls []string
			for _, l := range m.Label {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			slices.Sort(ls)
			key := mf.GetName() + "{" + strings.Join(ls, ",") + "}"
			switch {
			case m.Gauge != nil:
				out[key] = m.Gauge.GetValue()
			case m.Counter != nil:
				out[key] = m.Counter.GetValue()
			case m.Histogram != nil:
				out[key+"_count"] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return out
}

func TestMetricsStateSets(t *testing.T) {
	rs := control.ResourceStatus{Name: "r0", Role: "Primary", Disk: "UpToDate", Quorum: false, Suspended: "fencing",
		Service: &control.ServiceStatus{State: "failed"},
		Peers: []control.PeerStatus{{Node: "beta", Connection: "Connected", Replication: "SomethingNew", PeerDisk: "Outdated",
			OutOfSyncBytes: 8192, SplitBrain: true}}}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(fixedStatus{rs: rs})
	m := gather(t, reg)
	for series, want := range map[string]float64{
		"blockrep_resource_role{resource=r0,role=Primary}":                         1,
		"blockrep_resource_role{resource=r0,role=Secondary}":                       0,
		"blockrep_resource_quorum{resource=r0}":                                    0,
		"blockrep_resource_suspended{resource=r0}":                                 1,
		"blockrep_service_state{resource=r0,state=failed}":                         1,
		"blockrep_service_state{resource=r0,state=running}":                        0,
		"blockrep_peer_connection_state{peer=beta,resource=r0,state=Connected}":    1,
		"blockrep_peer_replication_state{peer=beta,resource=r0,state=Established}": 0,
		// A state the list does not know still shows.
		"blockrep_peer_replication_state{peer=beta,resource=r0,state=SomethingNew}": 1,
		"blockrep_peer_disk_state{disk=Outdated,peer=beta,resource=r0}":             1,
		"blockrep_peer_out_of_sync_bytes{peer=beta,resource=r0}":                    8192,
		"blockrep_peer_split_brain{peer=beta,resource=r0}":                          1,
	} {
		if got, ok := m[series]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", series, got, ok, want)
		}
	}
	if n := len(roleValues) + len(diskValues) + len(connValues) + len(replValues); n < 30 {
		t.Errorf("only %d state names enumerated", n)
	}
}

func TestMetricsInstrument(t *testing.T) {
	m := newMetrics(&Daemon{res: map[string]*running{}})
	cfg := blockrep.Config{Peers: []blockrep.PeerConfig{{Name: "beta"}}}
	var changes int
	cfg.OnChange = func(_, _ blockrep.State) { changes++ }
	m.instrument("r0", &cfg)
	frozen := blockrep.State{Suspended: "fencing"}
	cfg.OnChange(blockrep.State{}, frozen)
	cfg.OnChange(frozen, frozen) // still suspended: not a new freeze
	cfg.OnChange(frozen, blockrep.State{})
	cfg.OnChange(blockrep.State{}, blockrep.State{Suspended: "quorum"})
	cfg.Peers[0].AckLatency(3 * time.Millisecond)
	if changes != 4 {
		t.Errorf("the wrapped OnChange ran %d times, want 4", changes)
	}
	got := gather(t, m.reg)
	for series, want := range map[string]float64{
		"blockrep_resource_suspensions_total{reason=fencing,resource=r0}": 1,
		"blockrep_resource_suspensions_total{reason=quorum,resource=r0}":  1,
		"blockrep_peer_ack_duration_seconds{peer=beta,resource=r0}_count": 1,
	} {
		if got[series] != want {
			t.Errorf("%s = %v, want %v", series, got[series], want)
		}
	}

	var off *metrics // no --metrics-addr
	off.instrument("r0", &cfg)
	if o := off.nbdObserver("r0"); o != nil {
		t.Errorf("nbdObserver without metrics = %v, want nil", o)
	}
	if o := m.nbdObserver("r0"); o == nil {
		t.Fatal("nbdObserver with metrics is nil")
	} else {
		o.Observe(nbd.KindFlush, 0, time.Millisecond, false)
	}
}
