package resource_test

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockrep/blockrep/internal/clustertest"
)

// TestAcceptanceTwoNodes replays the replicated-device acceptance scenario as a new
// user would: two daemons on 127.0.0.1, one .res file, 256 MiB backing files, real
// NBD clients.
func TestAcceptanceTwoNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real daemons")
	}
	clustertest.Need(t, "nbdinfo", "nbdcopy", "qemu-io", "fio")
	c := clustertest.New(t, clustertest.Options{})
	alpha, beta := c.Nodes[0], c.Nodes[1]
	c.StartAll()

	t.Run("A fresh resource: forced primary, full sync, export only on the Primary", func(t *testing.T) {
		c.WaitFor("connection", func() bool { return c.Peer(alpha, beta).Connection == "Connected" })
		if d := c.Status(alpha).Disk; d != "Inconsistent" {
			t.Fatalf("fresh disk is %s, want Inconsistent", d)
		}
		c.MustAdm(alpha, "primary", "--force", c.Res)
		c.WaitInSync()
		var info struct {
			Exports []map[string]any `json:"exports"`
		}
		if err := json.Unmarshal([]byte(c.Run("nbdinfo", "--json", alpha.URI())), &info); err != nil {
			t.Fatal(err)
		}
		e := info.Exports[0]
		if e["export-size"].(float64) != float64(c.Status(alpha).SizeBytes) || e["can_flush"] != true || e["can_fua"] != true {
			t.Fatalf("nbdinfo: size %v can_flush %v can_fua %v", e["export-size"], e["can_flush"], e["can_fua"])
		}
		out, err := exec.Command("nbdinfo", beta.URI()).CombinedOutput()
		if err == nil {
			t.Fatalf("the Secondary's export answered:\n%s", out)
		}
	})

	data := filepath.Join(c.Dir, "random64")
	t.Run("B data written on alpha reads back on beta after switching Primary", func(t *testing.T) {
		c.Run("dd", "if=/dev/urandom", "of="+data, "bs=1M", "count=64", "status=none")
		c.Run("nbdcopy", data, alpha.URI())
		c.MustAdm(alpha, "secondary", c.Res)
		c.MustAdm(beta, "primary", c.Res)
		back := filepath.Join(c.Dir, "back")
		c.Run("nbdcopy", beta.URI(), back)
		os.Truncate(back, 64<<20)
		if sum(t, data) != sum(t, back) {
			t.Fatal("beta reads back different data")
		}
	})

	// beta is Primary now, alpha Secondary.
	t.Run("C a disconnected peer resyncs only the blocks written meanwhile", func(t *testing.T) {
		c.MustAdm(alpha, "disconnect", c.Res)
		c.Run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 100M 8M", beta.URI())
		oos := c.Peer(beta, alpha).OutOfSyncBytes
		if math.Abs(float64(oos)-8<<20) > 0.01*(8<<20) {
			t.Fatalf("out_of_sync_bytes %d after writing 8 MiB, want 8 MiB ±1%%", oos)
		}
		c.MustAdm(alpha, "connect", c.Res)
		c.WaitInSync()
		if rb := c.Peer(beta, alpha).ResyncBytes; rb > 8<<20*105/100 || rb < 8<<20 {
			t.Fatalf("resync moved %d bytes, want 8 MiB (at most +5%%)", rb)
		}
		if a, b := c.DataSum(alpha, c.Status(alpha).SizeBytes), c.DataSum(beta, c.Status(beta).SizeBytes); a != b {
			t.Fatal("replicas differ after the resync")
		}
	})

	t.Run("D split brain is reported, and resolved by discard-my-data", func(t *testing.T) {
		c.MustAdm(alpha, "disconnect", c.Res)
		c.MustAdm(beta, "disconnect", c.Res)
		c.Run("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 1M", beta.URI())
		if _, _, code := c.Adm(alpha, "primary", c.Res); code == 0 {
			t.Fatal("an Outdated node was promoted without --force")
		}
		c.MustAdm(alpha, "primary", "--force", c.Res)
		c.Run("qemu-io", "-f", "raw", "-c", "write -P 0x22 2M 1M", alpha.URI())
		c.MustAdm(alpha, "connect", c.Res)
		c.MustAdm(beta, "connect", c.Res)
		c.WaitFor("split brain on both", func() bool {
			return c.Peer(alpha, beta).SplitBrain && c.Peer(beta, alpha).SplitBrain
		})
		time.Sleep(500 * time.Millisecond)
		for _, n := range c.Nodes {
			for _, p := range c.Status(n).Peers {
				if p.Connection != "StandAlone" {
					t.Fatalf("%s: connection %s after split brain, want StandAlone", n.Name, p.Connection)
				}
			}
		}
		if txt := c.MustAdm(alpha, "status", c.Res); !strings.Contains(txt, "split-brain") {
			t.Fatalf("status does not say split-brain:\n%s", txt)
		}
		c.MustAdm(alpha, "secondary", c.Res)
		c.MustAdm(alpha, "connect", "--discard-my-data", c.Res)
		c.MustAdm(beta, "connect", c.Res)
		c.WaitInSync()
		if a, b := c.DataSum(alpha, c.Status(alpha).SizeBytes), c.DataSum(beta, c.Status(beta).SizeBytes); a != b {
			t.Fatal("the victim's data differs from the survivor's")
		}
	})

	t.Run("E kill -9 of the Primary loses no acknowledged protocol-C write", func(t *testing.T) {
		state := filepath.Join(c.Dir, "fio")
		os.MkdirAll(state, 0o755)
		fio := func(uri string, extra ...string) *exec.Cmd {
			args := append([]string{"--name=acc", "--ioengine=nbd", "--uri=" + uri, "--rw=randwrite", "--bs=4k",
				"--iodepth=16", "--size=64M", "--verify=crc32c"}, extra...)
			cmd := exec.Command("fio", args...)
			cmd.Dir = state
			return cmd
		}
		w := fio(beta.URI(), "--verify_state_save=1", "--do_verify=0", "--time_based", "--runtime=60")
		out := &strings.Builder{}
		w.Stdout, w.Stderr = out, out
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
		c.Kill(beta)
		w.Wait()
		if _, err := os.Stat(filepath.Join(state, "local-acc-0-verify.state")); err != nil {
			t.Fatalf("fio saved no verify state: %v\n%s", err, out)
		}
		c.WaitFor("alpha notices", func() bool { return c.Peer(alpha, beta).Connection != "Connected" })
		c.MustAdm(alpha, "primary", c.Res)
		v, err := fio(alpha.URI(), "--verify_state_load=1", "--verify_only").CombinedOutput()
		if err != nil || !strings.Contains(string(v), "err= 0") {
			t.Fatalf("fio verify on the promoted survivor failed: %v\n%s", err, v)
		}
		// The old Primary comes back and resyncs from the new one.
		c.Start(beta)
		c.MustAdm(beta, "up", c.Res)
		c.WaitInSync()
	})

	t.Run("F bad input gets one clear line and a non-zero exit", func(t *testing.T) {
		before := c.DataSum(alpha, c.Size)
		for _, tc := range []struct {
			name string
			args []string
			want string
		}{
			{"unknown verb", []string{"frobnicate", "r0"}, "unknown verb"},
			{"unknown resource", []string{"primary", "r9"}, `unknown resource "r9"`},
			{"missing resource", []string{"primary"}, "needs a resource"},
			{"primary while the peer is Primary", []string{"primary", c.Res}, "is Primary"},
			{"create-md under a running resource", []string{"create-md", "--force", c.Res}, "is up"},
			{"reserved verb", []string{"verify", c.Res}, "not implemented"},
		} {
			_, errOut, code := c.Adm(beta, tc.args...)
			if code == 0 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, tc.want) {
				t.Errorf("%s: exit %d, stderr %q; want one line containing %q", tc.name, code, errOut, tc.want)
			}
		}
		if c.DataSum(alpha, c.Size) != before {
			t.Error("bad commands changed alpha's disk")
		}
	})

	t.Run("the control socket is root-only", func(t *testing.T) {
		st, err := os.Stat(filepath.Join(alpha.RunDir, "blockrepd.sock"))
		if err != nil {
			t.Fatal(err)
		}
		if perm := st.Mode().Perm(); perm != 0o600 {
			t.Fatalf("control socket mode %o, want 600", perm)
		}
		if os.Geteuid() != 0 {
			t.Skip("not root: cannot try another uid")
		}
		if _, err := exec.LookPath("setpriv"); err != nil {
			t.Skip("setpriv missing")
		}
		os.Chmod(alpha.RunDir, 0o755) // let nobody reach the socket itself
		out, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
			filepath.Join(c.Bin, "blockrepadm"), "--run-dir", alpha.RunDir, "status").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "permission denied") {
			t.Fatalf("status as nobody: err %v, output %q; want permission denied", err, out)
		}
	})
}

