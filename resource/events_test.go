package resource_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockrep/blockrep/internal/clustertest"
	"github.com/blockrep/blockrep/resource/control"
)

// eventStream runs `blockrepadm events` as node n and delivers its lines.
type eventStream struct {
	cmd   *exec.Cmd
	lines chan string
}

func startEvents(t *testing.T, c *clustertest.Cluster, n *clustertest.Node, args ...string) *eventStream {
	full := append([]string{"--config", c.Conf, "--node", n.Name, "--run-dir", n.RunDir, "events"}, args...)
	cmd := exec.Command(filepath.Join(c.Bin, "blockrepadm"), full...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &eventStream{cmd: cmd, lines: make(chan string, 1000)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return s
}

// expect reads lines until one starting with each prefix has been seen, in order,
// each within within of the previous one; it returns what it read.
func (s *eventStream) expect(t *testing.T, within time.Duration, prefixes ...string) []string {
	t.Helper()
	var read []string
	for _, p := range prefixes {
		deadline := time.After(within)
	wait:
		for {
			select {
			case l, ok := <-s.lines:
				if !ok {
					t.Fatalf("events ended before %q; read:\n%s", p, strings.Join(read, "\n"))
				}
				read = append(read, l)
				if strings.HasPrefix(l, p) {
					break wait
				}
			case <-deadline:
				t.Fatalf("no %q within %v; read:\n%s", p, within, strings.Join(read, "\n"))
			}
		}
	}
	return read
}

// TestEvents replays the events acceptance scenario: the initial dump in drbdsetup
// events2 format, change lines for secondary/primary/disconnect/connect within a second
// and in order, JSON, bad input, and a consumer that stops reading.
func TestEvents(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real daemons")
	}
	c := clustertest.New(t, clustertest.Options{Size: 64 << 20})
	alpha, beta := c.Nodes[0], c.Nodes[1]
	c.StartAll()
	c.WaitFor("connection", func() bool { return c.Peer(alpha, beta).Connection == "Connected" })
	c.MustAdm(alpha, "primary", "--force", c.Res)
	c.WaitInSync()

	t.Run("A --now prints the four object kinds and exists -", func(t *testing.T) {
		out := c.MustAdm(alpha, "events", "--now", c.Res)
		want := []string{
			"exists resource name:r0 role:Primary suspended:no",
			"exists device name:r0 volume:0 minor:0 disk:UpToDate",
			"exists connection name:r0 peer-node-id:1 conn-name:beta connection:Connected role:Secondary",
			"exists peer-device name:r0 peer-node-id:1 conn-name:beta volume:0 replication:Established peer-disk:UpToDate",
			"exists -",
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != len(want) {
			t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), out)
		}
		for i, w := range want {
			if !strings.HasPrefix(lines[i], w) {
				t.Errorf("line %d: %q, want it to start with %q", i, lines[i], w)
			}
		}
	})

	t.Run("A changes stream in order within a second", func(t *testing.T) {
		s := startEvents(t, c, alpha, c.Res)
		s.expect(t, 5*time.Second, "exists -")
		c.MustAdm(alpha, "secondary", c.Res)
		s.expect(t, time.Second, "change resource name:r0 role:Secondary")
		c.MustAdm(beta, "primary", c.Res)
		s.expect(t, time.Second, "change connection name:r0 peer-node-id:1 conn-name:beta role:Primary")
		c.MustAdm(beta, "disconnect", c.Res)
		s.expect(t, time.Second, "change connection name:r0 peer-node-id:1 conn-name:beta connection:")
		c.MustAdm(beta, "connect", c.Res)
		s.expect(t, 5*time.Second, "change connection name:r0 peer-node-id:1 conn-name:beta connection:Connected")
		c.MustAdm(beta, "secondary", c.Res)
		s.expect(t, time.Second, "change connection name:r0 peer-node-id:1 conn-name:beta role:Secondary")
	})

	t.Run("JSON and timestamps", func(t *testing.T) {
		out := c.MustAdm(alpha, "events", "--now", "--json", "--statistics", c.Res)
		first := strings.SplitN(out, "\n", 2)[0]
		var m map[string]any
		if err := json.Unmarshal([]byte(first), &m); err != nil {
			t.Fatalf("%q: %v", first, err)
		}
		if m["action"] != "exists" || m["object"] != "resource" || m["name"] != "r0" || m["role"] != "Secondary" {
			t.Fatalf("first JSON line: %v", m)
		}
		if !strings.Contains(out, `"written":`) {
			t.Fatalf("--statistics adds counters:\n%s", out)
		}
		ts := c.MustAdm(alpha, "events", "--now", "--timestamps", c.Res)
		if _, err := time.Parse("2006-01-02T15:04:05.000000-07:00", strings.Fields(ts)[0]); err != nil {
			t.Fatalf("--timestamps: %q: %v", strings.Fields(ts)[0], err)
		}
	})

	t.Run("B bad input: one line, non-zero", func(t *testing.T) {
		for _, args := range [][]string{{"events", "nosuch"}, {"events", "--bogus", c.Res}, {"events"}} {
			_, errOut, code := c.Adm(alpha, args...)
			if code == 0 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || errOut == "" {
				t.Errorf("blockrepadm %v: exit %d, stderr %q: want one line and a non-zero exit", args, code, errOut)
			}
		}
		_, errOut, code := c.Adm(alpha, "--run-dir", t.TempDir(), "events", c.Res)
		if code == 0 || !strings.Contains(errOut, "not running") {
			t.Errorf("daemon down: exit %d, %q", code, errOut)
		}
	})

	t.Run("a consumer that stops reading holds nothing up", func(t *testing.T) {
		// Subscribe over the socket and never read: the daemon's writes to it fill the
		// socket and block that stream only.
		conn, err := net.Dial("unix", control.SocketPath(alpha.RunDir))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		json.NewEncoder(conn).Encode(control.Request{Verb: "events", Resource: "all", Statistics: true})
		// Many state changes: each is a few lines for the stuck reader.
		for i := 0; i < 4; i++ {
			start := time.Now()
			c.MustAdm(beta, "disconnect", c.Res)
			c.MustAdm(beta, "connect", c.Res)
			c.WaitFor("reconnect", func() bool { return c.Peer(alpha, beta).Connection == "Connected" })
			if d := time.Since(start); d > 10*time.Second {
				t.Fatalf("a disconnect/connect took %v with a stuck events reader", d)
			}
		}
		// A fresh reader still gets a current dump at once.
		out := c.MustAdm(alpha, "events", "--now", c.Res)
		if !strings.Contains(out, "connection:Connected") {
			t.Fatalf("dump after the stuck reader:\n%s", out)
		}
		// The stuck reader, when it finally reads, sees a consistent stream: every line
		// parses, and it ends up re-dumped or caught up.
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		dec := json.NewDecoder(conn)
		var resp control.Response
		if err := dec.Decode(&resp); err != nil || !resp.OK {
			t.Fatalf("stream start: %v %+v", err, resp)
		}
		n := 0
		for {
			var l control.EventLine
			if err := dec.Decode(&l); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() || err == io.EOF {
					break
				}
				t.Fatalf("line %d: %v", n, err)
			}
			if l.Action == "" || l.Object == "" {
				t.Fatalf("line %d malformed: %+v", n, l)
			}
			n++
		}
		if n < 4 {
			t.Fatalf("the stuck reader got %d lines, want the backlog", n)
		}
	})
}
