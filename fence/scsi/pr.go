package scsi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ReservationType is the TYPE field of a persistent reservation (SPC-4 table 191).
type ReservationType byte

const (
	WriteExclusive                 ReservationType = 0x1
	ExclusiveAccess                ReservationType = 0x3
	WriteExclusiveRegistrantsOnly  ReservationType = 0x5
	ExclusiveAccessRegistrantsOnly ReservationType = 0x6
	WriteExclusiveAllRegistrants   ReservationType = 0x7
	ExclusiveAccessAllRegistrants  ReservationType = 0x8
)

var reservationTypeNames = map[ReservationType]string{
	WriteExclusive:                 "write-exclusive",
	ExclusiveAccess:                "exclusive-access",
	WriteExclusiveRegistrantsOnly:  "write-exclusive-registrants-only",
	ExclusiveAccessRegistrantsOnly: "exclusive-access-registrants-only",
	WriteExclusiveAllRegistrants:   "write-exclusive-all-registrants",
	ExclusiveAccessAllRegistrants:  "exclusive-access-all-registrants",
}

// Short names as sg_persist and fence_scsi operators write them.
var reservationTypeAliases = map[string]ReservationType{
	"we": WriteExclusive, "ea": ExclusiveAccess,
	"we-ro": WriteExclusiveRegistrantsOnly, "ea-ro": ExclusiveAccessRegistrantsOnly,
	"we-ar": WriteExclusiveAllRegistrants, "ea-ar": ExclusiveAccessAllRegistrants,
}

func (t ReservationType) String() string {
	if n, ok := reservationTypeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("reservation-type-%d", byte(t))
}

// Valid reports whether t is one of the six types SPC-4 defines.
func (t ReservationType) Valid() bool {
	_, ok := reservationTypeNames[t]
	return ok
}

// ParseReservationType accepts the names String returns ("write-exclusive",
// "write-exclusive-registrants-only", "exclusive-access", ...), the short forms "we",
// "we-ro", "ea-ar", ..., and the SPC type codes "1".."8".
func ParseReservationType(s string) (ReservationType, error) {
	k := strings.ToLower(strings.TrimSpace(s))
	k = strings.ReplaceAll(k, "_", "-")
	for t, n := range reservationTypeNames {
		if n == k {
			return t, nil
		}
	}
	if t, ok := reservationTypeAliases[k]; ok {
		return t, nil
	}
	if n, err := strconv.ParseUint(k, 0, 8); err == nil && ReservationType(n).Valid() {
		return ReservationType(n), nil
	}
	return 0, fmt.Errorf("scsi: unknown reservation type %q (want write-exclusive, exclusive-access, write-exclusive-registrants-only, exclusive-access-registrants-only, write-exclusive-all-registrants or exclusive-access-all-registrants)", s)
}

// MarshalText makes ReservationType usable in configuration files.
func (t ReservationType) MarshalText() ([]byte, error) {
	if !t.Valid() {
		return nil, fmt.Errorf("scsi: invalid reservation type %d", byte(t))
	}
	return []byte(t.String()), nil
}

// UnmarshalText parses with ParseReservationType.
func (t *ReservationType) UnmarshalText(b []byte) error {
	v, err := ParseReservationType(string(b))
	if err != nil {
		return err
	}
	*t = v
	return nil
}

// TruncatedError reports parameter data cut short by the allocation length: Need is the
// allocation length that would have returned all of it.
type TruncatedError struct {
	What string
	Need int
	Have int
}

func (e *TruncatedError) Error() string {
	return fmt.Sprintf("scsi: %s truncated: %d of %d bytes", e.What, e.Have, e.Need)
}

// ErrShortResponse reports parameter data shorter than its fixed header.
var ErrShortResponse = errors.New("scsi: response too short")

// Keys is the READ KEYS parameter data.
type Keys struct {
	Generation uint32 // PRGENERATION: bumped by every successful PROUT but RESERVE/RELEASE
	Keys       []uint64
}

// Has reports whether key is registered (on any I_T nexus).
func (k Keys) Has(key uint64) bool {
	for _, x := range k.Keys {
		if x == key {
			return true
		}
	}
	return false
}

// prinHeader checks the 8-byte PRGENERATION / ADDITIONAL LENGTH header common to READ
// KEYS, READ RESERVATION and READ FULL STATUS and returns the body.
func prinHeader(what string, b []byte) (gen uint32, body []byte, err error) {
	if len(b) < 8 {
		return 0, nil, fmt.Errorf("%s: %w (%d bytes)", what, ErrShortResponse, len(b))
	}
	gen = binary.BigEndian.Uint32(b[0:4])
	n := binary.BigEndian.Uint32(b[4:8])
	if uint64(n) > uint64(len(b)-8) {
		need := uint64(n) + 8
		if need > 1<<31 {
			need = 1 << 31
		}
		return gen, nil, &TruncatedError{What: what, Need: int(need), Have: len(b)}
	}
	return gen, b[8 : 8+n], nil
}

