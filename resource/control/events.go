package control

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// EventLine is one line of `blockrepadm events`, in drbdsetup events2's shape: an action
// (exists, create, change, destroy), an object (resource, device, connection,
// peer-device, or "-" for the end of the initial dump) and key:value pairs, identity
// keys first.
type EventLine struct {
	Time   time.Time
	Action string
	Object string
	Keys   []KV
}

// KV is one key:value of an EventLine.
type KV struct{ K, V string }

// String renders the line as drbdsetup events2 does; with timestamps, prefixed by the
// event's time (ISO 8601, microseconds).
func (l EventLine) String() string { return l.Format(false) }

// Format renders the line, optionally with its timestamp.
func (l EventLine) Format(timestamps bool) string {
	var b strings.Builder
	if timestamps {
		b.WriteString(l.Time.Format("2006-01-02T15:04:05.000000-07:00"))
		b.WriteByte(' ')
	}
	b.WriteString(l.Action)
	b.WriteByte(' ')
	b.WriteString(l.Object)
	for _, kv := range l.Keys {
		b.WriteByte(' ')
		b.WriteString(kv.K)
		b.WriteByte(':')
		b.WriteString(kv.V)
	}
	return b.String()
}

// MarshalJSON writes one object with "time", "action", "object" and then the keys in
// order (numbers as numbers).
func (l EventLine) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(`{"time":`)
	t, _ := json.Marshal(l.Time.Format(time.RFC3339Nano))
	b.Write(t)
	for _, kv := range append([]KV{{"action", l.Action}, {"object", l.Object}}, l.Keys...) {
		b.WriteByte(',')
		k, _ := json.Marshal(kv.K)
		b.Write(k)
		b.WriteByte(':')
		if _, err := strconv.ParseInt(kv.V, 10, 64); err == nil {
			b.WriteString(kv.V)
			continue
		}
		v, _ := json.Marshal(kv.V)
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// UnmarshalJSON reads what MarshalJSON wrote.
func (l *EventLine) UnmarshalJSON(p []byte) error {
	dec := json.NewDecoder(bytes.NewReader(p))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return fmt.Errorf("event line: not an object")
	}
	*l = EventLine{}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return err
		}
		k, _ := kt.(string)
		vt, err := dec.Token()
		if err != nil {
			return err
		}
		v := fmt.Sprint(vt)
		switch k {
		case "time":
			l.Time, _ = time.Parse(time.RFC3339Nano, v)
		case "action":
			l.Action = v
		case "object":
			l.Object = v
		default:
			l.Keys = append(l.Keys, KV{k, v})
		}
	}
	return nil
}

// Get returns the value of key k, or "".
func (l EventLine) Get(k string) string {
	for _, kv := range l.Keys {
		if kv.K == k {
			return kv.V
		}
	}
	return ""
}

// object is one events2 object of a resource: its identity keys and its state keys.
type object struct {
	kind     string
	identity []KV
	state    []KV
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// objects lists a resource's events2 objects. With statistics, the counters too.
func objects(r *ResourceStatus, statistics bool) []object {
	susp := r.Suspended
	if susp == "" {
		susp = "no"
	}
	res := object{kind: "resource", identity: []KV{{"name", r.Name}},
		state: []KV{{"role", r.Role}, {"suspended", susp}}}
	dev := object{kind: "device", identity: []KV{{"name", r.Name}, {"volume", "0"}, {"minor", "0"}},
		state: []KV{{"disk", r.Disk}, {"client", "no"}, {"open", yesNo(r.Clients > 0)}, {"quorum", yesNo(r.Quorum)}}}
	if statistics {
		dev.state = append(dev.state, KV{"size", strconv.FormatInt(r.SizeBytes>>10, 10)},
			KV{"read", strconv.FormatInt(r.ReadBytes>>10, 10)}, KV{"written", strconv.FormatInt(r.WrittenBytes>>10, 10)})
	}
	out := []object{res, dev}
	// blockrep's own object: the promoter's service on this node.
	if s := r.Service; s != nil {
		step := s.Step
		if step == "" {
			step = "-"
		}
		out = append(out, object{kind: "service", identity: []KV{{"name", r.Name}, {"node", s.Node}},
			state: []KV{{"state", s.State}, {"step", step}, {"hold-off", yesNo(s.HoldOff)}}})
	}
	for _, p := range r.Peers {
		id := []KV{{"name", r.Name}, {"peer-node-id", strconv.Itoa(p.NodeID)}, {"conn-name", p.Node}}
		role := p.PeerRole
		if p.Connection != "Connected" {
			role = "Unknown"
		}
		conn := object{kind: "connection", identity: id, state: []KV{{"connection", p.Connection}, {"role", role}}}
		pd := object{kind: "peer-device", identity: append(append([]KV(nil), id...), KV{"volume", "0"}),
			state: []KV{{"replication", p.Replication}, {"peer-disk", p.PeerDisk}}}
		if strings.Contains(p.Replication, "Sync") {
			pd.state = append(pd.state, KV{"done", fmt.Sprintf("%.2f", p.SyncDonePercent)})
		}
		if statistics {
			pd.state = append(pd.state, KV{"out-of-sync", strconv.FormatInt(p.OutOfSyncBytes>>10, 10)},
				KV{"resync", strconv.FormatInt(p.ResyncBytes>>10, 10)})
		}
		out = append(out, conn, pd)
	}
	return out
}

func (o object) key() string {
	var b strings.Builder
	b.WriteString(o.kind)
	for _, kv := range o.identity {
		b.WriteString("|" + kv.V)
	}
	return b.String()
}

// ExistsLines is the initial dump of a resource: one exists line per object.
func ExistsLines(r *ResourceStatus, statistics bool, at time.Time) []EventLine {
	var out []EventLine
	for _, o := range objects(r, statistics) {
		out = append(out, EventLine{Time: at, Action: "exists", Object: o.kind, Keys: append(append([]KV(nil), o.identity...), o.state...)})
	}
	return out
}

// EndOfDump is the line after the initial dump.
func EndOfDump(at time.Time) EventLine { return EventLine{Time: at, Action: "exists", Object: "-"} }

// ChangeLines describes old → new: a change line per object whose state changed (the
// identity and the changed keys), create lines for objects that appeared, destroy lines
// for those that went (old or new may be nil: a resource brought up or down).
func ChangeLines(old, new *ResourceStatus, statistics bool, at time.Time) []EventLine {
	var before, after []object
	if old != nil {
		before = objects(old, statistics)
	}
	if new != nil {
		after = objects(new, statistics)
	}
	prev := map[string]object{}
	for _, o := range before {
		prev[o.key()] = o
	}
	var out []EventLine
	seen := map[string]bool{}
	for _, o := range after {
		seen[o.key()] = true
		p, ok := prev[o.key()]
		if !ok {
			out = append(out, EventLine{Time: at, Action: "create", Object: o.kind, Keys: append(append([]KV(nil), o.identity...), o.state...)})
			continue
		}
		var changed []KV
		for i, kv := range o.state {
			if i >= len(p.state) || p.state[i] != kv {
				changed = append(changed, kv)
			}
		}
		if len(changed) > 0 {
			out = append(out, EventLine{Time: at, Action: "change", Object: o.kind, Keys: append(append([]KV(nil), o.identity...), changed...)})
		}
	}
	for i := len(before) - 1; i >= 0; i-- {
		if o := before[i]; !seen[o.key()] {
			out = append(out, EventLine{Time: at, Action: "destroy", Object: o.kind, Keys: o.identity})
		}
	}
	return out
}
