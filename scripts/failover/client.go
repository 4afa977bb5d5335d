package main

// The client runs in the fo-client namespace as this same program re-executed under
// `ip netns exec fo-client … -client` (rather than setns on a locked thread: pgx and
// the Go resolver may dial from other threads, which would be in the wrong
// namespace). It commits numbered rows through the floating IP and reports every
// commit as a JSON line on stdout; the harness asks it, on stdin, to check which of
// its committed rows the database still has.

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// event is one line of the client's output.
type event struct {
	K  string `json:"k"`            // ok, err, check
	ID int64  `json:"id,omitempty"` // ok: the row committed
	T  int64  `json:"t"`            // unix nanoseconds: when the commit returned
	E  string `json:"e,omitempty"`
	// check: rows in [Lo, Hi] the client committed, and those of them missing.
	Lo, Hi    int64   `json:",omitempty"`
	Committed int     `json:",omitempty"`
	Missing   []int64 `json:",omitempty"`
}

type clientFlags struct {
	password string
	rate     int
	connTO   time.Duration
	queryTO  time.Duration
	// alter is NAME=VALUE for ALTER SYSTEM on the first connection ("" for none):
	// a way to measure a PostgreSQL setting's effect on recovery without changing
	// what pg-init writes.
	alter string
}

func connString(password string) string {
	return fmt.Sprintf("host=%s port=5432 user=postgres password=%s dbname=postgres sslmode=disable", vip, password)
}

// clientMain is the -client mode.
func clientMain(f clientFlags) error {
	cfg, err := pgx.ParseConfig(connString(f.password))
	if err != nil {
		return err
	}
	cfg.ConnectTimeout = f.connTO
	var outMu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	emit := func(e event) {
		outMu.Lock()
		enc.Encode(e)
		outMu.Unlock()
	}
	var mu sync.Mutex
	var committed []int64 // ascending: ids are taken in order

	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			var lo, hi int64
			if _, err := fmt.Sscanf(sc.Text(), "check %d %d", &lo, &hi); err != nil {
				continue
			}
			mu.Lock()
			var want []int64
			for _, id := range committed {
				if id >= lo && id <= hi {
					want = append(want, id)
				}
			}
			mu.Unlock()
			present, err := selectIDs(cfg, lo, hi)
			e := event{K: "check", T: time.Now().UnixNano(), Lo: lo, Hi: hi, Committed: len(want)}
			if err != nil {
				e.E = err.Error()
			} else {
				e.Missing = missing(want, present)
			}
			emit(e)
		}
		// The harness went away.
		os.Exit(0)
	}()

	var interval time.Duration
	if f.rate > 0 {
		interval = time.Second / time.Duration(f.rate)
	}
	var conn *pgx.Conn
	var lastErr string
	report := func(err error) {
		// Reconnection attempts repeat the same error; one line per change is enough.
		if s := err.Error(); s != lastErr {
			lastErr = s
			emit(event{K: "err", T: time.Now().UnixNano(), E: s})
		}
	}
	next := int64(1)
	tick := time.Now()
	for {
		if interval > 0 {
			tick = tick.Add(interval)
			if d := time.Until(tick); d > 0 {
				time.Sleep(d)
			} else {
				tick = time.Now()
			}
		}
		if conn == nil {
			ctx, cancel := context.WithTimeout(context.Background(), f.connTO)
			c, err := pgx.ConnectConfig(ctx, cfg)
			cancel()
			if err != nil {
				report(err)
				time.Sleep(50 * time.Millisecond)
				continue
			}
			ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
			_, err = c.Exec(ctx, "CREATE TABLE IF NOT EXISTS items (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
			cancel()
			if err == nil && f.alter != "" {
				name, value, _ := strings.Cut(f.alter, "=")
				ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
				_, err = c.Exec(ctx, fmt.Sprintf("ALTER SYSTEM SET %s = %s", pgx.Identifier{name}.Sanitize(), quoteLiteral(value)))
				if err == nil {
					_, err = c.Exec(ctx, "SELECT pg_reload_conf()")
				}
				cancel()
				if err == nil {
					f.alter = ""
				}
			}
			if err != nil {
				report(err)
				c.Close(context.Background())
				continue
			}
			conn = c
		}
		// Every id is tried once: after an error the commit's outcome is unknown, so
		// the id is not reused and is no loss if absent.
		id := next
		next++
		ctx, cancel := context.WithTimeout(context.Background(), f.queryTO)
		_, err := conn.Exec(ctx, "INSERT INTO items (id) VALUES ($1)", id)
		cancel()
		if err != nil {
			report(err)
			conn.Close(context.Background())
			conn = nil
			continue
		}
		now := time.Now()
		lastErr = ""
		mu.Lock()
		committed = append(committed, id)
		mu.Unlock()
		emit(event{K: "ok", ID: id, T: now.UnixNano()})
	}
}

