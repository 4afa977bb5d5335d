package pgagent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

const testPassword = "s3cret-pw"

func TestNewRefusesBinDirWithoutPostgres(t *testing.T) {
	dir := t.TempDir()
	_, err := New(Config{
		Resource: "r0", NBDURI: "nbd+unix:///r0?socket=/run/x.nbd", RunDir: dir,
		MountPoint: "/srv/r0", PGData: "/srv/r0/data", PGBinDir: dir, PGUser: "root",
	})
	if err == nil || !strings.Contains(err.Error(), "pg bin dir") || !strings.Contains(err.Error(), "postgres") {
		t.Fatalf("New with an empty bin dir: got %v, want a pg bin dir error", err)
	}
	if strings.Count(err.Error(), "\n") != 0 {
		t.Errorf("error is not one line: %q", err)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	base := Config{Resource: "r0", NBDURI: "nbd+unix:///r0?socket=/x", RunDir: "/run/r0",
		MountPoint: "/srv/r0", PGData: "/srv/r0/data", PGBinDir: "/bin", PGUser: "root"}
	cases := map[string]func(*Config){
		"nbd uri":           func(c *Config) { c.NBDURI = "http://x" },
		"not below":         func(c *Config) { c.PGData = "/var/data" },
		"only IPv4":         func(c *Config) { c.Address = "fd00::1/64" },
		"not \"IP/PREFIX\"": func(c *Config) { c.Address = "10.0.0.1/24 on eth0" },
		"ext4 or xfs":       func(c *Config) { c.FSType = "btrfs" },
	}
	for want, mod := range cases {
		c := base
		mod(&c)
		if _, err := New(c); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v", want, err)
		}
	}
}

