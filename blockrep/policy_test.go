package blockrep

import (
	"strings"
	"testing"
)

func TestParsePolicies(t *testing.T) {
	p, err := ParseSplitBrainPolicy("discard-node-beta", "consensus", "violently-as0p", "retry-connect", true)
	if err != nil {
		t.Fatal(err)
	}
	want := SplitBrainPolicy{After0Pri: ASB0DiscardNode, DiscardNode: "beta", After1Pri: ASB1Consensus,
		After2Pri: ASB2ViolentlyAS0P, AlwaysASBP: true, RRConflict: RRRetryConnect}
	if p != want {
		t.Fatalf("got %+v, want %+v", p, want)
	}
	for _, bad := range [][4]string{{"discard-everything", "", "", ""}, {"", "discard-primary", "", ""},
		{"", "", "consensus", ""}, {"", "", "", "violent"}, {"discard-node-", "", "", ""}} {
		if _, err := ParseSplitBrainPolicy(bad[0], bad[1], bad[2], bad[3], false); err == nil || !strings.Contains(err.Error(), "unknown") {
			t.Errorf("%q: %v, want an unknown-value error", bad, err)
		}
	}
	if f, err := ParseFencingPolicy("resource-and-stonith"); err != nil || f != FencingResourceAndStonith {
		t.Errorf("fencing: %v %v", f, err)
	}
	if _, err := ParseFencingPolicy("stonith"); err == nil {
		t.Error("fencing stonith accepted")
	}
	if p, err := ParseIOErrorPolicy("call-local-io-error"); err != nil || p != IOErrorDetach {
		t.Errorf("call-local-io-error: %v %v (it detaches: blockrep runs no local-io-error handler)", p, err)
	}
}
