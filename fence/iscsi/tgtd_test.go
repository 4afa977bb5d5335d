package iscsi

import (
	"context"
	"github.com/blockrep/blockrep/internal/tgtdtest"
	"testing"
	"time"
)

// target is a tgtd started for one test: its own iSCSI port and its own control port
// (tgtd's management socket is global, /var/run/tgtd/socket.<port>), so tests run in
// parallel without touching any other tgtd on the machine.

type target struct{ *tgtdtest.Target }

type targetOpts = tgtdtest.Options

func needTgtd(t *testing.T)     { tgtdtest.Need(t) }
func freePort(t *testing.T) int { return tgtdtest.FreePort(t) }

func startTarget(t *testing.T, o targetOpts) *target { return &target{tgtdtest.Start(t, o)} }

func (tg *target) url(lun int) string                  { return tg.URL(lun) }
func (tg *target) chapURL(u, p string, lun int) string { return tg.CHAPURL(u, p, lun) }
func (tg *target) addr() string                        { return tg.Addr() }
func (tg *target) lunFile(lun int) []byte              { return tg.LUNFile(lun) }
func (tg *target) adm(args ...string) string           { return tg.Adm(args...) }
func (tg *target) start()                              { tg.Start() }
func (tg *target) stop()                               { tg.Stop() }

func testOpts(t *testing.T, name string) Options {
	return Options{
		InitiatorName: "iqn.2024-01.io.blockrep.test:" + name,
		Timeout:       5 * time.Second,
		Logger:        testLogger(t),
	}
}

func dial(t *testing.T, tg *target, lun int, o Options) *Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	s, err := Dial(ctx, tg.url(lun), o)
	if err != nil {
		t.Fatalf("Dial: %v\ntgtd log:\n%s", err, tg.Log())
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
