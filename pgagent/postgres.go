package pgagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// postgres starts and stops the server with pg_ctl as the configured user,
// its unix socket in the resource's run dir so that two nodes on one host
// never share a socket path.
type postgres struct{ r *resolved }

func (p *postgres) bin(name string) string { return filepath.Join(p.r.PGBinDir, name) }

func (p *postgres) up(ctx context.Context) error {
	if pid := p.postmaster(); pid > 0 {
		// Already ours and running (a repeated start): just check it.
		return p.waitHealthy(ctx)
	}
	if err := p.clearStale(ctx); err != nil {
		return err
	}
	if err := p.prepareSockDir(); err != nil {
		return err
	}
	if err := traversable(p.r.PGData, p.r); err != nil {
		return err
	}
	secs := int(p.r.StepTimeout / time.Second)
	if secs < 1 {
		secs = 1
	}
	// pg_ctl hands -o to a shell: quote the directory.
	opts := fmt.Sprintf("-k '%s' -p %d", p.r.sockDir, p.r.PGPort)
	var logStart int64
	if fi, err := os.Stat(p.r.pgLog); err == nil {
		logStart = fi.Size()
	}
	if _, err := p.r.runAs(ctx, p.bin("pg_ctl"), "-D", p.r.PGData, "-l", p.r.pgLog, "-o", opts, "-w", "-t", strconv.Itoa(secs), "start"); err != nil {
		return fmt.Errorf("%v: %s", err, p.logError(logStart))
	}
	if err := p.waitHealthy(ctx); err != nil {
		return err
	}
	p.r.Logger.Info("pgagent: postgres running", "pgdata", p.r.PGData, "socket_dir", p.r.sockDir, "port", p.r.PGPort)
	return nil
}

// logError returns the first FATAL or PANIC line the server logged after off.
func (p *postgres) logError(off int64) string {
	b, _ := os.ReadFile(p.r.pgLog)
	if off > int64(len(b)) {
		off = 0
	}
	for _, l := range strings.Split(string(b[off:]), "\n") {
		if strings.Contains(l, "FATAL:") || strings.Contains(l, "PANIC:") {
			return strings.TrimSpace(l)
		}
	}
	return "see " + p.r.pgLog
}

func (p *postgres) prepareSockDir() error {
	if err := os.MkdirAll(p.r.sockDir, 0o755); err != nil {
		return err
	}
	if err := os.Chown(p.r.sockDir, p.r.uid, p.r.gid); err != nil {
		return err
	}
	if err := os.Chmod(p.r.sockDir, 0o755); err != nil {
		return err
	}
	return traversable(p.r.sockDir, p.r)
}

