package scsi

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Capacity is the READ CAPACITY(16) parameter data.
type Capacity struct {
	LastLBA   uint64 // RETURNED LOGICAL BLOCK ADDRESS: the last addressable block
	BlockSize uint32 // LOGICAL BLOCK LENGTH IN BYTES
	// PhysicalExponent: 2^PhysicalExponent logical blocks per physical block.
	PhysicalExponent byte
	LowestAlignedLBA uint16
	ProtectionType   byte // 0 without protection information
	// LBPME: the LU is thin provisioned and supports unmapping (UNMAP / WRITE SAME).
	LBPME bool
	// LBPRZ: unmapped blocks read back as zeroes.
	LBPRZ bool
}

// Blocks is the number of logical blocks.
func (c Capacity) Blocks() uint64 { return c.LastLBA + 1 }

// Bytes is the capacity in bytes.
func (c Capacity) Bytes() uint64 { return c.Blocks() * uint64(c.BlockSize) }

// ParseReadCapacity16 decodes READ CAPACITY(16) parameter data (at least 32 bytes are
// defined; 12 are enough for the size).
func ParseReadCapacity16(b []byte) (Capacity, error) {
	var c Capacity
	if len(b) < 12 {
		return c, fmt.Errorf("scsi: READ CAPACITY(16): %w (%d bytes)", ErrShortResponse, len(b))
	}
	c.LastLBA = binary.BigEndian.Uint64(b[0:8])
	c.BlockSize = binary.BigEndian.Uint32(b[8:12])
	if len(b) >= 13 && b[12]&0x01 != 0 {
		c.ProtectionType = (b[12]>>1)&0x07 + 1
	}
	if len(b) >= 14 {
		c.PhysicalExponent = b[13] & 0x0f
	}
	if len(b) >= 16 {
		c.LBPME = b[14]&0x80 != 0
		c.LBPRZ = b[14]&0x40 != 0
		c.LowestAlignedLBA = binary.BigEndian.Uint16(b[14:16]) & 0x3fff
	}
	if c.BlockSize == 0 {
		return c, fmt.Errorf("scsi: READ CAPACITY(16): logical block length 0")
	}
	return c, nil
}

// Peripheral device types (SPC-4 table 138) blockrep meets.
const (
	DeviceTypeDisk     = 0x00
	DeviceTypeUnknown  = 0x1f
	QualifierConnected = 0x0
	// QualifierNotSupported: the device server cannot support a device on this LUN; the
	// LUN does not exist.
	QualifierNotSupported = 0x3
)

// InquiryData is the standard INQUIRY data.
type InquiryData struct {
	Qualifier  byte // PERIPHERAL QUALIFIER
	DeviceType byte // PERIPHERAL DEVICE TYPE
	Removable  bool
	Version    byte
	TPGS       byte // target port group support (ALUA)
	Protect    bool
	CmdQue     bool
	Vendor     string
	Product    string
	Revision   string
}

// Present reports whether a logical unit exists at the addressed LUN.
func (d InquiryData) Present() bool {
	return d.Qualifier != QualifierNotSupported && !(d.Qualifier == 0x1 && d.DeviceType == DeviceTypeUnknown)
}

// ParseInquiry decodes standard INQUIRY data (at least 36 bytes for the identification
// strings; 5 for the type).
func ParseInquiry(b []byte) (InquiryData, error) {
	var d InquiryData
	if len(b) < 5 {
		return d, fmt.Errorf("scsi: INQUIRY: %w (%d bytes)", ErrShortResponse, len(b))
	}
	d.Qualifier = b[0] >> 5
	d.DeviceType = b[0] & 0x1f
	d.Removable = b[1]&0x80 != 0
	d.Version = b[2]
	if len(b) >= 6 {
		d.TPGS = (b[5] >> 4) & 0x03
		d.Protect = b[5]&0x01 != 0
	}
	if len(b) >= 8 {
		d.CmdQue = b[7]&0x02 != 0
	}
	if len(b) >= 16 {
		d.Vendor = trimASCII(b[8:16])
	}
	if len(b) >= 32 {
		d.Product = trimASCII(b[16:32])
	}
	if len(b) >= 36 {
		d.Revision = trimASCII(b[32:36])
	}
	return d, nil
}

func trimASCII(b []byte) string {
	return string(bytes.TrimRight(bytes.TrimRight(b, "\x00"), " "))
}

// VPD page codes.
const (
	VPDSupportedPages = 0x00
	VPDUnitSerial     = 0x80
	VPDDeviceID       = 0x83
	VPDBlockLimits    = 0xB0
	VPDBlockDevChars  = 0xB1
	VPDProvisioning   = 0xB2
)

