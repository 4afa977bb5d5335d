package iscsi

import (
	"fmt"
	"strconv"
	"strings"
)

// Params are the operational parameters of a session, as negotiated at login (RFC 7143
// section 13). The zero value is not meaningful; defaultParams gives the RFC defaults
// that apply to a key nobody negotiates.
type Params struct {
	HeaderDigest string
	DataDigest   string
	// MaxRecvDataSegmentLength is what this initiator declared it accepts.
	MaxRecvDataSegmentLength uint32
	// TargetMaxRecvDataSegmentLength is what the target declared: every data segment we
	// send (immediate data, Data-Out, text) fits in it.
	TargetMaxRecvDataSegmentLength uint32
	MaxBurstLength                 uint32 // bytes of one solicited (R2T) sequence
	FirstBurstLength               uint32 // unsolicited bytes of one command
	InitialR2T                     bool   // no unsolicited Data-Out PDUs
	ImmediateData                  bool   // data may ride in the SCSI Command PDU
	MaxOutstandingR2T              uint32
	DataPDUInOrder                 bool
	DataSequenceInOrder            bool
	ErrorRecoveryLevel             uint32
	DefaultTime2Wait               uint32 // seconds to wait before reconnecting
	DefaultTime2Retain             uint32
	MaxConnections                 uint32
	TargetAlias                    string
	TargetPortalGroupTag           uint16
}

func defaultParams() Params {
	return Params{
		HeaderDigest:                   "None",
		DataDigest:                     "None",
		MaxRecvDataSegmentLength:       8192,
		TargetMaxRecvDataSegmentLength: 8192,
		MaxBurstLength:                 262144,
		FirstBurstLength:               65536,
		InitialR2T:                     true,
		ImmediateData:                  true,
		MaxOutstandingR2T:              1,
		DataPDUInOrder:                 true,
		DataSequenceInOrder:            true,
		ErrorRecoveryLevel:             0,
		DefaultTime2Wait:               2,
		DefaultTime2Retain:             20,
		MaxConnections:                 1,
	}
}

// keyKind is the result function of a negotiated key (RFC 7143 section 6.2).
type keyKind int

const (
	kindMin keyKind = iota
	kindMax
	kindOr
	kindAnd
	kindList
)

type keySpec struct {
	kind     keyKind
	lo, hi   uint64 // numeric range
	normal   bool   // session-wide key, irrelevant in discovery sessions
	get      func(*Params) string
	set      func(*Params, string) error
	declared bool // declarative (MaxRecvDataSegmentLength): no result function
}

func numKey(kind keyKind, lo, hi uint64, normal bool, f func(*Params) *uint32) keySpec {
	return keySpec{kind: kind, lo: lo, hi: hi, normal: normal,
		get: func(p *Params) string { return strconv.FormatUint(uint64(*f(p)), 10) },
		set: func(p *Params, v string) error {
			n, err := parseNumber(v)
			if err != nil || n < lo || n > hi {
				return fmt.Errorf("value %q out of range %d..%d", v, lo, hi)
			}
			*f(p) = uint32(n)
			return nil
		}}
}

func boolKey(kind keyKind, f func(*Params) *bool) keySpec {
	return keySpec{kind: kind, normal: true,
		get: func(p *Params) string { return yesNo(*f(p)) },
		set: func(p *Params, v string) error {
			b, err := parseBool(v)
			if err != nil {
				return err
			}
			*f(p) = b
			return nil
		}}
}

func digestKey(f func(*Params) *string) keySpec {
	return keySpec{kind: kindList,
		get: func(p *Params) string { return *f(p) },
		set: func(p *Params, v string) error {
			if v != "None" {
				return fmt.Errorf("digest %q not supported", v)
			}
			*f(p) = v
			return nil
		}}
}

