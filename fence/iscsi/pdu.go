package iscsi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// PDU layouts are those of RFC 7143 section 11. Every PDU starts with a 48-byte Basic
// Header Segment (BHS), optionally followed by Additional Header Segments (AHS, in
// 4-byte words) and a data segment padded to a multiple of 4. Digests are never
// negotiated here (HeaderDigest=None, DataDigest=None).

const bhsLen = 48

type opcode byte

// Initiator opcodes.
const (
	opNOPOut     opcode = 0x00
	opSCSICmd    opcode = 0x01
	opTaskMgmt   opcode = 0x02
	opLoginReq   opcode = 0x03
	opTextReq    opcode = 0x04
	opDataOut    opcode = 0x05
	opLogoutReq  opcode = 0x06
	opSNACK      opcode = 0x10
	opNOPIn      opcode = 0x20
	opSCSIResp   opcode = 0x21
	opTaskResp   opcode = 0x22
	opLoginResp  opcode = 0x23
	opTextResp   opcode = 0x24
	opDataIn     opcode = 0x25
	opLogoutResp opcode = 0x26
	opR2T        opcode = 0x31
	opAsync      opcode = 0x32
	opReject     opcode = 0x3f
)

var opNames = map[opcode]string{
	opNOPOut: "NOP-Out", opSCSICmd: "SCSI Command", opTaskMgmt: "Task Management Request",
	opLoginReq: "Login Request", opTextReq: "Text Request", opDataOut: "Data-Out",
	opLogoutReq: "Logout Request", opSNACK: "SNACK", opNOPIn: "NOP-In",
	opSCSIResp: "SCSI Response", opTaskResp: "Task Management Response",
	opLoginResp: "Login Response", opTextResp: "Text Response", opDataIn: "Data-In",
	opLogoutResp: "Logout Response", opR2T: "R2T", opAsync: "Asynchronous Message",
	opReject: "Reject",
}

func (o opcode) String() string {
	if n, ok := opNames[o]; ok {
		return n
	}
	return fmt.Sprintf("opcode 0x%02x", byte(o))
}

// Flag bits of byte 0 and 1.
const (
	flagImmediate = 0x40 // byte 0: immediate delivery, CmdSN not advanced
	flagFinal     = 0x80 // byte 1
	flagRead      = 0x40 // SCSI Command
	flagWrite     = 0x20 // SCSI Command
	flagContinue  = 0x40 // Text / Login
	flagTransit   = 0x80 // Login
	flagStatus    = 0x01 // Data-In: status present
	flagOverflow  = 0x04 // Data-In / SCSI Response: residual overflow
	flagUnderflow = 0x02 // Data-In / SCSI Response: residual underflow

	attrSimple = 1 // SCSI Command task attribute SIMPLE

	reservedTag = 0xffffffff
)

// pdu is one PDU: the BHS, the AHS and the data segment (without padding).
type pdu struct {
	bhs  [bhsLen]byte
	ahs  []byte
	data []byte
}

func (p *pdu) op() opcode               { return opcode(p.bhs[0] & 0x3f) }
func (p *pdu) immediate() bool          { return p.bhs[0]&flagImmediate != 0 }
func (p *pdu) flags() byte              { return p.bhs[1] }
func (p *pdu) final() bool              { return p.bhs[1]&flagFinal != 0 }
func (p *pdu) ahsLen() int              { return int(p.bhs[4]) * 4 }
func (p *pdu) dataLen() int             { return int(p.bhs[5])<<16 | int(p.bhs[6])<<8 | int(p.bhs[7]) }
func (p *pdu) itt() uint32              { return p.u32(16) }
func (p *pdu) u32(off int) uint32       { return binary.BigEndian.Uint32(p.bhs[off : off+4]) }
func (p *pdu) u16(off int) uint16       { return binary.BigEndian.Uint16(p.bhs[off : off+2]) }
func (p *pdu) setU32(off int, v uint32) { binary.BigEndian.PutUint32(p.bhs[off:off+4], v) }
func (p *pdu) setU16(off int, v uint16) { binary.BigEndian.PutUint16(p.bhs[off:off+2], v) }

func (p *pdu) setDataLen(n int) {
	p.bhs[5], p.bhs[6], p.bhs[7] = byte(n>>16), byte(n>>8), byte(n)
}

func (p *pdu) setLUN(lun [8]byte) { copy(p.bhs[8:16], lun[:]) }

// Fields shared by most target PDUs.
func (p *pdu) statSN() uint32   { return p.u32(24) }
func (p *pdu) expCmdSN() uint32 { return p.u32(28) }
func (p *pdu) maxCmdSN() uint32 { return p.u32(32) }

func pad4(n int) int { return (4 - n%4) % 4 }

var errPDUTooLarge = errors.New("data segment too large")

var errNotPDU = errors.New("not an iSCSI PDU")

// readHeader reads a BHS and its AHS. An unknown opcode is refused before the lengths
// in the header are trusted, so a peer that is not an iSCSI target (an HTTP server on
// the port) fails fast instead of making us wait for bytes it will never send.
func readHeader(r io.Reader, p *pdu) error {
	if _, err := io.ReadFull(r, p.bhs[:]); err != nil {
		return err
	}
	if _, known := opNames[p.op()]; !known || p.bhs[0]&0x80 != 0 {
		return fmt.Errorf("%w (first bytes % x)", errNotPDU, p.bhs[:8])
	}
	p.ahs = nil
	p.data = nil
	if n := p.ahsLen(); n > 0 {
		p.ahs = make([]byte, n)
		if _, err := io.ReadFull(r, p.ahs); err != nil {
			return unexpectedEOF(err)
		}
	}
	return nil
}

