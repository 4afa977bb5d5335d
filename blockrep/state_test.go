package blockrep

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// peerSt is a peer of the state tables: node 1, "bravo".
func peerSt(conn ConnState, repl ReplState, role Role, disk DiskState) PeerState {
	return PeerState{NodeID: 1, Name: "bravo", Conn: conn, Repl: repl, Role: role, Disk: disk}
}

func stateOf(role Role, disk DiskState, peers ...PeerState) State {
	return State{Role: role, Disk: disk, Peers: peers}
}

var (
	peerConnSecondary = peerSt(Connected, Established, Secondary, UpToDate)
	peerConnPrimary   = peerSt(Connected, Established, Primary, UpToDate)
	peerAway          = peerSt(Connecting, ReplOff, RoleUnknown, DUnknown)
)

// checkRefusal checks err against a wanted sentinel (nil: any refusal) and message part.
func checkRefusal(t *testing.T, err error, ok bool, sentinel error, msg string) {
	t.Helper()
	if ok {
		if err != nil {
			t.Fatalf("refused: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("allowed, want a refusal containing %q", msg)
	}
	var se *StateError
	if !errors.As(err, &se) {
		t.Fatalf("error %T %v is not a *StateError", err, err)
	}
	if sentinel != nil && !errors.Is(err, sentinel) {
		t.Fatalf("error %q is not %v", err, sentinel)
	}
	if !strings.Contains(err.Error(), msg) {
		t.Fatalf("error %q does not contain %q", err, msg)
	}
}

func TestValidatePromotionNeedsUpToDateData(t *testing.T) {
	for d := Diskless; d <= UpToDate; d++ {
		t.Run("Secondary to Primary with "+d.String()+" disk", func(t *testing.T) {
			err := Validate(stateOf(Secondary, d), stateOf(Primary, d))
			checkRefusal(t, err, d == UpToDate, ErrNotUpToDate, "Need access to UpToDate data (local disk is "+d.String()+")")
		})
	}
}

func TestValidateEstablishedPrimaryMayLoseItsDiskButNotKeepBadData(t *testing.T) {
	for d := Diskless; d <= UpToDate; d++ {
		t.Run("Primary keeping a "+d.String()+" disk", func(t *testing.T) {
			err := Validate(stateOf(Primary, UpToDate), stateOf(Primary, d))
			ok := d == UpToDate || d == Diskless || d == Failed
			checkRefusal(t, err, ok, ErrNotUpToDate, "Primary with "+d.String()+" data")
		})
	}
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name     string
		old, new State
		ok       bool
		sentinel error
		msg      string
	}{
		{name: "promotion next to a connected Secondary",
			old: stateOf(Secondary, UpToDate, peerConnSecondary), new: stateOf(Primary, UpToDate, peerConnSecondary), ok: true},
		{name: "promotion while a connected peer is Primary",
			old: stateOf(Secondary, UpToDate, peerConnPrimary), new: stateOf(Primary, UpToDate, peerConnPrimary),
			sentinel: ErrPeerIsPrimary, msg: "peer bravo is Primary (only one Primary per resource)"},
		{name: "a peer becoming Primary while we are Primary",
			old: stateOf(Primary, UpToDate, peerConnSecondary), new: stateOf(Primary, UpToDate, peerConnPrimary),
			sentinel: ErrPeerIsPrimary, msg: "peer bravo is Primary"},
		{name: "a disconnected peer's last known role does not block promotion",
			old: stateOf(Secondary, UpToDate, peerSt(Connecting, ReplOff, Primary, UpToDate)),
			new: stateOf(Primary, UpToDate, peerSt(Connecting, ReplOff, Primary, UpToDate)), ok: true},
		{name: "promotion while SyncTarget",
			old:      stateOf(Secondary, UpToDate, peerSt(Connected, SyncTarget, Secondary, UpToDate)),
			new:      stateOf(Primary, UpToDate, peerSt(Connected, SyncTarget, Secondary, UpToDate)),
			sentinel: ErrNotUpToDate, msg: "resync from bravo in progress"},
		{name: "promotion while PausedSyncT",
			old:      stateOf(Secondary, Inconsistent, peerSt(Connected, PausedSyncT, Secondary, UpToDate)),
			new:      stateOf(Primary, Inconsistent, peerSt(Connected, PausedSyncT, Secondary, UpToDate)),
			sentinel: ErrNotUpToDate, msg: "Need access to UpToDate data"},
		{name: "promotion while SyncSource",
			old: stateOf(Secondary, UpToDate, peerSt(Connected, SyncSource, Secondary, Inconsistent)),
			new: stateOf(Primary, UpToDate, peerSt(Connected, SyncSource, Secondary, Inconsistent)), ok: true},
		{name: "demotion is always allowed",
			old: stateOf(Primary, UpToDate, peerConnSecondary), new: stateOf(Secondary, UpToDate, peerConnSecondary), ok: true},
		{name: "SyncTarget with Inconsistent data",
			old: stateOf(Secondary, UpToDate, peerConnSecondary),
			new: stateOf(Secondary, Inconsistent, peerSt(Connected, SyncTarget, Secondary, UpToDate)), ok: true},
		{name: "SyncTarget must be Inconsistent",
			old: stateOf(Secondary, Inconsistent, peerConnSecondary),
			new: stateOf(Secondary, Outdated, peerSt(Connected, WFBitMapT, Secondary, UpToDate)),
			msg: "SyncTarget from bravo with Outdated disk"},
		{name: "SyncSource with Outdated data",
			old: stateOf(Secondary, Outdated, peerConnSecondary),
			new: stateOf(Secondary, Outdated, peerSt(Connected, SyncSource, Secondary, Inconsistent)), ok: true},
		{name: "SyncSource needs at least Outdated data",
			old: stateOf(Secondary, Outdated, peerConnSecondary),
			new: stateOf(Secondary, Inconsistent, peerSt(Connected, StartingSyncS, Secondary, Inconsistent)),
			msg: "SyncSource to bravo with Inconsistent disk"},
		{name: "replication needs a connection",
			old: stateOf(Secondary, UpToDate, peerConnSecondary),
			new: stateOf(Secondary, UpToDate, peerSt(Connecting, Established, RoleUnknown, DUnknown)),
			msg: "replication Established without a connection to bravo"},
		{name: "a disconnected peer without replication",
			old: stateOf(Secondary, UpToDate, peerConnSecondary), new: stateOf(Secondary, UpToDate, peerAway), ok: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			checkRefusal(t, Validate(tc.old, tc.new), tc.ok, tc.sentinel, tc.msg)
		})
	}
}

