package resource

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/blockrep/blockrep/internal/clustertest"
)

const pgBin = "/usr/lib/postgresql/15/bin"

// promoterCluster is two data nodes and a tiebreaker on loopback with a promoter
// section: each data node has its own mount point and PostgreSQL port.
func promoterCluster(t *testing.T) (*clustertest.Cluster, []int) {
	if testing.Short() {
		t.Skip("starts daemons and PostgreSQL")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop devices, mounts, FUSE)")
	}
	for _, c := range []string{"nbdfuse", "losetup", "fsck", "mkfs.ext4", "blkid"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("%s not installed", c)
		}
	}
	if _, err := os.Stat(filepath.Join(pgBin, "postgres")); err != nil {
		t.Skip("postgresql-15 not installed")
	}
	// The postgres user must traverse every directory above its data directory.
	base, err := os.MkdirTemp("", "blockrep-pg-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(base, 0o755)
	t.Cleanup(func() { os.RemoveAll(base) })
	ports := []int{freePort(t), freePort(t)}
	on := map[int]string{}
	for i, name := range []string{"alpha", "beta"} {
		mnt := filepath.Join(base, name)
		if err := os.MkdirAll(mnt, 0o755); err != nil {
			t.Fatal(err)
		}
		on[i] = fmt.Sprintf("        promoter { mount-point %s; pg-data %s/data; pg-port %d; }\n", mnt, mnt, ports[i])
	}
	c := clustertest.New(t, clustertest.Options{Nodes: 3, Size: 128 << 20, Diskless: map[int]bool{2: true},
		Options: "        quorum majority;\n        on-no-quorum io-error;\n",
		Extra:   fmt.Sprintf("    promoter {\n        fs-type ext4;\n        pg-bin-dir %s;\n        restart-limit 3 60;\n    }\n", pgBin),
		On:      on})
	// PostgreSQL's socket lives in the daemon's run directory.
	for _, d := range []string{c.Dir, c.Nodes[0].RunDir, c.Nodes[1].RunDir} {
		os.Chmod(d, 0o755)
	}
	// Before the cluster's own cleanup (which kills the daemons): down stops the
	// service, so no PostgreSQL, mount or loop device outlives the test.
	t.Cleanup(func() {
		for _, n := range c.Nodes {
			if n.Running() {
				c.TryAdm(n, "down", "--force", c.Res)
			}
		}
	})
	return c, ports
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, p, _ := strings.Cut(l.Addr().String(), ":")
	n, _ := strconv.Atoi(p)
	return n
}

// serving returns the data node whose service runs, or -1.
func serving(c *clustertest.Cluster) int {
	found := -1
	for i, n := range c.Nodes[:2] {
		if !n.Running() {
			continue
		}
		s, err := c.TryStatus(n, 5*time.Second)
		if err == nil && s.Service != nil && s.Service.State == "running" && s.Role == "Primary" {
			found = i
		}
	}
	return found
}

func waitServing(t *testing.T, c *clustertest.Cluster, what string) int {
	t.Helper()
	var i int
	c.WaitFor(what, func() bool { i = serving(c); return i >= 0 })
	return i
}

func pgConnect(t *testing.T, port int, password string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres sslmode=disable connect_timeout=5", port, password))
	if err != nil {
		t.Fatalf("connect to PostgreSQL on port %d: %v", port, err)
	}
	return conn
}

