package scsi

import (
	"context"
	"errors"
	"fmt"
)

// Direction is the direction of a command's data transfer, seen from the initiator.
type Direction uint8

const (
	None Direction = iota // no data phase
	In                    // device to initiator: data is filled
	Out                   // initiator to device: data is sent
)

func (d Direction) String() string {
	switch d {
	case None:
		return "none"
	case In:
		return "in"
	case Out:
		return "out"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// Device executes SCSI commands on one logical unit.
//
// data is the buffer to fill (In) or to send (Out); its length is the expected transfer
// length. Execute returns an error only when the command could not be delivered or its
// outcome is unknown (connection lost, timeout, context cancelled); a command that
// completed with any SCSI status returns a Result and a nil error, and Result.Err turns
// the status into an error. Implementations are safe for concurrent use and never touch
// data after Execute returns.
type Device interface {
	Execute(ctx context.Context, cdb []byte, dir Direction, data []byte) (Result, error)
}

// Status is a SCSI status code (SAM-5).
type Status byte

const (
	StatusGood                Status = 0x00
	StatusCheckCondition      Status = 0x02
	StatusConditionMet        Status = 0x04
	StatusBusy                Status = 0x08
	StatusReservationConflict Status = 0x18
	StatusTaskSetFull         Status = 0x28
	StatusACAActive           Status = 0x30
	StatusTaskAborted         Status = 0x40
)

var statusNames = map[Status]string{
	StatusGood:                "GOOD",
	StatusCheckCondition:      "CHECK CONDITION",
	StatusConditionMet:        "CONDITION MET",
	StatusBusy:                "BUSY",
	StatusReservationConflict: "RESERVATION CONFLICT",
	StatusTaskSetFull:         "TASK SET FULL",
	StatusACAActive:           "ACA ACTIVE",
	StatusTaskAborted:         "TASK ABORTED",
}

func (s Status) String() string {
	if n, ok := statusNames[s]; ok {
		return n
	}
	return fmt.Sprintf("status 0x%02x", byte(s))
}

// Result is the outcome of a command that reached the device server.
type Result struct {
	Status Status
	// Sense is the raw sense data that came with CHECK CONDITION (may be empty).
	Sense []byte
	// Residual is how many bytes of the expected transfer were not transferred
	// (underflow); negative when the device had more to transfer than data could hold
	// (overflow).
	Residual int
}

// Err reports the status as an error: nil for GOOD and CONDITION MET,
// ErrReservationConflict, a *CheckCondition with the decoded sense, or a *StatusError.
func (r Result) Err() error {
	switch r.Status {
	case StatusGood, StatusConditionMet:
		return nil
	case StatusReservationConflict:
		return ErrReservationConflict
	case StatusCheckCondition:
		s, err := ParseSense(r.Sense)
		if err != nil {
			// CHECK CONDITION without usable sense still must not read as success.
			return &CheckCondition{Raw: r.Sense, decodeErr: err}
		}
		return &CheckCondition{Sense: s, Raw: r.Sense}
	}
	return &StatusError{Status: r.Status}
}

// ErrReservationConflict is the RESERVATION CONFLICT status: another I_T nexus holds a
// persistent reservation that excludes this command, or this nexus is not registered.
// For a node that had access before, it means it has been fenced.
var ErrReservationConflict = errors.New("scsi: RESERVATION CONFLICT")

// StatusError is a non-GOOD status other than CHECK CONDITION and RESERVATION CONFLICT.
type StatusError struct {
	Status Status
}

func (e *StatusError) Error() string { return "scsi: " + e.Status.String() }

// Temporary reports whether re-sending the command later may succeed (BUSY, TASK SET
// FULL).
func (e *StatusError) Temporary() bool {
	return e.Status == StatusBusy || e.Status == StatusTaskSetFull
}

// CheckCondition is a CHECK CONDITION status with its decoded sense data.
type CheckCondition struct {
	Sense Sense
	Raw   []byte

	decodeErr error
}

func (c *CheckCondition) Error() string {
	if c.decodeErr != nil {
		return fmt.Sprintf("scsi: CHECK CONDITION (undecodable sense: %v)", c.decodeErr)
	}
	return "scsi: CHECK CONDITION: " + c.Sense.String()
}

// IsUnitAttention reports a UNIT ATTENTION: the command was not executed and may be
// re-sent.
func (c *CheckCondition) IsUnitAttention() bool {
	return c.decodeErr == nil && c.Sense.Key == SenseUnitAttention
}

// IsIllegalRequest reports an ILLEGAL REQUEST: the device does not support the command or
// one of its fields.
func (c *CheckCondition) IsIllegalRequest() bool {
	return c.decodeErr == nil && c.Sense.Key == SenseIllegalRequest
}

// Is matches ASC/ASCQ: errors.Is(err, scsi.ASCReservationsPreempted).
func (c *CheckCondition) Is(target error) bool {
	t, ok := target.(*ASCError)
	return ok && c.decodeErr == nil && c.Sense.ASC == t.ASC && c.Sense.ASCQ == t.ASCQ &&
		(t.Key == 0 || t.Key == c.Sense.Key)
}

// ASCError is an errors.Is target matching a CHECK CONDITION by additional sense code
// (and sense key, unless Key is 0).
type ASCError struct {
	Key       SenseKey
	ASC, ASCQ byte
}

func (e *ASCError) Error() string {
	return fmt.Sprintf("scsi: %s %02X/%02X %s", e.Key, e.ASC, e.ASCQ, ascText(e.ASC, e.ASCQ))
}

// Additional sense codes that fencing cares about.
var (
	ASCPowerOnReset           = &ASCError{Key: SenseUnitAttention, ASC: 0x29, ASCQ: 0x00}
	ASCReservationsPreempted  = &ASCError{Key: SenseUnitAttention, ASC: 0x2A, ASCQ: 0x03}
	ASCReservationsReleased   = &ASCError{Key: SenseUnitAttention, ASC: 0x2A, ASCQ: 0x04}
	ASCRegistrationsPreempted = &ASCError{Key: SenseUnitAttention, ASC: 0x2A, ASCQ: 0x05}
	ASCLUNotSupported         = &ASCError{Key: SenseIllegalRequest, ASC: 0x25, ASCQ: 0x00}
	ASCLBAOutOfRange          = &ASCError{Key: SenseIllegalRequest, ASC: 0x21, ASCQ: 0x00}
	ASCInvalidOpcode          = &ASCError{Key: SenseIllegalRequest, ASC: 0x20, ASCQ: 0x00}
	ASCInvalidFieldInCDB      = &ASCError{Key: SenseIllegalRequest, ASC: 0x24, ASCQ: 0x00}
	ASCWriteProtected         = &ASCError{Key: SenseDataProtect, ASC: 0x27, ASCQ: 0x00}
	ASCSpaceAllocationFailed  = &ASCError{Key: SenseDataProtect, ASC: 0x27, ASCQ: 0x07}
)
