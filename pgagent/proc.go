package pgagent

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cmdError makes a failed command one line: the command, its exit status and
// the last line it printed.
type cmdError struct {
	name string
	err  error
	out  string
}

func (e *cmdError) Error() string {
	last := ""
	if lines := strings.Split(strings.TrimSpace(e.out), "\n"); len(lines) > 0 {
		last = strings.TrimSpace(lines[len(lines)-1])
	}
	if last == "" {
		return fmt.Sprintf("%s: %v", e.name, e.err)
	}
	return fmt.Sprintf("%s: %v: %s", e.name, e.err, last)
}

func (e *cmdError) Unwrap() error { return e.err }

func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if ce, ok := err.(*cmdError); ok {
		return exitCode(ce.err)
	}
	return -1
}

// run runs a command as root and returns its combined output.
func run(ctx context.Context, name string, args ...string) (string, error) {
	return runCmd(exec.CommandContext(ctx, name, args...))
}

// runAs runs a command as the PostgreSQL user. Credentials are set directly
// rather than through runuser/su so that no PAM session is involved.
func (r *resolved) runAs(ctx context.Context, name string, args ...string) (string, error) {
	c := exec.CommandContext(ctx, name, args...)
	c.Dir = "/"
	c.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + r.home, "LC_ALL=C.UTF-8", "USER=" + r.PGUser, "LOGNAME=" + r.PGUser}
	c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(r.uid), Gid: uint32(r.gid), Groups: r.groups}}
	return runCmd(c)
}

func runCmd(c *exec.Cmd) (string, error) {
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	c.WaitDelay = 2 * time.Second // a daemon child keeping our pipe open must not hang us
	err := c.Run()
	if err != nil {
		return out.String(), &cmdError{name: filepath.Base(c.Path), err: err, out: out.String()}
	}
	return out.String(), nil
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

func comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

func pids() []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, n)
		}
	}
	return out
}

func under(p, dir string) bool {
	p = strings.TrimSuffix(p, " (deleted)")
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// holders finds the processes using anything below dir: open files, cwd,
// root, executable or mapped files, as the Filesystem resource agent's fuser
// scan does. Our own process is never included.
func holders(dir string) []int {
	self := os.Getpid()
	var out []int
	for _, pid := range pids() {
		if pid == self || !alive(pid) {
			continue
		}
		if usesDir(pid, dir) {
			out = append(out, pid)
		}
	}
	return out
}

func usesDir(pid int, dir string) bool {
	base := fmt.Sprintf("/proc/%d/", pid)
	for _, l := range []string{"cwd", "root", "exe"} {
		if t, err := os.Readlink(base + l); err == nil && under(t, dir) {
			return true
		}
	}
	fds, _ := os.ReadDir(base + "fd")
	for _, fd := range fds {
		if t, err := os.Readlink(base + "fd/" + fd.Name()); err == nil && under(t, dir) {
			return true
		}
	}
	if maps, err := os.ReadFile(base + "maps"); err == nil {
		for _, line := range strings.Split(string(maps), "\n") {
			if i := strings.IndexByte(line, '/'); i >= 0 && under(line[i:], dir) {
				return true
			}
		}
	}
	return false
}

// killAndWait sends SIGTERM, waits up to grace, then SIGKILL and waits again.
func killAndWait(ctx context.Context, pids []int, grace time.Duration) {
	signalAll(pids, syscall.SIGTERM)
	if waitGone(ctx, pids, grace) {
		return
	}
	signalAll(pids, syscall.SIGKILL)
	waitGone(ctx, pids, 5*time.Second)
}

func signalAll(pids []int, sig syscall.Signal) {
	for _, p := range pids {
		_ = syscall.Kill(p, sig)
	}
}

func waitGone(ctx context.Context, pids []int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		left := false
		for _, p := range pids {
			if alive(p) {
				left = true
			}
		}
		if !left {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}