func sqlConn(t *testing.T, ctx context.Context, connString string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(ctx, connString)
	if err != nil {
		t.Fatalf("connect %q: %v", connString, err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func countRows(t *testing.T, ctx context.Context, s *Stack) int {
	t.Helper()
	c := sqlConn(t, ctx, s.pg.connString())
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&n); err != nil {
		t.Fatalf("count rows: %v", err)
	}
	c.Close(ctx)
	return n
}

// TestStackLifecycle drives the real stack: nbdkit → nbdfuse → loop → ext4 →
// PostgreSQL 15, through InitDB, Start, SQL over the unix socket and TCP,
// Stop/Start, a killed postmaster, and a crash whose leftovers a new Stack
// must clean up.
func TestStackLifecycle(t *testing.T) {
	needStackTools(t)
	ctx := ctxT(t, 3*time.Minute)
	dir := tempDir(t)
	_, uri := serve(t, dir, 256<<20)
	cfg := testConfig(t, dir, uri)

	if err := InitDB(ctx, cfg, testPassword, false); err != nil {
		t.Fatalf("InitDB: %v", err)
	}
	assertReleased(t, cfg)
	err := InitDB(ctx, cfg, testPassword, false)
	var se *StepError
	if !errors.As(err, &se) || se.Step != "mkfs" || !strings.Contains(err.Error(), "already holds a ext4") {
		t.Fatalf("second InitDB without force: got %v, want a refusal at step mkfs", err)
	}
	assertReleased(t, cfg)

	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	st := s.Status()
	if st.State != Running || st.Path != "nbdfuse+loop" || !strings.HasPrefix(st.Device, "/dev/loop") {
		t.Fatalf("status after Start: %+v", st)
	}
	if err := s.Start(ctx); err != nil || s.Status().Since != st.Since {
		t.Fatalf("second Start is not a no-op: err %v, status %+v", err, s.Status())
	}

	// Unix socket as root (peer + ident map), then TCP with the password (SCRAM).
	c := sqlConn(t, ctx, s.pg.connString())
	if _, err := c.Exec(ctx, "CREATE TABLE items (id int PRIMARY KEY, name text)"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100) g"); err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)
	tcp := sqlConn(t, ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres sslmode=disable", cfg.PGPort, testPassword))
	var method string
	if err := tcp.QueryRow(ctx, "SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host' LIMIT 1").Scan(&method); err != nil || method != "scram-sha-256" {
		t.Fatalf("pg_hba host rule: %q %v", method, err)
	}
	if _, err := tcp.Exec(ctx, "INSERT INTO items VALUES (101, 'over tcp')"); err != nil {
		t.Fatal(err)
	}
	tcp.Close(ctx)
	if _, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=wrong dbname=postgres sslmode=disable", cfg.PGPort)); err == nil {
		t.Fatal("TCP login with a wrong password succeeded")
	}

	// A mount namespace made while the stack runs (as ip netns exec or a
	// container would) holds private copies of both mounts; Stop must remove
	// them there, or the loop device and nbdfuse stay busy.
	ns := exec.Command("unshare", "-m", "--propagation", "private", "sleep", "120")
	if err := ns.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ns.Process.Kill(); _ = ns.Wait() }()
	nsMountinfo := fmt.Sprintf("/proc/%d/mountinfo", ns.Process.Pid)
	for i := 0; ; i++ {
		if holdsCopy(ns.Process.Pid, cfg.MountPoint) {
			break
		}
		if i > 100 {
			t.Fatal("unshare's namespace has no copy of the mount")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Stop, Stop again, Start again: the rows survive (fsck -p replays the journal).
	if err := s.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	assertReleased(t, cfg)
	if b, _ := os.ReadFile(nsMountinfo); strings.Contains(string(b), cfg.MountPoint) || strings.Contains(string(b), cfg.RunDir) {
		t.Errorf("mounts still in the other namespace after Stop")
	}
	// Its copies of other jobs' mounts would hold them the same way: end it now.
	_ = ns.Process.Kill()
	if s.Status().State != Stopped {
		t.Fatalf("status after Stop: %+v", s.Status())
	}
	if err := s.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatalf("Start after Stop: %v", err)
	}
	if n := countRows(t, ctx, s); n != 101 {
		t.Fatalf("rows after restart: %d, want 101", n)
	}

	// kill -9 the postmaster: Check fails, RestartPostgres brings it back.
	pm := s.pg.postmaster()
	if pm == 0 {
		t.Fatal("no postmaster found")
	}
	if err := syscall.Kill(pm, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(ctx, []int{pm}, 5*time.Second)
	if err := s.Check(ctx); err == nil {
		t.Fatal("Check succeeded with the postmaster killed")
	}
	if err := s.RestartPostgres(ctx); err != nil {
		t.Fatalf("RestartPostgres: %v", err)
	}
	if err := s.Check(ctx); err != nil {
		t.Fatalf("Check after RestartPostgres: %v", err)
	}
	if n := countRows(t, ctx, s); n != 101 {
		t.Fatalf("rows after RestartPostgres: %d, want 101", n)
	}

	// Crash: the daemon dies with everything up and the postmaster killed;
	// its postmaster.pid now names an unrelated live process. A new Stack's
	// Start must clean up the mount, loop device and nbdfuse first.
	pm = s.pg.postmaster()
	_ = syscall.Kill(pm, syscall.SIGKILL)
	waitGone(ctx, []int{pm}, 5*time.Second)
	other := exec.Command("sleep", "120")
	other.Dir = "/"
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = other.Process.Kill(); _ = other.Wait() }()
	pidFile := filepath.Join(cfg.PGData, "postmaster.pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitN(string(b), "\n", 2)
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(other.Process.Pid)+"\n"+lines[1]), 0o600); err != nil {
		t.Fatal(err)
	}
	// A process of the crashed run still working in the filesystem: the
	// unmount finds it busy and must kill it.
	holder := exec.Command("sleep", "120")
	holder.Dir = cfg.MountPoint
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	holderDone := make(chan error, 1)
	go func() { holderDone <- holder.Wait() }()
	defer func() { _ = holder.Process.Kill() }()
	oldLoop := st.Device
	s2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Start(ctx); err != nil {
		t.Fatalf("Start over leftovers: %v", err)
	}
	if !alive(other.Process.Pid) {
		t.Error("the unrelated process named in the stale postmaster.pid was killed")
	}
	select {
	case <-holderDone:
	case <-time.After(5 * time.Second):
		t.Error("the process holding the mount point was not killed")
	}
	if l := loopsOn(filepath.Join(cfg.RunDir, "nbdfuse", "nbd")); len(l) != 1 {
		t.Errorf("loop devices on the export after cleanup+start: %v (old %s), want exactly one", l, oldLoop)
	}
	if n := countRows(t, ctx, s2); n != 101 {
		t.Fatalf("rows after crash recovery: %d, want 101", n)
	}

	// The volume vanishes under a running stack (nbdfuse killed): committed
	// rows were flushed through to the NBD server, so after a new Start
	// (lazy unmount of the dead FUSE mount, fsck -p replaying the journal)
	// they are all there.
	c = sqlConn(t, ctx, s2.pg.connString())
	if _, err := c.Exec(ctx, "INSERT INTO items SELECT g, 'late ' || g FROM generate_series(102, 200) g"); err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)
	b, err = os.ReadFile(filepath.Join(cfg.RunDir, "nbdfuse.pid"))
	if err != nil {
		t.Fatal(err)
	}
	fusePID, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if comm(fusePID) != "nbdfuse" {
		t.Fatalf("pid %d in nbdfuse.pid is %q", fusePID, comm(fusePID))
	}
	_ = syscall.Kill(fusePID, syscall.SIGKILL)
	waitGone(ctx, []int{fusePID}, 5*time.Second)
	s3, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s3.Start(ctx); err != nil {
		t.Fatalf("Start after the device vanished: %v", err)
	}
	if n := countRows(t, ctx, s3); n != 200 {
		t.Fatalf("rows after the device vanished: %d, want 200", n)
	}
	if err := s3.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	assertReleased(t, cfg)

	// A failing last step (the address's interface does not exist) undoes
	// postgres, the mount and the device.
	bad := cfg
	bad.Address = "198.18.0.10/24 dev pga-none0"
	s4, err := New(bad)
	if err != nil {
		t.Fatal(err)
	}
	err = s4.Start(ctx)
	if !errors.As(err, &se) || se.Step != "ip" || !strings.Contains(err.Error(), "pga-none0") {
		t.Fatalf("Start with a missing interface: got %v, want an ip step error", err)
	}
	if st := s4.Status(); st.State != Failed || st.Step != "ip" {
		t.Errorf("status: %+v", st)
	}
	assertReleased(t, cfg)
	if err := s4.Stop(ctx); err != nil {
		t.Fatalf("Stop after a failed Start: %v", err)
	}
}

