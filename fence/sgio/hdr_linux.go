package sgio

import (
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/blockrep/blockrep/fence/scsi"
)

// ioctl numbers and sg_io_hdr constants from <scsi/sg.h>.
const (
	sgIO            = 0x2285
	sgGetVersionNum = 0x2282

	sgDxferNone    = -1
	sgDxferToDev   = -2
	sgDxferFromDev = -3

	sgInfoOKMask = 0x1
	sgInfoOK     = 0x0

	senseLen = 252 // the largest sense data SPC allows
)

// sgIoHdr mirrors struct sg_io_hdr. unsafe.Pointer fields keep the C layout on both
// 32- and 64-bit platforms (the compiler inserts the same padding C does).
type sgIoHdr struct {
	interfaceID    int32
	dxferDirection int32
	cmdLen         uint8
	mxSbLen        uint8
	iovecCount     uint16
	dxferLen       uint32
	dxferp         unsafe.Pointer
	cmdp           unsafe.Pointer
	sbp            unsafe.Pointer
	timeout        uint32 // milliseconds
	flags          uint32
	packID         int32
	usrPtr         unsafe.Pointer
	status         uint8
	maskedStatus   uint8
	msgStatus      uint8
	sbLenWr        uint8
	hostStatus     uint16
	driverStatus   uint16
	resid          int32
	duration       uint32
	info           uint32
}

// newHdr fills an sg_io_hdr for one command. The caller must keep cdb, data and sense
// alive and pinned until the ioctl returns.
func newHdr(cdb []byte, dir scsi.Direction, data, sense []byte, timeout time.Duration) (*sgIoHdr, error) {
	if len(cdb) < 6 || len(cdb) > 16 {
		return nil, fmt.Errorf("sgio: CDB of %d bytes (want 6 to 16)", len(cdb))
	}
	if uint64(len(data)) > uint64(^uint32(0)) {
		return nil, fmt.Errorf("sgio: transfer of %d bytes is too large", len(data))
	}
	if len(sense) > 255 {
		sense = sense[:255]
	}
	h := &sgIoHdr{
		interfaceID: 'S',
		cmdLen:      uint8(len(cdb)),
		mxSbLen:     uint8(len(sense)),
		cmdp:        unsafe.Pointer(&cdb[0]),
	}
	if len(sense) > 0 {
		h.sbp = unsafe.Pointer(&sense[0])
	}
	switch dir {
	case scsi.None:
		h.dxferDirection = sgDxferNone
	case scsi.In:
		h.dxferDirection = sgDxferFromDev
	case scsi.Out:
		h.dxferDirection = sgDxferToDev
	default:
		return nil, fmt.Errorf("sgio: bad direction %v", dir)
	}
	if dir != scsi.None && len(data) > 0 {
		h.dxferLen = uint32(len(data))
		h.dxferp = unsafe.Pointer(&data[0])
	} else if dir != scsi.None {
		h.dxferDirection = sgDxferNone
	}
	ms := timeout.Milliseconds()
	switch {
	case ms <= 0:
		ms = 1 // 0 would mean the driver's default, not "already expired"
	case ms > int64(^uint32(0)>>1):
		ms = int64(^uint32(0) >> 1)
	}
	h.timeout = uint32(ms)
	return h, nil
}

// Host status codes (the host byte, DID_* in the kernel).
const (
	didOK                 = 0x00
	didNoConnect          = 0x01
	didBusBusy            = 0x02
	didTimeOut            = 0x03
	didBadTarget          = 0x04
	didAbort              = 0x05
	didParity             = 0x06
	didError              = 0x07
	didReset              = 0x08
	didBadIntr            = 0x09
	didPassthrough        = 0x0a
	didSoftError          = 0x0b
	didImmRetry           = 0x0c
	didRequeue            = 0x0d
	didTransportDisrupted = 0x0e
	didTransportFailfast  = 0x0f
	didTargetFailure      = 0x10
	didNexusFailure       = 0x11
	didAllocFailure       = 0x12
	didMediumError        = 0x13

	driverTimeout    = 0x06
	driverSense      = 0x08
	driverStatusMask = 0x0f
)

var hostNames = map[uint16]string{
	didNoConnect: "no connection", didBusBusy: "bus busy", didTimeOut: "timed out",
	didBadTarget: "bad target", didAbort: "aborted", didParity: "parity error",
	didError: "host adapter error", didReset: "reset", didBadIntr: "bad interrupt",
	didPassthrough: "passthrough", didSoftError: "soft error", didImmRetry: "retry",
	didRequeue: "requeue", didTransportDisrupted: "transport disrupted",
	didTransportFailfast: "transport failfast", didTargetFailure: "target failure",
	didNexusFailure: "nexus failure (reservation conflict)", didAllocFailure: "allocation failure",
	didMediumError: "medium error",
}

var driverNames = [16]string{"ok", "busy", "soft error", "media error", "error", "invalid",
	"timeout", "hard error", "sense"}

// HostError is a command failure reported by the kernel outside the SCSI status: the
// command may or may not have reached the device.
type HostError struct {
	Host   uint16 // host_status (DID_*)
	Driver uint16 // driver_status (DRIVER_*)
}

func (e *HostError) Error() string {
	s := "sgio:"
	if e.Host != didOK {
		n := hostNames[e.Host]
		if n == "" {
			n = fmt.Sprintf("0x%02x", e.Host)
		}
		s += " host " + n
	}
	if d := e.Driver & driverStatusMask; d != 0 && d != driverSense {
		n := driverNames[d]
		if n == "" {
			n = fmt.Sprintf("0x%02x", d)
		}
		s += " driver " + n
	}
	return s
}

// Is makes a nexus failure match scsi.ErrReservationConflict: the kernel reports a
// reservation conflict that way on some paths (BLK_STS_NEXUS).
func (e *HostError) Is(target error) bool {
	return target == scsi.ErrReservationConflict && e.Host == didNexusFailure
}

// Timeout reports whether the command timed out (its outcome is unknown).
func (e *HostError) Timeout() bool {
	return e.Host == didTimeOut || e.Driver&driverStatusMask == driverTimeout
}

// result turns the completed header into a Result or an error.
func result(h *sgIoHdr, sense []byte) (scsi.Result, error) {
	res := scsi.Result{Status: scsi.Status(h.status), Residual: int(h.resid)}
	if h.info&sgInfoOKMask == sgInfoOK {
		return res, nil
	}
	d := h.driverStatus & driverStatusMask
	if h.hostStatus != didOK || (d != 0 && d != driverSense) {
		return scsi.Result{}, &HostError{Host: h.hostStatus, Driver: h.driverStatus}
	}
	n := int(h.sbLenWr)
	if n > len(sense) {
		n = len(sense)
	}
	res.Sense = sense[:n]
	if res.Status == scsi.StatusGood && n > 0 {
		// Sense without a status: the LLD reported it through the driver byte only.
		res.Status = scsi.StatusCheckCondition
	}
	return res, nil
}

var errClosed = errors.New("sgio: device closed")