var keySpecs = map[string]keySpec{
	"HeaderDigest":        digestKey(func(p *Params) *string { return &p.HeaderDigest }),
	"DataDigest":          digestKey(func(p *Params) *string { return &p.DataDigest }),
	"MaxConnections":      numKey(kindMin, 1, 65535, true, func(p *Params) *uint32 { return &p.MaxConnections }),
	"InitialR2T":          boolKey(kindOr, func(p *Params) *bool { return &p.InitialR2T }),
	"ImmediateData":       boolKey(kindAnd, func(p *Params) *bool { return &p.ImmediateData }),
	"MaxBurstLength":      numKey(kindMin, 512, 1<<24-1, true, func(p *Params) *uint32 { return &p.MaxBurstLength }),
	"FirstBurstLength":    numKey(kindMin, 512, 1<<24-1, true, func(p *Params) *uint32 { return &p.FirstBurstLength }),
	"DefaultTime2Wait":    numKey(kindMax, 0, 3600, true, func(p *Params) *uint32 { return &p.DefaultTime2Wait }),
	"DefaultTime2Retain":  numKey(kindMin, 0, 3600, true, func(p *Params) *uint32 { return &p.DefaultTime2Retain }),
	"MaxOutstandingR2T":   numKey(kindMin, 1, 65535, true, func(p *Params) *uint32 { return &p.MaxOutstandingR2T }),
	"DataPDUInOrder":      boolKey(kindOr, func(p *Params) *bool { return &p.DataPDUInOrder }),
	"DataSequenceInOrder": boolKey(kindOr, func(p *Params) *bool { return &p.DataSequenceInOrder }),
	"ErrorRecoveryLevel":  numKey(kindMin, 0, 2, true, func(p *Params) *uint32 { return &p.ErrorRecoveryLevel }),
}

// Keys that need no answer and do not change what we send.
var informational = map[string]bool{
	"TargetAlias": true, "TargetAddress": true, "TargetPortalGroupTag": true,
	"TargetName": true, "TargetRecvDataSegmentLength": true,
	// RFC 3720 markers, removed by RFC 7143; a target may still answer them.
	"OFMarker": true, "IFMarker": true, "OFMarkInt": true, "IFMarkInt": true,
}

// negotiation runs the operational-stage text negotiation for one login. It is pure:
// feed it the target's keys, send what it returns.
type negotiation struct {
	want      Params          // what we propose
	result    Params          // what holds after negotiation (defaults until answered)
	offered   map[string]bool // proposals of ours the target has not answered yet
	discovery bool
}

func newNegotiation(want Params, discovery bool) *negotiation {
	n := &negotiation{want: want, result: defaultParams(), offered: map[string]bool{}, discovery: discovery}
	// Declarative: our MaxRecvDataSegmentLength holds once sent.
	n.result.MaxRecvDataSegmentLength = want.MaxRecvDataSegmentLength
	return n
}

// offerOrder is the order proposals are sent in (the order is not significant to the
// protocol, only to people reading traces).
var offerOrder = []string{"HeaderDigest", "DataDigest", "MaxConnections", "InitialR2T",
	"ImmediateData", "MaxBurstLength", "FirstBurstLength", "DefaultTime2Wait",
	"DefaultTime2Retain", "MaxOutstandingR2T", "DataPDUInOrder", "DataSequenceInOrder",
	"ErrorRecoveryLevel"}

// proposals are the keys to send in the first operational-stage Login Request.
func (n *negotiation) proposals() []kv {
	var out []kv
	for _, k := range offerOrder {
		s := keySpecs[k]
		if n.discovery && s.normal {
			continue
		}
		out = append(out, kv{k, s.get(&n.want)})
		n.offered[k] = true
	}
	out = append(out, kv{"MaxRecvDataSegmentLength", strconv.FormatUint(uint64(n.want.MaxRecvDataSegmentLength), 10)})
	return out
}

