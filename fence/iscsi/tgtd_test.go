package iscsi

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// target is a tgtd started for one test: its own iSCSI port and its own control port
// (tgtd's management socket is global, /var/run/tgtd/socket.<port>), so tests run in
// parallel without touching any other tgtd on the machine.
type target struct {
	t        *testing.T
	port     int
	ctrl     int
	iqn      string
	files    []string // backing file of LUN i+1
	cmd      *exec.Cmd
	log      *lockedBuffer
	stopOnce sync.Once
}

type targetOpts struct {
	size       int64 // bytes per LUN; default 64 MiB
	luns       int   // default 1
	user, pass string
	thin       bool // thin_provisioning=1: UNMAP advertised
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func needTgtd(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("tgtd"); err != nil {
		t.Skip("tgtd is not installed (package tgt): skipping tests against a real iSCSI target")
	}
	if _, err := exec.LookPath("tgtadm"); err != nil {
		t.Skip("tgtadm is not installed (package tgt)")
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startTarget(t *testing.T, o targetOpts) *target {
	t.Helper()
	needTgtd(t)
	if o.size == 0 {
		o.size = 64 << 20
	}
	if o.luns == 0 {
		o.luns = 1
	}
	dir := t.TempDir()
	tg := &target{t: t, iqn: fmt.Sprintf("iqn.2024-01.io.blockrep.test:%s", sanitize(t.Name()))}
	for i := 0; i < o.luns; i++ {
		f := filepath.Join(dir, fmt.Sprintf("lun%d.img", i+1))
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(f, o.size); err != nil {
			t.Fatal(err)
		}
		tg.files = append(tg.files, f)
	}
	tg.start()
	t.Cleanup(tg.stop)
	tg.adm("--mode", "target", "--op", "new", "--tid", "1", "--targetname", tg.iqn)
	for i, f := range tg.files {
		tg.adm("--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", strconv.Itoa(i+1), "--backing-store", f)
		if o.thin {
			tg.adm("--mode", "logicalunit", "--op", "update", "--tid", "1", "--lun", strconv.Itoa(i+1), "--params", "thin_provisioning=1")
		}
	}
	tg.adm("--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL")
	if o.user != "" {
		tg.adm("--mode", "account", "--op", "new", "--user", o.user, "--password", o.pass)
		tg.adm("--mode", "account", "--op", "bind", "--tid", "1", "--user", o.user)
	}
	return tg
}

func sanitize(s string) string {
	s = strings.ToLower(s)
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-' {
			return r
		}
		return '-'
	}, s)
}

// start runs tgtd in the foreground and waits until its control socket answers.
func (tg *target) start() {
	t := tg.t
	t.Helper()
	if tg.port == 0 {
		tg.port = freePort(t)
		for {
			tg.ctrl = 1024 + rand.IntN(32767-1024) // tgtd accepts 1..32767
			if _, err := os.Stat(fmt.Sprintf("/var/run/tgtd/socket.%d", tg.ctrl)); os.IsNotExist(err) {
				break
			}
		}
	}
	tg.log = &lockedBuffer{}
	tg.cmd = exec.Command("tgtd", "-f", "-C", strconv.Itoa(tg.ctrl), "--iscsi", fmt.Sprintf("portal=127.0.0.1:%d", tg.port))
	tg.cmd.Stdout, tg.cmd.Stderr = tg.log, tg.log
	if err := tg.cmd.Start(); err != nil {
		t.Fatalf("start tgtd: %v", err)
	}
	tg.stopOnce = sync.Once{}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := exec.Command("tgtadm", "-C", strconv.Itoa(tg.ctrl), "--lld", "iscsi", "--mode", "target", "--op", "show").CombinedOutput()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			tg.stop()
			t.Fatalf("tgtd did not come up: %v %s\n%s", err, out, tg.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tg.port))
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			tg.stop()
			t.Fatalf("tgtd portal not listening: %v\n%s", err, tg.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop kills tgtd (only the one this test started) and removes its control socket.
func (tg *target) stop() {
	tg.stopOnce.Do(func() {
		if tg.cmd == nil || tg.cmd.Process == nil {
			return
		}
		tg.cmd.Process.Kill()
		tg.cmd.Wait()
		for _, suffix := range []string{"", ".lock"} {
			os.Remove(fmt.Sprintf("/var/run/tgtd/socket.%d%s", tg.ctrl, suffix))
		}
	})
}

func (tg *target) adm(args ...string) string {
	tg.t.Helper()
	full := append([]string{"-C", strconv.Itoa(tg.ctrl), "--lld", "iscsi"}, args...)
	out, err := exec.Command("tgtadm", full...).CombinedOutput()
	if err != nil {
		tg.t.Fatalf("tgtadm %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (tg *target) url(lun int) string {
	return fmt.Sprintf("iscsi://127.0.0.1:%d/%s/%d", tg.port, tg.iqn, lun)
}

func (tg *target) chapURL(user, pass string, lun int) string {
	return fmt.Sprintf("iscsi://%s%%%s@127.0.0.1:%d/%s/%d", user, pass, tg.port, tg.iqn, lun)
}

func (tg *target) addr() string { return fmt.Sprintf("127.0.0.1:%d", tg.port) }

// lunFile reads the backing file of a LUN: what tgtd actually wrote.
func (tg *target) lunFile(lun int) []byte {
	tg.t.Helper()
	b, err := os.ReadFile(tg.files[lun-1])
	if err != nil {
		tg.t.Fatal(err)
	}
	return b
}

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
		t.Fatalf("Dial: %v\ntgtd log:\n%s", err, tg.log)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
