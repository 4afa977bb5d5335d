package iscsi

import (
	"errors"
	"strings"
	"testing"
)

// scriptedTarget answers Login Requests from a list of steps; each step checks the
// request and builds the response.
type scriptedTarget struct {
	t     *testing.T
	steps []func(req *pdu, keys []kv) *pdu
	reqs  []*pdu
}

func (s *scriptedTarget) exchange(req *pdu) (*pdu, error) {
	s.reqs = append(s.reqs, req)
	if len(s.steps) == 0 {
		s.t.Fatalf("unexpected request %d", len(s.reqs))
	}
	keys, err := parseText(req.data)
	if err != nil {
		s.t.Fatal(err)
	}
	step := s.steps[0]
	s.steps = s.steps[1:]
	return step(req, keys), nil
}

// loginResp builds a Login Response; statSN counts up per response.
func loginResp(csg, nsg byte, transit, cont bool, class, detail byte, keys ...kv) *pdu {
	p := &pdu{data: encodeText(keys)}
	p.bhs[0] = byte(opLoginResp)
	p.bhs[1] = csg<<2 | nsg
	if transit {
		p.bhs[1] |= flagTransit
	}
	if cont {
		p.bhs[1] |= flagContinue
	}
	p.setU16(14, 0x1234)
	p.setU32(24, 100)
	p.setU32(28, 1)
	p.setU32(32, 32)
	p.bhs[36], p.bhs[37] = class, detail
	return p
}

func expect(t *testing.T, req *pdu, csg, nsg byte, transit bool, keys []kv, want ...kv) {
	t.Helper()
	if loginCSG(req) != csg || loginNSG(req) != nsg || (req.bhs[1]&flagTransit != 0) != transit {
		t.Fatalf("request stage %d->%d transit %v, want %d->%d %v", loginCSG(req), loginNSG(req), req.bhs[1]&flagTransit != 0, csg, nsg, transit)
	}
	if req.bhs[0] != byte(opLoginReq)|flagImmediate {
		t.Fatalf("byte 0 %#x: login requests are immediate", req.bhs[0])
	}
	for _, w := range want {
		if v, ok := lookup(keys, w.k); !ok || v != w.v {
			t.Fatalf("request keys %v lack %s=%s", keys, w.k, w.v)
		}
	}
}

func testLoginConfig() loginConfig {
	o := Options{}.withDefaults(nil)
	return loginConfig{initiatorName: "iqn.2024-01.test:init", targetName: "iqn.2024-01.test:tgt",
		isid: [6]byte{0x80, 1, 2, 3, 4, 5}, cmdSN: 1, want: o.want()}
}

func TestLoginWithoutAuthentication(t *testing.T) {
	tgt := &scriptedTarget{t: t}
	tgt.steps = []func(*pdu, []kv) *pdu{
		func(req *pdu, keys []kv) *pdu {
			expect(t, req, 0, 1, true, keys, kv{"InitiatorName", "iqn.2024-01.test:init"},
				kv{"SessionType", "Normal"}, kv{"TargetName", "iqn.2024-01.test:tgt"}, kv{"AuthMethod", "None"})
			if string(req.bhs[8:14]) != "\x80\x01\x02\x03\x04\x05" || req.u16(14) != 0 {
				t.Fatalf("ISID/TSIH % x", req.bhs[8:16])
			}
			return loginResp(0, 1, true, false, 0, 0, kv{"AuthMethod", "None"}, kv{"TargetPortalGroupTag", "1"})
		},
		func(req *pdu, keys []kv) *pdu {
			expect(t, req, 1, 3, true, keys, kv{"HeaderDigest", "None"}, kv{"ErrorRecoveryLevel", "0"},
				kv{"ImmediateData", "Yes"}, kv{"InitialR2T", "No"})
			if req.u32(28) != 101 {
				t.Fatalf("ExpStatSN %d, want the last StatSN + 1", req.u32(28))
			}
			return loginResp(1, 3, true, false, 0, 0, kv{"HeaderDigest", "None"}, kv{"DataDigest", "None"},
				kv{"InitialR2T", "Yes"}, kv{"ImmediateData", "Yes"}, kv{"MaxBurstLength", "262144"},
				kv{"FirstBurstLength", "65536"}, kv{"MaxRecvDataSegmentLength", "8192"}, kv{"ErrorRecoveryLevel", "0"})
		},
	}
	res, err := login(tgt, testLoginConfig())
	if err != nil {
		t.Fatal(err)
	}
	p := res.params
	if !p.InitialR2T || p.MaxBurstLength != 262144 || p.FirstBurstLength != 65536 || p.TargetMaxRecvDataSegmentLength != 8192 ||
		p.TargetPortalGroupTag != 1 || res.tsih != 0x1234 || res.expStatSN != 101 || res.maxCmdSN != 32 {
		t.Fatalf("%+v", res)
	}
}

