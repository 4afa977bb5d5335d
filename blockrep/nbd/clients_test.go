package nbd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blockrep/blockrep/blockrep"
)

// Real clients (libnbd tools, qemu, fio) against a FileDevice export on a unix socket.

const mib = 1 << 20

func need(t *testing.T, bins ...string) {
	t.Helper()
	if testing.Short() {
		t.Skip("real-client test skipped in -short mode")
	}
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s is not installed (Debian: libnbd-bin, qemu-utils, fio); skipping", b)
		}
	}
}

// serveUnix exports b as "disk" (and the default export) on a fresh unix socket.
func serveUnix(t *testing.T, b blockrep.Backend, configure ...func(*Server)) (sock string, srv *Server) {
	t.Helper()
	sock = filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv = testServer(b)
	for _, f := range configure {
		f(srv)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock, srv
}

func nbdURI(sock, export string) string { return "nbd+unix:///" + export + "?socket=" + sock }

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// fileExport is a 64 MiB sparse file with data at [0, 1 MiB) and [8 MiB, 8 MiB+64 KiB).
func fileExport(t *testing.T) (*blockrep.FileDevice, string) {
	path := filepath.Join(t.TempDir(), "export.img")
	return sparseFile(t, path, 64*mib, [][2]int64{{0, mib}, {8 * mib, 64 << 10}}), path
}

func TestNbdinfoSeesEveryCapability(t *testing.T) {
	need(t, "nbdinfo")
	dev, _ := fileExport(t)
	sock, _ := serveUnix(t, blockrep.DeviceBackend{Dev: dev})
	var info struct {
		Protocol   string `json:"protocol"`
		Structured bool   `json:"structured"`
		Exports    []struct {
			Name        string   `json:"export-name"`
			Description string   `json:"description"`
			Contexts    []string `json:"contexts"`
			Size        int64    `json:"export-size"`
			ReadOnly    *bool    `json:"is_read_only"`
			Rotational  *bool    `json:"is_rotational"`
			MinBS       int64    `json:"block_size_minimum"`
			PrefBS      int64    `json:"block_size_preferred"`
			MaxBS       int64    `json:"block_size_maximum"`
			Can         map[string]any
		} `json:"exports"`
	}
	out := run(t, "nbdinfo", "--json", nbdURI(sock, "disk"))
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	var raw struct{ Exports []map[string]any }
	json.Unmarshal([]byte(out), &raw)
	if info.Protocol != "newstyle-fixed" || !info.Structured || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo: %s", out)
	}
	e, flags := info.Exports[0], raw.Exports[0]
	if e.Size != 64*mib || e.Description != "test disk" || e.ReadOnly == nil || *e.ReadOnly ||
		e.MinBS != 1 || e.PrefBS != 4096 || e.MaxBS != DefaultMaxRequest ||
		len(e.Contexts) != 1 || e.Contexts[0] != metaContext {
		t.Errorf("export: %+v\n%s", e, out)
	}
	for _, k := range []string{"can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_multi_conn", "can_cache", "can_df"} {
		if flags[k] != true {
			t.Errorf("%s = %v, want true", k, flags[k])
		}
	}
}

func TestNbdinfoListsExports(t *testing.T) {
	need(t, "nbdinfo")
	dev, _ := fileExport(t)
	sock, _ := serveUnix(t, blockrep.DeviceBackend{Dev: dev}, func(s *Server) {
		s.List = func() []string { return []string{"disk"} } // nbdinfo --list fails on a refused one
	})
	out := run(t, "nbdinfo", "--list", "--json", nbdURI(sock, ""))
	if !strings.Contains(out, `"export-name": "disk"`) {
		t.Errorf("nbdinfo --list lacks the export:\n%s", out)
	}
}

// A refusal's text reaches the user: qemu prints it, libnbd 1.14 only in debug mode.
func TestClientsShowTheRefusalReason(t *testing.T) {
	const reason = "r0: this node is Secondary; the export is served by the Primary"
	dev, _ := fileExport(t)
	sock, _ := serveUnix(t, blockrep.DeviceBackend{Dev: dev})
	for _, tc := range []struct {
		bin  string
		args []string
		env  string
	}{
		{"nbdinfo", []string{nbdURI(sock, "secondary")}, "LIBNBD_DEBUG=1"},
		{"qemu-img", []string{"info", nbdURI(sock, "secondary")}, ""},
	} {
		t.Run(tc.bin, func(t *testing.T) {
			need(t, tc.bin)
			cmd := exec.Command(tc.bin, tc.args...)
			cmd.Env = append(os.Environ(), tc.env)
			b, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(b), reason) {
				t.Errorf("%s on a refused export: err %v\n%s", tc.bin, err, b)
			}
		})
	}
}