// readData reads a whole data segment of n bytes into dst[:n] (dst nil: discard) and
// the padding after it.
func readData(r io.Reader, dst []byte, n int) error {
	if dst != nil {
		if _, err := io.ReadFull(r, dst[:n]); err != nil {
			return unexpectedEOF(err)
		}
	} else if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
		return unexpectedEOF(err)
	}
	var pad [3]byte
	if k := pad4(n); k > 0 {
		if _, err := io.ReadFull(r, pad[:k]); err != nil {
			return unexpectedEOF(err)
		}
	}
	return nil
}

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// readPDU reads one PDU whose data segment is at most max bytes.
func readPDU(r io.Reader, max int) (*pdu, error) {
	p := new(pdu)
	if err := readHeader(r, p); err != nil {
		return nil, err
	}
	n := p.dataLen()
	if n > max {
		return nil, fmt.Errorf("%v with %d-byte data segment: %w (limit %d)", p.op(), n, errPDUTooLarge, max)
	}
	if n > 0 {
		p.data = make([]byte, n)
		if err := readData(r, p.data, n); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// marshal returns the PDU as sent on the wire, with lengths set and padding added.
func (p *pdu) marshal() []byte {
	if len(p.ahs)%4 != 0 {
		panic("iscsi: AHS not a multiple of 4 bytes")
	}
	p.bhs[4] = byte(len(p.ahs) / 4)
	p.setDataLen(len(p.data))
	b := make([]byte, 0, bhsLen+len(p.ahs)+len(p.data)+3)
	b = append(b, p.bhs[:]...)
	b = append(b, p.ahs...)
	b = append(b, p.data...)
	return append(b, make([]byte, pad4(len(p.data)))...)
}

// scsiResponse is the decoded part of a SCSI Response PDU.
type scsiResponse struct {
	response byte // 0: command completed at target
	status   byte
	sense    []byte
	residual int // positive underflow, negative overflow
}

func decodeSCSIResponse(p *pdu) (scsiResponse, error) {
	r := scsiResponse{response: p.bhs[2], status: p.bhs[3]}
	f := p.flags()
	switch {
	case f&flagUnderflow != 0:
		r.residual = int(p.u32(44))
	case f&flagOverflow != 0:
		r.residual = -int(p.u32(44))
	}
	if len(p.data) >= 2 {
		n := int(binary.BigEndian.Uint16(p.data[0:2]))
		if n > len(p.data)-2 {
			return r, fmt.Errorf("SCSI Response: sense length %d exceeds the %d-byte data segment", n, len(p.data))
		}
		r.sense = p.data[2 : 2+n]
	} else if len(p.data) == 1 {
		return r, fmt.Errorf("SCSI Response: 1-byte data segment")
	}
	return r, nil
}

// Login PDU fields (RFC 7143 sections 11.12, 11.13).
const (
	stageSecurity    = 0
	stageOperational = 1
	stageFullFeature = 3
)

func loginCSG(p *pdu) byte { return (p.bhs[1] >> 2) & 0x3 }
func loginNSG(p *pdu) byte { return p.bhs[1] & 0x3 }

type loginResponse struct {
	transit, cont bool
	csg, nsg      byte
	versionMax    byte
	versionActive byte
	isid          [6]byte
	tsih          uint16
	statSN        uint32
	expCmdSN      uint32
	maxCmdSN      uint32
	class, detail byte
}

func decodeLoginResponse(p *pdu) (loginResponse, error) {
	if p.op() != opLoginResp {
		return loginResponse{}, fmt.Errorf("expected Login Response, got %v", p.op())
	}
	r := loginResponse{
		transit:       p.bhs[1]&flagTransit != 0,
		cont:          p.bhs[1]&flagContinue != 0,
		csg:           loginCSG(p),
		nsg:           loginNSG(p),
		versionMax:    p.bhs[2],
		versionActive: p.bhs[3],
		tsih:          p.u16(14),
		statSN:        p.u32(24),
		expCmdSN:      p.u32(28),
		maxCmdSN:      p.u32(32),
		class:         p.bhs[36],
		detail:        p.bhs[37],
	}
	copy(r.isid[:], p.bhs[8:14])
	if r.transit && r.cont {
		return r, errors.New("Login Response with both T and C set")
	}
	return r, nil
}

// dataIn is the decoded header of a Data-In PDU.
type dataIn struct {
	final, hasStatus bool
	status           byte
	ttt              uint32
	dataSN           uint32
	offset           uint32
	residual         int
}

func decodeDataIn(p *pdu) (dataIn, error) {
	f := p.flags()
	d := dataIn{
		final:     f&flagFinal != 0,
		hasStatus: f&flagStatus != 0,
		status:    p.bhs[3],
		ttt:       p.u32(20),
		dataSN:    p.u32(36),
		offset:    p.u32(40),
	}
	if d.hasStatus {
		switch {
		case f&flagUnderflow != 0:
			d.residual = int(p.u32(44))
		case f&flagOverflow != 0:
			d.residual = -int(p.u32(44))
		}
		if !d.final {
			return d, errors.New("Data-In with status but without the F bit")
		}
	}
	return d, nil
}

// r2t is the decoded header of an R2T PDU.
type r2t struct {
	ttt, r2tSN, offset, length uint32
}

func decodeR2T(p *pdu) (r2t, error) {
	r := r2t{ttt: p.u32(20), r2tSN: p.u32(36), offset: p.u32(40), length: p.u32(44)}
	if r.ttt == reservedTag {
		return r, errors.New("R2T with the reserved target transfer tag")
	}
	if r.length == 0 {
		return r, errors.New("R2T for 0 bytes")
	}
	return r, nil
}
