package promoter

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/blockrep/blockrep/blockrep"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// base is alpha, Secondary and eligible: UpToDate, quorum, the stack stopped.
// beta is a connected UpToDate Secondary, gamma a diskless tiebreaker.
func base() View {
	return View{
		Now: t0, Self: "alpha", Role: blockrep.Secondary, Disk: blockrep.UpToDate, Quorum: true,
		Peers: []Peer{
			{Name: "beta", Connected: true, Role: blockrep.Secondary, Disk: blockrep.UpToDate},
			{Name: "gamma", Connected: true, Role: blockrep.Secondary, Disk: blockrep.Diskless},
		},
		Stack: Stopped, HealthOK: true, RestartLimit: 3, RestartWindow: time.Minute,
		EligibleSince: t0,
	}
}

func ago(d time.Duration) time.Time { return t0.Add(-d) }

func TestDecide(t *testing.T) {
	primary := func(v *View) { v.Role = blockrep.Primary }
	running := func(v *View) { v.Role, v.Stack = blockrep.Primary, Running }
	unhealthy := func(v *View) { v.Role, v.Stack, v.HealthOK = blockrep.Primary, Running, false }
	peer := func(v *View, name string) *Peer {
		for i := range v.Peers {
			if v.Peers[i].Name == name {
				return &v.Peers[i]
			}
		}
		t.Fatalf("no peer %s", name)
		return nil
	}
	tests := []struct {
		name    string
		change  func(v *View)
		kind    Kind
		wait    time.Duration
		reason  string // a part of the reason
		failure bool
	}{
		// Secondary: whether and when to promote
		{"eligible, no preferred node", func(v *View) {}, Promote, 0, "no Primary", false},
		{"preferred node is this one", func(v *View) { v.Prefer = "alpha" }, Promote, 0, "", false},
		{"preferred peer eligible: wait the full delay", func(v *View) { v.Prefer = "beta" }, Wait, PreferDelay, "preferred node beta may promote first", false},
		{"preferred peer eligible: wait the rest of the delay", func(v *View) { v.Prefer, v.EligibleSince = "beta", ago(1500*time.Millisecond) }, Wait, 500 * time.Millisecond, "beta", false},
		{"preference delay just not elapsed", func(v *View) { v.Prefer, v.EligibleSince = "beta", ago(PreferDelay-time.Nanosecond) }, Wait, time.Nanosecond, "beta", false},
		{"preference delay elapsed exactly", func(v *View) { v.Prefer, v.EligibleSince = "beta", ago(PreferDelay) }, Promote, 0, "did not promote within 2s", false},
		{"preference delay long elapsed", func(v *View) { v.Prefer, v.EligibleSince = "beta", ago(time.Hour) }, Promote, 0, "", false},
		{"eligibility not yet recorded: the full delay", func(v *View) { v.Prefer, v.EligibleSince = "beta", time.Time{} }, Wait, PreferDelay, "", false},
		{"preferred peer disconnected", func(v *View) { v.Prefer = "beta"; peer(v, "beta").Connected = false }, Promote, 0, "", false},
		{"preferred peer Outdated", func(v *View) { v.Prefer = "beta"; peer(v, "beta").Disk = blockrep.Outdated }, Promote, 0, "", false},
		{"preferred peer Inconsistent (resync target)", func(v *View) { v.Prefer = "beta"; peer(v, "beta").Disk = blockrep.Inconsistent }, Promote, 0, "", false},
		{"preferred peer Consistent", func(v *View) { v.Prefer = "beta"; peer(v, "beta").Disk = blockrep.Consistent }, Promote, 0, "", false},
		{"preferred peer unknown to this node", func(v *View) { v.Prefer = "zeta" }, Promote, 0, "", false},
		{"preferred peer a diskless tiebreaker", func(v *View) { v.Prefer = "gamma" }, Promote, 0, "", false},
		{"preferred peer already Primary", func(v *View) { v.Prefer = "beta"; peer(v, "beta").Role = blockrep.Primary }, None, 0, "beta is Primary", false},
		{"a peer is Primary", func(v *View) { peer(v, "beta").Role = blockrep.Primary }, None, 0, "beta is Primary", false},
		{"a diskless peer is Primary", func(v *View) { peer(v, "gamma").Role = blockrep.Primary }, None, 0, "gamma is Primary", false},
		{"a disconnected peer was Primary", func(v *View) { peer(v, "beta").Role, peer(v, "beta").Connected = blockrep.Primary, false }, Promote, 0, "", false},
		{"only diskless peers", func(v *View) { v.Peers = v.Peers[1:] }, Promote, 0, "", false},
		{"no peers at all", func(v *View) { v.Peers = nil }, Promote, 0, "", false},
		{"no quorum", func(v *View) { v.Quorum = false }, None, 0, "no quorum", false},
		{"no quorum, preferred", func(v *View) { v.Quorum, v.Prefer = false, "alpha" }, None, 0, "no quorum", false},
		{"Outdated", func(v *View) { v.Disk = blockrep.Outdated }, None, 0, "local disk is Outdated", false},
		{"Consistent", func(v *View) { v.Disk = blockrep.Consistent }, None, 0, "local disk is Consistent", false},
		{"Inconsistent while a peer is UpToDate", func(v *View) { v.Disk = blockrep.Inconsistent }, None, 0, "local disk is Inconsistent", false},
		{"diskless tiebreaker never promotes", func(v *View) { v.Disk = blockrep.Diskless; v.Prefer = "alpha" }, None, 0, "local disk is Diskless", false},
		{"hold-off", func(v *View) { v.HoldOff = true }, None, 0, "held off", false},
		{"failed here recently: leave it to others", func(v *View) { v.LastFailure = ago(10 * time.Second) }, Wait, FailureBackoff - 10*time.Second, "stack failed here 10s ago", false},
		{"failure backoff outlasts the preference", func(v *View) { v.LastFailure, v.Prefer = ago(time.Second), "beta" }, Wait, FailureBackoff - time.Second, "stack failed", false},
		{"failure backoff over", func(v *View) { v.LastFailure = ago(FailureBackoff) }, Promote, 0, "", false},

		// Secondary with the stack not stopped
		{"demoted by someone else while running", func(v *View) { v.Stack = Running }, Stop, 0, "not Primary (Secondary) but the stack is running", false},
		{"Secondary with a failed stack", func(v *View) { v.Stack, v.FailedStep = Failed, "device" }, Stop, 0, "stack is failed", false},
		{"Secondary, stack starting", func(v *View) { v.Stack = Starting }, None, 0, "stack is starting", false},
		{"Secondary, stack stopping", func(v *View) { v.Stack = Stopping }, None, 0, "stack is stopping", false},
		{"role unknown, stack running", func(v *View) { v.Role, v.Stack = blockrep.RoleUnknown, Running }, Stop, 0, "not Primary (Unknown)", false},
		{"role unknown, stack stopped", func(v *View) { v.Role = blockrep.RoleUnknown }, None, 0, "role Unknown", false},
		{"unknown stack state", func(v *View) { v.Stack = "weird" }, None, 0, `unknown stack state "weird"`, false},

		// Primary
		{"Primary, stack stopped", primary, Start, 0, "Primary with the stack stopped", false},
		{"Primary, stack stopped, not UpToDate (diskless Primary)", func(v *View) { primary(v); v.Disk = blockrep.Diskless }, Start, 0, "", false},
		{"Primary, stack starting", func(v *View) { primary(v); v.Stack = Starting }, None, 0, "starting", false},
		{"Primary, stack starting, quorum lost", func(v *View) { primary(v); v.Stack, v.Quorum = Starting, false }, None, 0, "starting", false},
		{"Primary, stack stopping", func(v *View) { primary(v); v.Stack = Stopping }, None, 0, "stopping", false},
		{"Primary, stack stopped, no quorum", func(v *View) { primary(v); v.Quorum = false }, Demote, 0, "Primary without quorum", false},
		{"Primary, running, quorum lost", func(v *View) { running(v); v.Quorum = false }, StopAndDemote, 0, "lost quorum", false},
		{"Primary, failed, quorum lost", func(v *View) { primary(v); v.Stack, v.Quorum = Failed, false }, StopAndDemote, 0, "lost quorum", false},
		{"Primary, running, healthy", running, None, 0, "running", false},
		{"Primary, running, healthy, peers gone", func(v *View) { running(v); v.Peers = nil }, None, 0, "running", false},
		{"a start step failed", func(v *View) { primary(v); v.Stack, v.FailedStep = Failed, "filesystem" }, StopAndDemote, 0, "stack step filesystem failed", true},
		{"a step failed, name unknown", func(v *View) { primary(v); v.Stack = Failed }, StopAndDemote, 0, "stack step unknown failed", true},
		{"stack stopped after a failure, still Primary", func(v *View) { primary(v); v.LastFailure = ago(5 * time.Second) }, Demote, 0, "stack failed here 5s ago; handing over", false},
		{"stack stopped long after a failure, still Primary", func(v *View) { primary(v); v.LastFailure = ago(FailureBackoff) }, Start, 0, "", false},
		{"hold-off while Primary and unhealthy", func(v *View) { unhealthy(v); v.HoldOff = true; v.Quorum = false }, None, 0, "held off", false},

		// health checks and the restart limit
		{"unhealthy, no restarts yet", unhealthy, Restart, 0, "health check failed (restart 1 of 3 within 1m0s)", false},
		{"unhealthy, two restarts in the window", func(v *View) { unhealthy(v); v.Restarts = []time.Time{ago(50 * time.Second), ago(time.Second)} }, Restart, 0, "restart 3 of 3", false},
		{"unhealthy, exactly at the limit", func(v *View) {
			unhealthy(v)
			v.Restarts = []time.Time{ago(59 * time.Second), ago(30 * time.Second), ago(time.Second)}
		}, StopAndDemote, 0, "health check failed after 3 restarts within 1m0s (restart-limit 3)", true},
		{"unhealthy, one of three restarts exactly a window ago", func(v *View) {
			unhealthy(v)
			v.Restarts = []time.Time{ago(time.Minute), ago(30 * time.Second), ago(time.Second)}
		}, Restart, 0, "restart 3 of 3", false},
		{"unhealthy, one of three restarts just inside the window", func(v *View) {
			unhealthy(v)
			v.Restarts = []time.Time{ago(time.Minute - time.Nanosecond), ago(30 * time.Second), ago(time.Second)}
		}, StopAndDemote, 0, "", true},
		{"unhealthy, many restarts all outside the window", func(v *View) {
			unhealthy(v)
			v.Restarts = []time.Time{ago(time.Hour), ago(10 * time.Minute), ago(61 * time.Second), ago(time.Minute)}
		}, Restart, 0, "restart 1 of 3", false},
		{"unhealthy, restart-limit 1, one restart", func(v *View) { unhealthy(v); v.RestartLimit, v.Restarts = 1, []time.Time{ago(time.Second)} }, StopAndDemote, 0, "", true},
		{"unhealthy, no restarts allowed", func(v *View) { unhealthy(v); v.RestartLimit = 0 }, StopAndDemote, 0, "after 0 restarts", true},
		{"unhealthy and no quorum: quorum first", func(v *View) { unhealthy(v); v.Quorum = false }, StopAndDemote, 0, "lost quorum", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := base()
			tt.change(&v)
			a := Decide(v)
			if a.Kind != tt.kind || a.Wait != tt.wait || a.Failure != tt.failure || !strings.Contains(a.Reason, tt.reason) {
				t.Errorf("Decide = %v (wait %v, failure %v)\nwant %v (wait %v, failure %v), reason with %q",
					a, a.Wait, a.Failure, tt.kind, tt.wait, tt.failure, tt.reason)
			}
			if a.Reason == "" {
				t.Error("no reason")
			}
		})
	}
}

