// Package blockrep is the replication engine: one Volume per resource and node, the
// Primary's write path (a Backend the NBD server exports), its peers' links, metadata,
// bitmaps and activity log.
//
// Decisions are kept apart from what carries them out. The pure parts — state
// validation (Validate), generation comparison (CompareGenerations), the sync handshake
// (DecideHandshake) and the control-plane core (Core.Step: event in, effects out) — are
// plain functions over plain data with no I/O, clocks or goroutines. The shell (Volume,
// Peer) feeds them events from the operator, the links and the disk, and carries out
// the effects in order. See docs/design.md.
package blockrep
