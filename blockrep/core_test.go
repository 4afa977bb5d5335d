package blockrep

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"

	"github.com/blockrep/blockrep/transport"
)

// TestCoreTranscripts replays testdata/core/*.txt: each command is an event (or sets up
// a core), and the expected output is the effects the core returns, then its state.
// Regenerate with: go test ./blockrep -run TestCoreTranscripts -rewrite
func TestCoreTranscripts(t *testing.T) {
	datadriven.Walk(t, "testdata/core", func(t *testing.T, path string) {
		var c *Core
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			if d.Cmd == "init" {
				c = initCore(t, d)
				return c.describe()
			}
			if c == nil {
				t.Fatalf("%s: init first", d.Pos)
			}
			ev := parseEvent(t, c, d)
			before := c.Clone()
			fx, err := c.Step(ev)
			var b strings.Builder
			for _, e := range fx {
				b.WriteString(e.String())
				b.WriteByte('\n')
			}
			if err != nil {
				fmt.Fprintf(&b, "error: %v\n", err)
				if refusedKeepsState(ev) && !reflect.DeepEqual(before.State, c.State) {
					t.Fatalf("%s: a refused %s changed the state", d.Pos, d.Cmd)
				}
			}
			b.WriteString(c.describe())
			return b.String()
		})
	})
}

// refusedKeepsState: an operator request the core refuses leaves everything as it was.
func refusedKeepsState(ev Event) bool {
	switch ev.(type) {
	case EvConnect, EvPromote, EvDemote, EvInvalidate, EvResumeIO, EvPromoteCommit, EvOutdate, EvNewCurrentUUID:
		return true
	}
	return false
}

func counterUUID() func() uint64 {
	n := uint64(1000)
	return func() uint64 { n += 8; return n }
}

// initCore: init [peers=1,2] [fencing=POLICY] [disk=STATE] [current=N] [al-updates=false]
func initCore(t *testing.T, d *datadriven.TestData) *Core {
	sb := Superblock{MaxPeers: MaxNodes - 1, Current: 100, Flags: MDConsistent | MDWasUpToDate}
	for i := range sb.Peers {
		sb.Peers[i].NodeID = -1
	}
	peers := []CorePeerConfig{{NodeID: 1, Name: "beta"}}
	al := true
	var quorum QuorumPolicy
	for _, a := range d.CmdArgs {
		v := ""
		if len(a.Vals) > 0 {
			v = a.Vals[0]
		}
		switch a.Key {
		case "peers":
			peers = nil
			for _, s := range a.Vals {
				id, _ := strconv.Atoi(s)
				peers = append(peers, CorePeerConfig{NodeID: id, Name: nodeName(id)})
			}
		case "fencing":
			f, err := ParseFencingPolicy(v)
			if err != nil {
				t.Fatal(err)
			}
			for i := range peers {
				peers[i].Fencing = f
			}
		case "disk":
			switch v {
			case "Inconsistent":
				sb.Flags = 0
			case "Outdated":
				sb.Flags |= MDOutdated
			case "UpToDate":
			default:
				t.Fatalf("init disk=%s", v)
			}
		case "current":
			sb.Current, _ = strconv.ParseUint(v, 10, 64)
		case "al-updates":
			al = v != "false"
		case "quorum":
			var err error
			if quorum, err = ParseQuorumPolicy(v, argStr(t, d, "on-no-quorum", "")); err != nil {
				t.Fatal(err)
			}
		case "on-no-quorum":
		default:
			t.Fatalf("init: unknown argument %s", a.Key)
		}
	}
	for i, p := range peers {
		sb.Peers[i].NodeID = p.NodeID
	}
	return NewCore(0, "alpha", al, quorum, peers, sb, counterUUID())
}

func nodeName(id int) string {
	return [...]string{"alpha", "beta", "gamma", "delta"}[id]
}

func argInt(t *testing.T, d *datadriven.TestData, key string, def int) int {
	if !d.HasArg(key) {
		return def
	}
	var v int
	d.ScanArgs(t, key, &v)
	return v
}

func argStr(t *testing.T, d *datadriven.TestData, key, def string) string {
	if !d.HasArg(key) {
		return def
	}
	var v string
	d.ScanArgs(t, key, &v)
	return v
}

