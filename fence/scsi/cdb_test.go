package scsi

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"
)

// h decodes a hex string with spaces, the way SPC tables are easiest to transcribe.
func h(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(strings.ReplaceAll(s, " ", ""), "\n", ""))
	if err != nil {
		panic(err)
	}
	return b
}

func TestCDBLayouts(t *testing.T) {
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{"TEST UNIT READY is six zero bytes", TestUnitReady(), "00 00 00 00 00 00"},
		{"REQUEST SENSE carries the allocation length in byte 4", RequestSense(252), "03 00 00 00 fc 00"},
		{"standard INQUIRY has EVPD 0 and page 0", Inquiry(false, 0, 96), "12 00 00 00 60 00"},
		{"VPD INQUIRY sets EVPD and the page code", Inquiry(true, VPDBlockLimits, 0x1000), "12 01 b0 10 00 00"},
		{"REPORT LUNS allocation length in bytes 6-9", ReportLUNs(0x10008), "a0 00 00 00 00 00 00 01 00 08 00 00"},
		{"READ CAPACITY(16) is SERVICE ACTION IN 9Eh/10h", ReadCapacity16(32),
			"9e 10 00 00 00 00 00 00 00 00 00 00 00 20 00 00"},
		{"READ(16) LBA in bytes 2-9, length in 10-13", Read16(0x0102030405060708, 0x11223344, false),
			"88 00 01 02 03 04 05 06 07 08 11 22 33 44 00 00"},
		{"READ(16) FUA is byte 1 bit 3", Read16(1, 1, true),
			"88 08 00 00 00 00 00 00 00 01 00 00 00 01 00 00"},
		{"WRITE(16) without FUA", Write16(0xfffffffffffffffe, 8, false),
			"8a 00 ff ff ff ff ff ff ff fe 00 00 00 08 00 00"},
		{"WRITE(16) FUA is byte 1 bit 3", Write16(2048, 256, true),
			"8a 08 00 00 00 00 00 00 08 00 00 00 01 00 00 00"},
		{"SYNCHRONIZE CACHE(16) of the whole medium", SynchronizeCache16(0, 0, false),
			"91 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"},
		{"SYNCHRONIZE CACHE(16) IMMED is byte 1 bit 1", SynchronizeCache16(16, 8, true),
			"91 02 00 00 00 00 00 00 00 10 00 00 00 08 00 00"},
		{"UNMAP parameter list length in bytes 7-8", Unmap(40), "42 00 00 00 00 00 00 00 28 00"},
		{"PRIN READ KEYS", PersistentReserveIn(PRInReadKeys, 1024), "5e 00 00 00 00 00 00 04 00 00"},
		{"PRIN READ RESERVATION", PersistentReserveIn(PRInReadReservation, 24), "5e 01 00 00 00 00 00 00 18 00"},
		{"PRIN REPORT CAPABILITIES", PersistentReserveIn(PRInReportCapabilities, 8), "5e 02 00 00 00 00 00 00 08 00"},
		{"PRIN READ FULL STATUS", PersistentReserveIn(PRInReadFullStatus, 0xffff), "5e 03 00 00 00 00 00 ff ff 00"},
		{"PROUT REGISTER ignores type, list length 24 in bytes 5-8", PersistentReserveOut(PROutRegister, ScopeLU, 0, 24),
			"5f 00 00 00 00 00 00 00 18 00"},
		{"PROUT RESERVE Write Exclusive", PersistentReserveOut(PROutReserve, ScopeLU, WriteExclusive, 24),
			"5f 01 01 00 00 00 00 00 18 00"},
		{"PROUT RELEASE Exclusive Access", PersistentReserveOut(PROutRelease, ScopeLU, ExclusiveAccess, 24),
			"5f 02 03 00 00 00 00 00 18 00"},
		{"PROUT CLEAR", PersistentReserveOut(PROutClear, ScopeLU, 0, 24), "5f 03 00 00 00 00 00 00 18 00"},
		{"PROUT PREEMPT WE-RO", PersistentReserveOut(PROutPreempt, ScopeLU, WriteExclusiveRegistrantsOnly, 24),
			"5f 04 05 00 00 00 00 00 18 00"},
		{"PROUT PREEMPT AND ABORT EA-RO", PersistentReserveOut(PROutPreemptAndAbort, ScopeLU, ExclusiveAccessRegistrantsOnly, 24),
			"5f 05 06 00 00 00 00 00 18 00"},
		{"PROUT REGISTER AND IGNORE EXISTING KEY", PersistentReserveOut(PROutRegisterAndIgnoreExisting, ScopeLU, 0, 24),
			"5f 06 00 00 00 00 00 00 18 00"},
		{"PROUT REGISTER AND MOVE WE-AR with a longer list", PersistentReserveOut(PROutRegisterAndMove, ScopeLU, WriteExclusiveAllRegistrants, 0x34),
			"5f 07 07 00 00 00 00 00 34 00"},
		{"PROUT scope sits in the high nibble of byte 2", PersistentReserveOut(PROutReserve, 0x2, ExclusiveAccessAllRegistrants, 24),
			"5f 01 28 00 00 00 00 00 18 00"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if want := h(tc.want); !bytes.Equal(tc.got, want) {
				t.Fatalf("got  % x\nwant % x", tc.got, want)
			}
		})
	}
}

