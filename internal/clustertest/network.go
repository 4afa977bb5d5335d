package clustertest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// NetMode says where a cluster's nodes live on the network.
type NetMode string

const (
	// Loopback: every node listens on 127.0.0.1 (the default); links cannot be cut.
	Loopback NetMode = ""
	// Netns: every node runs in its own network namespace, with a veth pair to a
	// bridge in a hub namespace, addresses 198.18.0.N/24 (RFC 2544 benchmark space).
	// Cuts are iptables DROP rules and throttling is a tbf qdisc inside the namespaces.
	// Needs root and ip netns.
	Netns NetMode = "netns"
	// Proxied: every node listens on its own 127.0.0.x address and reaches each peer
	// through an in-process TCP proxy that can hold, delay and throttle the bytes of
	// that link — the fallback where network namespaces are not available.
	Proxied NetMode = "proxy"
)

// NetnsAvailable reports why Netns cannot be used here, or nil.
func NetnsAvailable() error {
	netnsOnce.Do(func() {
		if os.Geteuid() != 0 {
			netnsErr = errors.New("network namespaces need root")
			return
		}
		for _, p := range []string{"ip", "iptables", "tc"} {
			if _, err := exec.LookPath(p); err != nil {
				netnsErr = fmt.Errorf("%s not installed", p)
				return
			}
		}
		name := fmt.Sprintf("%s-%d-probe", nsPrefix, os.Getpid())
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			netnsErr = fmt.Errorf("ip netns add: %v: %s", err, strings.TrimSpace(string(out)))
			return
		}
		exec.Command("ip", "netns", "del", name).Run()
		sweepStaleNamespaces()
	})
	return netnsErr
}

var (
	netnsOnce sync.Once
	netnsErr  error
	nsSeq     atomic.Int64
)

// nsPrefix starts every namespace name this package creates; the creating process id
// follows, so namespaces left behind by a test binary that died can be recognized.
const nsPrefix = "blockrep"

var staleNS = regexp.MustCompile(`^` + nsPrefix + `-(\d+)-`)

// sweepStaleNamespaces deletes the namespaces of test processes that no longer run
// (killed by a test timeout before their cleanup ran).
func sweepStaleNamespaces() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		m := staleNS.FindStringSubmatch(f[0])
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid == os.Getpid() || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue
		}
		deleteNamespace(f[0])
	}
}

// deleteNamespace kills whatever still runs in a namespace and deletes it; its
// interfaces, firewall rules and qdiscs go with it.
func deleteNamespace(ns string) error {
	if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	var err error
	for i := 0; i < 50; i++ { // EBUSY while a killed process is still exiting
		var out []byte
		if out, err = exec.Command("ip", "netns", "del", ns).CombinedOutput(); err == nil {
			return nil
		}
		err = fmt.Errorf("ip netns del %s: %v: %s", ns, err, strings.TrimSpace(string(out)))
		time.Sleep(20 * time.Millisecond)
	}
	return err
}

// network is a cluster's placement and its link faults. A nil *network is Loopback.
type network struct {
	mode   NetMode
	hub    string    // Netns: the namespace holding the bridge
	spaces []string  // Netns: every namespace created, hub last
	proxy  *proxyNet // Proxied

	mu        sync.Mutex
	cuts      map[[2]int]bool // Netns: installed DROP rules, from → to
	throttled map[int]bool    // Netns: nodes with a tbf qdisc
}

func (c *Cluster) setupNetwork() error {
	switch c.opts.Network {
	case Loopback:
		for _, n := range c.Nodes {
			n.Port = freePort(c.T)
		}
		return nil
	case Netns:
		if err := NetnsAvailable(); err != nil {
			return fmt.Errorf("network namespaces unavailable: %v", err)
		}
		return c.setupNetns()
	case Proxied:
		return c.setupProxied()
	}
	return fmt.Errorf("unknown network mode %q", c.opts.Network)
}