func (p *postgres) waitHealthy(ctx context.Context) error {
	var err error
	for {
		if err = p.check(ctx); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("health check: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// check connects through the unix socket as the superuser (peer auth, root
// mapped to the superuser by the "blockrep" ident map) and verifies the
// server answers and accepts writes.
func (p *postgres) check(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, p.connString())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var one int
	if err := conn.QueryRow(cctx, "SELECT 1").Scan(&one); err != nil {
		return err
	}
	var rec bool
	if err := conn.QueryRow(cctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
		return err
	}
	if rec {
		return errors.New("postgres is in recovery (read-only)")
	}
	return nil
}

func (p *postgres) connString() string {
	return fmt.Sprintf("host='%s' port=%d user='%s' dbname=postgres sslmode=disable connect_timeout=5", p.r.sockDir, p.r.PGPort, p.r.PGUser)
}

// down stops the server: fast, then immediate, then SIGKILL of whatever
// still runs on the data dir.
func (p *postgres) down(ctx context.Context) error {
	pid := p.postmaster()
	if pid == 0 {
		p.killOrphans(ctx)
		return nil
	}
	secs := strconv.Itoa(max(1, int(p.r.StepTimeout/2/time.Second)))
	if _, err := p.r.runAs(ctx, p.bin("pg_ctl"), "-D", p.r.PGData, "-m", "fast", "-w", "-t", secs, "stop"); err != nil {
		p.r.Logger.Warn("pgagent: fast shutdown failed, trying immediate", "err", err)
		if _, err := p.r.runAs(ctx, p.bin("pg_ctl"), "-D", p.r.PGData, "-m", "immediate", "-w", "-t", secs, "stop"); err != nil {
			p.r.Logger.Warn("pgagent: immediate shutdown failed, killing", "err", err)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	// pg_ctl returns once postmaster.pid is gone; the processes may take a
	// moment longer to exit.
	waitGone(ctx, p.dataDirProcs(), 5*time.Second)
	p.killOrphans(ctx)
	if alive(pid) {
		return fmt.Errorf("postmaster pid %d still running", pid)
	}
	p.r.Logger.Info("pgagent: postgres stopped", "pgdata", p.r.PGData)
	return nil
}

// postmaster returns the pid in postmaster.pid if that process is a live
// postgres working in our data dir; 0 otherwise (no file, or a stale one whose
// pid is dead or now belongs to an unrelated process).
func (p *postgres) postmaster() int {
	b, err := os.ReadFile(filepath.Join(p.r.PGData, "postmaster.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if pid <= 0 || !alive(pid) || !p.inDataDir(pid) {
		return 0
	}
	return pid
}

func (p *postgres) inDataDir(pid int) bool {
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	if err != nil || !strings.HasPrefix(comm(pid), "postgres") {
		return false
	}
	// The kernel shows the real path: compare with PGData's.
	dir := p.r.PGData
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	return cwd == dir || cwd == p.r.PGData
}

// clearStale removes a stale postmaster.pid (PostgreSQL itself refuses to
// start when its pid is reused by an unrelated live process) and kills
// backends orphaned by a dead postmaster, which would keep the old shared
// memory segment attached.
func (p *postgres) clearStale(ctx context.Context) error {
	p.killOrphans(ctx)
	// The socket lock file too: its pid may still be an unreaped zombie,
	// which PostgreSQL takes for a live server. The socket dir is ours alone.
	lock := filepath.Join(p.r.sockDir, fmt.Sprintf(".s.PGSQL.%d.lock", p.r.PGPort))
	for _, f := range []string{filepath.Join(p.r.PGData, "postmaster.pid"), lock, strings.TrimSuffix(lock, ".lock")} {
		if _, err := os.Lstat(f); err == nil {
			p.r.Logger.Warn("pgagent: removing stale file of a dead postmaster", "file", f)
			if err := os.Remove(f); err != nil {
				return err
			}
		}
	}
	return nil
}

// killOrphans kills postgres processes left in our data dir without a live postmaster.
func (p *postgres) killOrphans(ctx context.Context) {
	if left := p.dataDirProcs(); len(left) > 0 {
		p.r.Logger.Warn("pgagent: killing orphaned postgres processes", "pids", left)
		signalAll(left, syscall.SIGKILL)
		waitGone(ctx, left, 5*time.Second)
	}
}

func (p *postgres) dataDirProcs() []int {
	var out []int
	for _, pid := range pids() {
		if alive(pid) && p.inDataDir(pid) {
			out = append(out, pid)
		}
	}
	return out
}

// traversable checks that the PostgreSQL user can search every directory
// above path (a 0700 parent makes initdb and the server fail obscurely).
func traversable(path string, r *resolved) error {
	for d := filepath.Dir(path); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		m := fi.Mode().Perm()
		ok := m&0o001 != 0 || (int(st.Uid) == r.uid && m&0o100 != 0) || (int(st.Gid) == r.gid && m&0o010 != 0)
		if !ok {
			return fmt.Errorf("%s is not traversable by user %s (mode %v)", d, r.PGUser, m)
		}
		if d == "/" {
			return nil
		}
	}
}