func TestCanPromote(t *testing.T) {
	syncTarget := peerSt(Connected, SyncTarget, Secondary, UpToDate)
	cases := []struct {
		name     string
		s        State
		force    bool
		ok       bool
		sentinel error
		msg      string
	}{
		{name: "already Primary", s: stateOf(Primary, UpToDate, peerConnSecondary), ok: true},
		{name: "UpToDate Secondary", s: stateOf(Secondary, UpToDate, peerConnSecondary), ok: true},
		{name: "UpToDate and alone", s: stateOf(Secondary, UpToDate, peerAway), ok: true},
		{name: "Consistent needs force", s: stateOf(Secondary, Consistent), sentinel: ErrNotUpToDate, msg: "local disk is Consistent"},
		{name: "Outdated needs force", s: stateOf(Secondary, Outdated), sentinel: ErrNotUpToDate, msg: "local disk is Outdated"},
		{name: "Inconsistent needs force", s: stateOf(Secondary, Inconsistent), sentinel: ErrNotUpToDate, msg: "local disk is Inconsistent"},
		{name: "Diskless is refused", s: stateOf(Secondary, Diskless), sentinel: ErrNotUpToDate, msg: "local disk is Diskless"},
		{name: "force declares Consistent data UpToDate", s: stateOf(Secondary, Consistent), force: true, ok: true},
		{name: "force declares Outdated data UpToDate", s: stateOf(Secondary, Outdated), force: true, ok: true},
		{name: "force declares Inconsistent data UpToDate (initial sync)", s: stateOf(Secondary, Inconsistent, peerSt(Connected, Established, Secondary, Inconsistent)), force: true, ok: true},
		{name: "force cannot make up a disk: Diskless", s: stateOf(Secondary, Diskless), force: true, sentinel: ErrDiskless, msg: "no local disk to force UpToDate"},
		{name: "force cannot make up a disk: Attaching", s: stateOf(Secondary, Attaching), force: true, sentinel: ErrDiskless},
		{name: "force cannot make up a disk: Detaching", s: stateOf(Secondary, Detaching), force: true, sentinel: ErrDiskless},
		{name: "force cannot make up a disk: Failed", s: stateOf(Secondary, Failed), force: true, sentinel: ErrDiskless},
		{name: "a connected Primary peer blocks promotion", s: stateOf(Secondary, UpToDate, peerConnPrimary), sentinel: ErrPeerIsPrimary},
		{name: "force does not override a connected Primary peer", s: stateOf(Secondary, Outdated, peerConnPrimary), force: true, sentinel: ErrPeerIsPrimary},
		{name: "SyncTarget cannot be promoted", s: stateOf(Secondary, Inconsistent, syncTarget), sentinel: ErrNotUpToDate},
		{name: "SyncTarget can be forced (abandoning the resync)", s: stateOf(Secondary, Inconsistent, syncTarget), force: true, ok: true},
		{name: "PausedSyncT can be forced", s: stateOf(Secondary, Inconsistent, peerSt(Connected, PausedSyncT, Secondary, UpToDate)), force: true, ok: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.s.Clone()
			checkRefusal(t, CanPromote(tc.s, tc.force), tc.ok, tc.sentinel, tc.msg)
			if !reflect.DeepEqual(before, tc.s) {
				t.Fatalf("CanPromote changed its argument: %+v, was %+v", tc.s, before)
			}
		})
	}
}

