package resource_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/blockrep/blockrep/internal/clustertest"
)

// TestReplicatedExportConformance drives the Primary's export of a protocol-C pair with
// real NBD clients and checks that the peer ends up with the same bytes.
func TestReplicatedExportConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real daemons")
	}
	clustertest.Need(t, "nbdinfo", "nbdcopy", "qemu-img", "qemu-io", "fio")
	c := clustertest.New(t, clustertest.Options{Size: 128 << 20})
	alpha, beta := c.Nodes[0], c.Nodes[1]
	c.StartAll()
	c.WaitFor("connection", func() bool { return c.Peer(alpha, beta).Connection == "Connected" })
	c.MustAdm(alpha, "primary", "--force", c.Res)
	c.WaitInSync()
	size := c.Status(alpha).SizeBytes

	t.Run("nbdinfo shows every capability", func(t *testing.T) {
		var info struct {
			Exports []map[string]any `json:"exports"`
		}
		if err := json.Unmarshal([]byte(c.Run("nbdinfo", "--json", alpha.URI())), &info); err != nil {
			t.Fatal(err)
		}
		e := info.Exports[0]
		for _, k := range []string{"can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn", "can_cache", "can_fast_zero"} {
			if e[k] != true {
				t.Errorf("%s = %v", k, e[k])
			}
		}
		if e["is_read_only"] != false {
			t.Errorf("is_read_only = %v", e["is_read_only"])
		}
	})

	t.Run("block status reports the holes of the sparse backing file", func(t *testing.T) {
		out := c.Run("nbdinfo", "--map", alpha.URI())
		if !strings.Contains(out, "hole") {
			t.Fatalf("nbdinfo --map on a fresh sparse resource shows no hole:\n%s", out)
		}
	})

	t.Run("qemu-io patterns, discard, zero and FUA", func(t *testing.T) {
		c.Run("qemu-io", "-f", "raw",
			"-c", "write -P 0xa5 0 1M",
			"-c", "write -f -P 0x5a 1M 64k",
			"-c", "write -P 0x77 2M 1M",
			"-c", "flush",
			"-c", "discard 2M 1M",
			"-c", "write -z 3M 1M",
			"-c", "read -P 0xa5 0 1M",
			"-c", "read -P 0x5a 1M 64k",
			"-c", "read -P 0 2M 2M",
			"-c", "flush", alpha.URI())
		// Trim and zero replicate as such: the peer's backing file has a hole there too.
		f, err := os.Open(beta.Disk)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		hole, err := unix.Seek(int(f.Fd()), 2<<20, unix.SEEK_HOLE)
		if err != nil || hole != 2<<20 {
			t.Fatalf("peer's backing file: next hole after 2 MiB at %d (%v), want the discarded range at 2 MiB", hole, err)
		}
	})

	dir := t.TempDir()
	t.Run("qemu-img convert and compare", func(t *testing.T) {
		src := filepath.Join(dir, "src.img")
		c.Run("dd", "if=/dev/urandom", "of="+src, "bs=1M", "count=48", "status=none")
		c.Run("qemu-img", "resize", "-f", "raw", src, strconv.FormatInt(size, 10))
		c.Run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, alpha.URI())
		c.Run("qemu-img", "compare", "-f", "raw", "-F", "raw", src, alpha.URI())
	})

	t.Run("nbdcopy with four connections both ways", func(t *testing.T) {
		back := filepath.Join(dir, "back.img")
		c.Run("nbdcopy", "--connections=4", alpha.URI(), back)
		c.Run("nbdcopy", "--connections=4", back, alpha.URI())
		if c.DataSum(alpha, size) != sum(t, back) {
			t.Fatal("nbdcopy round trip differs")
		}
	})

	t.Run("fio with verify at iodepth 64", func(t *testing.T) {
		out, err := exec.Command("fio", "--name=v", "--ioengine=nbd", "--uri="+alpha.URI(), "--rw=randwrite",
			"--bs=4k", "--iodepth=64", "--size=32M", "--verify=crc32c", "--do_verify=1", "--verify_state_save=0").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "err= 0") {
			t.Fatalf("fio: %v\n%s", err, out)
		}
	})

	t.Run("the peer holds the same bytes, holes included", func(t *testing.T) {
		c.Run("qemu-io", "-f", "raw", "-c", "flush", alpha.URI())
		if c.DataSum(alpha, size) != c.DataSum(beta, size) {
			t.Fatal("replicas differ")
		}
	})
}
