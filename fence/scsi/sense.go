package scsi

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// SenseKey is the SENSE KEY field of sense data (SPC-4 table 28).
type SenseKey byte

const (
	SenseNoSense        SenseKey = 0x0
	SenseRecoveredError SenseKey = 0x1
	SenseNotReady       SenseKey = 0x2
	SenseMediumError    SenseKey = 0x3
	SenseHardwareError  SenseKey = 0x4
	SenseIllegalRequest SenseKey = 0x5
	SenseUnitAttention  SenseKey = 0x6
	SenseDataProtect    SenseKey = 0x7
	SenseBlankCheck     SenseKey = 0x8
	SenseVendorSpecific SenseKey = 0x9
	SenseCopyAborted    SenseKey = 0xA
	SenseAbortedCommand SenseKey = 0xB
	SenseVolumeOverflow SenseKey = 0xD
	SenseMiscompare     SenseKey = 0xE
	SenseCompleted      SenseKey = 0xF
)

var senseKeyNames = [16]string{
	"NO SENSE", "RECOVERED ERROR", "NOT READY", "MEDIUM ERROR", "HARDWARE ERROR",
	"ILLEGAL REQUEST", "UNIT ATTENTION", "DATA PROTECT", "BLANK CHECK", "VENDOR SPECIFIC",
	"COPY ABORTED", "ABORTED COMMAND", "sense key 0xC", "VOLUME OVERFLOW", "MISCOMPARE",
	"COMPLETED",
}

func (k SenseKey) String() string {
	if int(k) < len(senseKeyNames) {
		return senseKeyNames[k]
	}
	return fmt.Sprintf("sense key 0x%x", byte(k))
}

// Sense is decoded sense data, from either the fixed (70h/71h) or the descriptor
// (72h/73h) format.
type Sense struct {
	ResponseCode byte // 0x70, 0x71, 0x72 or 0x73
	Deferred     bool // the error belongs to an earlier command (71h/73h)
	Key          SenseKey
	ASC, ASCQ    byte

	// InfoValid says Information holds the INFORMATION field (often the failing LBA).
	InfoValid   bool
	Information uint64
	CommandInfo uint64 // COMMAND-SPECIFIC INFORMATION
	// SKSV says SenseKeySpecific holds the SENSE KEY SPECIFIC field (for ILLEGAL REQUEST
	// the field pointer of the offending byte).
	SKSV             bool
	SenseKeySpecific [3]byte
	FRU              byte
	Filemark, EOM    bool
	ILI              bool

	// Descriptors are the sense data descriptors of the descriptor format, raw.
	Descriptors []SenseDescriptor
}

// SenseDescriptor is one descriptor of descriptor-format sense data.
type SenseDescriptor struct {
	Type byte
	Data []byte // the bytes after the two-byte descriptor header
}

// ErrShortSense reports sense data too short to hold a sense key.
var ErrShortSense = errors.New("scsi: sense data too short")

// ParseSense decodes fixed or descriptor format sense data. It tolerates sense data cut
// short by the transport (the additional length may claim more than is present): the
// fields present are decoded, the absent ones stay zero.
func ParseSense(b []byte) (Sense, error) {
	var s Sense
	if len(b) < 1 {
		return s, ErrShortSense
	}
	s.ResponseCode = b[0] & 0x7f
	switch s.ResponseCode {
	case 0x70, 0x71:
		return parseFixedSense(b, s)
	case 0x72, 0x73:
		return parseDescriptorSense(b, s)
	}
	return s, fmt.Errorf("scsi: unknown sense response code 0x%02x", b[0])
}

func parseFixedSense(b []byte, s Sense) (Sense, error) {
	if len(b) < 3 {
		return s, ErrShortSense
	}
	s.Deferred = s.ResponseCode == 0x71
	s.InfoValid = b[0]&0x80 != 0
	s.Filemark = b[2]&0x80 != 0
	s.EOM = b[2]&0x40 != 0
	s.ILI = b[2]&0x20 != 0
	s.Key = SenseKey(b[2] & 0x0f)
	// The fields after byte 7 are covered by ADDITIONAL SENSE LENGTH; bound by it too so
	// garbage past the end of the sense data is not decoded.
	end := len(b)
	if len(b) >= 8 {
		if n := 8 + int(b[7]); n < end {
			end = n
		}
	}
	b = b[:end]
	if len(b) >= 7 {
		s.Information = uint64(binary.BigEndian.Uint32(b[3:7]))
	} else {
		s.InfoValid = false
	}
	if len(b) >= 12 {
		s.CommandInfo = uint64(binary.BigEndian.Uint32(b[8:12]))
	}
	if len(b) >= 13 {
		s.ASC = b[12]
	}
	if len(b) >= 14 {
		s.ASCQ = b[13]
	}
	if len(b) >= 15 {
		s.FRU = b[14]
	}
	if len(b) >= 18 {
		s.SKSV = b[15]&0x80 != 0
		copy(s.SenseKeySpecific[:], b[15:18])
		s.SenseKeySpecific[0] &= 0x7f
	}
	return s, nil
}

