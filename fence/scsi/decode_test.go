package scsi

import (
	"errors"
	"reflect"
	"testing"
)

func TestParseSense(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Sense
	}{
		{"fixed current UNIT ATTENTION power on reset",
			"70 00 06 00000000 0a 00000000 29 00 00 000000",
			Sense{ResponseCode: 0x70, Key: SenseUnitAttention, ASC: 0x29}},
		{"fixed with VALID information and sense key specific field pointer",
			"f0 00 05 00001234 0a 00000000 24 00 00 c0 0002",
			Sense{ResponseCode: 0x70, Key: SenseIllegalRequest, ASC: 0x24, InfoValid: true, Information: 0x1234,
				SKSV: true, SenseKeySpecific: [3]byte{0x40, 0x00, 0x02}}},
		{"fixed deferred error",
			"71 00 03 00000000 0a 00000000 0c 00 00 000000",
			Sense{ResponseCode: 0x71, Deferred: true, Key: SenseMediumError, ASC: 0x0c}},
		{"fixed cut short after the ASC/ASCQ still decodes",
			"70 00 06 00000000 0a 00000000 2a 03",
			Sense{ResponseCode: 0x70, Key: SenseUnitAttention, ASC: 0x2a, ASCQ: 0x03}},
		{"fixed additional length bounds the fields",
			"70 00 06 00000000 04 00000000 2a 03",
			Sense{ResponseCode: 0x70, Key: SenseUnitAttention}},
		{"descriptor format ILLEGAL REQUEST with information descriptor",
			"72 05 21 00 000000 0c 00 0a 80 00 0000000000001000",
			Sense{ResponseCode: 0x72, Key: SenseIllegalRequest, ASC: 0x21, InfoValid: true, Information: 0x1000,
				Descriptors: []SenseDescriptor{{Type: 0, Data: h("80 00 0000000000001000")}}}},
		{"descriptor deferred, no descriptors",
			"73 06 2a 05 000000 00",
			Sense{ResponseCode: 0x73, Deferred: true, Key: SenseUnitAttention, ASC: 0x2a, ASCQ: 0x05}},
		{"descriptor sense key specific and FRU descriptors",
			"72 05 24 00 000000 0c 02 06 0000 c0 0003 00 03 02 00 07",
			Sense{ResponseCode: 0x72, Key: SenseIllegalRequest, ASC: 0x24, SKSV: true,
				SenseKeySpecific: [3]byte{0x40, 0x00, 0x03}, FRU: 7,
				Descriptors: []SenseDescriptor{{Type: 2, Data: h("0000 c0 0003 00")}, {Type: 3, Data: h("00 07")}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSense(h(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
	for _, bad := range []string{"", "70 00", "7f 00 00", "00 00 06"} {
		if _, err := ParseSense(h(bad)); err == nil {
			t.Errorf("ParseSense(%s) accepted", bad)
		}
	}
}

func TestResultErr(t *testing.T) {
	ua := Result{Status: StatusCheckCondition, Sense: h("70 00 06 00000000 0a 00000000 2a 03 00 000000")}
	err := ua.Err()
	var cc *CheckCondition
	if !errors.As(err, &cc) || !cc.IsUnitAttention() || cc.IsIllegalRequest() {
		t.Fatalf("UNIT ATTENTION decoded as %v", err)
	}
	if !errors.Is(err, ASCReservationsPreempted) || errors.Is(err, ASCPowerOnReset) {
		t.Fatalf("ASC matching wrong for %v", err)
	}
	if got := err.Error(); got != "scsi: CHECK CONDITION: UNIT ATTENTION 2A/03 (reservations preempted)" {
		t.Fatalf("message %q", got)
	}
	if err := (Result{Status: StatusReservationConflict}).Err(); !errors.Is(err, ErrReservationConflict) {
		t.Fatalf("RESERVATION CONFLICT gave %v", err)
	}
	if err := (Result{Status: StatusGood}).Err(); err != nil {
		t.Fatalf("GOOD gave %v", err)
	}
	var se *StatusError
	if err := (Result{Status: StatusBusy}).Err(); !errors.As(err, &se) || !se.Temporary() {
		t.Fatalf("BUSY gave %v", err)
	}
	if err := (Result{Status: StatusCheckCondition}).Err(); err == nil {
		t.Fatal("CHECK CONDITION without sense read as success")
	}
}

func TestParsePRIn(t *testing.T) {
	t.Run("READ KEYS lists keys with the generation", func(t *testing.T) {
		k, err := ParseReadKeys(h("00000007 00000010 0000000000000abc 0000000000000def"))
		if err != nil {
			t.Fatal(err)
		}
		if k.Generation != 7 || !reflect.DeepEqual(k.Keys, []uint64{0xabc, 0xdef}) || !k.Has(0xdef) || k.Has(1) {
			t.Fatalf("%+v", k)
		}
	})
	t.Run("READ KEYS without registrations", func(t *testing.T) {
		k, err := ParseReadKeys(h("00000001 00000000"))
		if err != nil || k.Generation != 1 || len(k.Keys) != 0 {
			t.Fatalf("%+v %v", k, err)
		}
	})
	t.Run("READ KEYS truncated by the allocation length asks for more", func(t *testing.T) {
		_, err := ParseReadKeys(h("00000001 00000018 0000000000000001"))
		var te *TruncatedError
		if !errors.As(err, &te) || te.Need != 32 {
			t.Fatalf("%v", err)
		}
	})
	t.Run("READ RESERVATION with a WE-RO reservation", func(t *testing.T) {
		r, err := ParseReadReservation(h("00000003 00000010 0000000000000abc 00000000 00 05 0000"))
		if err != nil {
			t.Fatal(err)
		}
		want := Reservation{Generation: 3, Reserved: true, Key: 0xabc, Type: WriteExclusiveRegistrantsOnly}
		if r != want {
			t.Fatalf("%+v", r)
		}
	})
	t.Run("READ RESERVATION without a reservation", func(t *testing.T) {
		r, err := ParseReadReservation(h("00000003 00000000"))
		if err != nil || r.Reserved {
			t.Fatalf("%+v %v", r, err)
		}
	})
	t.Run("REPORT CAPABILITIES bits", func(t *testing.T) {
		c, err := ParseReportCapabilities(h("0008 9d 91 ea 01 0000"))
		if err != nil {
			t.Fatal(err)
		}
		want := Capabilities{RLRC: true, CRH: true, SIPC: true, ATPC: true, PTPLC: true, TMV: true,
			AllowCommands: 1, PTPLA: true, TypeMask: 0xea01}
		if c != want {
			t.Fatalf("%+v", c)
		}
		for _, typ := range []ReservationType{1, 3, 5, 6, 7, 8} {
			if !c.Supports(typ) {
				t.Errorf("type %v not supported", typ)
			}
		}
		c.TypeMask = 0x2000
		if !c.Supports(WriteExclusiveRegistrantsOnly) || c.Supports(WriteExclusive) {
			t.Error("type mask bits misplaced")
		}
	})
	t.Run("READ FULL STATUS with an iSCSI holder and a second registrant", func(t *testing.T) {
		tid1 := ISCSITransportID("iqn.a", "400001")
		tid2 := ISCSITransportID("iqn.b", "")
		b := h("00000009 00000000")
		d1 := append(h("0000000000000001 00000000 01 05 00000000 0001"), be32(len(tid1))...)
		d2 := append(h("0000000000000002 00000000 02 00 00000000 0002"), be32(len(tid2))...)
		body := append(append(append(d1, tid1...), d2...), tid2...)
		copy(b[4:8], be32(len(body)))
		b = append(b, body...)
		fs, err := ParseReadFullStatus(b)
		if err != nil {
			t.Fatal(err)
		}
		if fs.Generation != 9 || len(fs.Registrations) != 2 {
			t.Fatalf("%+v", fs)
		}
		r0, r1 := fs.Registrations[0], fs.Registrations[1]
		if r0.Key != 1 || !r0.Holder || r0.Type != WriteExclusiveRegistrantsOnly || r0.RelativeTargetPort != 1 ||
			r0.TransportID.Name != "iqn.a" || r0.TransportID.ISID != "400001" || r0.TransportID.Protocol != ProtocolISCSI {
			t.Fatalf("first descriptor %+v", r0)
		}
		if r1.Key != 2 || r1.Holder || !r1.AllTgtPt || r1.TransportID.Name != "iqn.b" || r1.TransportID.String() != "iqn.b" {
			t.Fatalf("second descriptor %+v", r1)
		}
	})
	t.Run("READ FULL STATUS descriptor overrunning the list is an error", func(t *testing.T) {
		if _, err := ParseReadFullStatus(h("00000001 00000018 0000000000000001 00000000 00 00 00000000 0001 00000010")); err == nil {
			t.Fatal("accepted")
		}
	})
}

func be32(n int) []byte { return []byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)} }

func TestParseSBC(t *testing.T) {
	t.Run("READ CAPACITY(16) with thin provisioning", func(t *testing.T) {
		c, err := ParseReadCapacity16(h("00000000001fffff 00000200 00 03 c0 08" + "0000000000000000 0000000000000000"))
		if err != nil {
			t.Fatal(err)
		}
		want := Capacity{LastLBA: 0x1fffff, BlockSize: 512, PhysicalExponent: 3, LBPME: true, LBPRZ: true, LowestAlignedLBA: 8}
		if c != want || c.Bytes() != 1<<30 {
			t.Fatalf("%+v", c)
		}
	})
	t.Run("READ CAPACITY(16) with block length 0 is an error", func(t *testing.T) {
		if _, err := ParseReadCapacity16(h("0000000000000001 00000000")); err == nil {
			t.Fatal("accepted")
		}
	})
	t.Run("standard INQUIRY of a disk", func(t *testing.T) {
		d, err := ParseInquiry(append(h("00 00 05 02 1f 00 00 02"), "IET     VIRTUAL-DISK    0001"...))
		if err != nil {
			t.Fatal(err)
		}
		if !d.Present() || d.DeviceType != DeviceTypeDisk || d.Vendor != "IET" || d.Product != "VIRTUAL-DISK" || d.Revision != "0001" || !d.CmdQue {
			t.Fatalf("%+v", d)
		}
	})
	t.Run("INQUIRY of a missing LUN has qualifier 011b", func(t *testing.T) {
		d, err := ParseInquiry(h("7f 00 05 02 1f"))
		if err != nil || d.Present() {
			t.Fatalf("%+v %v", d, err)
		}
	})
	t.Run("Block Limits VPD", func(t *testing.T) {
		l, err := ParseBlockLimits(h("00 b0 003c 00 01 0008 00004000 00000800 00000000 00010000 00000040 00000008 80000000 0000000000001000" + "0000000000000000 0000000000000000 00000000"))
		if err != nil {
			t.Fatal(err)
		}
		want := BlockLimits{MaxCompareAndWrite: 1, OptimalGranularity: 8, MaxTransfer: 0x4000, OptimalTransfer: 0x800,
			MaxUnmapBlocks: 0x10000, MaxUnmapDescriptors: 0x40, UnmapGranularity: 8, UnmapAlignmentValid: true, MaxWriteSame: 0x1000}
		if l != want {
			t.Fatalf("got  %+v\nwant %+v", l, want)
		}
	})
	t.Run("short Block Limits VPD leaves later fields zero", func(t *testing.T) {
		l, err := ParseBlockLimits(h("00 b0 0008 00 00 0000 00000100"))
		if err != nil || l.MaxTransfer != 0x100 || l.MaxUnmapBlocks != 0 {
			t.Fatalf("%+v %v", l, err)
		}
	})
	t.Run("Logical Block Provisioning VPD", func(t *testing.T) {
		p, err := ParseProvisioning(h("00 b2 0004 00 e4 00 02"))
		if err != nil {
			t.Fatal(err)
		}
		want := Provisioning{LBPU: true, LBPWS: true, LBPWS10: true, LBPRZ: 1, ProvisioningType: 2}
		if p != want {
			t.Fatalf("%+v", p)
		}
	})
	t.Run("VPD page code mismatch is an error", func(t *testing.T) {
		if _, err := ParseProvisioning(h("00 b0 0004 00 00 00 00")); err == nil {
			t.Fatal("accepted")
		}
	})
	t.Run("REPORT LUNS with peripheral and flat addressing", func(t *testing.T) {
		luns, err := ParseReportLUNs(h("00000018 00000000 0000000000000000 0001000000000000 4123000000000000"))
		if err != nil || !reflect.DeepEqual(luns, []uint64{0, 1, 0x123}) {
			t.Fatalf("%v %v", luns, err)
		}
		for _, l := range []uint64{0, 1, 255, 256, 0x3fff} {
			b := EncodeLUN(l)
			if DecodeLUN(b[:]) != l {
				t.Errorf("LUN %d round trip gave %d", l, DecodeLUN(b[:]))
			}
		}
	})
}