func parseRole(t *testing.T, s string) Role {
	for r := RoleUnknown; r <= Primary; r++ {
		if r.String() == s {
			return r
		}
	}
	t.Fatalf("role %q", s)
	return 0
}

func parseDisk(t *testing.T, s string) DiskState {
	for ds := Diskless; ds <= UpToDate; ds++ {
		if ds.String() == s {
			return ds
		}
	}
	t.Fatalf("disk %q", s)
	return 0
}

func parsePurpose(t *testing.T, s string) HandlerPurpose {
	for p := PurposeLostPeer; p <= PurposeResynced; p++ {
		if p.String() == s {
			return p
		}
	}
	t.Fatalf("purpose %q", s)
	return 0
}

// parseEvent turns a transcript command into an event. "session peer=N role=… disk=…
// current=… [flags=…]" is the handshake and the session going live in one command:
// it computes the peer's side and DRBD's decision the way the shell does.
func parseEvent(t *testing.T, c *Core, d *datadriven.TestData) Event {
	peer := argInt(t, d, "peer", -1)
	var err error
	if e := argStr(t, d, "err", ""); e != "" {
		err = errors.New(e)
	}
	switch d.Cmd {
	case "connect":
		return EvConnect{Peer: peer, DiscardMyData: d.HasArg("discard-my-data")}
	case "disconnect":
		return EvDisconnect{Peer: peer}
	case "add-peer":
		return EvAddPeer{Config: CorePeerConfig{NodeID: peer, Name: nodeName(peer), Tiebreaker: d.HasArg("tiebreaker")}, Want: d.HasArg("want")}
	case "promote":
		return EvPromote{Force: d.HasArg("force")}
	case "promote-abort":
		return EvPromoteAbort{Err: err}
	case "promote-commit":
		return EvPromoteCommit{}
	case "demote":
		return EvDemote{}
	case "demote-commit":
		return EvDemoteCommit{FlushErr: err}
	case "invalidate":
		return EvInvalidate{}
	case "resume-io":
		return EvResumeIO{}
	case "outdate":
		return EvOutdate{}
	case "new-current-uuid":
		return EvNewCurrentUUID{ClearBitmap: d.HasArg("clear-bitmap")}
	case "disk-failed":
		return EvDiskFailed{}
	case "handler-done":
		return EvHandlerDone{Name: argStr(t, d, "name", "fence-peer"), Peer: peer,
			Purpose: parsePurpose(t, argStr(t, d, "for", "lost-peer")), Exit: argInt(t, d, "exit", 0), Err: err}
	case "handshake", "session-up":
		self := c.HandshakeSide(peer, uint64(argInt(t, d, "self-dirty", 0)))
		side := HandshakeSide{NodeID: peer, Name: nodeName(peer), Role: parseRole(t, argStr(t, d, "role", "Secondary")),
			Disk: parseDisk(t, argStr(t, d, "disk", "UpToDate")), Dirty: uint64(argInt(t, d, "dirty", 0))}
		side.Gen.Current = uint64(argInt(t, d, "current", int(c.Meta.Current)))
		side.Gen.Bitmap[c.NodeID] = uint64(argInt(t, d, "bitmap", 0))
		side.Gen.History[0] = uint64(argInt(t, d, "history", 0))
		if d.HasArg("crashed-primary") {
			side.Gen.Flags |= GenCrashedPrimary
		}
		if d.HasArg("primary-connected") {
			side.PrimaryConnected = true
		}
		res := DecideHandshake(self, side, SplitBrainPolicy{})
		if res.Drop() {
			t.Fatalf("%s: the handshake drops the connection (%s)", d.Pos, res.Reason)
		}
		if d.Cmd == "handshake" {
			return EvHandshake{Peer: peer, Self: self, PeerSide: side, Result: res}
		}
		return EvSessionUp{Peer: peer, Self: self, PeerSide: side, Result: res}
	case "link-down":
		return EvLinkDown{Peer: peer, Graceful: d.HasArg("graceful")}
	case "session-ended":
		return EvSessionEnded{Peer: peer, StandAlone: d.HasArg("standalone"), SplitBrain: d.HasArg("split-brain"),
			Reason: argStr(t, d, "reason", ""), HotExtents: argInt(t, d, "hot", 0)}
	case "peer-state":
		return EvPeerState{Peer: peer, Role: parseRole(t, argStr(t, d, "role", "Secondary")), Disk: parseDisk(t, argStr(t, d, "disk", "UpToDate"))}
	case "peer-new-uuid":
		g := transport.Generation{Current: uint64(argInt(t, d, "current", 0)), Prev: uint64(argInt(t, d, "prev", 0))}
		if d.HasArg("diskless") {
			g.Flags = transport.GenSenderDiskless
		}
		if d.HasArg("clear-bitmap") {
			g.Flags = transport.GenClearBitmap
		}
		return EvPeerNewUUID{Peer: peer, Gen: g}
	case "promote-request":
		return EvPromoteRequest{Peer: peer, ID: uint64(argInt(t, d, "id", 1))}
	case "sync-request":
		return EvSyncRequest{Peer: peer, ID: uint64(argInt(t, d, "id", 1)), SenderIsSource: d.HasArg("sender-is-source")}
	case "sync-reply":
		r := transport.Reply{ID: uint64(argInt(t, d, "id", 1)), OK: d.HasArg("ok"), Reason: argStr(t, d, "reason", "")}
		return EvSyncReply{Peer: peer, Reply: r, SenderIsSource: d.HasArg("sender-is-source")}
	case "resync-done":
		var h [HistoryLen]uint64
		h[0] = uint64(argInt(t, d, "history", 0))
		return EvResyncDone{Peer: peer, Current: uint64(argInt(t, d, "current", 0)), History: h}
	case "resync-finished":
		return EvResyncFinished{Peer: peer, Session: uint64(argInt(t, d, "session", 1))}
	}
	t.Fatalf("%s: unknown command %q", d.Pos, d.Cmd)
	return nil
}

