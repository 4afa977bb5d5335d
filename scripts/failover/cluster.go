package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/blockrep/blockrep/resource/control"
)

const (
	resName = "pg"
	pgBin   = "/usr/lib/postgresql/15/bin"
	// diskSize is each data node's sparse backing file.
	diskSize = 512 << 20
)

// node is one blockrepd in its namespace.
type node struct {
	Name     string
	ID       int
	IP       string
	Diskless bool
	Dir      string // <work>/<name>: etc, run, mnt, disk.img, daemon.log

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

func (n *node) NS() string     { return nsOf(n.Name) }
func (n *node) Conf() string   { return filepath.Join(n.Dir, "etc") }
func (n *node) RunDir() string { return filepath.Join(n.Dir, "run") }
func (n *node) Mnt() string    { return filepath.Join(n.Dir, "mnt") }
func (n *node) Disk() string   { return filepath.Join(n.Dir, "disk.img") }
func (n *node) Log() string    { return filepath.Join(n.Dir, "daemon.log") }

type cluster struct {
	Work   string
	Bin    string
	Nodes  []*node // alpha, beta (data), gamma (tiebreaker)
	PWFile string

	devMu   sync.Mutex
	devices map[string]bool // loop devices recorded in deviceLog
}

func newCluster(work, bin string) *cluster {
	c := &cluster{Work: work, Bin: bin, PWFile: filepath.Join(work, "pgpassword")}
	for i, name := range []string{"alpha", "beta", "gamma"} {
		c.Nodes = append(c.Nodes, &node{Name: name, ID: i, IP: fmt.Sprintf("198.18.0.%d", i+1),
			Diskless: name == "gamma", Dir: filepath.Join(work, name)})
	}
	return c
}

func (c *cluster) data() []*node { return c.Nodes[:2] }

func (c *cluster) byName(name string) *node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// other is the data node that is not n.
func (c *cluster) other(n *node) *node {
	if n == c.Nodes[0] {
		return c.Nodes[1]
	}
	return c.Nodes[0]
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// resFile is the configuration every node reads. ping-int is in seconds, ping-timeout
// and timeout in tenths (docs/configuration.md): a silent peer is dead after 1.5 s,
// one that stops answering requests after 1 s.
func (c *cluster) resFile(secret string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `resource %s {
    options { quorum majority; on-no-quorum io-error; }
    net { protocol C; shared-secret "%s"; ping-int 1; ping-timeout 5; timeout 10; connect-int 1; }
    promoter {
        fs-type ext4; pg-bin-dir %s; pg-port 5432; pg-user postgres;
        address %s/24 dev eth0;
        restart-limit 3 60;
    }
`, resName, secret, pgBin, vip)
	for _, n := range c.Nodes {
		if n.Diskless {
			fmt.Fprintf(&b, "    on %s { node-id %d; address %s:7789; disk none; }\n", n.Name, n.ID, n.IP)
			continue
		}
		fmt.Fprintf(&b, "    on %s { node-id %d; address %s:7789; disk %s; meta-disk internal;\n", n.Name, n.ID, n.IP, n.Disk())
		fmt.Fprintf(&b, "        promoter { mount-point %s; pg-data %s; } }\n", n.Mnt(), filepath.Join(n.Mnt(), "data"))
	}
	b.WriteString("}\n")
	return b.String()
}

// prepare writes every node's files: configuration, backing file, directories (all
// traversable: PostgreSQL runs as postgres below the mount point and puts its socket
// in the run dir), the password file, and runs create-md on the data nodes.
func (c *cluster) prepare(password string) error {
	if err := os.MkdirAll(c.Work, 0o755); err != nil {
		return err
	}
	for d := c.Work; d != "/"; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s is not searchable by others: PostgreSQL (user postgres) could not reach its data below it", d)
		}
	}
	secret := randomHex(16)
	if err := os.WriteFile(c.PWFile, []byte(password+"\n"), 0o600); err != nil {
		return err
	}
	for _, n := range c.Nodes {
		for _, d := range []string{n.Dir, n.Conf(), n.RunDir(), n.Mnt()} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
			os.Chmod(d, 0o755)
		}
		if err := os.WriteFile(filepath.Join(n.Conf(), resName+".res"), []byte(c.resFile(secret)), 0o644); err != nil {
			return err
		}
		if n.Diskless {
			continue
		}
		if err := os.WriteFile(n.Disk(), nil, 0o600); err != nil {
			return err
		}
		if err := os.Truncate(n.Disk(), diskSize); err != nil {
			return err
		}
		if _, err := c.adm(n, "create-md", resName); err != nil {
			return err
		}
	}
	return nil
}

// adm runs blockrepadm as node n. It talks to the daemon over the control socket in
// the run dir, which is reachable from any network namespace.
func (c *cluster) adm(n *node, args ...string) (string, error) {
	full := append([]string{"--config", n.Conf(), "--node", n.Name, "--run-dir", n.RunDir()}, args...)
	cmd := exec.Command(filepath.Join(c.Bin, "blockrepadm"), full...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		return o.String(), fmt.Errorf("%s: blockrepadm %s: %v: %s", n.Name, strings.Join(args, " "), err, strings.TrimSpace(e.String()))
	}
	return o.String(), nil
}