// ParseReadKeys decodes READ KEYS parameter data. A list cut short by the allocation
// length returns *TruncatedError.
func ParseReadKeys(b []byte) (Keys, error) {
	gen, body, err := prinHeader("READ KEYS", b)
	if err != nil {
		return Keys{Generation: gen}, err
	}
	k := Keys{Generation: gen}
	for len(body) >= 8 {
		k.Keys = append(k.Keys, binary.BigEndian.Uint64(body[:8]))
		body = body[8:]
	}
	if len(body) != 0 {
		return k, fmt.Errorf("scsi: READ KEYS: additional length not a multiple of 8")
	}
	return k, nil
}

// Reservation is the READ RESERVATION parameter data.
type Reservation struct {
	Generation uint32
	Reserved   bool // a persistent reservation exists; the fields below describe it
	Key        uint64
	Scope      byte
	Type       ReservationType
}

// ParseReadReservation decodes READ RESERVATION parameter data.
func ParseReadReservation(b []byte) (Reservation, error) {
	gen, body, err := prinHeader("READ RESERVATION", b)
	r := Reservation{Generation: gen}
	if err != nil {
		return r, err
	}
	if len(body) == 0 {
		return r, nil
	}
	if len(body) < 16 {
		return r, fmt.Errorf("scsi: READ RESERVATION: %w (descriptor of %d bytes)", ErrShortResponse, len(body))
	}
	r.Reserved = true
	r.Key = binary.BigEndian.Uint64(body[0:8])
	r.Scope = body[13] >> 4
	r.Type = ReservationType(body[13] & 0x0f)
	return r, nil
}

// Capabilities is the REPORT CAPABILITIES parameter data.
type Capabilities struct {
	RLRC  bool // REPLACE LOST RESERVATION supported
	CRH   bool // compatible reservation handling (SPC-2 RESERVE/RELEASE exceptions)
	SIPC  bool // SPEC_I_PT supported
	ATPC  bool // ALL_TG_PT supported
	PTPLC bool // persist through power loss supported
	TMV   bool // TypeMask is valid
	// AllowCommands says which commands pass a Write Exclusive / Exclusive Access
	// reservation (SPC-4 table 208).
	AllowCommands byte
	PTPLA         bool // persist through power loss is active
	// TypeMask is the PERSISTENT RESERVATION TYPE MASK (bytes 4-5); see Supports.
	TypeMask uint16
}

// Supports reports whether the device server supports reservation type t. Without a
// valid type mask it answers true: the device makes no claim either way.
func (c Capabilities) Supports(t ReservationType) bool {
	if !c.TMV {
		return true
	}
	var bit uint16
	switch t {
	case WriteExclusiveAllRegistrants:
		bit = 0x8000
	case ExclusiveAccessRegistrantsOnly:
		bit = 0x4000
	case WriteExclusiveRegistrantsOnly:
		bit = 0x2000
	case ExclusiveAccess:
		bit = 0x0800
	case WriteExclusive:
		bit = 0x0200
	case ExclusiveAccessAllRegistrants:
		bit = 0x0001
	default:
		return false
	}
	return c.TypeMask&bit != 0
}

// ParseReportCapabilities decodes REPORT CAPABILITIES parameter data (8 bytes).
func ParseReportCapabilities(b []byte) (Capabilities, error) {
	var c Capabilities
	if len(b) < 6 {
		return c, fmt.Errorf("scsi: REPORT CAPABILITIES: %w (%d bytes)", ErrShortResponse, len(b))
	}
	c.RLRC = b[2]&0x80 != 0
	c.CRH = b[2]&0x10 != 0
	c.SIPC = b[2]&0x08 != 0
	c.ATPC = b[2]&0x04 != 0
	c.PTPLC = b[2]&0x01 != 0
	c.TMV = b[3]&0x80 != 0
	c.AllowCommands = (b[3] >> 4) & 0x07
	c.PTPLA = b[3]&0x01 != 0
	c.TypeMask = binary.BigEndian.Uint16(b[4:6])
	return c, nil
}

// FullStatus is the READ FULL STATUS parameter data: one descriptor per registered
// I_T nexus.
type FullStatus struct {
	Generation    uint32
	Registrations []Registration
}

// Registration is one READ FULL STATUS descriptor.
type Registration struct {
	Key                uint64
	AllTgtPt           bool // registered on all target ports
	Holder             bool // R_HOLDER: this nexus holds the reservation
	Scope              byte // valid when Holder
	Type               ReservationType
	RelativeTargetPort uint16
	TransportID        TransportID
}

