// Package clustertest runs real blockrepd processes for integration tests: it writes a
// .res file, creates backing files and metadata, starts and kills daemons, and drives
// them with the real blockrepadm. By default every node listens on 127.0.0.1; with
// Options.Network each node gets its own network namespace (or, where namespaces are
// not available, its own 127.0.0.x address behind an in-process proxy), so that tests
// can cut, mend and throttle the links between nodes (network.go).
package clustertest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blockrep/blockrep/resource/control"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Binaries returns a directory holding blockrepd and blockrepadm: $BLOCKREP_BIN if set
// (make test builds them first), else a fresh build.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		// A -race program sleeps 1 s at exit by default (for late reports): every
		// blockrepadm call would cost a second.
		if os.Getenv("GORACE") == "" {
			os.Setenv("GORACE", "atexit_sleep_ms=0")
		}
		if d := os.Getenv("BLOCKREP_BIN"); d != "" {
			binDir = d
			return
		}
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		binDir, buildErr = os.MkdirTemp("", "blockrep-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-race", "-o", binDir+"/", "./cmd/...")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building binaries: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// Need skips the test when a program is missing (make test installs them all).
func Need(t testing.TB, programs ...string) {
	t.Helper()
	for _, p := range programs {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("%s not installed (make deps installs it)", p)
		}
	}
}

// Options shape a cluster.
type Options struct {
	Nodes    int    // default 2
	Size     int64  // backing file size, default 256 MiB
	Resource string // default r0
	Protocol string // default C
	// Conns overrides the protocol per connection: {0,2}: "A".
	Conns map[[2]int]string
	// Net is extra text for the resource's net section.
	Net string
	// Disk is extra text for the resource's disk section.
	Disk string
	// Handlers is the text of a handlers section.
	Handlers string
	// On is extra text for a node's on section, by node index.
	On map[int]string
	// Diskless makes nodes diskless tiebreakers (disk none), by node index.
	Diskless map[int]bool
	// Options is extra text for the resource's options section; Extra is raw text
	// inside the resource (a promoter section, say).
	Options, Extra string
	// Network places the nodes: Loopback (default), Netns or Proxied (see network.go).
	Network NetMode
	// FaultInjection starts the daemons with --fault-injection (the "fault" verb).
	FaultInjection bool
}

// Node is one blockrepd.
type Node struct {
	Name   string
	ID     int
	Addr   string // the IP the peer listener binds
	Port   int
	Disk   string
	RunDir string
	// NS is the node's network namespace (Netns mode), else "".
	NS string

	c   *Cluster
	cmd *exec.Cmd
	log string
	// exited is closed when the daemon process ends.
	exited chan struct{}
}

// Cluster is a set of nodes sharing one resource definition.
type Cluster struct {
	T     testing.TB
	Dir   string
	Conf  string
	Bin   string
	Res   string
	Nodes []*Node
	Size  int64

	opts Options
	net  *network
}

var names = []string{"alpha", "beta", "gamma", "delta"}

// New writes the configuration and the backing files and runs create-md on every node;
// no daemon runs yet.
func New(t testing.TB, o Options) *Cluster {
	t.Helper()
	if o.Nodes == 0 {
		o.Nodes = 2
	}
	if o.Size == 0 {
		o.Size = 256 << 20
	}
	if o.Resource == "" {
		o.Resource = "r0"
	}
	if o.Protocol == "" {
		o.Protocol = "C"
	}
	dir, err := os.MkdirTemp("", "blockrep-test-")
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{T: t, Dir: dir, Conf: filepath.Join(dir, "conf"), Bin: Binaries(t), Res: o.Resource, Size: o.Size, opts: o}
	os.MkdirAll(c.Conf, 0o755)
	for i := 0; i < o.Nodes; i++ {
		n := &Node{Name: names[i], ID: i, Addr: "127.0.0.1", c: c,
			Disk: filepath.Join(dir, names[i]+".img"), RunDir: filepath.Join(dir, "run-"+names[i])}
		n.log = filepath.Join(dir, names[i]+".log")
		if o.Diskless[i] {
			n.Disk = "none"
		} else if err := os.WriteFile(n.Disk, nil, 0o600); err != nil {
			t.Fatal(err)
		} else if err := os.Truncate(n.Disk, o.Size); err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(n.RunDir, 0o700)
		c.Nodes = append(c.Nodes, n)
	}
	// Cleanup is registered before the network exists so that a failed setup is
	// undone too.
	t.Cleanup(c.cleanup)
	if err := c.setupNetwork(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.Conf, o.Resource+".res"), []byte(c.resFile(o)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		if n.Disk != "none" {
			c.MustAdm(n, "create-md", c.Res)
		}
	}
	return c
}

