package soak

import (
	"os"
	"strings"
	"testing"

	"github.com/blockrep/blockrep/internal/clustertest"
)

// TestMain removes the daemon binaries built for the trials, so that a soak leaves no
// temporary files behind, and tells the race-enabled blockrepadm not to linger: by
// default the race runtime sleeps a second at exit (GORACE atexit_sleep_ms), and a
// trial runs dozens of commands.
func TestMain(m *testing.M) {
	if g := os.Getenv("GORACE"); !strings.Contains(g, "atexit_sleep_ms") {
		os.Setenv("GORACE", strings.TrimSpace(g+" atexit_sleep_ms=0"))
	}
	code := m.Run()
	clustertest.RemoveBinaries()
	os.Exit(code)
}