// ParseReadFullStatus decodes READ FULL STATUS parameter data.
func ParseReadFullStatus(b []byte) (FullStatus, error) {
	gen, body, err := prinHeader("READ FULL STATUS", b)
	fs := FullStatus{Generation: gen}
	if err != nil {
		return fs, err
	}
	for len(body) > 0 {
		if len(body) < 24 {
			return fs, fmt.Errorf("scsi: READ FULL STATUS: %w (descriptor of %d bytes)", ErrShortResponse, len(body))
		}
		r := Registration{
			Key:                binary.BigEndian.Uint64(body[0:8]),
			AllTgtPt:           body[12]&0x02 != 0,
			Holder:             body[12]&0x01 != 0,
			Scope:              body[13] >> 4,
			Type:               ReservationType(body[13] & 0x0f),
			RelativeTargetPort: binary.BigEndian.Uint16(body[18:20]),
		}
		n := binary.BigEndian.Uint32(body[20:24])
		if uint64(n) > uint64(len(body)-24) {
			return fs, fmt.Errorf("scsi: READ FULL STATUS: TransportID of %d bytes overruns the descriptor list", n)
		}
		tid, err := ParseTransportID(body[24 : 24+n])
		if err != nil {
			return fs, fmt.Errorf("scsi: READ FULL STATUS: %w", err)
		}
		r.TransportID = tid
		fs.Registrations = append(fs.Registrations, r)
		body = body[24+n:]
	}
	return fs, nil
}

// Protocol identifiers of TransportIDs (SPC-4 table 362).
const (
	ProtocolFC    = 0x0
	ProtocolSPI   = 0x1
	ProtocolSRP   = 0x4
	ProtocolISCSI = 0x5
	ProtocolSAS   = 0x6
)

// TransportID identifies an initiator port.
type TransportID struct {
	Protocol byte
	Format   byte
	// Name is the iSCSI name (iSCSI), or the port name / SAS address in hex (FC, SAS).
	Name string
	// ISID is the hex initiator session identifier of an iSCSI format-01 TransportID.
	ISID string
	Raw  []byte
}

func (t TransportID) String() string {
	if t.ISID != "" {
		return t.Name + ",i,0x" + t.ISID
	}
	return t.Name
}

// ParseTransportID decodes a TransportID; b is exactly the TransportID.
func ParseTransportID(b []byte) (TransportID, error) {
	if len(b) == 0 {
		return TransportID{}, nil
	}
	t := TransportID{Protocol: b[0] & 0x0f, Format: b[0] >> 6, Raw: b}
	switch t.Protocol {
	case ProtocolISCSI:
		if len(b) < 4 {
			return t, fmt.Errorf("iSCSI TransportID: %w", ErrShortResponse)
		}
		n := int(binary.BigEndian.Uint16(b[2:4]))
		if n > len(b)-4 {
			return t, fmt.Errorf("iSCSI TransportID: name length %d overruns %d bytes", n, len(b)-4)
		}
		name := b[4 : 4+n]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		s := string(name)
		if t.Format == 1 {
			if i := indexSeparator(s); i >= 0 {
				t.ISID = s[i+5:]
				s = s[:i]
			}
		}
		t.Name = s
	case ProtocolFC:
		if len(b) >= 16 {
			t.Name = fmt.Sprintf("%016x", binary.BigEndian.Uint64(b[8:16]))
		}
	case ProtocolSAS:
		if len(b) >= 12 {
			t.Name = fmt.Sprintf("%016x", binary.BigEndian.Uint64(b[4:12]))
		}
	}
	return t, nil
}

// indexSeparator finds ",i,0x" (any case) byte-wise: the name is not necessarily valid
// UTF-8, so lower-casing it first could move the offsets.
func indexSeparator(s string) int {
	for i := 0; i+5 <= len(s); i++ {
		if strings.EqualFold(s[i:i+5], ",i,0x") {
			return i
		}
	}
	return -1
}

// ISCSITransportID builds an iSCSI TransportID: format 00 (name only) when isid is
// empty, else format 01 (initiator port: name,i,0xISID). The name is NUL terminated and
// padded to a multiple of four bytes as SPC-4 requires.
func ISCSITransportID(name, isid string) []byte {
	s := name
	f := byte(0)
	if isid != "" {
		s += ",i,0x" + isid
		f = 1
	}
	n := len(s) + 1
	n = (n + 3) &^ 3
	if n < 20 {
		n = 20 // SPC-4: the ISCSI NAME field is at least 20 bytes
	}
	b := make([]byte, 4+n)
	b[0] = f<<6 | ProtocolISCSI
	binary.BigEndian.PutUint16(b[2:4], uint16(n))
	copy(b[4:], s)
	return b
}
