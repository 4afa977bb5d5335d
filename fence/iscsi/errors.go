package iscsi

import (
	"errors"
	"fmt"
)

// Sentinel errors, errors.Is-able.
var (
	// ErrSessionClosed: Close was called; commands still waiting fail with it.
	ErrSessionClosed = errors.New("session closed")
	// ErrConnectionLost: the connection broke and could not be re-established within
	// Options.ReconnectTimeout (or the command was re-sent MaxRetries times). A write
	// failing with it may or may not have reached the medium.
	ErrConnectionLost = errors.New("connection lost")
	// ErrAuthFailed: the target refused the CHAP credentials, or wants CHAP and none
	// were given (login status 0201h, 0202h).
	ErrAuthFailed = errors.New("authentication failed")
	// ErrTargetNotFound: no target of that name at the portal (0203h, 0204h).
	ErrTargetNotFound = errors.New("target not found")
	// ErrNoSuchLUN: the target has no logical unit at the URL's LUN.
	ErrNoSuchLUN = errors.New("no such LUN")
	// ErrProtocol: the target broke RFC 7143; the connection is dropped.
	ErrProtocol = errors.New("iSCSI protocol error")
)

// LoginError is a Login Response with a non-zero status class.
type LoginError struct {
	Class, Detail byte
	// Redirect is the TargetAddress of a redirection (class 1).
	Redirect string
}

var loginStatusText = map[uint16]string{
	0x0101: "target moved temporarily",
	0x0102: "target moved permanently",
	0x0200: "initiator error",
	0x0201: "authentication failed",
	0x0202: "initiator not authorized for this target",
	0x0203: "target not found",
	0x0204: "target removed",
	0x0205: "unsupported iSCSI version",
	0x0206: "too many connections",
	0x0207: "missing parameter",
	0x0208: "cannot include connection in session",
	0x0209: "session type not supported",
	0x020a: "session does not exist",
	0x020b: "invalid request during login",
	0x0300: "target error",
	0x0301: "service unavailable",
	0x0302: "out of resources",
}

func (e *LoginError) Error() string {
	t := loginStatusText[uint16(e.Class)<<8|uint16(e.Detail)]
	if t == "" {
		t = "login failed"
	}
	s := fmt.Sprintf("%s (login status %02x%02x)", t, e.Class, e.Detail)
	if e.Redirect != "" {
		s += " to " + e.Redirect
	}
	return s
}

// Is maps login statuses to the sentinels.
func (e *LoginError) Is(target error) bool {
	switch target {
	case ErrAuthFailed:
		return e.Class == 2 && (e.Detail == 1 || e.Detail == 2)
	case ErrTargetNotFound:
		return e.Class == 2 && (e.Detail == 3 || e.Detail == 4)
	}
	return false
}

// Temporary reports whether logging in again later may succeed.
func (e *LoginError) Temporary() bool {
	return e.Class == 1 || e.Class == 3 || (e.Class == 2 && e.Detail == 6)
}

// RejectError is a Reject PDU answering one of our PDUs.
type RejectError struct {
	Reason byte
}

var rejectText = map[byte]string{
	0x02: "data (payload) digest error",
	0x03: "SNACK reject",
	0x04: "protocol error",
	0x05: "command not supported",
	0x06: "immediate command reject (too many immediate commands)",
	0x07: "task in progress",
	0x08: "invalid data ACK",
	0x09: "invalid PDU field",
	0x0a: "long operation reject (out of resources)",
	0x0c: "waiting for logout",
}

func (e *RejectError) Error() string {
	t := rejectText[e.Reason]
	if t == "" {
		t = "rejected"
	}
	return fmt.Sprintf("target rejected the PDU: %s (reason 0x%02x)", t, e.Reason)
}