// TestMountPointIsFile: the filesystem step refuses it and Start leaves
// nothing mounted or attached.
func TestMountPointIsFile(t *testing.T) {
	needStackTools(t)
	ctx := ctxT(t, time.Minute)
	dir := tempDir(t)
	img, uri := serve(t, dir, 64<<20)
	if _, err := run(ctx, "mkfs.ext4", "-F", "-q", img); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, dir, uri)
	cfg.MountPoint = filepath.Join(dir, "afile")
	cfg.PGData = filepath.Join(cfg.MountPoint, "data")
	if err := os.WriteFile(cfg.MountPoint, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Start(ctx)
	var se *StepError
	if !errors.As(err, &se) || se.Step != "filesystem" || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("Start with a file as mount point: got %v, want a filesystem step error", err)
	}
	if st := s.Status(); st.State != Failed || st.Step != "filesystem" || st.Device != "" {
		t.Errorf("status: %+v", st)
	}
	assertReleased(t, cfg)
}

// TestInitDBRefusesExistingFilesystem: an export that already holds a
// filesystem (or a partition table) is not overwritten without force, and
// nothing is left attached.
func TestInitDBRefusesExistingFilesystem(t *testing.T) {
	needStackTools(t)
	ctx := ctxT(t, time.Minute)
	{
		// A DOS partition table, written by hand: one Linux partition.
		dir := tempDir(t)
		img, uri := serve(t, dir, 64<<20)
		mbr := make([]byte, 512)
		p := mbr[446:]
		p[4] = 0x83                                 // Linux
		binary.LittleEndian.PutUint32(p[8:], 2048)  // first LBA
		binary.LittleEndian.PutUint32(p[12:], 4096) // sectors
		mbr[510], mbr[511] = 0x55, 0xaa
		f, err := os.OpenFile(img, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.WriteAt(mbr, 0)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		cfg := testConfig(t, dir, uri)
		if err := InitDB(ctx, cfg, testPassword, false); err == nil || !strings.Contains(err.Error(), "already holds a dos partition table") {
			t.Fatalf("InitDB on a partitioned export: got %v, want a refusal", err)
		}
		assertReleased(t, cfg)
	}
	dir := tempDir(t)
	img, uri := serve(t, dir, 64<<20)
	if _, err := run(ctx, "mkfs.ext4", "-F", "-q", "-L", "keepme", img); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, dir, uri)
	err := InitDB(ctx, cfg, testPassword, false)
	var se *StepError
	if !errors.As(err, &se) || se.Step != "mkfs" || !strings.Contains(err.Error(), "already holds a ext4 filesystem") {
		t.Fatalf("InitDB on an ext4 export: got %v, want a refusal", err)
	}
	assertReleased(t, cfg)
	out, err := run(ctx, "blkid", "-p", "-o", "value", "-s", "LABEL", img)
	if err != nil || strings.TrimSpace(out) != "keepme" {
		t.Fatalf("existing filesystem was touched: label %q, %v", out, err)
	}
}

