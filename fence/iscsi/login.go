package iscsi

import (
	"errors"
	"fmt"
)

// loginConfig is what one login needs.
type loginConfig struct {
	initiatorName string
	targetName    string // empty for a discovery session
	isid          [6]byte
	tsih          uint16 // 0: new session (reinstating one with the same ISID)
	cid           uint16
	cmdSN         uint32 // initial CmdSN
	user, secret  string
	want          Params
}

// loginResult is the state a successful login leaves behind.
type loginResult struct {
	params    Params
	tsih      uint16
	expStatSN uint32
	expCmdSN  uint32
	maxCmdSN  uint32
}

// exchanger sends a Login (or Text) Request and returns the next PDU from the target.
// login is written against it so the state machine can be tested without a socket.
type exchanger interface {
	exchange(req *pdu) (*pdu, error)
}

// loginITT tags every PDU of a login; any value works since no other task exists yet.
const loginITT = 0

// maxLoginRounds bounds the request/response rounds of a login: a target that keeps
// answering without transiting must not keep us forever.
const maxLoginRounds = 32

// login runs the login phase (RFC 7143 section 6.3): security negotiation (AuthMethod,
// CHAP), operational negotiation, and the transition to full feature phase.
func login(x exchanger, cfg loginConfig) (*loginResult, error) {
	discovery := cfg.targetName == ""
	neg := newNegotiation(cfg.want, discovery)
	expStatSN := uint32(0)

	// Security stage first, always: a target that requires CHAP rejects a login that
	// starts in the operational stage.
	stage := byte(stageSecurity)
	keys := []kv{{"InitiatorName", cfg.initiatorName}}
	if discovery {
		keys = append(keys, kv{"SessionType", "Discovery"})
	} else {
		keys = append(keys, kv{"SessionType", "Normal"}, kv{"TargetName", cfg.targetName})
	}
	chap := cfg.user != ""
	if chap {
		keys = append(keys, kv{"AuthMethod", "CHAP,None"})
	} else {
		keys = append(keys, kv{"AuthMethod", "None"})
	}
	transit := true // ask to move on; the target holds us back while it authenticates
	authState := "offered"
	var pending []byte // text of a response split with the C bit

	for round := 0; round < maxLoginRounds; round++ {
		nsg := byte(stageOperational)
		if stage == stageOperational {
			nsg = stageFullFeature
		}
		req := loginRequest(cfg, stage, nsg, transit, expStatSN, encodeText(keys))
		resp, err := x.exchange(req)
		if err != nil {
			return nil, err
		}
		lr, err := decodeLoginResponse(resp)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		if lr.class != 0 {
			le := &LoginError{Class: lr.class, Detail: lr.detail}
			if lr.class == 1 {
				if kvs, err := parseText(resp.data); err == nil {
					le.Redirect, _ = lookup(kvs, "TargetAddress")
				}
			}
			if lr.class == 2 && lr.detail == 1 && !chap {
				return nil, fmt.Errorf("%w: the target requires CHAP and no credentials were given", le)
			}
			return nil, le
		}
		expStatSN = lr.statSN + 1
		if lr.versionActive != 0 {
			return nil, fmt.Errorf("%w: target chose iSCSI version %d", ErrProtocol, lr.versionActive)
		}
		if lr.csg != stage {
			return nil, fmt.Errorf("%w: Login Response for stage %d, we are in stage %d", ErrProtocol, lr.csg, stage)
		}
		pending = append(pending, resp.data...)
		if lr.cont {
			// More text follows: ask for it with an empty request in the same stage.
			keys, transit = nil, false
			continue
		}
		got, err := parseText(pending)
		pending = nil
		if err != nil {
			return nil, fmt.Errorf("%w: login text: %v", ErrProtocol, err)
		}

		if stage == stageSecurity {
			// TargetPortalGroupTag and TargetAlias arrive here; the rest of the
			// security text is for the authentication below.
			var info []kv
			for _, p := range got {
				if informational[p.k] {
					info = append(info, p)
				}
			}
			if _, err := neg.handle(info); err != nil {
				return nil, fmt.Errorf("%w: %v", ErrProtocol, err)
			}
			keys, transit = nil, false
			switch am, _ := lookup(got, "AuthMethod"); {
			case am == "CHAP" && authState == "offered":
				if !chap {
					return nil, fmt.Errorf("%w: the target requires CHAP and no credentials were given", ErrAuthFailed)
				}
				keys = []kv{{"CHAP_A", chapMD5}}
				authState = "algorithm"
			case am == "None" && authState == "offered":
				authState = "done"
			case am == "Reject":
				return nil, fmt.Errorf("%w: the target rejected AuthMethod (it allows none of: %s)", ErrAuthFailed, map[bool]string{true: "CHAP, None", false: "None"}[chap])
			case authState == "algorithm":
				ans, err := chapAnswer(got, cfg.user, cfg.secret)
				if err != nil {
					return nil, fmt.Errorf("%w: %v", ErrAuthFailed, err)
				}
				keys = ans
				authState = "done"
			}
			if lr.transit {
				if lr.nsg != stageOperational && lr.nsg != stageFullFeature {
					return nil, fmt.Errorf("%w: target transits to stage %d", ErrProtocol, lr.nsg)
				}
				if authState != "done" {
					return nil, fmt.Errorf("%w: target left the security stage before authentication finished", ErrProtocol)
				}
				if lr.nsg == stageFullFeature {
					return finishLogin(neg, lr, expStatSN), nil
				}
				stage = stageOperational
				keys, transit = neg.proposals(), true
				continue
			}
			if authState == "done" {
				transit = true // CHAP answered or no authentication: ask to move on
			}
			continue
		}

		// Operational stage.
		reply, err := neg.handle(got)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		if lr.transit && lr.nsg == stageFullFeature {
			if len(reply) > 0 {
				return nil, fmt.Errorf("%w: target transited while proposing %v", ErrProtocol, reply)
			}
			return finishLogin(neg, lr, expStatSN), nil
		}
		keys, transit = reply, true
	}
	return nil, fmt.Errorf("%w: login did not finish in %d rounds", ErrProtocol, maxLoginRounds)
}

func finishLogin(neg *negotiation, lr loginResponse, expStatSN uint32) *loginResult {
	return &loginResult{
		params:    neg.finish(),
		tsih:      lr.tsih,
		expStatSN: expStatSN,
		expCmdSN:  lr.expCmdSN,
		maxCmdSN:  lr.maxCmdSN,
	}
}

func loginRequest(cfg loginConfig, csg, nsg byte, transit bool, expStatSN uint32, text []byte) *pdu {
	p := &pdu{data: text}
	p.bhs[0] = byte(opLoginReq) | flagImmediate // login requests are always immediate
	p.bhs[1] = csg<<2 | nsg
	if transit {
		p.bhs[1] |= flagTransit
	}
	p.bhs[2], p.bhs[3] = 0, 0 // version max, min
	copy(p.bhs[8:14], cfg.isid[:])
	p.setU16(14, cfg.tsih)
	p.setU32(16, loginITT)
	p.setU16(20, cfg.cid)
	p.setU32(24, cfg.cmdSN)
	p.setU32(28, expStatSN)
	return p
}

var errLoginTimeout = errors.New("login timed out")
