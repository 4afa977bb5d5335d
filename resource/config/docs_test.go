package config

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestDocsListEveryIgnoredOption keeps docs/configuration.md true to the code.
func TestDocsListEveryIgnoredOption(t *testing.T) {
	b, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)<!-- ignored-options:begin -->(.*)<!-- ignored-options:end -->`).FindSubmatch(b)
	if m == nil {
		t.Fatal("docs/configuration.md lacks the ignored-options block")
	}
	var listed []string
	for _, f := range strings.Split(string(m[1]), ",") {
		if f = strings.TrimSpace(f); f != "" {
			listed = append(listed, f)
		}
	}
	slices.Sort(listed)
	if want := IgnoredOptions(); !slices.Equal(listed, want) {
		t.Errorf("docs list %v\ncode ignores %v", listed, want)
	}
}