func parseDescriptorSense(b []byte, s Sense) (Sense, error) {
	if len(b) < 2 {
		return s, ErrShortSense
	}
	s.Deferred = s.ResponseCode == 0x73
	s.Key = SenseKey(b[1] & 0x0f)
	if len(b) >= 3 {
		s.ASC = b[2]
	}
	if len(b) >= 4 {
		s.ASCQ = b[3]
	}
	if len(b) < 8 {
		return s, nil
	}
	end := 8 + int(b[7])
	if end > len(b) {
		end = len(b)
	}
	d := b[8:end]
	for len(d) >= 2 {
		typ, n := d[0], int(d[1])
		if 2+n > len(d) {
			n = len(d) - 2 // truncated by the transport: keep what is there
		}
		body := d[2 : 2+n]
		s.Descriptors = append(s.Descriptors, SenseDescriptor{Type: typ, Data: body})
		switch typ {
		case 0x00: // information
			if len(body) >= 10 {
				s.InfoValid = body[0]&0x80 != 0
				s.Information = binary.BigEndian.Uint64(body[2:10])
			}
		case 0x01: // command-specific information
			if len(body) >= 10 {
				s.CommandInfo = binary.BigEndian.Uint64(body[2:10])
			}
		case 0x02: // sense key specific
			if len(body) >= 5 {
				s.SKSV = body[2]&0x80 != 0
				copy(s.SenseKeySpecific[:], body[2:5])
				s.SenseKeySpecific[0] &= 0x7f
			}
		case 0x03: // field replaceable unit
			if len(body) >= 2 {
				s.FRU = body[1]
			}
		case 0x04: // stream commands
			if len(body) >= 2 {
				s.Filemark = body[1]&0x80 != 0
				s.EOM = body[1]&0x40 != 0
				s.ILI = body[1]&0x20 != 0
			}
		case 0x05: // block commands
			if len(body) >= 2 {
				s.ILI = body[1]&0x20 != 0
			}
		}
		d = d[2+n:]
	}
	return s, nil
}

// String renders the sense as "UNIT ATTENTION 2A/03 (reservations preempted)".
func (s Sense) String() string {
	t := fmt.Sprintf("%s %02X/%02X", s.Key, s.ASC, s.ASCQ)
	if d := ascText(s.ASC, s.ASCQ); d != "" {
		t += " (" + d + ")"
	}
	if s.Deferred {
		t += " deferred"
	}
	return t
}

// Is reports whether the sense carries the given additional sense code.
func (s Sense) Is(asc, ascq byte) bool { return s.ASC == asc && s.ASCQ == ascq }

// ascText describes the additional sense codes a block initiator meets; the full table
// is in SPC-4 annex D.
func ascText(asc, ascq byte) string {
	switch uint16(asc)<<8 | uint16(ascq) {
	case 0x0000:
		return "no additional sense information"
	case 0x0401:
		return "logical unit is in process of becoming ready"
	case 0x0402:
		return "initializing command required"
	case 0x0403:
		return "manual intervention required"
	case 0x0C00:
		return "write error"
	case 0x1100:
		return "unrecovered read error"
	case 0x1A00:
		return "parameter list length error"
	case 0x2000:
		return "invalid command operation code"
	case 0x2100:
		return "logical block address out of range"
	case 0x2400:
		return "invalid field in CDB"
	case 0x2500:
		return "logical unit not supported"
	case 0x2600:
		return "invalid field in parameter list"
	case 0x2700:
		return "write protected"
	case 0x2707:
		return "space allocation failed write protect"
	case 0x2800:
		return "not ready to ready change, medium may have changed"
	case 0x2900:
		return "power on, reset, or bus device reset occurred"
	case 0x2901:
		return "power on occurred"
	case 0x2902:
		return "SCSI bus reset occurred"
	case 0x2903:
		return "bus device reset function occurred"
	case 0x2904:
		return "device internal reset"
	case 0x2907:
		return "I_T nexus loss occurred"
	case 0x2A01:
		return "mode parameters changed"
	case 0x2A03:
		return "reservations preempted"
	case 0x2A04:
		return "reservations released"
	case 0x2A05:
		return "registrations preempted"
	case 0x2A09:
		return "capacity data has changed"
	case 0x2C00:
		return "command sequence error"
	case 0x3A00:
		return "medium not present"
	case 0x3F0E:
		return "reported LUNs data has changed"
	case 0x4700:
		return "SCSI parity error"
	case 0x4B00:
		return "data phase error"
	case 0x5500:
		return "system resource failure"
	case 0x5503:
		return "insufficient resources"
	}
	return ""
}
