package scsi

import (
	"encoding/binary"
	"strconv"
)

// Operation codes used by blockrep (SPC-4, SBC-3).
const (
	OpTestUnitReady      = 0x00
	OpRequestSense       = 0x03
	OpInquiry            = 0x12
	OpModeSense6         = 0x1A
	OpUnmap              = 0x42
	OpPersistentResIn    = 0x5E
	OpPersistentResOut   = 0x5F
	OpRead16             = 0x88
	OpWrite16            = 0x8A
	OpSynchronizeCache16 = 0x91
	OpServiceActionIn16  = 0x9E
	OpReportLUNs         = 0xA0

	saReadCapacity16 = 0x10
)

// TestUnitReady builds TEST UNIT READY: the cheapest command, used to collect a pending
// UNIT ATTENTION and to check that the LU is reachable.
func TestUnitReady() []byte { return make([]byte, 6) }

// RequestSense builds REQUEST SENSE (fixed format sense).
func RequestSense(alloc byte) []byte {
	return []byte{OpRequestSense, 0, 0, 0, alloc, 0}
}

// Inquiry builds INQUIRY. With evpd the page is a vital product data page (0x00 list,
// 0x80 serial, 0x83 device identification, 0xB0 block limits, 0xB2 logical block
// provisioning); without it page must be 0 and the standard data is returned.
func Inquiry(evpd bool, page byte, alloc uint16) []byte {
	c := make([]byte, 6)
	c[0] = OpInquiry
	if evpd {
		c[1] = 0x01
	}
	c[2] = page
	binary.BigEndian.PutUint16(c[3:5], alloc)
	return c
}

// ReportLUNs builds REPORT LUNS with SELECT REPORT 0 (all logical units).
func ReportLUNs(alloc uint32) []byte {
	c := make([]byte, 12)
	c[0] = OpReportLUNs
	binary.BigEndian.PutUint32(c[6:10], alloc)
	return c
}

// ReadCapacity16 builds READ CAPACITY(16) (SERVICE ACTION IN(16), service action 10h).
// The response is at least 32 bytes; see ParseReadCapacity16.
func ReadCapacity16(alloc uint32) []byte {
	c := make([]byte, 16)
	c[0] = OpServiceActionIn16
	c[1] = saReadCapacity16
	binary.BigEndian.PutUint32(c[10:14], alloc)
	return c
}

// Read16 builds READ(16) of blocks logical blocks from lba. fua forces the data to be
// read from the medium rather than a cache.
func Read16(lba uint64, blocks uint32, fua bool) []byte {
	return rw16(OpRead16, lba, blocks, fua)
}

// Write16 builds WRITE(16). With fua the device completes the command only once the
// data is on non-volatile media, which is what blockrep's FlagFUA promises.
//
// Fencing depends on data going through WRITE(16): some targets (tgtd) do not check
// WRITE SAME or WRITE AND VERIFY against persistent reservations.
func Write16(lba uint64, blocks uint32, fua bool) []byte {
	return rw16(OpWrite16, lba, blocks, fua)
}

func rw16(op byte, lba uint64, blocks uint32, fua bool) []byte {
	c := make([]byte, 16)
	c[0] = op
	if fua {
		c[1] = 0x08
	}
	binary.BigEndian.PutUint64(c[2:10], lba)
	binary.BigEndian.PutUint32(c[10:14], blocks)
	return c
}

// SynchronizeCache16 builds SYNCHRONIZE CACHE(16); lba 0 and blocks 0 cover the whole
// medium. Without immed the command completes when the cache is flushed.
func SynchronizeCache16(lba uint64, blocks uint32, immed bool) []byte {
	c := make([]byte, 16)
	c[0] = OpSynchronizeCache16
	if immed {
		c[1] = 0x02
	}
	binary.BigEndian.PutUint64(c[2:10], lba)
	binary.BigEndian.PutUint32(c[10:14], blocks)
	return c
}

// UnmapDescriptor is one range of an UNMAP parameter list.
type UnmapDescriptor struct {
	LBA    uint64
	Blocks uint32
}

// Unmap builds UNMAP for a parameter list of paramLen bytes (see UnmapParams).
func Unmap(paramLen uint16) []byte {
	c := make([]byte, 10)
	c[0] = OpUnmap
	binary.BigEndian.PutUint16(c[7:9], paramLen)
	return c
}

// UnmapParams builds the UNMAP parameter list: an 8-byte header and a 16-byte block
// descriptor per range.
func UnmapParams(ds []UnmapDescriptor) []byte {
	p := make([]byte, 8+16*len(ds))
	binary.BigEndian.PutUint16(p[0:2], uint16(len(p)-2))
	binary.BigEndian.PutUint16(p[2:4], uint16(16*len(ds)))
	for i, d := range ds {
		o := 8 + 16*i
		binary.BigEndian.PutUint64(p[o:o+8], d.LBA)
		binary.BigEndian.PutUint32(p[o+8:o+12], d.Blocks)
	}
	return p
}

// PRInAction is a PERSISTENT RESERVE IN service action.
type PRInAction byte