func TestLoginCHAP(t *testing.T) {
	cfg := testLoginConfig()
	cfg.user, cfg.secret = "user", "secret"
	tgt := &scriptedTarget{t: t}
	tgt.steps = []func(*pdu, []kv) *pdu{
		func(req *pdu, keys []kv) *pdu {
			expect(t, req, 0, 1, true, keys, kv{"AuthMethod", "CHAP,None"})
			return loginResp(0, 1, false, false, 0, 0, kv{"AuthMethod", "CHAP"})
		},
		func(req *pdu, keys []kv) *pdu {
			expect(t, req, 0, 1, false, keys, kv{"CHAP_A", "5"})
			return loginResp(0, 1, false, false, 0, 0, kv{"CHAP_A", "5"}, kv{"CHAP_I", "42"}, kv{"CHAP_C", "0x0102030405060708"})
		},
		func(req *pdu, keys []kv) *pdu {
			expect(t, req, 0, 1, true, keys, kv{"CHAP_N", "user"}, kv{"CHAP_R", "0x0fcb39b8dbe0235c15c9f9ed09403d37"})
			return loginResp(0, 1, true, false, 0, 0)
		},
		func(req *pdu, keys []kv) *pdu {
			expect(t, req, 1, 3, true, keys)
			return loginResp(1, 3, true, false, 0, 0)
		},
	}
	if _, err := login(tgt, cfg); err != nil {
		t.Fatal(err)
	}
}

func TestLoginAnswersTargetProposalsAndContinuations(t *testing.T) {
	tgt := &scriptedTarget{t: t}
	tgt.steps = []func(*pdu, []kv) *pdu{
		func(req *pdu, keys []kv) *pdu { return loginResp(0, 1, true, false, 0, 0, kv{"AuthMethod", "None"}) },
		func(req *pdu, keys []kv) *pdu {
			// The answer arrives in two parts (C bit) and proposes a key of its own.
			p := loginResp(1, 3, false, true, 0, 0)
			p.data = []byte("MaxBurstLength=65536\x00Max")
			return p
		},
		func(req *pdu, keys []kv) *pdu {
			if len(req.data) != 0 || req.bhs[1]&flagTransit != 0 {
				t.Fatalf("continuation request must be empty and not transit: %q", req.data)
			}
			p := loginResp(1, 3, false, false, 0, 0)
			p.data = []byte("RecvDataSegmentLength=4096\x00X-vendor.key=1\x00")
			return p
		},
		func(req *pdu, keys []kv) *pdu {
			expect(t, req, 1, 3, true, keys, kv{"X-vendor.key", "NotUnderstood"})
			return loginResp(1, 3, true, false, 0, 0)
		},
	}
	res, err := login(tgt, testLoginConfig())
	if err != nil {
		t.Fatal(err)
	}
	if res.params.MaxBurstLength != 65536 || res.params.TargetMaxRecvDataSegmentLength != 4096 {
		t.Fatalf("%+v", res.params)
	}
}

func TestLoginFailures(t *testing.T) {
	tests := []struct {
		name  string
		creds bool
		resp  *pdu
		is    error
		msg   string
	}{
		{"wrong credentials", true, loginResp(0, 1, false, false, 2, 1), ErrAuthFailed, "authentication failed (login status 0201)"},
		{"target requires CHAP, none given", false, loginResp(0, 1, false, false, 0, 0, kv{"AuthMethod", "CHAP"}), ErrAuthFailed, "requires CHAP"},
		{"target requires CHAP and says so with 0201", false, loginResp(0, 1, false, false, 2, 1), ErrAuthFailed, "requires CHAP"},
		{"unknown target", false, loginResp(0, 1, false, false, 2, 3), ErrTargetNotFound, "target not found"},
		{"target out of resources", false, loginResp(0, 1, false, false, 3, 2), nil, "out of resources"},
		{"response in the wrong stage", false, loginResp(1, 3, true, false, 0, 0), ErrProtocol, "stage"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testLoginConfig()
			if tc.creds {
				cfg.user, cfg.secret = "u", "s"
			}
			tgt := &scriptedTarget{t: t, steps: []func(*pdu, []kv) *pdu{func(*pdu, []kv) *pdu { return tc.resp }}}
			_, err := login(tgt, cfg)
			if err == nil || (tc.is != nil && !errors.Is(err, tc.is)) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err %v, want %v mentioning %q", err, tc.is, tc.msg)
			}
		})
	}
	t.Run("redirection carries the new address", func(t *testing.T) {
		tgt := &scriptedTarget{t: t, steps: []func(*pdu, []kv) *pdu{func(*pdu, []kv) *pdu {
			return loginResp(0, 1, false, false, 1, 1, kv{"TargetAddress", "10.0.0.2:3261,1"})
		}}}
		_, err := login(tgt, testLoginConfig())
		var le *LoginError
		if !errors.As(err, &le) || le.Redirect != "10.0.0.2:3261,1" || !le.Temporary() {
			t.Fatalf("%v", err)
		}
		if got := redirectAddr(le.Redirect); got != "10.0.0.2:3261" {
			t.Fatalf("redirectAddr %q", got)
		}
	})
	t.Run("a target that never transits is given up on", func(t *testing.T) {
		tgt := &scriptedTarget{t: t}
		for i := 0; i < maxLoginRounds; i++ {
			tgt.steps = append(tgt.steps, func(*pdu, []kv) *pdu { return loginResp(0, 1, false, false, 0, 0) })
		}
		if _, err := login(tgt, testLoginConfig()); !errors.Is(err, ErrProtocol) {
			t.Fatalf("%v", err)
		}
	})
}
