package iscsi

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Target is one target a portal reported through SendTargets.
type Target struct {
	Name string
	// Portals are TargetAddress values: "host:port,portal-group-tag".
	Portals []string
}

// Discover runs a discovery session (RFC 7143 section 4.3, SendTargets=All) on addr
// ("host", "host:port" or "iscsi://host:port") and returns the targets the portal
// offers. Options are optional; CHAP credentials apply to the discovery login.
func Discover(ctx context.Context, addr string, opts ...Options) ([]Target, error) {
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	o = o.withDefaults(nil)
	addr = strings.TrimSuffix(strings.TrimPrefix(addr, "iscsi://"), "/")
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(strings.Trim(addr, "[]"), strconv.Itoa(DefaultPort))
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	fail := func(err error) ([]Target, error) {
		return nil, fmt.Errorf("iscsi: discovery at %s: %w", addr, err)
	}
	nc, err := o.Dialer(ctx, "tcp", addr)
	if err != nil {
		return fail(err)
	}
	defer nc.Close()
	isid := o.ISID
	if isid == 0 {
		isid = DeriveISID(o.InitiatorName + " discovery")
	}
	cfg := loginConfig{initiatorName: o.InitiatorName, cmdSN: 1, user: o.User, secret: o.Secret, want: o.want()}
	for i := range cfg.isid {
		cfg.isid[i] = byte(isid >> (8 * (5 - i)))
	}
	res, err := loginOn(ctx, nc, cfg, o.Timeout)
	if err != nil {
		return fail(err)
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	x := syncExchanger{nc}
	cmdSN, expStatSN := res.expCmdSN, res.expStatSN
	const itt = 1
	var text []byte
	ttt := uint32(reservedTag)
	body := encodeText([]kv{{"SendTargets", "All"}})
	for round := 0; ; round++ {
		if round > 64 {
			return fail(fmt.Errorf("%w: SendTargets answer never ends", ErrProtocol))
		}
		req := &pdu{data: body}
		req.bhs[0] = byte(opTextReq)
		req.bhs[1] = flagFinal
		req.setU32(16, itt)
		req.setU32(20, ttt)
		req.setU32(24, cmdSN)
		req.setU32(28, expStatSN)
		cmdSN++
		resp, err := x.exchange(req)
		if err != nil {
			return fail(err)
		}
		if resp.op() == opReject {
			return fail(&RejectError{Reason: resp.bhs[2]})
		}
		if resp.op() != opTextResp {
			return fail(fmt.Errorf("%w: expected Text Response, got %v", ErrProtocol, resp.op()))
		}
		expStatSN = resp.statSN() + 1
		text = append(text, resp.data...)
		if resp.flags()&flagContinue == 0 {
			break
		}
		// More to come: an empty Text Request with the target's transfer tag asks for it.
		ttt, body = resp.u32(20), nil
	}
	kvs, err := parseText(text)
	if err != nil {
		return fail(fmt.Errorf("%w: %v", ErrProtocol, err))
	}
	var targets []Target
	for _, p := range kvs {
		switch p.k {
		case "TargetName":
			targets = append(targets, Target{Name: p.v})
		case "TargetAddress":
			if len(targets) > 0 {
				targets[len(targets)-1].Portals = append(targets[len(targets)-1].Portals, p.v)
			}
		}
	}
	// Log out politely; the answer does not matter.
	lo := &pdu{}
	lo.bhs[0] = byte(opLogoutReq) | flagImmediate
	lo.bhs[1] = flagFinal
	lo.setU32(16, itt+1)
	lo.setU32(24, cmdSN)
	lo.setU32(28, expStatSN)
	x.exchange(lo)
	return targets, nil
}
