package agent

import (
	"strings"
	"testing"
)

// Help must not need a configuration: an operator runs it on a machine without one.
func TestHelpReadsNoConfiguration(t *testing.T) {
	for _, arg := range []string{"--help", "-h"} {
		var out, errb strings.Builder
		if code := Main([]string{arg, "--config=/nonexistent"}, nil, &out, &errb); code != exitOK {
			t.Fatalf("%s: exit %d, stderr %q", arg, code, errb.String())
		}
		if !strings.Contains(out.String(), "--plug") || errb.Len() != 0 {
			t.Fatalf("%s: stdout %q stderr %q", arg, out.String(), errb.String())
		}
	}
}
