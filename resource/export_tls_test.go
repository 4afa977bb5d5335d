package resource_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockrep/blockrep/internal/clustertest"
	"github.com/blockrep/blockrep/internal/testcerts"
)

// TestExportTLS: the TCP export with export-tls require speaks NBD's STARTTLS: nbdinfo
// and nbdcopy over nbds:// with a client certificate of the CA work; a plaintext client
// is refused (NBD_REP_ERR_TLS_REQD), and so is a client with a certificate from another
// CA.
func TestExportTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real daemons")
	}
	clustertest.Need(t, "nbdinfo", "nbdcopy")
	dir := t.TempDir()
	ca, other := testcerts.NewCA(t, "blockrep test CA"), testcerts.NewCA(t, "another CA")
	caFile := ca.WriteCA(t, dir)
	srvCert, srvKey := ca.WriteIssued(t, dir, "127.0.0.1")
	// libnbd reads a directory holding ca-cert.pem, client-cert.pem and client-key.pem.
	clientDir := func(name string, issuer *testcerts.CA) string {
		d := filepath.Join(dir, name)
		os.Mkdir(d, 0o700)
		c, k := issuer.WriteIssued(t, d, "client")
		os.Rename(c, filepath.Join(d, "client-cert.pem"))
		os.Rename(k, filepath.Join(d, "client-key.pem"))
		b, _ := os.ReadFile(caFile)
		os.WriteFile(filepath.Join(d, "ca-cert.pem"), b, 0o600)
		return d
	}
	good, bad := clientDir("good", ca), clientDir("bad", other)
	port := 20000 + os.Getpid()%20000
	on := fmt.Sprintf("        export 127.0.0.1:%d;\n        export-tls require;\n        tls-certificate %s;\n        tls-key %s;\n", port, srvCert, srvKey)
	c := clustertest.New(t, clustertest.Options{Size: 32 << 20, Net: fmt.Sprintf("        tls-ca %s;\n", caFile), On: map[int]string{0: on}})
	alpha, beta := c.Nodes[0], c.Nodes[1]
	c.StartAll()
	c.WaitFor("connection", func() bool { return c.Peer(alpha, beta).Connection == "Connected" })
	c.MustAdm(alpha, "primary", "--force", c.Res)
	c.WaitInSync()

	uri := func(scheme, certs string) string {
		u := fmt.Sprintf("%s://127.0.0.1:%d/%s", scheme, port, c.Res)
		if certs != "" {
			u += "?tls-certificates=" + certs
		}
		return u
	}
	out, err := exec.Command("nbdinfo", uri("nbds", good)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "export-size") {
		t.Fatalf("nbdinfo over TLS: %v\n%s", err, out)
	}
	data := filepath.Join(dir, "data")
	c.Run("dd", "if=/dev/urandom", "of="+data, "bs=1M", "count=8", "status=none")
	c.Run("nbdcopy", data, uri("nbds", good))
	back := filepath.Join(dir, "back")
	c.Run("nbdcopy", uri("nbds", good), back)
	os.Truncate(back, 8<<20)
	if a, b := c.Run("sha256sum", data), c.Run("sha256sum", back); strings.Fields(a)[0] != strings.Fields(b)[0] {
		t.Fatal("data read back over TLS differs")
	}
	if out, err := exec.Command("nbdinfo", uri("nbd", "")).CombinedOutput(); err == nil {
		t.Fatalf("a plaintext client was served:\n%s", out)
	} else if !strings.Contains(strings.ToLower(string(out)), "tls") {
		t.Errorf("a plaintext client is not told TLS is required:\n%s", out)
	}
	if out, err := exec.Command("nbdinfo", uri("nbds", bad)).CombinedOutput(); err == nil {
		t.Fatalf("a client certificate from another CA was accepted:\n%s", out)
	}
}
