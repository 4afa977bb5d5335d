package resource_test

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockrep/blockrep/internal/clustertest"
)

// attach exposes an NBD export as a loop device through nbdfuse (no kernel nbd module
// needed) and returns the device and a function that takes it away again.
func attach(t *testing.T, c *clustertest.Cluster, uri string) (string, func()) {
	t.Helper()
	dir := t.TempDir()
	fuse := exec.Command("nbdfuse", filepath.Join(dir, "nbd"), uri)
	if err := fuse.Start(); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "nbd")
	c.WaitFor("nbdfuse file", func() bool { _, err := os.Stat(file); return err == nil })
	out, err := exec.Command("losetup", "--find", "--show", file).CombinedOutput()
	if err != nil {
		exec.Command("umount", dir).Run()
		fuse.Wait()
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	return dev, func() {
		exec.Command("losetup", "-d", dev).Run()
		// The loop device lets go of the file asynchronously, so the first umount
		// can meet EBUSY; a lazy umount is the last resort so a dead FUSE mount
		// never outlives the test.
		deadline := time.Now().Add(10 * time.Second)
		for exec.Command("umount", dir).Run() != nil {
			if time.Now().After(deadline) {
				t.Errorf("umount %s: still busy after 10s", dir)
				fuse.Process.Kill()
				exec.Command("umount", "-l", dir).Run()
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		done := make(chan error, 1)
		go func() { done <- fuse.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			fuse.Process.Kill()
			<-done
		}
	}
}

func needFilesystemTools(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for losetup and mount")
	}
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			t.Skipf("%s missing: no filesystem test on this machine", dev)
		}
	}
	clustertest.Need(t, "nbdfuse", "losetup", "mkfs.ext4", "mkfs.xfs", "xfs_repair")
}

// TestFilesystemSurvivesSwitchingPrimary: a filesystem made and written on one node's
// export is clean and identical on the other node after a switch of Primary.
func TestFilesystemSurvivesSwitchingPrimary(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real daemons")
	}
	needFilesystemTools(t)
	for _, fs := range []struct {
		name  string
		mkfs  []string
		check []string
	}{
		{"ext4", []string{"mkfs.ext4", "-q", "-F"}, []string{"fsck.ext4", "-n", "-f"}},
		{"xfs", []string{"mkfs.xfs", "-q", "-f"}, []string{"xfs_repair", "-n"}},
	} {
		t.Run(fs.name, func(t *testing.T) {
			c := clustertest.New(t, clustertest.Options{Size: 320 << 20})
			alpha, beta := c.Nodes[0], c.Nodes[1]
			c.StartAll()
			c.WaitFor("connection", func() bool { return c.Peer(alpha, beta).Connection == "Connected" })
			c.MustAdm(alpha, "primary", "--force", c.Res)
			c.WaitInSync()

			files := map[string][32]byte{}
			dev, detach := attach(t, c, alpha.URI())
			mnt := t.TempDir()
			c.Run(fs.mkfs[0], append(fs.mkfs[1:], dev)...)
			c.Run("mount", dev, mnt)
			for i := 0; i < 20; i++ {
				data := make([]byte, 4096*(1+i*37))
				rand.Read(data)
				name := fmt.Sprintf("f%02d", i)
				f, err := os.Create(filepath.Join(mnt, name))
				if err != nil {
					t.Fatal(err)
				}
				f.Write(data)
				if err := f.Sync(); err != nil {
					t.Fatal(err)
				}
				f.Close()
				files[name] = sha256.Sum256(data)
			}
			c.Run("umount", mnt)
			detach()

			c.MustAdm(alpha, "secondary", c.Res)
			c.MustAdm(beta, "primary", c.Res)
			dev, detach = attach(t, c, beta.URI())
			defer detach()
			c.Run(fs.check[0], append(fs.check[1:], dev)...)
			c.Run("mount", "-o", "ro", dev, mnt)
			defer c.Run("umount", mnt)
			for name, want := range files {
				got, err := os.ReadFile(filepath.Join(mnt, name))
				if err != nil {
					t.Fatal(err)
				}
				if sha256.Sum256(got) != want {
					t.Errorf("%s differs on the new Primary", name)
				}
			}
		})
	}
}
