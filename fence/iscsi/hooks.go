package iscsi

import (
	"context"
	"fmt"

	"github.com/blockrep/blockrep/fence/scsi"
)

// KeepRegistration returns an OnReconnect hook for a node that holds persistent
// reservation key on the session's LUN.
//
// SPC ties a registration to the I_T nexus (initiator name + ISID + target port), which
// a re-login with the same ISID keeps. tgtd ties it to the iSCSI session instead: after
// a reconnect the new session is unregistered while the old key lingers in READ KEYS.
// The hook therefore reads the keys first: if key is still there nobody preempted it,
// and REGISTER AND IGNORE EXISTING KEY puts the new nexus back under it (a no-op where
// the registration survived). If key is gone this node was fenced while disconnected:
// the hook re-registers nothing and returns an error wrapping
// scsi.ErrReservationConflict, so the writes interrupted by the disconnect fail instead
// of landing.
//
// A target that lost all reservation state — tgtd after a restart, since it does not
// implement APTPL — looks exactly like a preemption from here. The hook fails safe:
// whether to register again is the cluster manager's decision, not the initiator's.
func KeepRegistration(key uint64) func(ctx context.Context, s *Session) error {
	return func(ctx context.Context, s *Session) error {
		pr := scsi.NewPR(s)
		ok, err := pr.Registered(ctx, key)
		if err != nil {
			return fmt.Errorf("checking registration %#x: %w", key, err)
		}
		if !ok {
			return fmt.Errorf("key %#x was preempted while disconnected: %w", key, scsi.ErrReservationConflict)
		}
		if err := pr.RegisterIgnore(ctx, key); err != nil {
			return fmt.Errorf("re-registering %#x: %w", key, err)
		}
		return nil
	}
}