// TestTwoNodesAtOnce plays both sides of a simultaneous decision: with a
// preferred node, only it promotes at once; the other promotes only when
// the preferred one has not within the delay.
func TestTwoNodesAtOnce(t *testing.T) {
	alpha, beta := base(), base()
	alpha.Prefer, beta.Prefer = "alpha", "alpha"
	beta.Self = "beta"
	beta.Peers = []Peer{{Name: "alpha", Connected: true, Role: blockrep.Secondary, Disk: blockrep.UpToDate}, beta.Peers[1]}
	if a := Decide(alpha); a.Kind != Promote {
		t.Fatalf("preferred alpha: %v", a)
	}
	a := Decide(beta)
	if a.Kind != Wait {
		t.Fatalf("beta: %v", a)
	}
	// alpha's promotion won: beta sees a Primary peer and stays Secondary.
	beta.Now = beta.Now.Add(a.Wait)
	beta.Peers[0].Role = blockrep.Primary
	if a := Decide(beta); a.Kind != None {
		t.Errorf("beta after alpha promoted: %v", a)
	}
	// alpha's promotion failed and it stays Secondary: beta promotes after the delay.
	beta.Peers[0].Role = blockrep.Secondary
	if a := Decide(beta); a.Kind != Promote {
		t.Errorf("beta after the delay: %v", a)
	}
}