// selectIDs reads the ids in [lo, hi] through the floating IP on its own connection,
// retrying for up to 30 s.
func selectIDs(cfg *pgx.ConnConfig, lo, hi int64) ([]int64, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		ids, err := func() ([]int64, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := pgx.ConnectConfig(ctx, cfg)
			if err != nil {
				return nil, err
			}
			defer c.Close(context.Background())
			rows, err := c.Query(ctx, "SELECT id FROM items WHERE id BETWEEN $1 AND $2", lo, hi)
			if err != nil {
				return nil, err
			}
			return pgx.CollectRows(rows, pgx.RowTo[int64])
		}()
		if err == nil || time.Now().After(deadline) {
			return ids, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// clientProc is the harness's side of the client: the process, and everything it has
// reported so far.
type clientProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser

	mu      sync.Mutex
	commits []commit
	errs    []event
	checks  chan event
	done    chan struct{}
}

// startClient re-executes this program in the client namespace.
func startClient(self string, f clientFlags, logPath string) (*clientProc, error) {
	args := []string{"netns", "exec", clientNS, self, "-client",
		"-rate", fmt.Sprint(f.rate), "-connect-timeout", f.connTO.String(), "-query-timeout", f.queryTO.String(),
		"-alter-system", f.alter}
	cmd := exec.Command("ip", args...)
	// The password travels in the environment, not on a command line others can read.
	cmd.Env = append(os.Environ(), "FAILOVER_PGPASSWORD="+f.password)
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stderr = logf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &clientProc{cmd: cmd, stdin: stdin, checks: make(chan event, 1), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer logf.Close()
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		for sc.Scan() {
			var e event
			if json.Unmarshal(sc.Bytes(), &e) != nil {
				continue
			}
			fmt.Fprintln(logf, sc.Text())
			switch e.K {
			case "ok":
				p.mu.Lock()
				p.commits = append(p.commits, commit{ID: e.ID, At: time.Unix(0, e.T)})
				p.mu.Unlock()
			case "err":
				p.mu.Lock()
				p.errs = append(p.errs, e)
				p.mu.Unlock()
			case "check":
				p.checks <- e
			}
		}
		cmd.Wait()
	}()
	return p, nil
}

// snapshot is a copy of the commits reported so far.
func (p *clientProc) snapshot() []commit {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]commit(nil), p.commits...)
}

// lastCommit is the latest commit reported, or the zero commit.
func (p *clientProc) lastCommit() commit {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.commits) == 0 {
		return commit{}
	}
	return p.commits[len(p.commits)-1]
}

// errorsSince is the distinct errors the client reported after t.
func (p *clientProc) errorsSince(t time.Time) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, e := range p.errs {
		if time.Unix(0, e.T).After(t) && len(out) < 5 {
			out = append(out, e.E)
		}
	}
	return out
}

// check asks the client which of its committed rows in [lo, hi] are missing.
func (p *clientProc) check(lo, hi int64) (event, error) {
	if _, err := fmt.Fprintf(p.stdin, "check %d %d\n", lo, hi); err != nil {
		return event{}, err
	}
	timeout := time.After(45 * time.Second)
	for {
		select {
		case e := <-p.checks:
			if e.Lo != lo || e.Hi != hi {
				continue // the late answer to an earlier check
			}
			if e.E != "" {
				return e, fmt.Errorf("reading the rows back: %s", e.E)
			}
			return e, nil
		case <-p.done:
			return event{}, fmt.Errorf("the client exited")
		case <-timeout:
			return event{}, fmt.Errorf("the client did not answer the check in 45 s")
		}
	}
}

// waitCommitAfter waits until the client reports a commit returned after t.
func (p *clientProc) waitCommitAfter(t time.Time, d time.Duration) error {
	return waitFor(d, "a commit", func() bool { return p.lastCommit().At.After(t) })
}

func (p *clientProc) stop() {
	p.stdin.Close()
	if p.cmd.Process != nil {
		p.cmd.Process.Kill()
	}
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

// clientFlagSet registers the client's flags on fs.
func clientFlagSet(fs *flag.FlagSet, f *clientFlags) {
	fs.IntVar(&f.rate, "rate", 100, "client: commits per second (0: as fast as it can)")
	fs.DurationVar(&f.connTO, "connect-timeout", 300*time.Millisecond, "client: connect timeout")
	fs.DurationVar(&f.queryTO, "query-timeout", time.Second, "client: timeout of one INSERT (its outcome is then unknown)")
	fs.StringVar(&f.alter, "alter-system", "", "NAME=VALUE: ALTER SYSTEM SET once at the start (an experiment; e.g. recovery_init_sync_method=syncfs)")
}

func clientPassword() string { return strings.TrimSpace(os.Getenv("FAILOVER_PGPASSWORD")) }

// quoteLiteral is a SQL string literal.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