// start runs node n's daemon in its namespace (ip netns exec execs it, so the process
// is blockrepd itself, in a private mount namespace where it mounts the volume) and
// waits for its control socket.
func (c *cluster) start(n *node) error {
	logf, err := os.OpenFile(n.Log(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command("ip", "netns", "exec", n.NS(), filepath.Join(c.Bin, "blockrepd"),
		"--config", n.Conf(), "--node", n.Name, "--run-dir", n.RunDir(), "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a Ctrl-C at the terminal reaches the harness only,
	// which then tears down in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(exited)
	}()
	n.mu.Lock()
	n.cmd, n.exited = cmd, exited
	n.mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for {
		conn, err := net.Dial("unix", control.SocketPath(n.RunDir()))
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("%s: blockrepd exited at start (log %s)", n.Name, n.Log())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no control socket after 20 s (log %s)", n.Name, n.Log())
		}
	}
}

// reap waits (up to d) for the daemon of n to have exited after a kill.
func (n *node) reap(d time.Duration) {
	n.mu.Lock()
	ch := n.exited
	n.cmd = nil
	n.mu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-time.After(d):
		}
	}
}

func (n *node) running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil
}

// status is node n's status of the resource, asked over the control socket with the
// same request `blockrepadm status --json` sends (in-process: a poll of three nodes
// every 100 ms would otherwise be 30 process starts a second on a 2-core machine).
func (c *cluster) status(n *node, timeout time.Duration) (control.ResourceStatus, error) {
	cl := control.NewClient(n.RunDir())
	cl.Timeout = timeout
	resp, err := cl.Do(control.Request{Verb: "status", Resource: resName})
	if err != nil {
		return control.ResourceStatus{}, err
	}
	if resp.Status == nil || len(resp.Status.Resources) == 0 {
		return control.ResourceStatus{}, errors.New("status names no resource")
	}
	return resp.Status.Resources[0], nil
}

// noteLoops records the loop devices now attached to a file in the work dir.
func (c *cluster) noteLoops() {
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && under(strings.TrimSpace(string(b)), c.Work) {
			c.noteDevice("/dev/" + filepath.Base(filepath.Dir(filepath.Dir(f))))
		}
	}
}

// noteDevice records a loop device a daemon uses, once (see deviceLog).
func (c *cluster) noteDevice(dev string) {
	c.devMu.Lock()
	defer c.devMu.Unlock()
	if c.devices == nil {
		c.devices = map[string]bool{}
	}
	if !c.devices[dev] {
		c.devices[dev] = true
		noteDevice(c.Work, dev)
	}
}

// serving reports whether a status shows the service running.
func serving(s control.ResourceStatus) bool {
	return s.Service != nil && s.Service.State == "running"
}

// active is what "two serving" counts: role Primary or the service running.
func active(s control.ResourceStatus) bool { return s.Role == "Primary" || serving(s) }

// servingNode is the data node whose status says Primary with the service running,
// or nil.
func (c *cluster) servingNode() *node {
	var found *node
	for _, n := range c.data() {
		if !n.running() {
			continue
		}
		if s, err := c.status(n, time.Second); err == nil && s.Role == "Primary" && serving(s) {
			found = n
		}
	}
	return found
}

// inSync reports whether n is UpToDate (the tiebreaker: Diskless) with quorum, Connected to every peer, with every data
// peer Established and UpToDate.
func (c *cluster) inSync(n *node) bool {
	s, err := c.status(n, time.Second)
	want := "UpToDate"
	if n.Diskless {
		want = "Diskless"
	}
	if err != nil || s.Disk != want || !s.Quorum {
		return false
	}
	if len(s.Peers) != len(c.Nodes)-1 {
		return false
	}
	for _, p := range s.Peers {
		if p.Connection != "Connected" {
			return false
		}
		if c.byName(p.Node).Diskless {
			continue
		}
		if p.Replication != "Established" || p.PeerDisk != "UpToDate" {
			return false
		}
	}
	return true
}

// waitFor polls cond every 50 ms until it holds or d passes.
func waitFor(d time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if interrupted != nil && interrupted.Err() != nil {
			return fmt.Errorf("interrupted waiting for %s", what)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// teardown stops everything the run started, in an order that leaves no mount or
// loop device behind: a clean down where a daemon answers, then SIGKILL of whatever
// runs in the fo-* namespaces, lazy unmounts below the work dir in every mount
// namespace, loop devices of the work dir, and the namespaces.
func teardown(c *cluster, work string) {
	if c != nil {
		var wg sync.WaitGroup
		for _, n := range c.Nodes {
			if !n.running() {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				cmd := exec.Command(filepath.Join(c.Bin, "blockrepadm"), "--config", n.Conf(), "--node", n.Name,
					"--run-dir", n.RunDir(), "down", "--force", resName)
				cmd.Start()
				done := make(chan struct{})
				go func() { cmd.Wait(); close(done) }()
				select {
				case <-done:
				case <-time.After(15 * time.Second):
					cmd.Process.Kill()
				}
			}()
		}
		wg.Wait()
	}
	namespaces := listNamespaces()
	for _, ns := range namespaces {
		killNS(ns)
	}
	if c != nil {
		for _, n := range c.Nodes {
			n.reap(5 * time.Second)
		}
	}
	if work != "" {
		unmountUnder(work)
		detachLoops(work, false)
	}
	for _, ns := range namespaces {
		if err := deleteNamespace(ns); err != nil {
			fmt.Fprintln(os.Stderr, "failover: cleanup:", err)
		}
	}
	if work != "" {
		// A loop device whose FUSE file vanished only now can be detached.
		detachLoops(work, false)
	}
}