func TestEligible(t *testing.T) {
	if !Eligible(base()) {
		t.Error("base view not eligible")
	}
	for name, change := range map[string]func(v *View){
		"Primary":      func(v *View) { v.Role = blockrep.Primary },
		"role unknown": func(v *View) { v.Role = blockrep.RoleUnknown },
		"Outdated":     func(v *View) { v.Disk = blockrep.Outdated },
		"no quorum":    func(v *View) { v.Quorum = false },
		"running":      func(v *View) { v.Stack = Running },
		"hold-off":     func(v *View) { v.HoldOff = true },
		"peer Primary": func(v *View) { v.Peers[0].Role = blockrep.Primary },
	} {
		v := base()
		change(&v)
		if Eligible(v) {
			t.Errorf("%s: eligible", name)
		}
	}
	v := base()
	v.Prefer, v.LastFailure = "beta", t0
	if !Eligible(v) {
		t.Error("preference and failure backoff are not eligibility")
	}
}

func TestPruneRestarts(t *testing.T) {
	in := []time.Time{ago(time.Hour), ago(time.Minute), ago(time.Minute - time.Nanosecond), ago(0), t0.Add(time.Second)}
	got := PruneRestarts(in, t0, time.Minute)
	want := []time.Time{ago(time.Minute - time.Nanosecond), ago(0), t0.Add(time.Second)}
	if len(got) != len(want) {
		t.Fatalf("PruneRestarts = %v, want %v", got, want)
	}
	for i := range got {
		if !got[i].Equal(want[i]) {
			t.Errorf("PruneRestarts[%d] = %v, want %v", i, got[i], want[i])
		}
	}
	if got := PruneRestarts(nil, t0, time.Minute); len(got) != 0 {
		t.Errorf("PruneRestarts(nil) = %v", got)
	}
}

