package main

// The servers under test: blockrep (one node, protocol C, protocol A) and the
// reference servers (nbdkit, nbd-server, QEMU quorum). Each exports the
// volume over NBD on a unix socket in its own directory of the temp dir.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

type server struct {
	key   string // for -only
	name  string // for the table
	uri   string
	files []string // backing files, evicted before every run
	procs []*proc  // server processes (CPU accounting); labels say primary/peer
	// blockrep daemons, whose RSS is sampled during the 4k random write run
	rssProcs []*proc
	// extraPids returns processes that come and go (nbd-server's per-client children)
	extraPids func() []int
}

var serverOrder = []struct{ key, name, tool string }{
	{"one", "blockrep one node", "blockrepd"},
	{"C", "blockrep protocol C + peer", "blockrepd"},
	{"A", "blockrep protocol A + peer", "blockrepd"},
	{"nbdkit", "nbdkit file", "nbdkit"},
	{"nbd-server", "nbd-server", "nbd-server"},
	{"qemu", "QEMU quorum (sync 2-way)", "qemu-storage-daemon"},
}

type bench struct {
	dir     string // temp dir
	bin     string // blockrep binaries
	ps      *procSet
	verbose bool
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func (b *bench) setup(ctx context.Context, key string) (*server, error) {
	switch key {
	case "one":
		return b.setupBlockrep(ctx, key, "", false)
	case "C":
		return b.setupBlockrep(ctx, key, "C", true)
	case "A":
		return b.setupBlockrep(ctx, key, "A", true)
	case "nbdkit":
		return b.setupNbdkit(ctx)
	case "nbd-server":
		return b.setupNbdServer(ctx)
	case "qemu":
		return b.setupQemu(ctx)
	}
	return nil, fmt.Errorf("unknown server %q", key)
}

func serverName(key string) string {
	for _, s := range serverOrder {
		if s.key == key {
			return s.name
		}
	}
	return key
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitFor polls cond every 50 ms until it is true, it fails, or timeout.
func waitFor(ctx context.Context, what string, timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", timeout, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (b *bench) waitListening(ctx context.Context, p *proc, sock, logPath string) error {
	return waitFor(ctx, sock, 30*time.Second, func() (bool, error) {
		if p != nil && !p.alive() {
			return false, fmt.Errorf("process exited; log %s:\n%s", logPath, tail(logPath))
		}
		return unixListening(sock), nil
	})
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

func checkSockPath(p string) error {
	if len(p) > 100 {
		return fmt.Errorf("socket path too long for sun_path (%d bytes): %s; use a shorter -tmp", len(p), p)
	}
	return nil
}

// ---- blockrep ----

type brNode struct {
	name, run, log string
	port           int
}

type brStatus struct {
	Resources []struct {
		Name  string `json:"name"`
		Role  string `json:"role"`
		Disk  string `json:"disk"`
		Peers []struct {
			Node            string  `json:"node"`
			Connection      string  `json:"connection"`
			Replication     string  `json:"replication"`
			PeerDisk        string  `json:"peer_disk"`
			SyncDonePercent float64 `json:"sync_done_percent"`
		} `json:"peers"`
	} `json:"resources"`
}

func (b *bench) adm(ctx context.Context, conf string, n brNode, args ...string) ([]byte, error) {
	full := append([]string{"--config", conf, "--node", n.name, "--run-dir", n.run}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(b.bin, "blockrepadm"), full...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("blockrepadm %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

func (b *bench) brStatus(ctx context.Context, conf string, n brNode) (*brStatus, error) {
	out, err := b.adm(ctx, conf, n, "status", "--json", "r0")
	if err != nil {
		return nil, err
	}
	var st brStatus
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("status --json: %v: %s", err, out)
	}
	if len(st.Resources) != 1 {
		return nil, fmt.Errorf("status --json: %d resources", len(st.Resources))
	}
	return &st, nil
}

// setupBlockrep: protocol "" = one node without peers.
func (b *bench) setupBlockrep(ctx context.Context, key, protocol string, withPeer bool) (*server, error) {
	dir := filepath.Join(b.dir, key)
	conf := filepath.Join(dir, "conf")
	if err := os.MkdirAll(conf, 0o755); err != nil {
		return nil, err
	}
	names := []string{"alpha"}
	if withPeer {
		names = append(names, "beta")
	}
	s := &server{key: key, name: serverName(key)}
	var nodes []brNode
	var on strings.Builder
	for i, name := range names {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		n := brNode{name: name, run: filepath.Join(dir, "run-"+name), log: filepath.Join(dir, name+".log"), port: port}
		if err := os.MkdirAll(n.run, 0o755); err != nil {
			return nil, err
		}
		for _, sock := range []string{filepath.Join(n.run, "blockrepd.sock"), filepath.Join(n.run, "r0.nbd")} {
			if err := checkSockPath(sock); err != nil {
				return nil, err
			}
		}
		img := filepath.Join(dir, name+".img")
		if err := makeBacking(img); err != nil {
			return nil, err
		}
		s.files = append(s.files, img)
		fmt.Fprintf(&on, "    on %s { node-id %d; address 127.0.0.1:%d; disk %s; meta-disk internal; }\n", name, i, port, img)
		nodes = append(nodes, n)
	}
	if protocol == "" {
		protocol = "C"
	}
	// c-max-rate 0 ("none") is refused by this version's parser (range 250..4194304
	// KiB/s), so the largest accepted value stands for "unlimited".
	diskOpts := "c-max-rate 4G;"
	if withPeer {
		diskOpts += " c-fill-target 64M;"
	}
	res := fmt.Sprintf("resource r0 {\n    net { protocol %s; shared-secret \"bench\"; }\n    disk { %s }\n%s}\n", protocol, diskOpts, on.String())
	if err := os.WriteFile(filepath.Join(conf, "r0.res"), []byte(res), 0o644); err != nil {
		return nil, err
	}
	for _, n := range nodes {
		if _, err := b.adm(ctx, conf, n, "create-md", "r0"); err != nil {
			return nil, err
		}
	}
	for _, n := range nodes {
		p, err := b.ps.start(n.name, n.log, filepath.Join(b.bin, "blockrepd"),
			"--config", conf, "--node", n.name, "--run-dir", n.run, "--log-level", "warn")
		if err != nil {
			return nil, err
		}
		label := "primary"
		if n.name != "alpha" {
			label = "peer"
		}
		p.label = label
		s.procs = append(s.procs, p)
		s.rssProcs = append(s.rssProcs, p)
		if err := b.waitListening(ctx, p, filepath.Join(n.run, "blockrepd.sock"), n.log); err != nil {
			return nil, err
		}
	}
	for _, n := range nodes {
		if _, err := b.adm(ctx, conf, n, "up", "r0"); err != nil {
			return nil, err
		}
	}
	alpha := nodes[0]
	if withPeer {
		err := waitFor(ctx, "alpha and beta to connect", 60*time.Second, func() (bool, error) {
			st, err := b.brStatus(ctx, conf, alpha)
			if err != nil {
				return false, err
			}
			p := st.Resources[0].Peers
			return len(p) == 1 && p[0].Connection == "Connected", nil
		})
		if err != nil {
			return nil, err
		}
	}
	if _, err := b.adm(ctx, conf, alpha, "primary", "--force", "r0"); err != nil {
		return nil, err
	}
	if withPeer {
		t0 := time.Now()
		last := time.Now()
		err := waitFor(ctx, "the initial full sync", 15*time.Minute, func() (bool, error) {
			st, err := b.brStatus(ctx, conf, alpha)
			if err != nil {
				return false, err
			}
			r := st.Resources[0]
			if len(r.Peers) != 1 {
				return false, fmt.Errorf("%d peers", len(r.Peers))
			}
			p := r.Peers[0]
			if time.Since(last) > 5*time.Second {
				b.logf("  %s: %s %s %.1f%%", key, p.Replication, p.PeerDisk, p.SyncDonePercent)
				last = time.Now()
			}
			return r.Role == "Primary" && r.Disk == "UpToDate" && p.Connection == "Connected" &&
				p.Replication == "Established" && p.PeerDisk == "UpToDate", nil
		})
		if err != nil {
			return nil, err
		}
		b.logf("  %s: initial full sync of 1 GiB done in %.1fs", key, time.Since(t0).Seconds())
	}
	sock := filepath.Join(alpha.run, "r0.nbd")
	if err := b.waitListening(ctx, s.procs[0], sock, alpha.log); err != nil {
		return nil, err
	}
	s.uri = "nbd+unix:///r0?socket=" + sock
	return s, nil
}

// ---- nbdkit ----

func (b *bench) setupNbdkit(ctx context.Context) (*server, error) {
	dir := filepath.Join(b.dir, "nbdkit")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	img, sock, logp := filepath.Join(dir, "disk.img"), filepath.Join(dir, "nbd.sock"), filepath.Join(dir, "nbdkit.log")
	if err := checkSockPath(sock); err != nil {
		return nil, err
	}
	if err := makeBacking(img); err != nil {
		return nil, err
	}
	p, err := b.ps.start("nbdkit", logp, "nbdkit", "-U", sock, "-f", "--exit-with-parent", "file", img)
	if err != nil {
		return nil, err
	}
	if err := b.waitListening(ctx, p, sock, logp); err != nil {
		return nil, err
	}
	return &server{key: "nbdkit", name: serverName("nbdkit"), uri: "nbd+unix:///?socket=" + sock,
		files: []string{img}, procs: []*proc{p}}, nil
}

// ---- nbd-server ----

// nbd-server's -d ("do not fork") serves a single connection and exits, and fio's nbd
// engine connects twice (it probes the size first), so nbd-server runs the way it is
// deployed: it daemonizes (-p PIDFILE) and forks one child per client. The benchmark is
// a child subreaper, so the daemon becomes its child and is stopped with the rest.
func (b *bench) setupNbdServer(ctx context.Context) (*server, error) {
	dir := filepath.Join(b.dir, "nbd-server")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	img, sock := filepath.Join(dir, "disk.img"), filepath.Join(dir, "nbd.sock")
	conf, pidf, logp := filepath.Join(dir, "config"), filepath.Join(dir, "nbd-server.pid"), filepath.Join(dir, "nbd-server.log")
	if err := checkSockPath(sock); err != nil {
		return nil, err
	}
	if err := makeBacking(img); err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf("[generic]\nunixsock = %s\n[bench]\nexportname = %s\nflush = true\nfua = true\ntrim = true\n", sock, img)
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	launcher, err := b.ps.start("nbd-server-launcher", logp, "nbd-server", "-C", conf, "-p", pidf)
	if err != nil {
		return nil, err
	}
	var pid int
	err = waitFor(ctx, "nbd-server's pid file", 30*time.Second, func() (bool, error) {
		if launcher.alive() {
			return false, nil
		}
		data, err := os.ReadFile(pidf)
		if err != nil {
			return false, nil
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(data)))
		return err == nil && pid > 0, nil
	})
	if err != nil {
		return nil, fmt.Errorf("%v; log:\n%s", err, tail(logp))
	}
	p := b.ps.adopt("nbd-server", pid)
	if err := b.waitListening(ctx, p, sock, logp); err != nil {
		return nil, err
	}
	return &server{key: "nbd-server", name: serverName("nbd-server"), uri: "nbd+unix:///bench?socket=" + sock,
		files: []string{img}, procs: []*proc{p},
		extraPids: func() []int { return childrenOf(pid) }}, nil
}

// ---- QEMU quorum ----

func (b *bench) setupQemu(ctx context.Context) (*server, error) {
	dir := filepath.Join(b.dir, "qemu")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	localImg, replImg := filepath.Join(dir, "local.img"), filepath.Join(dir, "replica.img")
	replSock, sock := filepath.Join(dir, "replica.sock"), filepath.Join(dir, "quorum.sock")
	for _, p := range []string{replSock, sock} {
		if err := checkSockPath(p); err != nil {
			return nil, err
		}
	}
	for _, img := range []string{localImg, replImg} {
		if err := makeBacking(img); err != nil {
			return nil, err
		}
	}
	replLog, primLog := filepath.Join(dir, "replica.log"), filepath.Join(dir, "primary.log")
	repl, err := b.ps.start("peer", replLog, "qemu-storage-daemon",
		"--blockdev", "driver=file,node-name=file0,filename="+replImg,
		"--blockdev", "driver=raw,node-name=disk0,file=file0",
		"--nbd-server", "addr.type=unix,addr.path="+replSock,
		"--export", "type=nbd,id=exp0,node-name=disk0,name=replica,writable=on")
	if err != nil {
		return nil, err
	}
	if err := b.waitListening(ctx, repl, replSock, replLog); err != nil {
		return nil, err
	}
	prim, err := b.ps.start("primary", primLog, "qemu-storage-daemon",
		"--blockdev", "driver=file,node-name=file0,filename="+localImg,
		"--blockdev", "driver=raw,node-name=local0,file=file0",
		"--blockdev", "driver=nbd,node-name=remote0,server.type=unix,server.path="+replSock+",export=replica",
		"--blockdev", "driver=quorum,node-name=quorum0,vote-threshold=2,children.0=local0,children.1=remote0",
		"--nbd-server", "addr.type=unix,addr.path="+sock,
		"--export", "type=nbd,id=exp0,node-name=quorum0,name=quorum,writable=on")
	if err != nil {
		return nil, err
	}
	if err := b.waitListening(ctx, prim, sock, primLog); err != nil {
		return nil, err
	}
	return &server{key: "qemu", name: serverName("qemu"), uri: "nbd+unix:///quorum?socket=" + sock,
		files: []string{localImg, replImg}, procs: []*proc{prim, repl}}, nil
}
