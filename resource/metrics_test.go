package resource_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blockrep/blockrep/internal/clustertest"
)

// TestMetrics scrapes two real daemons' /metrics after a write through the export,
// lints the text with promtool, and follows a peer's out-of-sync bytes through a real
// Prometheus server across a disconnect, a write and a reconnect.
func TestMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real daemons")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (real daemons and NBD clients)")
	}
	clustertest.Need(t, "qemu-io", "promtool", "prometheus")
	addrs := []string{freeAddr(t), freeAddr(t)}
	c := clustertest.New(t, clustertest.Options{Size: 64 << 20, DaemonArgs: map[int][]string{
		0: {"--metrics-addr", addrs[0]}, 1: {"--metrics-addr", addrs[1]}}})
	alpha, beta := c.Nodes[0], c.Nodes[1]
	c.StartAll()
	c.WaitFor("connection", func() bool { return c.Peer(alpha, beta).Connection == "Connected" })
	c.MustAdm(alpha, "primary", "--force", c.Res)
	c.WaitInSync()
	c.Run("qemu-io", "-f", "raw", "-c", "write -P 0xa5 0 1M", "-c", "flush", alpha.URI())

	text := scrape(t, addrs[0])
	m := parseMetrics(t, text)
	for series, want := range map[string]float64{
		`blockrep_resource_role{resource="r0",role="Primary"}`:                           1,
		`blockrep_resource_role{resource="r0",role="Secondary"}`:                         0,
		`blockrep_resource_disk_state{disk="UpToDate",resource="r0"}`:                    1,
		`blockrep_resource_quorum{resource="r0"}`:                                        1,
		`blockrep_resource_suspended{resource="r0"}`:                                     0,
		`blockrep_peer_connection_state{peer="beta",resource="r0",state="Connected"}`:    1,
		`blockrep_peer_connection_state{peer="beta",resource="r0",state="StandAlone"}`:   0,
		`blockrep_peer_replication_state{peer="beta",resource="r0",state="Established"}`: 1,
		`blockrep_peer_disk_state{disk="UpToDate",peer="beta",resource="r0"}`:            1,
		`blockrep_peer_out_of_sync_bytes{peer="beta",resource="r0"}`:                     0,
	} {
		if got, ok := m[series]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", series, got, ok, want)
		}
	}
	for series, min := range map[string]float64{
		`blockrep_resource_written_bytes_total{resource="r0"}`:                               1 << 20,
		`blockrep_nbd_bytes_total{kind="write",resource="r0"}`:                               1 << 20,
		`blockrep_nbd_requests_total{kind="write",resource="r0"}`:                            1,
		`blockrep_nbd_request_duration_seconds_count{kind="write",resource="r0"}`:            1,
		`blockrep_nbd_request_duration_seconds_count{kind="flush",resource="r0"}`:            1,
		`blockrep_peer_ack_duration_seconds_count{peer="beta",resource="r0"}`:                1,
		`blockrep_peer_inflight_requests_max{peer="beta",resource="r0"}`:                     1,
		`blockrep_nbd_request_duration_seconds_bucket{kind="write",resource="r0",le="+Inf"}`: 1,
	} {
		if got := m[series]; got < min {
			t.Errorf("%s = %v, want at least %v", series, got, min)
		}
	}
	mb := parseMetrics(t, scrape(t, addrs[1]))
	if got := mb[`blockrep_resource_role{resource="r0",role="Secondary"}`]; got != 1 {
		t.Errorf("beta: role Secondary = %v, want 1", got)
	}
	if t.Failed() {
		t.Logf("alpha's metrics:\n%s", text)
	}

	t.Run("promtool check metrics", func(t *testing.T) {
		cmd := exec.Command("promtool", "check", "metrics")
		cmd.Stdin = strings.NewReader(text)
		out, err := cmd.CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Fatalf("promtool check metrics: %v\n%s", err, out)
		}
	})

	t.Run("prometheus follows out-of-sync bytes", func(t *testing.T) {
		prom := startPrometheus(t, addrs[0])
		const q = `blockrep_peer_out_of_sync_bytes{resource="r0",peer="beta"}`
		waitQuery(t, prom, q, "0 once scraped", func(v float64) bool { return v == 0 })
		c.MustAdm(alpha, "disconnect", c.Res)
		c.Run("qemu-io", "-f", "raw", "-c", "write -P 0x3c 4M 2M", alpha.URI())
		waitQuery(t, prom, q, "2 MiB out of sync while disconnected", func(v float64) bool { return v >= 2<<20 })
		c.MustAdm(alpha, "connect", c.Res)
		waitQuery(t, prom, q, "0 after resync", func(v float64) bool { return v == 0 })
		waitQuery(t, prom, `max_over_time(`+q+`[5m])`, "the peak in the history", func(v float64) bool { return v >= 2<<20 })
	})
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %v %v\n%s", resp.Status, err, b)
	}
	return string(b)
}

// parseMetrics maps each sample line's series (name and labels as printed) to its value.
func parseMetrics(t *testing.T, text string) map[string]float64 {
	t.Helper()
	m := map[string]float64{}
	for _, line := range strings.Split(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad sample line %q", line)
		}
		m[line[:i]] = v
	}
	return m
}

// startPrometheus runs a Prometheus server scraping target every second.
func startPrometheus(t *testing.T, target string) string {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: blockrep\n    static_configs:\n      - targets: ['%s']\n", target)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("prometheus", "--config.file", cfgPath, "--storage.tsdb.path", filepath.Join(dir, "data"),
		"--web.listen-address", addr)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("prometheus log:\n%s", tailLines(string(b), 20))
		}
	})
	base := "http://" + addr
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(base + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitQuery polls Prometheus's query API until the query's single value satisfies ok.
func waitQuery(t *testing.T, base, query, what string, ok func(float64) bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	last := "no result"
	for time.Now().Before(deadline) {
		v, err := queryValue(base, query)
		if err == nil && ok(v) {
			return
		}
		if err != nil {
			last = err.Error()
		} else {
			last = strconv.FormatFloat(v, 'f', -1, 64)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("%s: timed out waiting for %s (last: %s)", query, what, last)
}

func queryValue(base, query string) (float64, error) {
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(query))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Value []any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, err
	}
	if r.Status != "success" {
		return 0, fmt.Errorf("query failed: %s", r.Error)
	}
	if len(r.Data.Result) != 1 || len(r.Data.Result[0].Value) != 2 {
		return 0, fmt.Errorf("%d series", len(r.Data.Result))
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	return strconv.ParseFloat(s, 64)
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