func TestStrings(t *testing.T) {
	for k, want := range map[Kind]string{None: "none", Wait: "wait", Promote: "promote", Start: "start", Restart: "restart",
		Stop: "stop", StopAndDemote: "stop-and-demote", Demote: "demote", Kind(99): "kind(99)"} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", k, got, want)
		}
	}
	if got := (Action{Kind: Wait, Wait: time.Second, Reason: "r"}).String(); got != "wait 1s: r" {
		t.Errorf("Action.String() = %q", got)
	}
	if got := (Action{Kind: Promote}).String(); got != "promote" {
		t.Errorf("Action.String() = %q", got)
	}
}

// randomView draws a view from every state the inputs can take, and some
// they should not (a bogus stack state, restarts in the future).
func randomView(r *rand.Rand) View {
	pick := func(n int) int { return r.IntN(n) }
	roles := []blockrep.Role{blockrep.RoleUnknown, blockrep.Secondary, blockrep.Primary}
	disk := func() blockrep.DiskState { return blockrep.DiskState(pick(int(blockrep.UpToDate) + 1)) }
	stacks := []Stack{Stopped, Starting, Running, Stopping, Failed, "bogus"}
	names := []string{"beta", "gamma", "delta", "epsilon"}
	dur := func(max time.Duration) time.Duration { return time.Duration(r.Int64N(int64(max))) }
	v := View{
		Now: t0, Self: "alpha",
		Role:     roles[pick(len(roles))],
		Disk:     disk(),
		Quorum:   pick(2) == 0,
		Prefer:   []string{"", "alpha", "beta", "gamma", "zeta"}[pick(5)],
		Stack:    stacks[pick(len(stacks))],
		HealthOK: pick(2) == 0,
		HoldOff:  pick(8) == 0,

		RestartLimit:  pick(5),
		RestartWindow: time.Second + dur(2*time.Minute),
	}
	if v.Stack == Failed && pick(2) == 0 {
		v.FailedStep = "postgres"
	}
	for _, n := range names[:pick(len(names)+1)] {
		v.Peers = append(v.Peers, Peer{Name: n, Connected: pick(3) != 0, Role: roles[pick(len(roles))], Disk: disk()})
	}
	for range pick(6) {
		v.Restarts = append(v.Restarts, t0.Add(-dur(3*time.Minute)+time.Second))
	}
	if pick(2) == 0 {
		v.EligibleSince = t0.Add(-dur(2 * PreferDelay))
	}
	if pick(3) == 0 {
		v.LastFailure = t0.Add(-dur(2 * FailureBackoff))
	}
	return v
}