func freePort(t testing.TB) int { return freePortOn(t, "127.0.0.1") }

// freePortOn finds a TCP port that is free on ip now.
func freePortOn(t testing.TB, ip string) int {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (c *Cluster) resFile(o Options) string {
	var b strings.Builder
	fmt.Fprintf(&b, "resource %s {\n    net {\n        protocol %s;\n        shared-secret \"test-secret\";\n        connect-int 1;\n        ping-int 1;\n        ping-timeout 20;\n        timeout 20;\n%s    }\n", o.Resource, o.Protocol, o.Net)
	if o.Disk != "" {
		fmt.Fprintf(&b, "    disk {\n%s    }\n", o.Disk)
	}
	if o.Options != "" {
		fmt.Fprintf(&b, "    options {\n%s    }\n", o.Options)
	}
	b.WriteString(o.Extra)
	if o.Handlers != "" {
		fmt.Fprintf(&b, "    handlers {\n%s    }\n", o.Handlers)
	}
	for i, n := range c.Nodes {
		meta := "        meta-disk internal;\n"
		if n.Disk == "none" {
			meta = ""
		}
		fmt.Fprintf(&b, "    on %s {\n        node-id %d;\n        address %s;\n        disk %s;\n%s%s    }\n",
			n.Name, n.ID, net.JoinHostPort(n.Addr, fmt.Sprint(n.Port)), n.Disk, meta, o.On[i])
	}
	// Explicit connections when a protocol differs per connection, or when the peers
	// must dial each other through the proxies (Proxied: each host's address in a
	// connection is its proxy's, which forwards to its listener).
	if len(o.Conns) > 0 || c.net.proxied() {
		for i := range c.Nodes {
			for j := i + 1; j < len(c.Nodes); j++ {
				p := o.Protocol
				if q, ok := o.Conns[[2]int{i, j}]; ok {
					p = q
				}
				fmt.Fprintf(&b, "    connection {\n        host %s%s;\n        host %s%s;\n        net { protocol %s; }\n    }\n",
					c.Nodes[i].Name, c.net.connAddress(i, j), c.Nodes[j].Name, c.net.connAddress(j, i), p)
			}
		}
	}
	b.WriteString("}\n")
	return b.String()
}

// Start runs a node's daemon.
func (c *Cluster) Start(n *Node) {
	c.T.Helper()
	logf, err := os.OpenFile(n.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.T.Fatal(err)
	}
	args := []string{filepath.Join(c.Bin, "blockrepd"), "--config", c.Conf, "--node", n.Name, "--run-dir", n.RunDir, "--log-level", "debug"}
	if c.opts.FaultInjection {
		args = append(args, "--fault-injection")
	}
	if n.NS != "" {
		// ip netns exec execs the daemon, so the process we signal is blockrepd itself.
		args = append([]string{"ip", "netns", "exec", n.NS}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		c.T.Fatal(err)
	}
	n.cmd = cmd
	n.exited = make(chan struct{})
	go func(ch chan struct{}) {
		cmd.Wait()
		logf.Close()
		close(ch)
	}(n.exited)
	c.WaitFor(n.Name+"'s control socket", func() bool {
		conn, err := net.Dial("unix", control.SocketPath(n.RunDir))
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
}

// StartAll starts every daemon and brings the resource up everywhere.
func (c *Cluster) StartAll() {
	for _, n := range c.Nodes {
		c.Start(n)
	}
	for _, n := range c.Nodes {
		c.MustAdm(n, "up", c.Res)
	}
}

// Kill is kill -9 of a node's daemon.
func (c *Cluster) Kill(n *Node) {
	if n.cmd == nil {
		return
	}
	n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.exited
	n.cmd = nil
}

// Stop is a clean SIGTERM shutdown.
func (c *Cluster) Stop(n *Node) {
	if n.cmd == nil {
		return
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(30 * time.Second):
		c.T.Errorf("%s did not stop within 30 s of SIGTERM", n.Name)
		c.Kill(n)
	}
	n.cmd = nil
}

func (c *Cluster) cleanup() {
	for _, n := range c.Nodes {
		c.Kill(n)
	}
	// Namespaces, firewall rules, qdiscs and proxies go once no daemon uses them.
	if err := c.net.teardown(); err != nil {
		c.T.Errorf("network cleanup: %v", err)
	}
	if c.T.Failed() {
		for _, n := range c.Nodes {
			b, _ := os.ReadFile(n.log)
			c.T.Logf("==== %s log (last 60 lines) ====\n%s", n.Name, tail(string(b), 60))
		}
		c.T.Logf("test files kept in %s", c.Dir)
		return
	}
	os.RemoveAll(c.Dir)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Adm runs blockrepadm as node n.
func (c *Cluster) Adm(n *Node, args ...string) (stdout, stderr string, code int) {
	full := append([]string{"--config", c.Conf, "--node", n.Name, "--run-dir", n.RunDir}, args...)
	cmd := exec.Command(filepath.Join(c.Bin, "blockrepadm"), full...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		c.T.Fatalf("blockrepadm %v: %v", args, err)
	}
	return o.String(), e.String(), code
}

// MustAdm runs blockrepadm and fails the test unless it succeeds.
func (c *Cluster) MustAdm(n *Node, args ...string) string {
	c.T.Helper()
	out, errOut, code := c.Adm(n, args...)
	if code != 0 {
		c.T.Fatalf("%s: blockrepadm %s: exit %d: %s", n.Name, strings.Join(args, " "), code, strings.TrimSpace(errOut))
	}
	return out
}

// Status is node n's status of the cluster's resource.
func (c *Cluster) Status(n *Node) control.ResourceStatus {
	c.T.Helper()
	resp, err := control.NewClient(n.RunDir).Do(control.Request{Verb: "status", Resource: c.Res})
	if err != nil {
		c.T.Fatalf("%s: status: %v", n.Name, err)
	}
	return resp.Status.Resources[0]
}

// Peer is node n's view of peer p.
func (c *Cluster) Peer(n, p *Node) control.PeerStatus {
	c.T.Helper()
	for _, ps := range c.Status(n).Peers {
		if ps.Node == p.Name {
			return ps
		}
	}
	c.T.Fatalf("%s has no peer %s", n.Name, p.Name)
	return control.PeerStatus{}
}

// WaitFor polls cond for up to 60 s.
func (c *Cluster) WaitFor(what string, cond func() bool) {
	c.T.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			c.T.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitAllConnected waits until every node is Connected to every peer.
func (c *Cluster) WaitAllConnected() {
	c.T.Helper()
	c.WaitFor("every connection", func() bool {
		for _, n := range c.Nodes {
			for _, p := range c.Status(n).Peers {
				if p.Connection != "Connected" {
					return false
				}
			}
		}
		return true
	})
}

// InSync reports whether n and p are connected, Established and both UpToDate.
func (c *Cluster) InSync(n, p *Node) bool {
	s := c.Status(n)
	ps := c.Peer(n, p)
	return s.Disk == "UpToDate" && ps.Connection == "Connected" && ps.Replication == "Established" && ps.PeerDisk == "UpToDate"
}

// WaitInSync waits until every pair of nodes is in sync.
func (c *Cluster) WaitInSync() {
	c.T.Helper()
	for _, n := range c.Nodes {
		for _, p := range c.Nodes {
			if n != p {
				c.WaitFor(fmt.Sprintf("%s in sync with %s", n.Name, p.Name), func() bool { return c.InSync(n, p) })
			}
		}
	}
}

// URI is the NBD URI of node n's export.
func (n *Node) URI() string {
	return fmt.Sprintf("nbd+unix:///%s?socket=%s", n.c.Res, control.ExportPath(n.RunDir, n.c.Res))
}

// Run runs an external program and returns its combined output, failing on error.
func (c *Cluster) Run(name string, args ...string) string {
	c.T.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		c.T.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// DataSum is the SHA-256 of the first n bytes of a node's backing file (its data
// region), read directly.
func (c *Cluster) DataSum(node *Node, n int64) string {
	c.T.Helper()
	f, err := os.Open(node.Disk)
	if err != nil {
		c.T.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, n)); err != nil {
		c.T.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// RemoveBinaries deletes the binaries Binaries built (not $BLOCKREP_BIN); for a
// TestMain, after every test has run.
func RemoveBinaries() {
	if os.Getenv("BLOCKREP_BIN") == "" && binDir != "" {
		os.RemoveAll(binDir)
	}
}
