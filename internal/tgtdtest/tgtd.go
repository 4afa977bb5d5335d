// Package tgtdtest starts a real tgtd (Linux SCSI target framework, package tgt) for
// tests: an iSCSI target on a free 127.0.0.1 port with file-backed LUNs and its own
// control port, killed at the end of the test.
package tgtdtest

import (
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

	"github.com/blockrep/blockrep/internal/syncbuf"
)

type Target struct {
	t        testing.TB
	port     int
	ctrl     int
	iqn      string
	files    []string // backing file of LUN i+1
	cmd      *exec.Cmd
	log      *syncbuf.Buffer
	stopOnce sync.Once
}

type Options struct {
	Size       int64 // bytes per LUN; default 64 MiB
	LUNs       int   // default 1
	User, Pass string
	Thin       bool // thin_provisioning=1: UNMAP advertised
}

func Need(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("tgtd"); err != nil {
		t.Skip("tgtd is not installed (package tgt): skipping tests against a real iSCSI target")
	}
	if _, err := exec.LookPath("tgtadm"); err != nil {
		t.Skip("tgtadm is not installed (package tgt)")
	}
}

func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func Start(t testing.TB, o Options) *Target {
	t.Helper()
	Need(t)
	if o.Size == 0 {
		o.Size = 64 << 20
	}
	if o.LUNs == 0 {
		o.LUNs = 1
	}
	dir := t.TempDir()
	tg := &Target{t: t, iqn: fmt.Sprintf("iqn.2024-01.io.blockrep.test:%s", Sanitize(t.Name()))}
	for i := 0; i < o.LUNs; i++ {
		f := filepath.Join(dir, fmt.Sprintf("lun%d.img", i+1))
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(f, o.Size); err != nil {
			t.Fatal(err)
		}
		tg.files = append(tg.files, f)
	}
	tg.Start()
	t.Cleanup(tg.Stop)
	tg.Adm("--mode", "target", "--op", "new", "--tid", "1", "--targetname", tg.iqn)
	for i, f := range tg.files {
		tg.Adm("--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", strconv.Itoa(i+1), "--backing-store", f)
		if o.Thin {
			tg.Adm("--mode", "logicalunit", "--op", "update", "--tid", "1", "--lun", strconv.Itoa(i+1), "--params", "thin_provisioning=1")
		}
	}
	tg.Adm("--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL")
	if o.User != "" {
		tg.Adm("--mode", "account", "--op", "new", "--user", o.User, "--password", o.Pass)
		tg.Adm("--mode", "account", "--op", "bind", "--tid", "1", "--user", o.User)
	}
	return tg
}

// Sanitize turns a test name into something an IQN may contain.
func Sanitize(s string) string {
	s = strings.ToLower(s)
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-' {
			return r
		}
		return '-'
	}, s)
}

// start runs tgtd in the foreground and waits until its control socket answers.
func (tg *Target) Start() {
	t := tg.t
	t.Helper()
	if tg.port == 0 {
		tg.port = FreePort(t)
		for {
			tg.ctrl = 1024 + rand.IntN(32767-1024) // tgtd accepts 1..32767
			if _, err := os.Stat(fmt.Sprintf("/var/run/tgtd/socket.%d", tg.ctrl)); os.IsNotExist(err) {
				break
			}
		}
	}
	tg.log = &syncbuf.Buffer{}
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
			tg.Stop()
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
			tg.Stop()
			t.Fatalf("tgtd portal not listening: %v\n%s", err, tg.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop kills tgtd (only the one this test started) and removes its control socket.
func (tg *Target) Stop() {
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

func (tg *Target) Adm(args ...string) string {
	tg.t.Helper()
	full := append([]string{"-C", strconv.Itoa(tg.ctrl), "--lld", "iscsi"}, args...)
	out, err := exec.Command("tgtadm", full...).CombinedOutput()
	if err != nil {
		tg.t.Fatalf("tgtadm %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (tg *Target) URL(lun int) string {
	return fmt.Sprintf("iscsi://127.0.0.1:%d/%s/%d", tg.port, tg.iqn, lun)
}

func (tg *Target) CHAPURL(user, pass string, lun int) string {
	return fmt.Sprintf("iscsi://%s%%%s@127.0.0.1:%d/%s/%d", user, pass, tg.port, tg.iqn, lun)
}

func (tg *Target) Addr() string { return fmt.Sprintf("127.0.0.1:%d", tg.port) }

// lunFile reads the backing file of a LUN: what tgtd actually wrote.
func (tg *Target) LUNFile(lun int) []byte {
	tg.t.Helper()
	b, err := os.ReadFile(tg.files[lun-1])
	if err != nil {
		tg.t.Fatal(err)
	}
	return b
}

// Port, IQN and File expose the target's portal port, name and LUN backing files.
func (tg *Target) Port() int           { return tg.port }
func (tg *Target) IQN() string         { return tg.iqn }
func (tg *Target) File(lun int) string { return tg.files[lun-1] }
func (tg *Target) Log() string         { return tg.log.String() }