func TestCloneIsDeep(t *testing.T) {
	s := stateOf(Secondary, UpToDate, peerConnSecondary)
	c := s.Clone()
	c.Peers[0].Role = Primary
	if s.Peers[0].Role != Secondary {
		t.Fatal("editing a clone changed the original's peers")
	}
	if p := s.Peer(1); p == nil || p.Name != "bravo" {
		t.Fatalf("Peer(1) = %+v", p)
	}
	if p := s.Peer(7); p != nil {
		t.Fatalf("Peer(7) = %+v, want nil", p)
	}
}

func TestSanitize(t *testing.T) {
	s := State{Role: Primary, Disk: UpToDate, Peers: []PeerState{
		{NodeID: 1, Name: "bravo", Conn: Connecting, Repl: SyncSource, Role: Secondary, Disk: Inconsistent,
			SplitBrain: true, Reason: "split-brain"},
		{NodeID: 2, Name: "charlie", Conn: Connected, Repl: Established, Role: Secondary, Disk: UpToDate,
			SplitBrain: true, Reason: "old reason"},
		{NodeID: 3, Name: "delta", Conn: StandAlone, Repl: ReplOff, Role: Primary, Disk: UpToDate,
			SplitBrain: true, Reason: "Split-Brain detected but unresolved, dropping connection!"},
	}}
	s.Sanitize()
	want := State{Role: Primary, Disk: UpToDate, Peers: []PeerState{
		// Not connected: nothing is known about the peer, and nothing replicates.
		{NodeID: 1, Name: "bravo", Conn: Connecting, Repl: ReplOff, Role: RoleUnknown, Disk: DUnknown,
			SplitBrain: true, Reason: "split-brain"},
		// Connected: a past split brain and drop reason are history.
		{NodeID: 2, Name: "charlie", Conn: Connected, Repl: Established, Role: Secondary, Disk: UpToDate},
		{NodeID: 3, Name: "delta", Conn: StandAlone, Repl: ReplOff, Role: RoleUnknown, Disk: DUnknown,
			SplitBrain: true, Reason: "Split-Brain detected but unresolved, dropping connection!"},
	}}
	if !reflect.DeepEqual(s, want) {
		t.Fatalf("Sanitize:\n got %+v\nwant %+v", s, want)
	}
	s.Sanitize()
	if !reflect.DeepEqual(s, want) {
		t.Fatal("Sanitize is not idempotent")
	}
}