func rowCount(t *testing.T, port int, password string) int {
	t.Helper()
	conn := pgConnect(t, port, password)
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM items").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPromoter: pg-init, then the promoter alone brings PostgreSQL up on one data
// node; kill -9 of the postmaster restarts it in place; switchover moves it; a start
// step that fails (a mount point that is a file) makes that node give up and the
// other take over, with the failed step in status. Bad input is refused in one line.
func TestPromoter(t *testing.T) {
	c, ports := promoterCluster(t)
	alpha, beta, gamma := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	c.StartAll()
	const password = "s3cret-pw"
	pwFile := filepath.Join(c.Dir, "pw")
	os.WriteFile(pwFile, []byte(password+"\n"), 0o600)

	one := func(n *clustertest.Node, want string, args ...string) {
		t.Helper()
		_, e, code := c.Adm(n, args...)
		if code == 0 || !strings.Contains(e, want) || strings.Count(strings.TrimSpace(e), "\n") > 0 {
			t.Fatalf("blockrepadm %s on %s: exit %d, stderr %q; want one line with %q", strings.Join(args, " "), n.Name, code, e, want)
		}
	}
	one(beta, "not UpToDate", "pg-init", "--password-file", pwFile, c.Res)
	one(alpha, "password file", "pg-init", "--password-file", filepath.Join(c.Dir, "missing"), c.Res)
	one(gamma, "diskless tiebreaker", "pg-init", "--password-file", pwFile, c.Res)

	c.MustAdm(alpha, "pg-init", "--force", "--password-file", pwFile, c.Res)
	first := waitServing(t, c, "the promoter to start PostgreSQL")
	conn := pgConnect(t, ports[first], password)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, "CREATE TABLE items (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO items SELECT generate_series(1, 100)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	other := 1 - first
	c.WaitFor("the other node in sync", func() bool { return c.InSync(c.Nodes[other], c.Nodes[first]) })

	// A second pg-init, on the Secondary: refused, nothing changes.
	one(c.Nodes[other], "Primary", "pg-init", "--password-file", pwFile, c.Res)
	// switchover to the tiebreaker or from the Secondary: refused.
	one(c.Nodes[first], "no UpToDate data", "switchover", c.Res, "gamma")
	one(c.Nodes[other], "run switchover on the Primary", "switchover", c.Res)

	// kill -9 of the postmaster: restarted in place, no promotion.
	pm := postmasterPID(t, c, first)
	if err := syscall.Kill(pm, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	c.WaitFor("PostgreSQL restarted in place", func() bool {
		if serving(c) != first || postmasterPIDOrZero(c, first) == pm || postmasterPIDOrZero(c, first) == 0 {
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres sslmode=disable", ports[first], password))
		if err == nil {
			conn.Close(ctx)
		}
		return err == nil
	})
	t.Logf("restarted in place %v after kill -9", time.Since(killed).Round(10*time.Millisecond))
	if n := rowCount(t, ports[first], password); n != 100 {
		t.Fatalf("rows after the restart: %d", n)
	}

	// switchover: the service moves with its rows.
	c.MustAdm(c.Nodes[first], "switchover", c.Res, c.Nodes[other].Name)
	c.WaitFor("the service on the other node", func() bool { return serving(c) == other })
	if n := rowCount(t, ports[other], password); n != 100 {
		t.Fatalf("rows after switchover: %d", n)
	}
	if s := c.Status(c.Nodes[first]); s.Role != "Secondary" || s.Service.State != "stopped" {
		t.Fatalf("old Primary after switchover: role %s service %+v", s.Role, s.Service)
	}

	// A start step that fails: the old node's mount point becomes a file; switching
	// back makes it promote, fail at "filesystem", stop, demote, and the other node
	// takes over again.
	mnt := mountPointOf(t, c, first)
	if err := os.Remove(mnt); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(mnt, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	c.MustAdm(c.Nodes[other], "switchover", c.Res, c.Nodes[first].Name)
	c.WaitFor("the failed start reported", func() bool {
		s := c.Status(c.Nodes[first])
		return s.Service != nil && s.Service.State == "failed" && s.Service.Step == "filesystem"
	})
	c.WaitFor("the other node serving again", func() bool { return serving(c) == other })
	if s := c.Status(c.Nodes[first]); s.Role != "Secondary" {
		t.Fatalf("the node whose start failed is %s", s.Role)
	}
	if n := rowCount(t, ports[other], password); n != 100 {
		t.Fatalf("rows after the failed start: %d", n)
	}
	out, _, _ := c.Adm(c.Nodes[first], "status", c.Res)
	if !strings.Contains(out, "service:failed step:filesystem") {
		t.Fatalf("status of the failed node:\n%s", out)
	}
}

func mountPointOf(t *testing.T, c *clustertest.Cluster, i int) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.Conf, c.Res+".res"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, _ := strings.Cut(string(b), "on "+c.Nodes[i].Name+" {")
	_, after, _ = strings.Cut(after, "mount-point ")
	mnt, _, _ := strings.Cut(after, ";")
	return mnt
}

// postmasterPIDOrZero reads node i's postmaster.pid (its data directory is under the
// mount point, visible here: the daemons run in this mount namespace).
func postmasterPIDOrZero(c *clustertest.Cluster, i int) int {
	b, err := os.ReadFile(filepath.Join(mountPointOf(c.T.(*testing.T), c, i), "data", "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	if pid > 0 && syscall.Kill(pid, 0) != nil {
		return 0
	}
	return pid
}

func postmasterPID(t *testing.T, c *clustertest.Cluster, i int) int {
	t.Helper()
	pid := postmasterPIDOrZero(c, i)
	if pid == 0 {
		t.Fatal("no live postmaster")
	}
	return pid
}

// TestPromoterBadBinDir: a pg-bin-dir without postgres refuses up in one line and
// leaves the resource down.
func TestPromoterBadBinDir(t *testing.T) {
	if testing.Short() {
		t.Skip("starts daemons")
	}
	dir := t.TempDir()
	c := clustertest.New(t, clustertest.Options{Size: 64 << 20,
		Extra: fmt.Sprintf("    promoter {\n        mount-point %s;\n        pg-data %s/data;\n        pg-bin-dir %s;\n    }\n", dir, dir, dir)})
	alpha := c.Nodes[0]
	c.Start(alpha)
	_, e, code := c.Adm(alpha, "up", c.Res)
	if code == 0 || !strings.Contains(e, "has no postgres executable") || strings.Count(strings.TrimSpace(e), "\n") > 0 {
		t.Fatalf("up with a pg-bin-dir without postgres: exit %d, %q", code, e)
	}
	if _, err := c.TryStatus(alpha, 5*time.Second); err == nil {
		t.Fatal("the resource is up after the refusal")
	}
}