// describe prints the core the way transcripts read it.
func (c *Core) describe() string {
	var b strings.Builder
	s := c.State
	fmt.Fprintf(&b, "> %s %s", s.Role, s.Disk)
	if s.Suspended != "" {
		fmt.Fprintf(&b, " suspended:%s", s.Suspended)
	}
	if s.NoQuorum {
		b.WriteString(" quorum:no")
	}
	if c.Promoting {
		b.WriteString(" promoting")
	}
	fmt.Fprintf(&b, " current=%s\n", uuidStr(c.Meta.Current))
	for i, p := range c.Peers {
		ps := s.Peers[i]
		fmt.Fprintf(&b, "> %s %s", p.Name, ps.Conn)
		if ps.Conn == Connected {
			fmt.Fprintf(&b, " %s %s/%s", ps.Repl, ps.Role, ps.Disk)
		}
		var flags []string
		if p.Want {
			flags = append(flags, "want")
		}
		if p.Deferred {
			flags = append(flags, "deferred")
		}
		if p.Fence {
			flags = append(flags, "fence")
		}
		if ps.SplitBrain {
			flags = append(flags, "split-brain")
		}
		if len(flags) > 0 {
			fmt.Fprintf(&b, " [%s]", strings.Join(flags, ","))
		}
		if sl := c.Meta.Slots[i]; sl.BitmapUUID != 0 || sl.Flags != 0 {
			fmt.Fprintf(&b, " slot=%s/%s", uuidStr(sl.BitmapUUID), peerFlagsStr(sl.Flags))
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// TestCoreRandomWalk drives a three-node core with random events and checks what must
// hold after every step: the state is one Validate accepts, a refused operator request
// changed nothing, and a metadata change is persisted before any message that follows
// it in the same step.
func TestCoreRandomWalk(t *testing.T) {
	for seed := uint64(0); seed < 2000; seed++ {
		r := rand.New(rand.NewPCG(seed, 7))
		sb := Superblock{MaxPeers: MaxNodes - 1, Current: 100, Flags: MDConsistent | MDWasUpToDate}
		for i := range sb.Peers {
			sb.Peers[i].NodeID = -1
		}
		sb.Peers[0].NodeID, sb.Peers[1].NodeID = 1, 2
		if seed%4 == 0 { // fresh metadata, where new-current-uuid --clear-bitmap applies
			sb.Current, sb.Flags = UUIDJustCreated, 0
		}
		pol := []FencingPolicy{FencingDontCare, FencingResourceOnly, FencingResourceAndStonith}[r.IntN(3)]
		q := []QuorumPolicy{{}, {Need: QuorumMajority}, {Need: QuorumMajority, IOError: true}}[r.IntN(3)]
		// Every other seed, gamma is a diskless tiebreaker.
		tb := seed%2 == 1
		c := NewCore(0, "alpha", true, q, []CorePeerConfig{{NodeID: 1, Name: "beta", Fencing: pol}, {NodeID: 2, Name: "gamma", Fencing: pol, Tiebreaker: tb}}, sb, counterUUID())
		for step := 0; step < 60; step++ {
			ev := randomEvent(r, c)
			before := c.Clone()
			fx, err := c.Step(ev)
			if err != nil && refusedKeepsState(ev) && !reflect.DeepEqual(before.State, c.State) {
				t.Fatalf("seed %d step %d: refused %T changed the state", seed, step, ev)
			}
			checkInvariants(t, seed, step, ev, c, fx)
		}
	}
}

func checkInvariants(t *testing.T, seed uint64, step int, ev Event, c *Core, fx []Effect) {
	fail := func(f string, a ...any) {
		t.Helper()
		t.Fatalf("seed %d step %d (%T %+v): %s\n%s", seed, step, ev, ev, fmt.Sprintf(f, a...), c.describe())
	}
	s := c.State
	if s.Role == Primary && s.Disk != UpToDate && s.Disk != Diskless {
		fail("Primary with %s disk", s.Disk)
	}
	for _, ps := range s.Peers {
		if ps.Repl.IsSyncTarget() && s.Disk != Inconsistent {
			fail("SyncTarget of %s with %s disk", ps.Name, s.Disk)
		}
		if ps.Conn != Connected && (ps.Repl != ReplOff || ps.Role != RoleUnknown) {
			fail("%s not connected but %s/%s", ps.Name, ps.Repl, ps.Role)
		}
		if ps.Conn == Connected && ps.Role == Primary && s.Role == Primary {
			fail("two Primaries")
		}
	}
	for i, p := range c.Peers {
		if p.Tiebreaker && (c.Meta.Slots[i].BitmapUUID != 0 || c.ps(i).Repl.IsSyncSource() || c.ps(i).Repl.IsSyncTarget()) {
			fail("tiebreaker %s has a bitmap generation or a resync", p.Name)
		}
	}
	// A change the core derives itself is never one Validate refuses.
	for _, e := range fx {
		if l, ok := e.(Log); ok && strings.HasPrefix(l.Msg, "internal:") {
			fail("%s", l)
		}
	}
	// The last persisted metadata is the core's metadata.
	var last *Persist
	for i := range fx {
		if p, ok := fx[i].(Persist); ok {
			last = &p
		}
	}
	if last != nil && !reflect.DeepEqual(last.Meta, c.Meta) {
		fail("the metadata changed after its last Persist: persisted %+v, core %+v", last.Meta, c.Meta)
	}
}

func randomEvent(r *rand.Rand, c *Core) Event {
	peer := 1 + r.IntN(2)
	roles := []Role{Secondary, Primary}
	disks := []DiskState{Inconsistent, Outdated, UpToDate}
	if c.Peers[c.peer(peer)].Tiebreaker {
		roles, disks = []Role{Secondary, Secondary}, []DiskState{Diskless, Diskless, Diskless}
	}
	switch r.IntN(18) {
	case 0:
		return EvConnect{Peer: -1}
	case 1:
		return EvDisconnect{Peer: peer}
	case 2:
		return EvPromote{Force: r.IntN(4) == 0}
	case 3:
		if c.Promoting {
			return EvPromoteCommit{}
		}
		return EvDemote{}
	case 4:
		return EvDemoteCommit{}
	case 5, 6:
		if c.ps(c.peer(peer)).Conn == Connected {
			return EvLinkDown{Peer: peer, Graceful: r.IntN(2) == 0}
		}
		side := HandshakeSide{NodeID: peer, Name: nodeName(peer), Role: roles[r.IntN(2)], Disk: disks[r.IntN(3)]}
		side.Gen.Current = c.Meta.Current
		if r.IntN(3) == 0 {
			side.Gen.Current = 100 + uint64(r.IntN(3))*8
		}
		self := c.HandshakeSide(peer, 0)
		res := DecideHandshake(self, side, SplitBrainPolicy{})
		if res.Drop() {
			return EvSessionEnded{Peer: peer, StandAlone: !res.Retry, Reason: res.Reason}
		}
		c.Step(EvHandshake{Peer: peer, Self: self, PeerSide: side, Result: res})
		return EvSessionUp{Peer: peer, Self: self, PeerSide: side, Result: res}
	case 7:
		return EvSessionEnded{Peer: peer, HotExtents: r.IntN(3)}
	case 8:
		if c.ps(c.peer(peer)).Conn == Connected && c.State.Role != Primary {
			return EvPeerState{Peer: peer, Role: roles[r.IntN(2)], Disk: disks[r.IntN(3)]}
		}
		return EvPeerState{Peer: peer, Role: Secondary, Disk: disks[r.IntN(3)]}
	case 9:
		return EvPromoteRequest{Peer: peer, ID: 1}
	case 10:
		return EvSyncRequest{Peer: peer, ID: 1, SenderIsSource: r.IntN(2) == 0}
	case 11:
		return EvSyncReply{Peer: peer, Reply: transport.Reply{ID: 1, OK: r.IntN(2) == 0}, SenderIsSource: r.IntN(2) == 0}
	case 12:
		if c.ps(c.peer(peer)).Repl.IsSyncTarget() {
			return EvResyncDone{Peer: peer, Current: c.Meta.Current + 8}
		}
		return EvResyncFinished{Peer: peer, Session: c.Peers[c.peer(peer)].Session}
	case 13:
		return EvHandlerDone{Name: "fence-peer", Peer: peer, Purpose: PurposeLostPeer, Exit: []int{4, 7, 1}[r.IntN(3)]}
	case 14:
		return EvResumeIO{}
	case 15:
		return EvOutdate{}
	case 16:
		return EvNewCurrentUUID{ClearBitmap: r.IntN(2) == 0}
	default:
		g := transport.Generation{Current: c.Meta.Current + 16, Prev: c.Meta.Current}
		if r.IntN(3) == 0 {
			g.Flags = transport.GenClearBitmap
		}
		return EvPeerNewUUID{Peer: peer, Gen: g}
	}
}

// TestTranscriptsCoverEveryEvent keeps the transcripts complete: every event kind the
// core knows appears in at least one of them.
func TestTranscriptsCoverEveryEvent(t *testing.T) {
	commands := map[string]string{ // transcript command → event
		"connect": "EvConnect", "disconnect": "EvDisconnect", "promote": "EvPromote",
		"promote-abort": "EvPromoteAbort", "promote-commit": "EvPromoteCommit", "demote": "EvDemote",
		"demote-commit": "EvDemoteCommit", "invalidate": "EvInvalidate", "resume-io": "EvResumeIO",
		"disk-failed": "EvDiskFailed", "handler-done": "EvHandlerDone", "handshake": "EvHandshake",
		"session-up": "EvSessionUp", "link-down": "EvLinkDown", "session-ended": "EvSessionEnded",
		"peer-state": "EvPeerState", "peer-new-uuid": "EvPeerNewUUID", "promote-request": "EvPromoteRequest",
		"sync-request": "EvSyncRequest", "sync-reply": "EvSyncReply", "resync-done": "EvResyncDone",
		"resync-finished": "EvResyncFinished", "add-peer": "EvAddPeer", "outdate": "EvOutdate", "new-current-uuid": "EvNewCurrentUUID",
	}
	seen := map[string]bool{}
	files, _ := filepath.Glob("testdata/core/*.txt")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if w := strings.Fields(line); len(w) > 0 {
				seen[w[0]] = true
			}
		}
	}
	for cmd, ev := range commands {
		if !seen[cmd] {
			t.Errorf("no transcript applies %s (command %q)", ev, cmd)
		}
	}
	// And the map names every event type there is.
	src, err := os.ReadFile("core_events.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`(?m)^type (Ev\w+) struct`).FindAllStringSubmatch(string(src), -1) {
		found := false
		for _, ev := range commands {
			found = found || ev == m[1]
		}
		if !found {
			t.Errorf("event %s has no transcript command", m[1])
		}
	}
}