func TestDiff(t *testing.T) {
	cases := []struct {
		name     string
		old, new State
		want     []string
	}{
		{name: "no change", old: stateOf(Secondary, UpToDate, peerConnSecondary), new: stateOf(Secondary, UpToDate, peerConnSecondary)},
		{name: "promotion", old: stateOf(Secondary, UpToDate), new: stateOf(Primary, UpToDate),
			want: []string{"role:Secondary->Primary"}},
		{name: "role and disk, in that order", old: stateOf(Secondary, Inconsistent), new: stateOf(Primary, UpToDate),
			want: []string{"role:Secondary->Primary", "disk:Inconsistent->UpToDate"}},
		{name: "a peer connects and becomes SyncTarget",
			old:  stateOf(Primary, UpToDate, peerAway),
			new:  stateOf(Primary, UpToDate, peerSt(Connected, SyncSource, Secondary, Inconsistent)),
			want: []string{"bravo connection:Connecting->Connected replication:Off->SyncSource peer-role:Unknown->Secondary peer-disk:DUnknown->Inconsistent"}},
		{name: "a peer's disk finishes its resync",
			old:  stateOf(Primary, UpToDate, peerSt(Connected, SyncSource, Secondary, Inconsistent)),
			new:  stateOf(Primary, UpToDate, peerSt(Connected, Established, Secondary, UpToDate)),
			want: []string{"bravo replication:SyncSource->Established peer-disk:Inconsistent->UpToDate"}},
		{name: "local and peer changes together, local first",
			old: stateOf(Secondary, UpToDate, peerConnPrimary, PeerState{NodeID: 2, Name: "charlie", Conn: Connected, Repl: Established, Role: Secondary, Disk: UpToDate}),
			new: stateOf(Secondary, Outdated, peerAway, PeerState{NodeID: 2, Name: "charlie", Conn: Connected, Repl: Established, Role: Secondary, Disk: Outdated}),
			want: []string{"disk:UpToDate->Outdated",
				"bravo connection:Connected->Connecting replication:Established->Off peer-role:Primary->Unknown peer-disk:UpToDate->DUnknown",
				"charlie peer-disk:UpToDate->Outdated"}},
		{name: "split-brain flag and reason are not state changes",
			old: stateOf(Secondary, UpToDate, peerSt(StandAlone, ReplOff, RoleUnknown, DUnknown)),
			new: stateOf(Secondary, UpToDate, PeerState{NodeID: 1, Name: "bravo", Conn: StandAlone, SplitBrain: true, Reason: "split-brain", Disk: DUnknown})},
		{name: "a peer missing from the old state was added",
			old: stateOf(Secondary, UpToDate), new: stateOf(Secondary, UpToDate, peerConnSecondary),
			want: []string{"bravo added:Connected"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := Diff(tc.old, tc.new)
			if len(got) == 0 && len(tc.want) == 0 {
				return
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Diff:\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestStateNames(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{Primary.String(), "Primary"}, {RoleUnknown.String(), "Unknown"}, {Role(9).String(), "?9"},
		{DUnknown.String(), "DUnknown"}, {UpToDate.String(), "UpToDate"}, {Connected.String(), "Connected"},
		{PausedSyncT.String(), "PausedSyncT"}, {VerifyT.String(), "VerifyT"}, {ProtocolA.String(), "A"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
	for _, r := range []ReplState{SyncSource, PausedSyncS, StartingSyncS, WFBitMapS} {
		if !r.IsSyncSource() || r.IsSyncTarget() {
			t.Errorf("%v: IsSyncSource %v IsSyncTarget %v", r, r.IsSyncSource(), r.IsSyncTarget())
		}
	}
	for _, r := range []ReplState{SyncTarget, PausedSyncT, StartingSyncT, WFBitMapT} {
		if r.IsSyncSource() || !r.IsSyncTarget() {
			t.Errorf("%v: IsSyncSource %v IsSyncTarget %v", r, r.IsSyncSource(), r.IsSyncTarget())
		}
	}
	for _, r := range []ReplState{ReplOff, Established, Ahead, Behind, VerifyS, VerifyT} {
		if r.IsSyncSource() || r.IsSyncTarget() {
			t.Errorf("%v counts as resync", r)
		}
	}
	// Disk states are ordered from worst to best where DRBD compares them.
	if !(Inconsistent < Outdated && Outdated < Consistent && Consistent < UpToDate && Failed < Inconsistent) {
		t.Error("disk state order broken")
	}
	for _, s := range []string{"A", "B", "C"} {
		p, err := ParseProtocol(s)
		if err != nil || p.String() != s {
			t.Errorf("ParseProtocol(%q) = %v, %v", s, p, err)
		}
	}
	if _, err := ParseProtocol("D"); err == nil {
		t.Error("ParseProtocol(D) succeeded")
	}
}
