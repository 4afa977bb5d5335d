// Package iscsi is a userspace iSCSI initiator (RFC 7143) and a blockrep.Device over an
// iSCSI logical unit. blockrep uses it to put a node's backing disk on a SAN target
// without the kernel initiator, and to fence through SCSI persistent reservations on
// that target (fence/scsi) — in containers and on hosts where open-iscsi is not
// available or not wanted.
//
// # Addressing
//
// A LUN is named by libiscsi's URL form, iscsi://[user[%password]@]host[:port]/iqn/lun
// (port 3260 by default); see ParseURL. Discover lists the targets of a portal
// (SendTargets).
//
// # Sessions
//
//	s, err := iscsi.Dial(ctx, "iscsi://10.0.0.5/iqn.2024-01.com.example:store/1",
//		iscsi.Options{InitiatorName: "iqn.2024-01.com.example:node-a"})
//	if err != nil { ... }
//	defer s.Close()
//	res, err := s.Execute(ctx, scsi.TestUnitReady(), scsi.None, nil)
//
// A Session is one normal session with one connection at error recovery level 0, with
// header and data digests off. Login does the security stage (CHAP with MD5 when
// credentials are given) and negotiates the operational keys, keeping whatever the
// target answers within RFC 7143's result functions. In full feature phase commands
// are pipelined up to the target's MaxCmdSN; write data goes as immediate data and
// unsolicited Data-Out as far as ImmediateData, InitialR2T and FirstBurstLength allow,
// the rest on R2T in PDUs no larger than the target's MaxRecvDataSegmentLength; read
// data lands directly in the caller's buffer.
//
// An idle connection is checked with NOP-Out pings (Options.KeepaliveInterval) and the
// target's own pings are answered. When the connection breaks — or a ping goes
// unanswered — the session logs in again with the same ISID (session reinstatement:
// the target aborts what the old session had) and re-sends, in their original order,
// the commands that had no status yet. A command succeeds only on its own status from
// the target; if the target stays unreachable for Options.ReconnectTimeout, the
// waiting commands fail with ErrConnectionLost and their outcome must be treated as
// unknown. Options.OnReconnect runs before the re-sends; KeepRegistration is the hook
// for nodes that hold a persistent reservation key.
//
// # Disk
//
// Disk (NewDisk, OpenDisk) implements blockrep.Device on any scsi.Device: sizes from
// READ CAPACITY(16), READ(16)/WRITE(16) split at the LU's maximum transfer length,
// FUA through the FUA bit, Flush as SYNCHRONIZE CACHE(16), byte-granular requests by
// read-modify-write of the edge blocks. A write refused by a persistent reservation
// fails with an error wrapping scsi.ErrReservationConflict, which the daemon reads as
// "fenced".
//
// # Limits
//
// One connection per session (MaxConnections=1), no digests, ERL 0 only (no SNACK, no
// connection recovery within a session), no mutual CHAP, no bidirectional commands, CDBs
// of at most 16 bytes.
package iscsi
