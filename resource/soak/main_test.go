package soak

import (
	"os"
	"testing"

	"github.com/blockrep/blockrep/resource/clustertest"
)

// TestMain removes the daemon binaries built for the trials, so that a soak leaves no
// temporary files behind.
func TestMain(m *testing.M) {
	code := m.Run()
	clustertest.RemoveBinaries()
	os.Exit(code)
}