func TestNbdinfoMapShowsHoles(t *testing.T) {
	need(t, "nbdinfo")
	dev, _ := fileExport(t)
	sock, _ := serveUnix(t, blockrep.DeviceBackend{Dev: dev})
	out := run(t, "nbdinfo", "--map", nbdURI(sock, "disk"))
	// Data in the same places as the file; the filesystem may round to its blocks.
	type ext struct {
		off, n int64
		typ    int
	}
	var exts []ext
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var e ext
		if _, err := fmt.Sscan(line, &e.off, &e.n, &e.typ); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		exts = append(exts, e)
	}
	want := []ext{{0, mib, 0}, {mib, 7 * mib, 3}, {8 * mib, 64 << 10, 0}, {8*mib + 64<<10, 56*mib - 64<<10, 3}}
	if fmt.Sprint(exts) != fmt.Sprint(want) {
		t.Errorf("nbdinfo --map:\n%s\nwant %v", out, want)
	}
}

func TestNbdcopyBothWays(t *testing.T) {
	need(t, "nbdcopy")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	sparseFile(t, src, 64*mib, [][2]int64{{0, 3 * mib}, {20 * mib, 5*mib + 4096}, {63 * mib, mib}})
	for _, conns := range []string{"1", "4"} {
		t.Run("connections="+conns, func(t *testing.T) {
			dev, path := fileExport(t) // has other data, which must be overwritten
			sock, _ := serveUnix(t, blockrep.DeviceBackend{Dev: dev})
			run(t, "nbdcopy", "--connections="+conns, "--flush", src, nbdURI(sock, "disk"))
			if fileSum(t, path) != fileSum(t, src) {
				t.Fatal("export differs from the source after nbdcopy to NBD")
			}
			dst := filepath.Join(t.TempDir(), "dst.img")
			run(t, "nbdcopy", "--connections="+conns, nbdURI(sock, "disk"), dst)
			if fileSum(t, dst) != fileSum(t, src) {
				t.Fatal("copy differs from the source after nbdcopy from NBD")
			}
		})
	}
}

func TestQemuImgConvertAndCompare(t *testing.T) {
	need(t, "qemu-img")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	sparseFile(t, src, 64*mib, [][2]int64{{mib, 2 * mib}, {40 * mib, 12345}})
	dev, path := fileExport(t)
	sock, _ := serveUnix(t, blockrep.DeviceBackend{Dev: dev})
	uri := nbdURI(sock, "disk")
	run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, uri)
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri)
	if fileSum(t, path) != fileSum(t, src) {
		t.Fatal("export differs from the source after qemu-img convert")
	}
	back := filepath.Join(dir, "back.img")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, back)
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", back, src)
}

func TestQemuIO(t *testing.T) {
	need(t, "qemu-io")
	dev, path := fileExport(t)
	rec := &recBackend{DeviceBackend: blockrep.DeviceBackend{Dev: dev}}
	sock, _ := serveUnix(t, rec)
	out := run(t, "qemu-io", "-f", "raw",
		"-c", "write -P 0xab 0 64k",
		"-c", "read -P 0xab 0 64k",
		"-c", "discard 64k 64k",
		"-c", "read -P 0 64k 64k",
		"-c", "write -z 128k 64k",
		"-c", "read -P 0 128k 64k",
		"-c", "write -f -P 0xcd 192k 4k",
		"-c", "read -P 0xcd 192k 4k",
		"-c", "flush",
		nbdURI(sock, "disk"))
	if strings.Contains(out, "failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io:\n%s", out)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Concat(bytes.Repeat([]byte{0xab}, 64<<10), make([]byte, 128<<10), bytes.Repeat([]byte{0xcd}, 4096))
	if !bytes.Equal(b[:len(want)], want) {
		t.Fatal("file contents differ from what qemu-io wrote")
	}
	subs, _ := rec.touched()
	var trim, zero, fua, flush bool
	for _, s := range subs {
		trim = trim || s.op == blockrep.OpTrim
		zero = zero || s.op == blockrep.OpZero
		fua = fua || s.op == blockrep.OpWrite && s.flags&blockrep.FlagFUA != 0
		flush = flush || s.op == blockrep.OpFlush
	}
	if !trim || !zero || !fua || !flush {
		t.Errorf("backend saw trim=%v zero=%v fua=%v flush=%v; want all", trim, zero, fua, flush)
	}
}

func TestFioRandomWritesVerify(t *testing.T) {
	need(t, "fio")
	if !strings.Contains(run(t, "fio", "--enghelp"), "nbd") {
		t.Skip("fio lacks the nbd ioengine; skipping")
	}
	dev, _ := fileExport(t)
	sock, _ := serveUnix(t, blockrep.DeviceBackend{Dev: dev})
	out := run(t, "fio", "--name=verify", "--ioengine=nbd", "--uri="+nbdURI(sock, "disk"),
		"--rw=randwrite", "--bs=4k", "--iodepth=64", "--size=32M", "--verify=crc32c",
		"--verify_fatal=1", "--numjobs=1", "--verify_state_save=0")
	if !strings.Contains(out, "err= 0") {
		t.Fatalf("fio:\n%s", out)
	}
}
