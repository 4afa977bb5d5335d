package iscsi

import (
	"bytes"
	"testing"

	"github.com/blockrep/blockrep/fence/scsi"
)

// FuzzPDU feeds arbitrary bytes to the PDU reader and to every decoder the session
// applies to target PDUs: nothing a target sends may panic the initiator, and whatever
// reads as a PDU must marshal back to the same bytes. Seeds are in
// testdata/fuzz/FuzzPDU.
func FuzzPDU(f *testing.F) {
	for _, p := range seedPDUs() {
		f.Add(p.marshal())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := readPDU(bytes.NewReader(b), 1<<16)
		if err != nil {
			return
		}
		wire := p.marshal()
		q, err := readPDU(bytes.NewReader(wire), 1<<16)
		if err != nil || q.bhs != p.bhs || !bytes.Equal(q.ahs, p.ahs) || !bytes.Equal(q.data, p.data) {
			t.Fatalf("round trip: %v", err)
		}
		if !bytes.Equal(wire, b[:len(wire)]) && pad4(len(p.data)) == 0 {
			t.Fatalf("marshal differs from the input")
		}
		_ = p.op().String()
		switch p.op() {
		case opLoginResp:
			if _, err := decodeLoginResponse(p); err == nil {
				if kvs, err := parseText(p.data); err == nil {
					n := newNegotiation(Options{}.withDefaults(nil).want(), false)
					n.proposals()
					n.handle(kvs)
					_ = n.finish()
					chapAnswer(kvs, "user", "secret")
				}
			}
		case opSCSIResp:
			if r, err := decodeSCSIResponse(p); err == nil {
				if len(r.sense) > len(p.data) {
					t.Fatal("sense longer than the data segment")
				}
				res := scsi.Result{Status: scsi.Status(r.status), Sense: r.sense, Residual: r.residual}
				if err := res.Err(); err != nil {
					_ = err.Error()
				}
			}
		case opDataIn:
			decodeDataIn(p)
		case opR2T:
			decodeR2T(p)
		case opTextResp:
			parseText(p.data)
		case opReject:
			_ = (&RejectError{Reason: p.bhs[2]}).Error()
		}
	})
}

// seedPDUs are one PDU of each kind a target sends, shaped like tgtd's.
func seedPDUs() []*pdu {
	var out []*pdu
	lr := &pdu{data: encodeText([]kv{{"AuthMethod", "CHAP"}, {"CHAP_A", "5"}, {"CHAP_I", "7"}, {"CHAP_C", "0x00112233"}, {"TargetPortalGroupTag", "1"}})}
	lr.bhs[0] = byte(opLoginResp)
	lr.bhs[1] = 0x01
	out = append(out, lr)

	op := &pdu{data: encodeText([]kv{{"MaxRecvDataSegmentLength", "8192"}, {"MaxBurstLength", "262144"}, {"InitialR2T", "Yes"}, {"X-x", "y"}})}
	op.bhs[0] = byte(opLoginResp)
	op.bhs[1] = flagTransit | 1<<2 | 3
	out = append(out, op)

	sr := &pdu{data: append([]byte{0, 18}, 0x70, 0, 6, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x2a, 3, 0, 0, 0, 0)}
	sr.bhs[0] = byte(opSCSIResp)
	sr.bhs[1] = flagFinal | flagUnderflow
	sr.bhs[3] = 0x02
	sr.setU32(44, 512)
	out = append(out, sr)

	di := &pdu{data: bytes.Repeat([]byte{0xab}, 100)}
	di.bhs[0] = byte(opDataIn)
	di.bhs[1] = flagFinal | flagStatus
	di.setU32(40, 4096)
	out = append(out, di)

	r2 := &pdu{}
	r2.bhs[0] = byte(opR2T)
	r2.bhs[1] = flagFinal
	r2.setU32(20, 9)
	r2.setU32(44, 262144)
	out = append(out, r2)

	nop := &pdu{}
	nop.bhs[0] = byte(opNOPIn)
	nop.bhs[1] = flagFinal
	nop.setU32(16, reservedTag)
	nop.setU32(20, 0x55)
	out = append(out, nop)

	txt := &pdu{data: encodeText([]kv{{"TargetName", "iqn.2024-01.t:a"}, {"TargetAddress", "127.0.0.1:3260,1"}})}
	txt.bhs[0] = byte(opTextResp)
	txt.bhs[1] = flagFinal
	out = append(out, txt)

	rej := &pdu{data: make([]byte, 48)}
	rej.bhs[0] = byte(opReject)
	rej.bhs[1] = flagFinal
	rej.bhs[2] = 0x09
	out = append(out, rej)

	as := &pdu{ahs: []byte{0, 4, 0, 0}}
	as.bhs[0] = byte(opAsync)
	as.bhs[1] = flagFinal
	as.bhs[36] = 1
	out = append(out, as)
	return out
}
