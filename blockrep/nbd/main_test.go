package nbd

import (
	"fmt"
	"os"
	"testing"
	"time"
)

// TestMain runs every NBD test under the unsent-output watch: a connection that holds
// buffered replies for over a second with no flush fails the run (a goroutine queued a
// reply and then blocked without sending it).
func TestMain(m *testing.M) {
	Watch()
	done := make(chan struct{})
	worst := make(chan time.Duration)
	go func() {
		var w time.Duration
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				worst <- w
				return
			case <-t.C:
				w = max(w, Stale())
			}
		}
	}()
	code := m.Run()
	close(done)
	if w := <-worst; w > time.Second {
		fmt.Fprintf(os.Stderr, "FAIL: an NBD connection held unsent replies for %v: a goroutine blocked with replies it had queued\n", w.Round(time.Millisecond))
		code = 1
	}
	os.Exit(code)
}