func TestPROutParameterLists(t *testing.T) {
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{"REGISTER: key 0, new key in the service action key",
			PROutParams{ServiceKey: 0x1122334455667788}.Marshal(),
			"0000000000000000 1122334455667788 00000000 00 00 00 00"},
		{"PREEMPT: own key and victim key",
			PROutParams{Key: 0xabc, ServiceKey: 0xdef}.Marshal(),
			"0000000000000abc 0000000000000def 00000000 00 00 00 00"},
		{"APTPL is byte 20 bit 0, ALL_TG_PT bit 2",
			PROutParams{Key: 1, APTPL: true, AllTgtPt: true}.Marshal(),
			"0000000000000001 0000000000000000 00000000 05 00 00 00"},
		{"SPEC_I_PT is byte 20 bit 3 and appends the TransportID list",
			PROutParams{ServiceKey: 2, SpecIPT: true, TransportIDs: [][]byte{{0x05, 0, 0, 4, 'a', 0, 0, 0}}}.Marshal(),
			"0000000000000000 0000000000000002 00000000 08 00 00 00 00000008 05000004 61000000"},
		{"REGISTER AND MOVE: UNREG bit 1 and APTPL bit 0 of byte 17, port, TransportID length",
			RegisterAndMoveParams{Key: 3, ServiceKey: 4, Unreg: true, APTPL: true, RelativeTargetPort: 0x0102,
				TransportID: []byte{0x05, 0, 0, 4, 'b', 0, 0, 0}}.Marshal(),
			"0000000000000003 0000000000000004 00 03 0102 00000008 05000004 62000000"},
		{"UNMAP parameter list: data length n-2, descriptor length n-8",
			UnmapParams([]UnmapDescriptor{{LBA: 0x10, Blocks: 0x20}, {LBA: 0x100000000, Blocks: 1}}),
			"0026 0020 00000000 0000000000000010 00000020 00000000 0000000100000000 00000001 00000000"},
		{"iSCSI TransportID format 00 is NUL terminated, padded to 4, at least 20 bytes",
			ISCSITransportID("iqn.x", ""),
			"05 00 0014 69716e2e78 00 0000000000000000000000000000"},
		{"iSCSI TransportID format 01 carries ,i,0x and the ISID",
			ISCSITransportID("iqn.2024-01.a:b", "23d000000001"),
			"45 00 0024 69716e2e323032342d30312e613a62 2c692c3078 323364303030303030303031 00 000000"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if want := h(tc.want); !bytes.Equal(tc.got, want) {
				t.Fatalf("got  % x\nwant % x", tc.got, want)
			}
		})
	}
}

func TestReservationTypeNames(t *testing.T) {
	tests := []struct {
		in   string
		want ReservationType
	}{
		{"write-exclusive", WriteExclusive},
		{"exclusive-access", ExclusiveAccess},
		{"write-exclusive-registrants-only", WriteExclusiveRegistrantsOnly},
		{"Exclusive_Access_Registrants_Only", ExclusiveAccessRegistrantsOnly},
		{"write-exclusive-all-registrants", WriteExclusiveAllRegistrants},
		{"exclusive-access-all-registrants", ExclusiveAccessAllRegistrants},
		{"we-ro", WriteExclusiveRegistrantsOnly},
		{"5", WriteExclusiveRegistrantsOnly},
		{"0x8", ExclusiveAccessAllRegistrants},
	}
	for _, tc := range tests {
		got, err := ParseReservationType(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseReservationType(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		if back, err := ParseReservationType(got.String()); err != nil || back != got {
			t.Errorf("String/Parse round trip of %v failed: %v %v", got, back, err)
		}
	}
	for _, bad := range []string{"", "2", "4", "write", "exclusive"} {
		if _, err := ParseReservationType(bad); err == nil {
			t.Errorf("ParseReservationType(%q) accepted", bad)
		}
	}
	var rt ReservationType
	if err := rt.UnmarshalText([]byte("write-exclusive")); err != nil || rt != WriteExclusive {
		t.Fatalf("UnmarshalText: %v %v", rt, err)
	}
	if _, err := ReservationType(2).MarshalText(); err == nil {
		t.Fatal("MarshalText of an undefined type succeeded")
	}
}