// TestXFSForce: InitDB with force overwrites an existing ext4 with XFS (no
// fsck: mount replays the log), and data survives a Stop/Start.
func TestXFSForce(t *testing.T) {
	needStackTools(t)
	needRoot(t, "mkfs.xfs")
	ctx := ctxT(t, 2*time.Minute)
	dir := tempDir(t)
	img, uri := serve(t, dir, 512<<20)
	if _, err := run(ctx, "mkfs.ext4", "-F", "-q", img); err != nil {
		t.Fatal(err)
	}
	real := testConfig(t, dir, uri)
	real.FSType = "xfs"
	// Configured through a symlink: mount tables and /proc show the real path.
	cfg := real
	cfg.MountPoint = filepath.Join(dir, "mnt-link")
	cfg.PGData = filepath.Join(cfg.MountPoint, "pg", "data")
	if err := os.Symlink(real.MountPoint, cfg.MountPoint); err != nil {
		t.Fatal(err)
	}
	if err := InitDB(ctx, cfg, testPassword, true); err != nil {
		t.Fatalf("InitDB with force: %v", err)
	}
	assertReleased(t, real)
	if out, err := run(ctx, "blkid", "-p", "-o", "value", "-s", "TYPE", img); err != nil || strings.TrimSpace(out) != "xfs" {
		t.Fatalf("filesystem after InitDB: %q %v", out, err)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	// Status is read concurrently with the operations (run with -race).
	done := make(chan struct{})
	polled := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-done:
				polled <- n
				return
			case <-time.After(5 * time.Millisecond):
				if st := s.Status(); st.State == Running && st.Device == "" {
					t.Errorf("running without a device: %+v", st)
				}
				n++
			}
		}
	}()
	defer func() {
		close(done)
		if n := <-polled; n == 0 {
			t.Error("status never polled")
		}
	}()
	for round := 1; round <= 2; round++ {
		if err := s.Start(ctx); err != nil {
			t.Fatalf("Start %d: %v", round, err)
		}
		c := sqlConn(t, ctx, s.pg.connString())
		if _, err := c.Exec(ctx, "CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY)"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx, "INSERT INTO items VALUES ($1)", round); err != nil {
			t.Fatal(err)
		}
		c.Close(ctx)
		if n := countRows(t, ctx, s); n != round {
			t.Fatalf("round %d: %d rows", round, n)
		}
		if err := s.Stop(ctx); err != nil {
			t.Fatalf("Stop %d: %v", round, err)
		}
		assertReleased(t, real)
	}
}

// TestTwoStacksOneHost: two resources on one host (as two nodes of a test
// cluster would be) do not collide, and one's leftover cleanup leaves the
// other running.
func TestTwoStacksOneHost(t *testing.T) {
	needStackTools(t)
	ctx := ctxT(t, 2*time.Minute)
	var cfgs [2]Config
	var stacks [2]*Stack
	for i := range cfgs {
		dir := tempDir(t)
		_, uri := serve(t, dir, 128<<20)
		cfgs[i] = testConfig(t, dir, uri)
		cfgs[i].Resource = fmt.Sprintf("r%d", i)
		if err := InitDB(ctx, cfgs[i], testPassword, false); err != nil {
			t.Fatalf("InitDB %d: %v", i, err)
		}
		s, err := New(cfgs[i])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Stop(context.Background()) })
		if err := s.Start(ctx); err != nil {
			t.Fatalf("Start %d: %v", i, err)
		}
		stacks[i] = s
	}
	if a, b := stacks[0].Status().Device, stacks[1].Status().Device; a == b {
		t.Fatalf("both stacks on %s", a)
	}
	// A restarted daemon's new Stack for r0 cleans up r0's leftovers only.
	again, err := New(cfgs[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := again.Start(ctx); err != nil {
		t.Fatalf("Start of r0 over its own running stack: %v", err)
	}
	if err := stacks[1].Check(ctx); err != nil {
		t.Fatalf("r1 after r0's cleanup: %v", err)
	}
	if err := again.Check(ctx); err != nil {
		t.Fatalf("r0 after its restart: %v", err)
	}
	if err := again.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	assertReleased(t, cfgs[0])
	if err := stacks[1].Check(ctx); err != nil {
		t.Fatalf("r1 after r0 stopped: %v", err)
	}
	if err := stacks[1].Stop(ctx); err != nil {
		t.Fatal(err)
	}
	assertReleased(t, cfgs[1])
}