// TestMalformedConfigNamesFileAndLine: a typo in a .res file is reported with its
// position and nothing is created.
func TestMalformedConfigNamesFileAndLine(t *testing.T) {
	bin := clustertest.Binaries(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "a.img")
	os.WriteFile(img, make([]byte, 8<<20), 0o600)
	res := fmt.Sprintf("resource r0 {\n    net {\n        protocl C;\n    }\n    on alpha { node-id 0; address 127.0.0.1:7000; disk %s; meta-disk internal; }\n}\n", img)
	os.WriteFile(filepath.Join(dir, "r0.res"), []byte(res), 0o644)
	before := sum(t, img)
	for _, verb := range []string{"create-md", "dump"} {
		cmd := exec.Command(filepath.Join(bin, "blockrepadm"), "--config", dir, "--node", "alpha", "--run-dir", dir, verb, "r0")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "r0.res:3:") || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
			t.Errorf("%s on a malformed file: err %v, output %q; want one line naming r0.res:3", verb, err, out)
		}
	}
	if sum(t, img) != before {
		t.Error("the backing file changed")
	}
	// A missing backing disk: one line, nothing created.
	missing := filepath.Join(dir, "missing.img")
	os.WriteFile(filepath.Join(dir, "r0.res"), []byte(strings.Replace(strings.Replace(res, "protocl", "protocol", 1), img, missing, 1)), 0o644)
	cmd := exec.Command(filepath.Join(bin, "blockrepadm"), "--config", dir, "--node", "alpha", "--run-dir", dir, "create-md", "r0")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "missing.img") {
		t.Errorf("create-md with a missing disk: err %v, output %q", err, out)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Error("create-md created the missing backing file")
	}
}

