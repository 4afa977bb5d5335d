package scsi

import (
	"encoding/binary"
	"errors"
	"testing"
)

// The decoders read responses from devices we do not control; each fuzz target checks
// that no input panics and that what is decoded stays within the input. Seed corpora are
// in testdata/fuzz/<FuzzName>.

func FuzzParseSense(f *testing.F) {
	f.Add(h("70 00 06 00000000 0a 00000000 29 00 00 000000"))
	f.Add(h("72 05 21 00 000000 0c 00 0a 80 00 0000000000001000"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSense(b)
		if err != nil {
			return
		}
		_ = s.String()
		for _, d := range s.Descriptors {
			if len(d.Data) > len(b) {
				t.Fatal("descriptor longer than the input")
			}
		}
		if s.Key > 0xf {
			t.Fatalf("sense key %d", s.Key)
		}
		cc := &CheckCondition{Sense: s, Raw: b}
		_ = cc.Error()
		if cc.IsUnitAttention() != (s.Key == SenseUnitAttention) {
			t.Fatal("IsUnitAttention disagrees with the sense key")
		}
		_ = errors.Is(cc, ASCReservationsPreempted)
	})
}

func FuzzParseReadKeys(f *testing.F) {
	f.Add(h("00000007 00000010 0000000000000abc 0000000000000def"))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParseReadKeys(b)
		if err != nil {
			return
		}
		if n := binary.BigEndian.Uint32(b[4:8]); uint64(len(k.Keys))*8 != uint64(n) {
			t.Fatalf("%d keys for additional length %d", len(k.Keys), n)
		}
	})
}

func FuzzParseReadReservation(f *testing.F) {
	f.Add(h("00000003 00000010 0000000000000abc 00000000 00 05 0000"))
	f.Add(h("00000003 00000000"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseReadReservation(b)
		if err == nil && r.Reserved && r.Type > 0xf {
			t.Fatalf("type %d", r.Type)
		}
		_ = r.Type.String()
	})
}

func FuzzParseReportCapabilities(f *testing.F) {
	f.Add(h("0008 9d 91 ea 01 0000"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseReportCapabilities(b)
		if err != nil {
			return
		}
		for typ := ReservationType(0); typ < 16; typ++ {
			_ = c.Supports(typ)
		}
	})
}

func FuzzParseReadFullStatus(f *testing.F) {
	tid := ISCSITransportID("iqn.a", "400001")
	d := append(h("0000000000000001 00000000 01 05 00000000 0001"), be32(len(tid))...)
	d = append(d, tid...)
	f.Add(append(append(h("00000009"), be32(len(d))...), d...))
	f.Fuzz(func(t *testing.T, b []byte) {
		fs, err := ParseReadFullStatus(b)
		if err != nil {
			return
		}
		total := 8
		for _, r := range fs.Registrations {
			total += 24 + len(r.TransportID.Raw)
			_ = r.TransportID.String()
		}
		if total > len(b) {
			t.Fatalf("decoded %d bytes from %d", total, len(b))
		}
	})
}

func FuzzParseTransportID(f *testing.F) {
	f.Add(ISCSITransportID("iqn.2024-01.a:b", "23d000000001"))
	f.Add(ISCSITransportID("iqn.x", ""))
	f.Add(h("00 00 0000 0000000000000000 2100001b32123456 0000000000000000"))
	f.Fuzz(func(t *testing.T, b []byte) {
		tid, err := ParseTransportID(b)
		if err != nil {
			return
		}
		if tid.Protocol == ProtocolISCSI && tid.Format == 0 && tid.Name != "" && !containsNUL(tid.Name) {
			// A decoded format-00 name re-encodes to something that decodes the same.
			back, err := ParseTransportID(ISCSITransportID(tid.Name, ""))
			if err != nil || back.Name != tid.Name {
				t.Fatalf("round trip of %q gave %q, %v", tid.Name, back.Name, err)
			}
		}
	})
}

func containsNUL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return true
		}
	}
	return false
}

func FuzzParseSBC(f *testing.F) {
	f.Add(byte(0), h("00000000001fffff 00000200 00 03 c0 08 0000000000000000 0000000000000000"))
	f.Add(byte(1), append(h("00 00 05 02 1f 00 00 02"), "IET     VIRTUAL-DISK    0001"...))
	f.Add(byte(2), h("00 b0 003c 00 01 0008 00004000 00000800 00000000 00010000 00000040 00000008 80000000 0000000000001000 0000000000000000 0000000000000000 00000000"))
	f.Add(byte(3), h("00 b2 0004 00 e4 00 02"))
	f.Add(byte(4), h("00000018 00000000 0000000000000000 0001000000000000 4123000000000000"))
	f.Add(byte(5), h("00 00 0003 00 b0 b2"))
	f.Fuzz(func(t *testing.T, which byte, b []byte) {
		switch which % 6 {
		case 0:
			if c, err := ParseReadCapacity16(b); err == nil && c.BlockSize == 0 {
				t.Fatal("block size 0 accepted")
			}
		case 1:
			d, _ := ParseInquiry(b)
			_ = d.Present()
		case 2:
			_, _ = ParseBlockLimits(b)
		case 3:
			_, _ = ParseProvisioning(b)
		case 4:
			luns, err := ParseReportLUNs(b)
			if err == nil && 8+8*len(luns) > len(b) {
				t.Fatal("more LUNs than bytes")
			}
		case 5:
			_, _ = ParseSupportedVPDPages(b)
		}
	})
}