// handle processes the keys of one Login Response and returns the keys to send back:
// answers to what the target proposed on its own.
func (n *negotiation) handle(keys []kv) ([]kv, error) {
	var reply []kv
	for _, p := range keys {
		k, v := p.k, p.v
		switch {
		case k == "MaxRecvDataSegmentLength":
			x, err := parseNumber(v)
			if err != nil || x < 512 || x > 1<<24-1 {
				return nil, fmt.Errorf("target declared MaxRecvDataSegmentLength=%q", v)
			}
			n.result.TargetMaxRecvDataSegmentLength = uint32(x)
			continue
		case k == "TargetAlias":
			n.result.TargetAlias = v
			continue
		case k == "TargetPortalGroupTag":
			if x, err := parseNumber(v); err == nil && x <= 0xffff {
				n.result.TargetPortalGroupTag = uint16(x)
			}
			continue
		case informational[k]:
			continue
		}
		spec, known := keySpecs[k]
		if !known {
			// A proposal we cannot interpret; answering NotUnderstood keeps the target's
			// default in force (section 6.2).
			if !isAnswerValue(v) {
				reply = append(reply, kv{k, "NotUnderstood"})
			}
			continue
		}
		if n.offered[k] {
			delete(n.offered, k)
			if isAnswerValue(v) {
				continue // Reject / Irrelevant / NotUnderstood: the default stays
			}
			if err := n.apply(k, spec, v); err != nil {
				return nil, fmt.Errorf("target answered %s=%s: %v", k, v, err)
			}
			continue
		}
		if isAnswerValue(v) {
			continue
		}
		// The target proposes a key we did not offer: answer with the result, which
		// then holds for both sides.
		if err := n.apply(k, spec, v); err != nil {
			if spec.kind == kindList {
				reply = append(reply, kv{k, "Reject"})
				continue
			}
			return nil, fmt.Errorf("target proposed %s=%s: %v", k, v, err)
		}
		reply = append(reply, kv{k, spec.get(&n.result)})
	}
	return reply, nil
}

func isAnswerValue(v string) bool {
	return v == "Reject" || v == "Irrelevant" || v == "NotUnderstood"
}

// apply combines our value of k with the target's v by the key's result function. For
// an answer to our proposal the target computed the same function; we recompute it so a
// target that answers out of range cannot make us exceed what we offered.
func (n *negotiation) apply(k string, spec keySpec, v string) error {
	var theirs Params = n.result
	switch spec.kind {
	case kindList:
		// The only value we offer or accept is None; a list from the target must
		// contain it.
		for _, item := range strings.Split(v, ",") {
			if item == "None" {
				return spec.set(&n.result, "None")
			}
		}
		return fmt.Errorf("no acceptable value in %q", v)
	}
	if err := spec.set(&theirs, v); err != nil {
		return err
	}
	ours, _ := parseNumberOrBool(spec.get(&n.want))
	th, _ := parseNumberOrBool(spec.get(&theirs))
	var res uint64
	switch spec.kind {
	case kindMin:
		res = min(ours, th)
	case kindMax:
		res = max(ours, th)
	case kindOr:
		res = ours | th
	case kindAnd:
		res = ours & th
	}
	if spec.kind == kindOr || spec.kind == kindAnd {
		return spec.set(&n.result, yesNo(res != 0))
	}
	return spec.set(&n.result, strconv.FormatUint(res, 10))
}

func parseNumberOrBool(v string) (uint64, error) {
	switch v {
	case "Yes":
		return 1, nil
	case "No":
		return 0, nil
	}
	return parseNumber(v)
}

// finish returns the negotiated parameters once the target has moved to full feature
// phase. Proposals it never answered keep their defaults; FirstBurstLength is clamped to
// MaxBurstLength as section 13.14 requires.
func (n *negotiation) finish() Params {
	p := n.result
	if p.FirstBurstLength > p.MaxBurstLength {
		p.FirstBurstLength = p.MaxBurstLength
	}
	return p
}
