// Package nbd serves a blockrep.Backend to NBD clients (qemu, nbdcopy, nbdinfo, fio,
// the kernel's nbd-client) over the protocol of NetworkBlockDevice/nbd doc/proto.md.
//
// Use: fill a Server with Lookup (and List), then Serve a listener; the daemon calls
// Disconnect when an export must stop being served (demotion) and Close at shutdown.
//
//	srv := &nbd.Server{Lookup: func(name string) (*nbd.Export, error) { ... }}
//	go srv.Serve(l)
//
// # Protocol
//
// Fixed newstyle handshake only. Options: EXPORT_NAME, ABORT, LIST, STARTTLS (on a
// listener served with ServeTLS; refused with NBD_REP_ERR_POLICY elsewhere, and under a
// required-TLS policy every other option gets NBD_REP_ERR_TLS_REQD), INFO, GO,
// STRUCTURED_REPLY and
// LIST/SET_META_CONTEXT for "base:allocation"; anything else gets NBD_REP_ERR_UNSUP.
// Option data above 64 KiB is skipped unread and answered NBD_REP_ERR_TOO_BIG. Commands:
// READ, WRITE, DISC, FLUSH, TRIM, CACHE (validated only), WRITE_ZEROES (NO_HOLE,
// FAST_ZERO) and BLOCK_STATUS (answered through blockrep.ExtentMapper when the backend
// has one, else "all data"). The transmission flags mirror the backend's Caps. Block
// sizes advertised: minimum 1, preferred 4096, maximum Server.MaxRequest.
//
// Malformed requests never reach the backend. Choices where proto.md leaves room:
//   - bad request magic: hard disconnect (framing is lost);
//   - unknown command: NBD_EINVAL, assumed to carry no payload;
//   - flags not valid for the command as negotiated: NBD_EINVAL (a WRITE's payload is
//     read and dropped first, as for every refused WRITE);
//   - beyond the end: NBD_ENOSPC for WRITE and WRITE_ZEROES, NBD_EINVAL for READ,
//     TRIM, CACHE and BLOCK_STATUS, as proto.md's error section recommends;
//   - longer than MaxRequest: READ gets NBD_EINVAL (with NBD_CMD_FLAG_DF,
//     NBD_EOVERFLOW); a WRITE payload up to max(MaxRequest, 32 MiB) is read, dropped
//     and answered NBD_EINVAL, a larger one drops the connection (proto.md: shorter
//     ones must not be treated as an attack). Commands without payload (TRIM,
//     WRITE_ZEROES, CACHE, BLOCK_STATUS) are not limited: nothing is buffered for them
//     and nbdcopy 1.14 sends WRITE_ZEROES beyond the advertised maximum;
//   - zero-length READ/WRITE/TRIM/WRITE_ZEROES succeed without touching the backend;
//     zero-length BLOCK_STATUS gets NBD_EINVAL (no descriptor could describe it);
//   - FLUSH with nonzero offset or length, and commands that were not negotiated:
//     NBD_EINVAL; WRITE, TRIM and WRITE_ZEROES on a read-only export: NBD_EPERM.
//
// Backend errors map to NBD errors: ErrOutOfRange → EINVAL, ErrNoSpace → ENOSPC,
// ErrReadOnly → EPERM, ErrNotPrimary/ErrShuttingDown/ErrFenced → ESHUTDOWN (the client
// must then disconnect), ErrNotSupported → ENOTSUP for FAST_ZERO and EINVAL otherwise
// (proto.md reserves ENOTSUP for FAST_ZERO), anything else → EIO. With structured
// replies the error's text travels with it. Only the first request error of a burst
// is logged per connection.
//
// # Performance
//
// One goroutine per connection reads requests through a large buffer and executes each
// inline: a READ calls Backend.ReadAt and writes the reply; write-class commands are
// Submitted with a Request from a per-connection free list, the payload handed over in
// place from the read buffer. Replies go into a mutex-guarded buffered writer from
// whichever goroutine completes the request, and reach the socket when that
// goroutine's blockrep.Batch is flushed, i.e. when its input has drained. Nothing on
// this path allocates or hands work to another goroutine. The one exception is made
// for reads that keep missing the page cache (or go to a peer): those are served by a
// few per-connection workers while they stay slow, so the device sees a queue depth
// above one (read.go).
//
// Exports are identified by their canonical name (Export.Name, else the name the
// client asked for) in Clients and Disconnect.
package nbd