const (
	PRInReadKeys           PRInAction = 0x00
	PRInReadReservation    PRInAction = 0x01
	PRInReportCapabilities PRInAction = 0x02
	PRInReadFullStatus     PRInAction = 0x03
)

// PersistentReserveIn builds PERSISTENT RESERVE IN.
func PersistentReserveIn(sa PRInAction, alloc uint16) []byte {
	c := make([]byte, 10)
	c[0] = OpPersistentResIn
	c[1] = byte(sa) & 0x1f
	binary.BigEndian.PutUint16(c[7:9], alloc)
	return c
}

// PROutAction is a PERSISTENT RESERVE OUT service action.
type PROutAction byte

const (
	PROutRegister                  PROutAction = 0x00
	PROutReserve                   PROutAction = 0x01
	PROutRelease                   PROutAction = 0x02
	PROutClear                     PROutAction = 0x03
	PROutPreempt                   PROutAction = 0x04
	PROutPreemptAndAbort           PROutAction = 0x05
	PROutRegisterAndIgnoreExisting PROutAction = 0x06
	PROutRegisterAndMove           PROutAction = 0x07
)

var proutNames = [...]string{"REGISTER", "RESERVE", "RELEASE", "CLEAR", "PREEMPT",
	"PREEMPT AND ABORT", "REGISTER AND IGNORE EXISTING KEY", "REGISTER AND MOVE"}

func (a PROutAction) String() string {
	if int(a) < len(proutNames) {
		return proutNames[a]
	}
	return "PROUT service action " + strconv.Itoa(int(a))
}

// ScopeLU is the only persistent reservation scope SPC-4 still defines.
const ScopeLU = 0

// PersistentReserveOut builds PERSISTENT RESERVE OUT. The type matters only for
// RESERVE, RELEASE, PREEMPT, PREEMPT AND ABORT and REGISTER AND MOVE; paramLen is the
// length of the parameter list that follows (24 for the basic list).
func PersistentReserveOut(sa PROutAction, scope byte, typ ReservationType, paramLen uint32) []byte {
	c := make([]byte, 10)
	c[0] = OpPersistentResOut
	c[1] = byte(sa) & 0x1f
	c[2] = scope<<4 | byte(typ)&0x0f
	binary.BigEndian.PutUint32(c[5:9], paramLen)
	return c
}

// PROutParams is the basic PERSISTENT RESERVE OUT parameter list (every service action
// but REGISTER AND MOVE).
type PROutParams struct {
	Key        uint64 // RESERVATION KEY: the key this I_T nexus is registered with (0 if none)
	ServiceKey uint64 // SERVICE ACTION RESERVATION KEY: new key, or key to preempt
	SpecIPT    bool   // SPEC_I_PT: register the TransportIDs as well (REGISTER only)
	AllTgtPt   bool   // ALL_TG_PT: register on every target port
	APTPL      bool   // activate persist through power loss
	// TransportIDs follow the 24-byte list when SpecIPT is set.
	TransportIDs [][]byte
}

// Marshal returns the parameter list: 24 bytes, plus the TransportIDs with SPEC_I_PT.
func (p PROutParams) Marshal() []byte {
	n := 24
	tl := 0
	if p.SpecIPT {
		for _, t := range p.TransportIDs {
			tl += len(t)
		}
		n += 4 + tl
	}
	b := make([]byte, n)
	binary.BigEndian.PutUint64(b[0:8], p.Key)
	binary.BigEndian.PutUint64(b[8:16], p.ServiceKey)
	if p.SpecIPT {
		b[20] |= 0x08
	}
	if p.AllTgtPt {
		b[20] |= 0x04
	}
	if p.APTPL {
		b[20] |= 0x01
	}
	if p.SpecIPT {
		binary.BigEndian.PutUint32(b[24:28], uint32(tl))
		o := 28
		for _, t := range p.TransportIDs {
			o += copy(b[o:], t)
		}
	}
	return b
}

// RegisterAndMoveParams is the REGISTER AND MOVE parameter list: it registers the
// TransportID's I_T nexus with ServiceKey and moves the reservation to it.
type RegisterAndMoveParams struct {
	Key                uint64
	ServiceKey         uint64
	Unreg              bool // unregister the sending I_T nexus afterwards
	APTPL              bool
	RelativeTargetPort uint16
	TransportID        []byte
}

// Marshal returns the 24-byte header followed by the TransportID.
func (p RegisterAndMoveParams) Marshal() []byte {
	b := make([]byte, 24+len(p.TransportID))
	binary.BigEndian.PutUint64(b[0:8], p.Key)
	binary.BigEndian.PutUint64(b[8:16], p.ServiceKey)
	if p.Unreg {
		b[17] |= 0x02
	}
	if p.APTPL {
		b[17] |= 0x01
	}
	binary.BigEndian.PutUint16(b[18:20], p.RelativeTargetPort)
	binary.BigEndian.PutUint32(b[20:24], uint32(len(p.TransportID)))
	copy(b[24:], p.TransportID)
	return b
}
