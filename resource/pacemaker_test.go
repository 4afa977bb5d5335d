package resource

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blockrep/blockrep/internal/clustertest"
)

// pcmkPrefix starts the namespaces and temp dirs of TestPacemaker; the test's pid
// follows, so that leftovers of a run that died can be swept.
const pcmkPrefix = "brpcmk"

var pcmkStale = regexp.MustCompile(`^` + pcmkPrefix + `-(\d+)-`)

type pcmkNode struct {
	name, addr, ns, veth, dir string
	holder                    *exec.Cmd // node.sh: its namespaces live as long as it does
}

type pcmkCluster struct {
	t     *testing.T
	dir   string
	hub   string
	conf  string
	bin   string
	nodes []*pcmkNode
}

// killNS SIGKILLs every process in a network namespace until none is left.
func killNS(ns string) {
	for i := 0; i < 100; i++ {
		out, _ := exec.Command("ip", "netns", "pids", ns).Output()
		pids := strings.Fields(string(out))
		if len(pids) == 0 {
			return
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func delNS(ns string) {
	killNS(ns)
	for i := 0; i < 50; i++ {
		if exec.Command("ip", "netns", "del", ns).Run() == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pcmkSweep removes what a TestPacemaker that died left behind: its processes (still
// running in its namespaces), the namespaces and its temp dir. Mounts live only in
// the nodes' private mount namespaces and go with their processes.
func pcmkSweep() {
	alive := func(m []string) bool {
		pid, _ := strconv.Atoi(m[1])
		return pid == os.Getpid() || syscall.Kill(pid, 0) != syscall.ESRCH
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 {
			if m := pcmkStale.FindStringSubmatch(f[0]); m != nil && !alive(m) {
				delNS(f[0])
			}
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), pcmkPrefix+"-*"))
	for _, d := range dirs {
		if m := pcmkStale.FindStringSubmatch(filepath.Base(d)); m != nil && !alive(m) {
			os.RemoveAll(d)
		}
	}
}

func (c *pcmkCluster) run(args ...string) string {
	c.t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		c.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// in runs a command inside node n's namespaces (network, mount, hostname), as
// crm tools must: their IPC is abstract sockets and /dev/shm of that node.
func (c *pcmkCluster) in(n *pcmkNode, args ...string) (string, error) {
	if n.holder == nil {
		return "", fmt.Errorf("%s is down", n.name)
	}
	full := append([]string{"-t", strconv.Itoa(n.holder.Process.Pid), "-n", "-m", "-u", "--"}, args...)
	out, err := exec.Command("nsenter", full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s on %s: %v: %s", strings.Join(args, " "), n.name, err, out)
	}
	return string(out), nil
}

func (c *pcmkCluster) mustIn(n *pcmkNode, args ...string) string {
	c.t.Helper()
	out, err := c.in(n, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

func (c *pcmkCluster) adm(n *pcmkNode, args ...string) (string, error) {
	full := append([]string{"--config", c.conf, "--node", n.name, "--run-dir", filepath.Join(n.dir, "run")}, args...)
	out, err := exec.Command(filepath.Join(c.bin, "blockrepadm"), full...).CombinedOutput()
	return string(out), err
}

type brStatus struct {
	Role, Disk string
}

// status reads the node's blockrep status through its control socket, which lives
// in a host directory bound over the node's /run/blockrep.
func (c *pcmkCluster) status(n *pcmkNode) (brStatus, error) {
	out, err := c.adm(n, "status", "--json", "r0")
	if err != nil {
		return brStatus{}, fmt.Errorf("%v: %s", err, out)
	}
	var s struct{ Resources []brStatus }
	if err := json.Unmarshal([]byte(out), &s); err != nil || len(s.Resources) == 0 {
		return brStatus{}, fmt.Errorf("status: %v: %s", err, out)
	}
	return s.Resources[0], nil
}

// hasVIP reports whether the floating address is on node n's interface.
func (c *pcmkCluster) hasVIP(n *pcmkNode) bool {
	out, err := exec.Command("ip", "-n", n.ns, "-4", "addr", "show", "dev", "eth0").Output()
	return err == nil && strings.Contains(string(out), " 198.18.0.100/24 ")
}

func (c *pcmkCluster) waitFor(what string, d time.Duration, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			if out, err := c.in(c.nodes[2], "crm_mon", "-1", "-r"); err == nil {
				c.t.Log(out)
			}
			c.t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

const corosyncConf = `totem {
	version: 2
	cluster_name: blockrep
	transport: knet
	crypto_cipher: none
	crypto_hash: none
	token: 1000
}
nodelist {
%s}
quorum {
	provider: corosync_votequorum
}
logging {
	to_logfile: yes
	logfile: %s
	to_syslog: no
	to_stderr: no
	timestamp: on
}
`

// nodeScript is node.sh: it makes the node's private view of the host (its own
// corosync and Pacemaker state, a fresh /run and /dev/shm, our agent among the OCF
// providers) and runs corosync and pacemakerd there. %[1]s is the node's dir.
const nodeScript = `set -e
hostname %[2]s
mount --make-rprivate /
mount --bind /usr/lib/ocf/resource.d %[1]s/ocf-orig
mount --bind %[1]s/ocf /usr/lib/ocf/resource.d
mount --bind %[1]s/etc-corosync /etc/corosync
mount --bind %[1]s/lib-pacemaker /var/lib/pacemaker
mount --bind %[1]s/lib-corosync /var/lib/corosync
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/crm /run/blockrep
chown hacluster:haclient /run/crm
chmod 0750 /run/crm
mount --bind %[1]s/run /run/blockrep
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
export PCMK_logfile=%[1]s/pacemaker.log PCMK_blackbox=no GORACE=atexit_sleep_ms=0
corosync -f >>%[1]s/corosync.out 2>&1 &
i=0
until corosync-cfgtool -s >/dev/null 2>&1; do
	i=$((i+1)); [ $i -lt 100 ] || exit 1
	sleep 0.1
done
pacemakerd >>%[1]s/pacemakerd.out 2>&1 &
wait
`

func (c *pcmkCluster) startNode(n *pcmkNode) {
	c.t.Helper()
	// A reboot loses what was configured at run time (the floating address).
	c.run("ip", "-n", n.ns, "addr", "flush", "dev", "eth0")
	c.run("ip", "-n", n.ns, "addr", "add", n.addr+"/24", "dev", "eth0")
	c.run("ip", "-n", c.hub, "link", "set", n.veth, "up")
	cmd := exec.Command("ip", "netns", "exec", n.ns, "unshare", "-m", "-u", "sh", filepath.Join(n.dir, "node.sh"))
	logf, err := os.OpenFile(filepath.Join(n.dir, "node.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	logf.Close()
	n.holder = cmd
	go cmd.Wait()
}

// crash is a node failure: its link goes down and every process of its namespaces
// is SIGKILLed at once.
func (c *pcmkCluster) crash(n *pcmkNode) {
	exec.Command("ip", "-n", c.hub, "link", "set", n.veth, "down").Run()
	killNS(n.ns)
	n.holder = nil
}

func newPcmkCluster(t *testing.T) *pcmkCluster {
	pcmkSweep()
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s-%d-", pcmkPrefix, os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	// Pacemaker's controller runs the agent's meta-data as hacluster.
	os.Chmod(dir, 0o755)
	c := &pcmkCluster{t: t, dir: dir, conf: filepath.Join(dir, "conf"), bin: clustertest.Binaries(t),
		hub: fmt.Sprintf("%s-%d-hub", pcmkPrefix, os.Getpid())}
	t.Cleanup(c.cleanup)
	agent, err := os.ReadFile("../scripts/ocf/blockrep")
	if err != nil {
		t.Fatal(err)
	}
	c.run("ip", "netns", "add", c.hub)
	c.run("ip", "-n", c.hub, "link", "add", "br0", "type", "bridge")
	c.run("ip", "-n", c.hub, "link", "set", "br0", "up")
	var nodelist strings.Builder
	for i, name := range []string{"alpha", "beta", "gamma"} {
		n := &pcmkNode{name: name, addr: fmt.Sprintf("198.18.0.%d", i+1), ns: fmt.Sprintf("%s-%d-%s", pcmkPrefix, os.Getpid(), name),
			veth: fmt.Sprintf("v%d", i), dir: filepath.Join(dir, name)}
		c.nodes = append(c.nodes, n)
		fmt.Fprintf(&nodelist, "\tnode {\n\t\tring0_addr: %s\n\t\tname: %s\n\t\tnodeid: %d\n\t}\n", n.addr, name, i+1)
		c.run("ip", "netns", "add", n.ns)
		c.run("ip", "-n", c.hub, "link", "add", n.veth, "type", "veth", "peer", "name", "eth0", "netns", n.ns)
		c.run("ip", "-n", c.hub, "link", "set", n.veth, "master", "br0", "up")
		c.run("ip", "-n", n.ns, "addr", "add", n.addr+"/24", "dev", "eth0")
		c.run("ip", "-n", n.ns, "link", "set", "eth0", "up")
		c.run("ip", "-n", n.ns, "link", "set", "lo", "up")
	}
	os.MkdirAll(c.conf, 0o755)
	res := "resource r0 {\n    net { protocol C; shared-secret \"test-secret\"; connect-int 1; ping-int 1; ping-timeout 5; timeout 10; }\n"
	for i, n := range c.nodes[:2] {
		res += fmt.Sprintf("    on %s { node-id %d; address %s:7789; disk %s/disk.img; meta-disk internal; }\n", n.name, i, n.addr, n.dir)
	}
	res += "}\n"
	if err := os.WriteFile(filepath.Join(c.conf, "r0.res"), []byte(res), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.nodes {
		for _, d := range []string{"ocf-orig", "ocf/blockrep", "etc-corosync", "lib-pacemaker/cib", "lib-pacemaker/pengine",
			"lib-pacemaker/blackbox", "lib-pacemaker/cores", "lib-corosync", "run"} {
			if err := os.MkdirAll(filepath.Join(n.dir, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		c.run("chown", "-R", "hacluster:haclient", filepath.Join(n.dir, "lib-pacemaker"))
		for _, p := range []string{"heartbeat", "pacemaker"} {
			os.Symlink(filepath.Join(n.dir, "ocf-orig", p), filepath.Join(n.dir, "ocf", p))
		}
		os.WriteFile(filepath.Join(n.dir, "ocf/blockrep/blockrep"), agent, 0o755)
		for _, f := range []string{"pacemaker.log"} {
			os.WriteFile(filepath.Join(n.dir, f), nil, 0o660)
			c.run("chown", "hacluster:haclient", filepath.Join(n.dir, f))
		}
		os.WriteFile(filepath.Join(n.dir, "etc-corosync/corosync.conf"),
			[]byte(fmt.Sprintf(corosyncConf, nodelist.String(), filepath.Join(n.dir, "corosync.log"))), 0o644)
		os.WriteFile(filepath.Join(n.dir, "node.sh"), []byte(fmt.Sprintf(nodeScript, n.dir, n.name)), 0o755)
		if n.name != "gamma" {
			f, err := os.Create(filepath.Join(n.dir, "disk.img"))
			if err != nil {
				t.Fatal(err)
			}
			f.Truncate(32 << 20)
			f.Close()
			if out, err := c.adm(n, "create-md", "r0"); err != nil {
				t.Fatalf("create-md: %v: %s", err, out)
			}
		}
	}
	return c
}

func (c *pcmkCluster) cleanup() {
	for _, n := range c.nodes {
		delNS(n.ns)
	}
	delNS(c.hub)
	if c.t.Failed() {
		for _, n := range c.nodes {
			for _, f := range []string{"node.out", "corosync.log", "pacemaker.log", "run/blockrepd.log"} {
				b, _ := os.ReadFile(filepath.Join(n.dir, f))
				lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
				if len(lines) > 40 {
					lines = lines[len(lines)-40:]
				}
				c.t.Logf("==== %s %s ====\n%s", n.name, f, strings.Join(lines, "\n"))
			}
		}
		c.t.Logf("files kept in %s", c.dir)
		return
	}
	os.RemoveAll(c.dir)
}

// TestPacemaker runs the OCF agent as a promotable clone under a real three-node
// Pacemaker + corosync cluster (one network, mount and UTS namespace per node):
// alpha and beta hold the data, gamma only gives corosync its quorum. Pacemaker
// promotes one data node, and an IPaddr2 address follows the promoted role; a crash
// of that node gets the other promoted and the address moved; the crashed node,
// restarted, rejoins as Secondary. There is no fencing device here, so
// stonith-enabled=false.
func TestPacemaker(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a Pacemaker cluster")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (network and mount namespaces)")
	}
	for _, b := range []string{"corosync", "pacemakerd", "cibadmin", "crm_mon", "crm_attribute", "corosync-cfgtool", "ip", "nsenter", "unshare"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed (Debian: pacemaker, corosync, pacemaker-cli-utils)", b)
		}
	}
	if _, err := os.Stat("/usr/lib/ocf/lib/heartbeat/ocf-shellfuncs"); err != nil {
		t.Skip("resource-agents not installed")
	}
	c := newPcmkCluster(t)
	alpha, beta, gamma := c.nodes[0], c.nodes[1], c.nodes[2]

	var inits []*exec.Cmd
	// The initial full sync happens before Pacemaker manages the resource: with no
	// UpToDate data anywhere it would have no node to promote.
	for _, n := range []*pcmkNode{alpha, beta} {
		d := exec.Command("ip", "netns", "exec", n.ns, filepath.Join(c.bin, "blockrepd"), "--config", c.conf,
			"--node", n.name, "--run-dir", filepath.Join(n.dir, "run"))
		logf, _ := os.Create(filepath.Join(n.dir, "init.log"))
		d.Stdout, d.Stderr = logf, logf
		if err := d.Start(); err != nil {
			t.Fatal(err)
		}
		logf.Close()
		inits = append(inits, d)
		c.waitFor(n.name+"'s blockrepd", 30*time.Second, func() bool { _, err := c.adm(n, "status"); return err == nil })
		if out, err := c.adm(n, "up", "r0"); err != nil {
			t.Fatalf("up: %v: %s", err, out)
		}
	}
	if out, err := c.adm(alpha, "primary", "--force", "r0"); err != nil {
		t.Fatalf("primary --force: %v: %s", err, out)
	}
	c.waitFor("beta UpToDate", 60*time.Second, func() bool { s, err := c.status(beta); return err == nil && s.Disk == "UpToDate" })
	for _, n := range []*pcmkNode{alpha, beta} {
		if out, err := c.adm(n, "down", "r0"); err != nil {
			t.Fatalf("down: %v: %s", err, out)
		}
	}
	for _, d := range inits {
		d.Process.Signal(syscall.SIGTERM)
		d.Wait()
	}

	for _, n := range c.nodes {
		c.startNode(n)
	}
	c.waitFor("quorum and three nodes online", 90*time.Second, func() bool {
		q, err := c.in(gamma, "corosync-quorumtool", "-s")
		if err != nil || !strings.Contains(q, "Quorate:          Yes") {
			return false
		}
		m, err := c.in(gamma, "crm_mon", "-1")
		return err == nil && strings.Contains(m, "Online: [ alpha beta gamma ]")
	})

	// The configuration: the commands of docs/ops-pacemaker.md.
	params := fmt.Sprintf(`<nvpair id="br-p-res" name="drbd_resource" value="r0"/>`+
		`<nvpair id="br-p-config" name="config" value="%s"/>`+
		`<nvpair id="br-p-d" name="blockrepd" value="%s"/>`+
		`<nvpair id="br-p-adm" name="blockrepadm" value="%s"/>`, c.conf, filepath.Join(c.bin, "blockrepd"), filepath.Join(c.bin, "blockrepadm"))
	for _, cmd := range [][]string{
		{"crm_attribute", "--type", "crm_config", "--name", "stonith-enabled", "--update", "false"},
		{"crm_attribute", "--type", "rsc_defaults", "--name", "resource-stickiness", "--update", "100"},
		{"cibadmin", "--create", "-o", "resources", "--xml-text", `<clone id="br-clone"><meta_attributes id="br-clone-meta">` +
			`<nvpair id="br-clone-promotable" name="promotable" value="true"/>` +
			`<nvpair id="br-clone-promoted-max" name="promoted-max" value="1"/>` +
			`<nvpair id="br-clone-promoted-node-max" name="promoted-node-max" value="1"/>` +
			`<nvpair id="br-clone-clone-max" name="clone-max" value="2"/>` +
			`<nvpair id="br-clone-clone-node-max" name="clone-node-max" value="1"/>` +
			`<nvpair id="br-clone-notify" name="notify" value="true"/>` +
			`<nvpair id="br-clone-target-role" name="target-role" value="Stopped"/>` +
			`</meta_attributes><primitive id="br" class="ocf" provider="blockrep" type="blockrep">` +
			`<instance_attributes id="br-p">` + params + `</instance_attributes><operations>` +
			`<op id="br-start" name="start" interval="0s" timeout="240s"/>` +
			`<op id="br-promote" name="promote" interval="0s" timeout="90s"/>` +
			`<op id="br-demote" name="demote" interval="0s" timeout="90s"/>` +
			`<op id="br-stop" name="stop" interval="0s" timeout="100s"/>` +
			`<op id="br-monitor-promoted" name="monitor" interval="10s" timeout="20s" role="Promoted"/>` +
			`<op id="br-monitor-unpromoted" name="monitor" interval="20s" timeout="20s" role="Unpromoted"/>` +
			`</operations></primitive></clone>`},
		{"cibadmin", "--create", "-o", "constraints", "--xml-text", `<rsc_location id="br-not-on-gamma" rsc="br-clone" node="gamma" score="-INFINITY"/>`},
		{"cibadmin", "--create", "-o", "resources", "--xml-text", `<primitive id="vip" class="ocf" provider="heartbeat" type="IPaddr2">` +
			`<instance_attributes id="vip-p"><nvpair id="vip-p-ip" name="ip" value="198.18.0.100"/>` +
			`<nvpair id="vip-p-mask" name="cidr_netmask" value="24"/><nvpair id="vip-p-nic" name="nic" value="eth0"/></instance_attributes>` +
			`<operations><op id="vip-monitor" name="monitor" interval="10s" timeout="20s"/></operations></primitive>`},
		{"cibadmin", "--create", "-o", "constraints", "--xml-text", `<rsc_colocation id="vip-with-promoted" rsc="vip" with-rsc="br-clone" with-rsc-role="Promoted" score="INFINITY"/>`},
		{"cibadmin", "--create", "-o", "constraints", "--xml-text", `<rsc_order id="vip-after-promote" first="br-clone" first-action="promote" then="vip" then-action="start"/>`},
		{"crm_resource", "--resource", "br-clone", "--meta", "--set-parameter", "target-role", "--parameter-value", "Started"},
	} {
		c.mustIn(gamma, cmd...)
	}

	primaries := func() []*pcmkNode {
		var p []*pcmkNode
		for _, n := range []*pcmkNode{alpha, beta} {
			if s, err := c.status(n); err == nil && s.Role == "Primary" {
				p = append(p, n)
			}
		}
		return p
	}
	// (1) exactly one data node promoted, and Pacemaker agrees.
	var promoted *pcmkNode
	c.waitFor("one Primary", 120*time.Second, func() bool {
		p := primaries()
		if len(p) != 1 {
			return false
		}
		m, err := c.in(gamma, "crm_mon", "-1", "-r")
		if err != nil || !strings.Contains(m, "Promoted: [ "+p[0].name+" ]") || !strings.Contains(m, "Unpromoted: [ ") {
			return false
		}
		promoted = p[0]
		return true
	})
	time.Sleep(3 * time.Second)
	if p := primaries(); len(p) != 1 || p[0] != promoted {
		t.Fatalf("Primaries changed to %v", p)
	}
	other := alpha
	if promoted == alpha {
		other = beta
	}
	t.Logf("Pacemaker promoted %s", promoted.name)
	c.waitFor("the address on "+promoted.name, 60*time.Second, func() bool { return c.hasVIP(promoted) })

	// (2) crash the promoted node; Pacemaker promotes the other.
	t0 := time.Now()
	c.crash(promoted)
	c.waitFor(other.name+" promoted", 120*time.Second, func() bool {
		s, err := c.status(other)
		return err == nil && s.Role == "Primary"
	})
	t.Logf("crash of %s → %s Primary in %v", promoted.name, other.name, time.Since(t0).Round(100*time.Millisecond))
	c.waitFor("crm_mon shows the new promoted node", 30*time.Second, func() bool {
		m, err := c.in(gamma, "crm_mon", "-1", "-r")
		return err == nil && strings.Contains(m, "Promoted: [ "+other.name+" ]")
	})
	c.waitFor("the address on "+other.name, 60*time.Second, func() bool { return c.hasVIP(other) })
	t.Logf("… and the address 198.18.0.100 on %s after %v", other.name, time.Since(t0).Round(100*time.Millisecond))

	// (3) the crashed node restarts and rejoins as Secondary, in sync.
	c.startNode(promoted)
	c.waitFor(promoted.name+" Secondary and UpToDate", 180*time.Second, func() bool {
		s, err := c.status(promoted)
		return err == nil && s.Role == "Secondary" && s.Disk == "UpToDate"
	})
	c.waitFor("crm_mon shows it Unpromoted", 60*time.Second, func() bool {
		m, err := c.in(gamma, "crm_mon", "-1", "-r")
		return err == nil && strings.Contains(m, "Unpromoted: [ "+promoted.name+" ]") && strings.Contains(m, "Promoted: [ "+other.name+" ]")
	})
	if c.hasVIP(promoted) || !c.hasVIP(other) {
		t.Fatalf("the address is not (only) on %s after the rejoin", other.name)
	}
	if s, err := c.status(other); err != nil || s.Role != "Primary" {
		t.Fatalf("%s after the rejoin: %+v %v", other.name, s, err)
	}
	m, _ := c.in(gamma, "crm_mon", "-1", "-r")
	t.Log(m)
}