// vpdBody checks a VPD page header and returns the page body (after 4 bytes).
func vpdBody(page byte, b []byte) ([]byte, error) {
	if len(b) < 4 {
		return nil, fmt.Errorf("scsi: VPD page %02Xh: %w (%d bytes)", page, ErrShortResponse, len(b))
	}
	if b[1] != page {
		return nil, fmt.Errorf("scsi: VPD page %02Xh: got page %02Xh", page, b[1])
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	if n > len(b)-4 {
		return nil, &TruncatedError{What: fmt.Sprintf("VPD page %02Xh", page), Need: n + 4, Have: len(b)}
	}
	return b[4 : 4+n], nil
}

// ParseSupportedVPDPages decodes VPD page 00h.
func ParseSupportedVPDPages(b []byte) ([]byte, error) {
	body, err := vpdBody(VPDSupportedPages, b)
	return bytes.Clone(body), err
}

// BlockLimits is the Block Limits VPD page (B0h). Zero means "not reported / no limit".
type BlockLimits struct {
	MaxCompareAndWrite  byte
	OptimalGranularity  uint16 // blocks
	MaxTransfer         uint32 // blocks
	OptimalTransfer     uint32 // blocks
	MaxPrefetch         uint32
	MaxUnmapBlocks      uint32 // MAXIMUM UNMAP LBA COUNT
	MaxUnmapDescriptors uint32 // MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT
	UnmapGranularity    uint32 // OPTIMAL UNMAP GRANULARITY, blocks
	// UnmapAlignment is valid when UnmapAlignmentValid (UGAVALID).
	UnmapAlignmentValid bool
	UnmapAlignment      uint32
	MaxWriteSame        uint64
}

// ParseBlockLimits decodes the Block Limits VPD page; fields beyond a short page stay 0.
func ParseBlockLimits(b []byte) (BlockLimits, error) {
	var l BlockLimits
	body, err := vpdBody(VPDBlockLimits, b)
	if err != nil {
		return l, err
	}
	// u32 reads the 4-byte field at page offset p (body offset p-4); absent fields are 0.
	u32 := func(p int) uint32 {
		if p < 4 || p > len(body) {
			return 0
		}
		return binary.BigEndian.Uint32(body[p-4 : p])
	}
	if len(body) >= 2 {
		l.MaxCompareAndWrite = body[1]
	}
	if len(body) >= 4 {
		l.OptimalGranularity = binary.BigEndian.Uint16(body[2:4])
	}
	l.MaxTransfer = u32(8)
	l.OptimalTransfer = u32(12)
	l.MaxPrefetch = u32(16)
	l.MaxUnmapBlocks = u32(20)
	l.MaxUnmapDescriptors = u32(24)
	l.UnmapGranularity = u32(28)
	ua := u32(32)
	l.UnmapAlignmentValid = ua&0x80000000 != 0
	l.UnmapAlignment = ua & 0x7fffffff
	if len(body) >= 40 {
		l.MaxWriteSame = binary.BigEndian.Uint64(body[32:40])
	}
	return l, nil
}

// Provisioning is the Logical Block Provisioning VPD page (B2h).
type Provisioning struct {
	ThresholdExponent byte
	LBPU              bool // UNMAP supported
	LBPWS             bool // WRITE SAME(16) with UNMAP supported
	LBPWS10           bool
	LBPRZ             byte // 3 bits in SBC-4; non-zero: unmapped blocks read as zeroes
	ANCSUP            bool
	DP                bool
	ProvisioningType  byte // 0 full, 1 resource, 2 thin
}

// ParseProvisioning decodes the Logical Block Provisioning VPD page.
func ParseProvisioning(b []byte) (Provisioning, error) {
	var p Provisioning
	body, err := vpdBody(VPDProvisioning, b)
	if err != nil {
		return p, err
	}
	if len(body) < 4 {
		return p, fmt.Errorf("scsi: VPD page B2h: %w", ErrShortResponse)
	}
	p.ThresholdExponent = body[0]
	p.LBPU = body[1]&0x80 != 0
	p.LBPWS = body[1]&0x40 != 0
	p.LBPWS10 = body[1]&0x20 != 0
	p.LBPRZ = (body[1] >> 2) & 0x07
	p.ANCSUP = body[1]&0x02 != 0
	p.DP = body[2]&0x01 != 0
	p.ProvisioningType = body[3] & 0x07
	return p, nil
}

// ParseReportLUNs decodes REPORT LUNS parameter data into LUN numbers (peripheral and
// flat addressing; other methods are returned as the raw 64-bit LUN).
func ParseReportLUNs(b []byte) ([]uint64, error) {
	if len(b) < 8 {
		return nil, fmt.Errorf("scsi: REPORT LUNS: %w (%d bytes)", ErrShortResponse, len(b))
	}
	n := binary.BigEndian.Uint32(b[0:4])
	body := b[8:]
	if uint64(n) > uint64(len(body)) {
		return nil, &TruncatedError{What: "REPORT LUNS", Need: int(min(uint64(n)+8, 1<<31)), Have: len(b)}
	}
	body = body[:n]
	var luns []uint64
	for len(body) >= 8 {
		luns = append(luns, DecodeLUN(body[:8]))
		body = body[8:]
	}
	return luns, nil
}

// DecodeLUN decodes an 8-byte SAM LUN: peripheral (00b) and flat (01b) single level
// addressing give the plain number; anything else is returned as the raw value.
func DecodeLUN(b []byte) uint64 {
	raw := binary.BigEndian.Uint64(b)
	if raw&0x0000ffffffffffff != 0 {
		return raw
	}
	switch b[0] >> 6 {
	case 0:
		return uint64(b[1])
	case 1:
		return uint64(b[0]&0x3f)<<8 | uint64(b[1])
	}
	return raw
}

// EncodeLUN encodes a LUN for the iSCSI / SAM 8-byte field: peripheral addressing below
// 256, flat addressing up to 16383.
func EncodeLUN(lun uint64) [8]byte {
	var b [8]byte
	switch {
	case lun < 256:
		b[1] = byte(lun)
	case lun < 1<<14:
		b[0] = 0x40 | byte(lun>>8)
		b[1] = byte(lun)
	default:
		binary.BigEndian.PutUint64(b[:], lun)
	}
	return b
}
