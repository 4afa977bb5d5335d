package main

// Process bookkeeping: every process the benchmark starts is registered here and
// stopped on exit, error or Ctrl-C. Processes run in their own process group (a
// terminal's Ctrl-C reaches only the benchmark, which then stops them in order).

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type proc struct {
	label string // what the process is, e.g. "alpha", "replica"
	pid   int
	done  chan struct{} // closed when the process has exited and been reaped
}

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

type procSet struct {
	mu    sync.Mutex
	procs []*proc
	dir   string // the benchmark's temp dir: any process naming it is ours
}

// becomeSubreaper makes orphaned descendants (a daemonizing nbd-server) our children,
// so that they can be waited for and never outlive the benchmark unnoticed.
func becomeSubreaper() {
	const prSetChildSubreaper = 36
	syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
}

// start runs name with args, stdout and stderr to logPath.
func (ps *procSet) start(label, logPath, name string, args ...string) (*proc, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{label: label, pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	ps.add(p)
	return p, nil
}

// adopt registers a process that is not a direct exec.Cmd child (a daemon whose
// launcher exited; with becomeSubreaper it is our child now).
func (ps *procSet) adopt(label string, pid int) *proc {
	p := &proc{label: label, pid: pid, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		var ws syscall.WaitStatus
		for {
			_, err := syscall.Wait4(pid, &ws, 0, nil)
			if err == syscall.EINTR {
				continue
			}
			if err == nil {
				return
			}
			break // ECHILD: not our child after all; poll
		}
		for processExists(pid) {
			time.Sleep(100 * time.Millisecond)
		}
	}()
	ps.add(p)
	return p
}

func (ps *procSet) add(p *proc) {
	ps.mu.Lock()
	ps.procs = append(ps.procs, p)
	ps.mu.Unlock()
}

// processExists: the pid exists and is not a zombie.
func processExists(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// stop sends SIGTERM (daemons shut down cleanly on it), then SIGKILL after grace.
func stopProc(p *proc, grace time.Duration) {
	if !p.alive() {
		return
	}
	syscall.Kill(p.pid, syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	syscall.Kill(p.pid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(3 * time.Second):
	}
}

// stopAll stops every registered process, newest first, then kills any leftover
// process whose command line names the benchmark's temp dir (e.g. nbd-server's
// per-client children).
func (ps *procSet) stopAll() {
	ps.mu.Lock()
	procs := append([]*proc(nil), ps.procs...)
	ps.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		stopProc(procs[i], 10*time.Second)
	}
	if ps.dir == "" {
		return
	}
	for _, pid := range pidsNaming(ps.dir) {
		syscall.Kill(pid, syscall.SIGKILL)
		var ws syscall.WaitStatus
		syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
	}
}

// pidsNaming lists live processes (not us) whose command line contains s.
func pidsNaming(s string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(string(b), s) && processExists(pid) {
			out = append(out, pid)
		}
	}
	return out
}

// childrenOf lists the pids whose parent is pid.
func childrenOf(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		cpid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(cpid)
		if err == nil && st.ppid == pid {
			out = append(out, cpid)
		}
	}
	return out
}

type procStat struct {
	ppid     int
	cpuTicks int64 // utime+stime+cutime+cstime
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errors.New("bad stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0]=state f[1]=ppid ... f[11]=utime f[12]=stime f[13]=cutime f[14]=cstime
	if len(f) < 15 {
		return procStat{}, errors.New("short stat")
	}
	var st procStat
	st.ppid, _ = strconv.Atoi(f[1])
	for _, k := range []int{11, 12, 13, 14} {
		v, _ := strconv.ParseInt(f[k], 10, 64)
		st.cpuTicks += v
	}
	return st, nil
}

// threadSwitches returns voluntary+involuntary context switches per live thread of pid.
func threadSwitches(pid int, into map[int]int64) {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", pid, tid))
		if err != nil {
			continue
		}
		var n int64
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if ok && (k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches") {
				x, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				n += x
			}
		}
		into[tid] = n
	}
}

// switchCounter counts the context switches of a set of processes over an interval,
// including threads (and processes) that start and end within it: it is sampled
// periodically and keeps the last count seen for every thread.
type switchCounter struct {
	base, last map[int]int64
}

func newSwitchCounter(pids []int) *switchCounter {
	c := &switchCounter{base: map[int]int64{}, last: map[int]int64{}}
	for _, pid := range pids {
		threadSwitches(pid, c.base)
	}
	return c
}

func (c *switchCounter) sample(pids []int) {
	for _, pid := range pids {
		threadSwitches(pid, c.last)
	}
}

func (c *switchCounter) total() int64 {
	var n int64
	for tid, v := range c.last {
		n += v - c.base[tid] // a thread born during the interval has base 0
	}
	return n
}

// statusKB reads a "VmRSS"-style field of /proc/PID/status in KiB.
func statusKB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

// unixListening reports whether a unix socket bound to path is listening
// (/proc/net/unix, flag __SO_ACCEPTCON), without connecting to it: some servers
// (nbd-server -d) serve exactly one connection.
func unixListening(path string) bool {
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 8 && f[7] == path && f[3] == "00010000" {
			return true
		}
	}
	return false
}