// TestThreeNodesMixedProtocols: one Primary replicating with protocol C to one peer and A
// to the other; each peer has its own bitmap and state.
func TestThreeNodesMixedProtocols(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real daemons")
	}
	clustertest.Need(t, "qemu-io")
	c := clustertest.New(t, clustertest.Options{Nodes: 3, Size: 64 << 20, Conns: map[[2]int]string{{0, 2}: "A", {1, 2}: "A"}})
	alpha, beta, gamma := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	c.StartAll()
	c.WaitFor("connections", func() bool {
		return c.Peer(alpha, beta).Connection == "Connected" && c.Peer(alpha, gamma).Connection == "Connected"
	})
	c.MustAdm(alpha, "primary", "--force", c.Res)
	c.WaitFor("peers in sync", func() bool { return c.InSync(alpha, beta) && c.InSync(alpha, gamma) })
	if p := c.Peer(alpha, gamma).Protocol; p != "A" {
		t.Fatalf("alpha-gamma protocol %s, want A", p)
	}
	c.MustAdm(gamma, "disconnect", c.Res)
	c.Run("qemu-io", "-f", "raw", "-c", "write -P 0x33 1M 2M", alpha.URI())
	if b, g := c.Peer(alpha, beta).OutOfSyncBytes, c.Peer(alpha, gamma).OutOfSyncBytes; b != 0 || g != 2<<20 {
		t.Fatalf("out of sync: beta %d (want 0), gamma %d (want 2 MiB)", b, g)
	}
	c.MustAdm(gamma, "connect", c.Res)
	c.WaitFor("gamma resynced", func() bool { return c.InSync(alpha, gamma) })
	size := c.Status(alpha).SizeBytes
	if a, b, g := c.DataSum(alpha, size), c.DataSum(beta, size), c.DataSum(gamma, size); a != b || a != g {
		t.Fatal("replicas differ")
	}
}

func sum(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("sha256sum", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(out))[0]
}
