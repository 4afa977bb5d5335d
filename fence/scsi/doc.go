// Package scsi is the transport-independent SCSI core of blockrep's fencing: CDB
// builders, response and sense decoders, and a persistent-reservation helper.
//
// It does no I/O. Everything that talks to a real logical unit goes through the small
// Device interface, which the SG_IO transport (fence/sgio) and the userspace iSCSI
// initiator (fence/iscsi) implement, and which tests fake with a few lines. A transport
// reports a failure to deliver the command as an error and the SCSI outcome as a Result;
// Result.Err turns the outcome into Go errors (ErrReservationConflict, *CheckCondition,
// *StatusError) so callers can use errors.Is / errors.As.
//
// Persistent reservations are the fencing primitive: each node registers a key, one
// node reserves the LU (normally Write Exclusive – Registrants Only), and a survivor
// fences a peer by preempting the peer's key, after which every write of the peer ends
// in RESERVATION CONFLICT. PR wraps the PERSISTENT RESERVE IN/OUT service actions:
//
//	pr := scsi.NewPR(dev)
//	if err := pr.RegisterIgnore(ctx, myKey); err != nil { ... }
//	if err := pr.Reserve(ctx, myKey, scsi.WriteExclusiveRegistrantsOnly); err != nil { ... }
//	// later, on the survivor:
//	err := pr.PreemptAndAbort(ctx, myKey, peerKey, scsi.WriteExclusiveRegistrantsOnly)
//
// PR consumes UNIT ATTENTION conditions (every new I_T nexus starts with one, a preempted
// one gets 2A/03) by re-sending the command a bounded number of times, because a UNIT
// ATTENTION means the command was not executed; OnUnitAttention lets the caller see them.
//
// Byte layouts follow SPC-4 (PERSISTENT RESERVE IN/OUT, sense data, INQUIRY, REPORT
// LUNS) and SBC-3 (READ/WRITE(16), READ CAPACITY(16), SYNCHRONIZE CACHE(16), UNMAP, the
// Block Limits and Logical Block Provisioning VPD pages). All multi-byte fields are big
// endian.
package scsi
