package nbd

import (
	"errors"

	"github.com/blockrep/blockrep/blockrep"
)

// Wire constants from NetworkBlockDevice/nbd doc/proto.md. Names follow the spec with
// the NBD_ prefix dropped.
const (
	nbdMagic         = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic         = 0x49484156454F5054 // "IHAVEOPT"
	optReplyMagic    = 0x0003e889045565a9
	requestMagic     = 0x25609513
	simpleReplyMagic = 0x67446698
	chunkReplyMagic  = 0x668e33ef // structured reply chunk
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1

	clientFixedNewstyle = 1 << 0
	clientNoZeroes      = 1 << 1
)

// Transmission flags.
const (
	tfHasFlags        = 1 << 0
	tfReadOnly        = 1 << 1
	tfSendFlush       = 1 << 2
	tfSendFUA         = 1 << 3
	tfRotational      = 1 << 4
	tfSendTrim        = 1 << 5
	tfSendWriteZeroes = 1 << 6
	tfSendDF          = 1 << 7
	tfCanMultiConn    = 1 << 8
	tfSendCache       = 1 << 10
	tfSendFastZero    = 1 << 11
)

// Options.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10
)

// Option reply types.
const (
	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repMetaContext = 4

	repErrUnsup    = 1<<31 + 1
	repErrPolicy   = 1<<31 + 2
	repErrInvalid  = 1<<31 + 3
	repErrTLSReqd  = 1<<31 + 5
	repErrUnknown  = 1<<31 + 6
	repErrShutdown = 1<<31 + 7
	repErrTooBig   = 1<<31 + 9
)

// NBD_INFO types.
const (
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3
)

// Commands and command flags.
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7

	cmdFlagFUA      = 1 << 0
	cmdFlagNoHole   = 1 << 1
	cmdFlagDF       = 1 << 2
	cmdFlagReqOne   = 1 << 3
	cmdFlagFastZero = 1 << 4
)

var cmdNames = [...]string{"READ", "WRITE", "DISC", "FLUSH", "TRIM", "CACHE", "WRITE_ZEROES", "BLOCK_STATUS"}

func cmdName(t uint16) string {
	if int(t) < len(cmdNames) {
		return cmdNames[t]
	}
	return "unknown"
}

// Structured replies.
const (
	replyFlagDone = 1

	replyTypeNone        = 0
	replyTypeOffsetData  = 1
	replyTypeBlockStatus = 5
	replyTypeError       = 1<<15 + 1

	stateHole = 1 << 0
	stateZero = 1 << 1
)

// Error values (not the host's errno values, although they coincide on Linux).
const (
	errPerm      = 1
	errIO        = 5
	errInval     = 22
	errNoSpc     = 28
	errOverflow  = 75
	errNotSup    = 95
	errShutdown  = 108
	maxString    = 4096 // longest string the spec allows (names, messages)
	headerLen    = 28   // request header
	metaContext  = "base:allocation"
	metaID       = 1 // our id for base:allocation
	maxExtents   = 1024
	maxOptionLen = 64 << 10
)

// errnoOf maps a backend error to an NBD error value. ErrNotSupported becomes ENOTSUP
// only for a fast-zero request: proto.md reserves ENOTSUP for NBD_CMD_FLAG_FAST_ZERO.
func errnoOf(err error, fastZero bool) uint32 {
	switch {
	case errors.Is(err, blockrep.ErrNotSupported):
		if fastZero {
			return errNotSup
		}
		return errInval
	case errors.Is(err, blockrep.ErrOutOfRange):
		return errInval
	case errors.Is(err, blockrep.ErrNoSpace):
		return errNoSpc
	case errors.Is(err, blockrep.ErrReadOnly):
		return errPerm
	case errors.Is(err, blockrep.ErrNotPrimary), errors.Is(err, blockrep.ErrShuttingDown),
		errors.Is(err, blockrep.ErrFenced):
		return errShutdown
	}
	return errIO
}