// TestDecideProperties checks, over many generated views, the rules that
// must hold whatever the combination.
func TestDecideProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	n := 200000
	if testing.Short() {
		n = 20000
	}
	seen := map[Kind]int{}
	for i := 0; i < n; i++ {
		v := randomView(r)
		a := Decide(v)
		seen[a.Kind]++
		fail := func(rule string) {
			t.Helper()
			t.Fatalf("%s\nview %+v\naction %v", rule, v, a)
		}
		if a.Reason == "" {
			fail("no reason")
		}
		if v.HoldOff && a.Kind != None {
			fail("acted during hold-off")
		}
		if a.Kind == Promote || a.Kind == Wait {
			switch {
			case !v.Quorum:
				fail("promotes without quorum")
			case v.Disk != blockrep.UpToDate:
				fail("promotes without UpToDate data")
			case connectedPrimary(v) != "":
				fail("promotes while a connected peer is Primary")
			case v.Role != blockrep.Secondary || v.Stack != Stopped:
				fail("promotes while not a stopped Secondary")
			case !Eligible(v):
				fail("promotes while not Eligible")
			}
		}
		if a.Kind == Promote && backoff(v) > 0 {
			fail("promotes within the failure backoff")
		}
		if a.Kind == Wait && (a.Wait <= 0 || a.Wait > FailureBackoff) {
			fail("waits a bad duration")
		}
		if a.Kind != Wait && a.Wait != 0 {
			fail("wait set on another action")
		}
		if (a.Kind == Start || a.Kind == Restart) && (v.Role != blockrep.Primary || !v.Quorum) {
			fail("starts the service without being a Primary with quorum")
		}
		if a.Kind == Restart && (v.Stack != Running || v.HealthOK || recent(v.Restarts, v.Now, v.RestartWindow) >= v.RestartLimit) {
			fail("restarts without a failed health check within the limit")
		}
		if (a.Kind == StopAndDemote || a.Kind == Demote) && v.Role != blockrep.Primary {
			fail("demotes a node that is not Primary")
		}
		if a.Failure && a.Kind != StopAndDemote {
			fail("failure set on another action")
		}
		if (v.Stack == Starting || v.Stack == Stopping) && a.Kind != None {
			fail("acted while the stack is in transition")
		}
		// Waiting is never endless: after the wait, with eligibility
		// recorded, the same view promotes.
		if a.Kind == Wait {
			w := v
			w.Now = v.Now.Add(a.Wait)
			if w.EligibleSince.IsZero() {
				w.EligibleSince = v.Now
			}
			if b := Decide(w); b.Kind != Promote {
				t.Fatalf("after waiting %v: %v\nview %+v", a.Wait, b, w)
			}
		}
	}
	for k := None; k <= Demote; k++ {
		if seen[k] == 0 {
			t.Errorf("no generated view led to %v", k)
		}
	}
}