// run runs a command, returning its output in the error.
func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// setupNetns gives every node a namespace named blockrep-PID-SEQ-NAME with eth0 on a
// bridge in blockrep-PID-SEQ-hub. Nothing is created in the root namespace, so
// deleting the namespaces removes everything.
func (c *Cluster) setupNetns() error {
	prefix := fmt.Sprintf("%s-%d-%d", nsPrefix, os.Getpid(), nsSeq.Add(1))
	nw := &network{mode: Netns, hub: prefix + "-hub", cuts: map[[2]int]bool{}, throttled: map[int]bool{}}
	c.net = nw
	if err := run("ip", "netns", "add", nw.hub); err != nil {
		return err
	}
	nw.spaces = append(nw.spaces, nw.hub)
	steps := [][]string{
		{"ip", "-n", nw.hub, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", nw.hub, "link", "set", "br0", "up"},
	}
	for i, n := range c.Nodes {
		n.NS = prefix + "-" + n.Name
		n.Addr = fmt.Sprintf("198.18.0.%d", i+1)
		n.Port = 7789
		if err := run("ip", "netns", "add", n.NS); err != nil {
			return err
		}
		nw.spaces = append([]string{n.NS}, nw.spaces...)
		veth := fmt.Sprintf("v%d", i)
		steps = append(steps,
			[]string{"ip", "-n", nw.hub, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", n.NS},
			[]string{"ip", "-n", nw.hub, "link", "set", veth, "master", "br0", "up"},
			[]string{"ip", "-n", n.NS, "addr", "add", n.Addr + "/24", "dev", "eth0"},
			[]string{"ip", "-n", n.NS, "link", "set", "eth0", "up"},
			[]string{"ip", "-n", n.NS, "link", "set", "lo", "up"},
		)
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			return err
		}
	}
	return nil
}

func (nw *network) proxied() bool { return nw != nil && nw.mode == Proxied }

// connAddress is " address IP:PORT" for host i in its connection with host j, when
// the connection needs its own addresses (Proxied), else "".
func (nw *network) connAddress(i, j int) string {
	if !nw.proxied() {
		return ""
	}
	return " address " + nw.proxy.addressOf(i, j)
}

func (nw *network) teardown() error {
	if nw == nil {
		return nil
	}
	if nw.proxy != nil {
		nw.proxy.close()
	}
	var errs []error
	for _, ns := range nw.spaces {
		if err := deleteNamespace(ns); err != nil {
			errs = append(errs, err)
		}
	}
	nw.spaces = nil
	return errors.Join(errs...)
}

// Cut drops every packet from node a to node b (one direction; cut both ways for a
// full partition). Established connections stall rather than break, as on a real
// network: the daemons notice through their keepalive timeouts.
func (c *Cluster) Cut(a, b *Node) error { return c.setCut(a, b, true) }

// Mend undoes Cut(a, b).
func (c *Cluster) Mend(a, b *Node) error { return c.setCut(a, b, false) }

func (c *Cluster) setCut(a, b *Node, cut bool) error {
	nw := c.net
	switch {
	case nw == nil:
		return errors.New("links cannot be cut on a Loopback cluster (use Options.Network)")
	case nw.proxy != nil:
		nw.proxy.setCut(a.ID, b.ID, cut)
		return nil
	}
	nw.mu.Lock()
	defer nw.mu.Unlock()
	k := [2]int{a.ID, b.ID}
	if nw.cuts[k] == cut {
		return nil
	}
	// Dropped on arrival at b, so that a's stack sees silence rather than EPERM.
	op := "-A"
	if !cut {
		op = "-D"
	}
	if err := run("ip", "netns", "exec", b.NS, "iptables", "-w", op, "INPUT", "-s", a.Addr, "-j", "DROP"); err != nil {
		return err
	}
	nw.cuts[k] = cut
	return nil
}

// MendAll undoes every cut.
func (c *Cluster) MendAll() error {
	var errs []error
	for _, a := range c.Nodes {
		for _, b := range c.Nodes {
			if a != b {
				errs = append(errs, c.Mend(a, b))
			}
		}
	}
	return errors.Join(errs...)
}

// Shape is a slow link: a rate limit and (Proxied only) an added one-way delay.
type Shape struct {
	Rate  int64         // bytes per second
	Delay time.Duration // Proxied: added to every chunk; Netns: tbf queues instead
}

// Throttle slows everything node n sends to its peers: a tbf qdisc on its interface
// (Netns), or its side of every proxied link (Proxied).
func (c *Cluster) Throttle(n *Node, s Shape) error {
	nw := c.net
	switch {
	case nw == nil:
		return errors.New("links cannot be throttled on a Loopback cluster (use Options.Network)")
	case nw.proxy != nil:
		nw.proxy.setShape(n.ID, s)
		return nil
	}
	nw.mu.Lock()
	defer nw.mu.Unlock()
	// burst: one 10 ms worth at the rate, at least a few packets; latency bounds the
	// queue (what waits longer is dropped, and TCP retransmits it).
	burst := max(s.Rate/100, 16<<10)
	err := run("ip", "netns", "exec", n.NS, "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf",
		"rate", fmt.Sprintf("%dbit", s.Rate*8), "burst", fmt.Sprint(burst), "latency", "500ms")
	if err == nil {
		nw.throttled[n.ID] = true
	}
	return err
}

// Unthrottle undoes Throttle.
func (c *Cluster) Unthrottle(n *Node) error {
	nw := c.net
	switch {
	case nw == nil:
		return nil
	case nw.proxy != nil:
		nw.proxy.setShape(n.ID, Shape{})
		return nil
	}
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if !nw.throttled[n.ID] {
		return nil
	}
	delete(nw.throttled, n.ID)
	return run("ip", "netns", "exec", n.NS, "tc", "qdisc", "del", "dev", "eth0", "root")
}

// Network is the cluster's network mode.
func (c *Cluster) Network() NetMode {
	if c.net == nil {
		return Loopback
	}
	return c.net.mode
}
