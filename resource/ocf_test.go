package resource

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockrep/blockrep/internal/clustertest"
)

// ocfAgent copies the OCF agent where user nobody can read it (ocf-tester runs
// meta-data as nobody) and returns its path.
func ocfAgent(t *testing.T) string {
	t.Helper()
	src, err := filepath.Abs("../scripts/ocf/blockrep")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "blockrep-ocf-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	agent := filepath.Join(dir, "blockrep")
	if err := os.WriteFile(agent, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return agent
}

// TestOCFAgent: ocf-tester passes the agent on a real resource (start, monitor,
// promote, demote, stop, the probes, meta-data against the DTD); then the exit codes
// Pacemaker depends on, run by hand: 7 stopped, 8 promoted, 0 unpromoted, 6 for a
// configuration it cannot use.
func TestOCFAgent(t *testing.T) {
	if testing.Short() {
		t.Skip("starts daemons")
	}
	for _, b := range []string{"ocf-tester", "xmllint", "su"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed (Debian: resource-agents, libxml2-utils)", b)
		}
	}
	if _, err := os.Stat("/usr/lib/ocf/lib/heartbeat/ocf-shellfuncs"); err != nil {
		t.Skip("resource-agents not installed")
	}
	agent := ocfAgent(t)
	c := clustertest.New(t, clustertest.Options{Size: 64 << 20})
	alpha, beta := c.Nodes[0], c.Nodes[1]
	c.StartAll()
	c.MustAdm(alpha, "primary", "--force", c.Res)
	c.WaitFor("beta in sync", func() bool { return c.InSync(beta, alpha) })
	c.MustAdm(alpha, "secondary", c.Res)
	c.MustAdm(alpha, "down", c.Res)

	params := map[string]string{"drbd_resource": c.Res, "config": c.Conf, "run_dir": alpha.RunDir, "node": alpha.Name,
		"blockrepadm": filepath.Join(c.Bin, "blockrepadm"), "blockrepd": filepath.Join(c.Bin, "blockrepd")}
	args := []string{"-n", "br"}
	for k, v := range params {
		args = append(args, "-o", k+"="+v)
	}
	out, err := exec.Command("ocf-tester", append(args, agent)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "passed all tests") {
		t.Fatalf("ocf-tester: %v\n%s", err, out)
	}

	run := func(action string, env map[string]string) (int, string) {
		cmd := exec.Command(agent, action)
		cmd.Env = append(os.Environ(), "OCF_ROOT=/usr/lib/ocf", "OCF_RESOURCE_INSTANCE=br")
		for k, v := range params {
			cmd.Env = append(cmd.Env, "OCF_RESKEY_"+k+"="+v)
		}
		for k, v := range env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	for _, step := range []struct {
		action string
		env    map[string]string
		want   int
	}{
		{"monitor", nil, 7},
		{"start", nil, 0},
		{"monitor", nil, 0},
		{"promote", nil, 0},
		{"monitor", nil, 8},
		{"demote", nil, 0},
		{"monitor", nil, 0},
		{"stop", nil, 0},
		{"monitor", nil, 7},
		{"validate-all", map[string]string{"OCF_RESKEY_drbd_resource": "nosuch"}, 6},
		{"frobnicate", nil, 3},
	} {
		if rc, out := run(step.action, step.env); rc != step.want {
			t.Fatalf("%s: exit %d, want %d\n%s", step.action, rc, step.want, out)
		}
	}
}

// TestCrmFencePeer: the Pacemaker fence-peer handler, on a CIB file (Pacemaker's
// tools honour CIB_file): fence-peer places a valid location constraint that keeps
// the clone's promoted role on this node and exits 4 (peer outdated); unfence-peer
// removes it; without a matching clone it fails.
func TestCrmFencePeer(t *testing.T) {
	for _, b := range []string{"cibadmin", "crm_verify"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed (Debian: pacemaker-cli-utils)", b)
		}
	}
	script, err := filepath.Abs("../scripts/ocf/crm-fence-peer.sh")
	if err != nil {
		t.Fatal(err)
	}
	cib := filepath.Join(t.TempDir(), "cib.xml")
	env := append(os.Environ(), "CIB_file="+cib)
	sh := func(cmdline string, extra ...string) (int, string) {
		cmd := exec.Command("sh", "-c", cmdline)
		cmd.Env = append(append([]string{}, env...), extra...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	if rc, out := sh("cibadmin --empty > " + cib); rc != 0 {
		t.Fatal(out)
	}
	for _, x := range []string{
		`cibadmin -C -o crm_config -X '<cluster_property_set id="opts"><nvpair id="opts-stonith" name="stonith-enabled" value="false"/></cluster_property_set>'`,
		`cibadmin -C -o resources -X '<clone id="br-clone"><meta_attributes id="m"><nvpair id="m-p" name="promotable" value="true"/></meta_attributes><primitive id="br" class="ocf" provider="blockrep" type="blockrep"><instance_attributes id="br-ia"><nvpair id="br-ia-r" name="drbd_resource" value="r0"/></instance_attributes></primitive></clone>'`,
	} {
		if rc, out := sh(x); rc != 0 {
			t.Fatalf("%s: %s", x, out)
		}
	}
	handler := []string{"DRBD_RESOURCE=r0", "BLOCKREP_NODE=alpha", "BLOCKREP_HANDLER=fence-peer"}
	if rc, out := sh(script, handler...); rc != 4 {
		t.Fatalf("fence-peer: exit %d, want 4\n%s", rc, out)
	}
	_, cons := sh("cibadmin -Q -o constraints")
	if !strings.Contains(cons, `rsc="br-clone"`) || !strings.Contains(cons, `role="Promoted"`) || !strings.Contains(cons, `operation="ne" value="alpha"`) {
		t.Fatalf("constraint:\n%s", cons)
	}
	if rc, out := sh("crm_verify -x " + cib); rc != 0 {
		t.Fatalf("crm_verify with the constraint: %s", out)
	}
	if rc, out := sh(script, handler...); rc != 4 {
		t.Fatalf("fence-peer again: exit %d\n%s", rc, out)
	}
	if rc, out := sh(script+" --unfence", "DRBD_RESOURCE=r0", "BLOCKREP_NODE=alpha"); rc != 0 {
		t.Fatalf("unfence-peer: exit %d\n%s", rc, out)
	}
	if _, cons := sh("cibadmin -Q -o constraints"); strings.Contains(cons, "br-clone") {
		t.Fatalf("constraint still there after unfence:\n%s", cons)
	}
	if rc, _ := sh(script, "DRBD_RESOURCE=r9", "BLOCKREP_NODE=alpha"); rc != 1 {
		t.Fatalf("fence-peer for a resource without a clone: exit %d, want 1", rc)
	}
}
