package pgagent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const pgBin = "/usr/lib/postgresql/15/bin"

// TestMain pins the nbdfuse+loop device path even where the nbd module is
// loaded: the tests inspect nbdfuse, its FUSE mount and the loop device.
// The kernel nbd path is not exercised by any test.
func TestMain(m *testing.M) {
	haveKernelNBD = func() bool { return false }
	os.Exit(m.Run())
}

// needRoot skips a test that needs root and the Debian packages the stack drives.
func needRoot(t *testing.T, cmds ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop devices, mounts, FUSE, network namespaces)")
	}
	for _, c := range cmds {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("%s not installed (Debian packages: nbdkit nbdfuse e2fsprogs xfsprogs util-linux postgresql-15 iproute2)", c)
		}
	}
}

func needStackTools(t *testing.T) {
	t.Helper()
	needRoot(t, "nbdkit", "nbdfuse", "losetup", "fsck", "mkfs.ext4", "blkid")
	if _, err := os.Stat(filepath.Join(pgBin, "postgres")); err != nil {
		t.Skip("postgresql-15 not installed")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
}

// tempDir is a t.TempDir whose ancestors the postgres user can traverse.
func tempDir(t *testing.T) string {
	d := t.TempDir()
	for p := d; p != "/" && p != os.TempDir(); p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// serve creates a sparse image of size bytes, serves it with nbdkit on a unix
// socket (standing in for the blockrep daemon) and returns the image and URI.
func serve(t *testing.T, dir string, size int64) (img, uri string) {
	t.Helper()
	// The image lives on tmpfs when there is one: nbdkit's flush is an
	// fdatasync, which on a disk shared with other jobs can take seconds.
	imgDir := dir
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if d, err := os.MkdirTemp("/dev/shm", "pgagent-test-"); err == nil {
			imgDir = d
			t.Cleanup(func() { os.RemoveAll(d) })
		}
	}
	img = filepath.Join(imgDir, "disk.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	sock := filepath.Join(dir, "nbd.sock")
	c := exec.Command("nbdkit", "-f", "-U", sock, "file", img)
	c.Stderr = os.Stderr
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i > 200 {
			t.Fatal("nbdkit did not create its socket")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return img, "nbd+unix:///?socket=" + sock
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// testConfig returns a config for an image served under dir.
func testConfig(t *testing.T, dir, uri string) Config {
	mnt := filepath.Join(dir, "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Resource:    "r0",
		NBDURI:      uri,
		RunDir:      filepath.Join(dir, "run"),
		MountPoint:  mnt,
		PGBinDir:    pgBin,
		PGData:      filepath.Join(mnt, "pg", "data"),
		PGUser:      "postgres",
		PGPort:      freePort(t),
		StepTimeout: 60 * time.Second,
		Logger:      slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
	// Whatever a failed test left of this resource goes before nbdkit does.
	t.Cleanup(func() {
		if s, err := New(cfg); err == nil {
			s.status.State = Failed // Stop of a "stopped" stack is a no-op
			if err := s.Stop(context.Background()); err != nil {
				t.Errorf("teardown: %v", err)
			}
		}
	})
	return cfg
}

// assertReleased fails if anything of the resource is still mounted,
// attached or running.
func assertReleased(t *testing.T, cfg Config) {
	t.Helper()
	fuseDir := filepath.Join(cfg.RunDir, "nbdfuse")
	if mounted(cfg.MountPoint) {
		t.Errorf("%s still mounted", cfg.MountPoint)
	}
	if mounted(fuseDir) {
		t.Errorf("%s (nbdfuse) still mounted", fuseDir)
	}
	if l := loopsOn(filepath.Join(fuseDir, "nbd")); len(l) > 0 {
		t.Errorf("loop devices still attached: %v", l)
	}
	for _, pid := range pids() {
		if alive(pid) && comm(pid) == "nbdfuse" {
			if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.Contains(string(b), fuseDir) {
				t.Errorf("nbdfuse pid %d still running", pid)
			}
		}
	}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
