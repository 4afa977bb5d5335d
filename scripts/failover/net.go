package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/blockrep/blockrep/pgagent"
)

// The topology, as internal/clustertest's Netns mode builds it but with fixed names
// (fo-*), so that a run can find and remove what a crashed run left behind: a bridge in
// fo-hub, and a veth pair from it to each of fo-alpha, fo-beta, fo-gamma and
// fo-client, whose end is eth0. Nothing is created in the root namespace.
const (
	nsPrefix = "fo-"
	hubNS    = nsPrefix + "hub"
	clientNS = nsPrefix + "client"
	vip      = "198.18.0.100"
	clientIP = "198.18.0.10"
)

func nsOf(node string) string { return nsPrefix + node }

// run runs a command, returning its output in the error.
func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// hubPort is the hub's end of a namespace's veth pair: taking it down is pulling
// that node's cable (its eth0 loses carrier; the node's own state is untouched).
func hubPort(ns string) string { return "v-" + strings.TrimPrefix(ns, nsPrefix) }

// setupNetwork creates the hub and one namespace per member with ip.
func setupNetwork(members map[string]string) error {
	if err := run("ip", "netns", "add", hubNS); err != nil {
		return err
	}
	steps := [][]string{
		{"ip", "-n", hubNS, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", hubNS, "link", "set", "br0", "up"},
	}
	for ns, ip := range members {
		if err := run("ip", "netns", "add", ns); err != nil {
			return err
		}
		port := hubPort(ns)
		steps = append(steps,
			[]string{"ip", "-n", hubNS, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns},
			[]string{"ip", "-n", hubNS, "link", "set", port, "master", "br0", "up"},
			[]string{"ip", "-n", ns, "addr", "add", ip + "/24", "dev", "eth0"},
			[]string{"ip", "-n", ns, "link", "set", "eth0", "up"},
			[]string{"ip", "-n", ns, "link", "set", "lo", "up"},
		)
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			return err
		}
	}
	return nil
}

// setLink takes a namespace's cable out (false) or puts it back (true).
func setLink(ns string, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	return run("ip", "-n", hubNS, "link", "set", hubPort(ns), state)
}

// nsPids lists the processes in a network namespace.
func nsPids(ns string) []int {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killNS sends SIGKILL to every process in a namespace.
func killNS(ns string) {
	for _, pid := range nsPids(ns) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// comm is a process's command name.
func comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

func ppid(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name in parentheses may hold spaces; the fields follow the last ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 2 {
		return 0
	}
	p, _ := strconv.Atoi(f[1])
	return p
}

// postmaster is the PostgreSQL postmaster in a namespace: the postgres process whose
// parent is not postgres (the backends are its children). 0 when none runs.
func postmaster(ns string) int {
	for _, pid := range nsPids(ns) {
		if comm(pid) == "postgres" && comm(ppid(pid)) != "postgres" {
			return pid
		}
	}
	return 0
}

// listNamespaces is every namespace whose name starts with fo-.
func listNamespaces() []string {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return nil
	}
	var ns []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], nsPrefix) {
			ns = append(ns, f[0])
		}
	}
	return ns
}

// deleteNamespace deletes a namespace once what ran in it is gone.
func deleteNamespace(ns string) error {
	killNS(ns)
	var err error
	for i := 0; i < 100; i++ { // EBUSY while a killed process is still exiting
		if err = run("ip", "netns", "del", ns); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return err
}

// under reports whether path is dir or below it.
func under(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, dir+"/")
}

// unmountUnder lazily unmounts every mount below dir in every mount namespace a
// process has (ip netns exec gives each daemon a private one), deepest first.
func unmountUnder(dir string) {
	procs, _ := filepath.Glob("/proc/[0-9]*/mountinfo")
	seen := map[string]bool{}
	for _, mi := range procs {
		pid := filepath.Base(filepath.Dir(mi))
		mntNS, err := os.Readlink("/proc/" + pid + "/ns/mnt")
		if err != nil || seen[mntNS] {
			continue
		}
		seen[mntNS] = true
		points := mountsUnder(mi, dir)
		for i := len(points) - 1; i >= 0; i-- {
			exec.Command("nsenter", "--mount=/proc/"+pid+"/ns/mnt", "umount", "-l", points[i]).Run()
		}
	}
}

// mountsUnder lists the mount points below dir in a mountinfo file, in mount order.
func mountsUnder(mountinfo, dir string) []string {
	f, err := os.Open(mountinfo)
	if err != nil {
		return nil
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		p := pgagent.UnescapeMount(fields[4])
		if under(p, dir) {
			points = append(points, p)
		}
	}
	return points
}

// deviceLog is the file in the work dir naming every loop device seen on a file of
// the work dir (the poller looks every 100 ms): a daemon killed while serving leaves its loop
// device attached, and once its mount namespace is gone the device's backing file
// reads "/nbd" rather than a path in the work dir, so only this record finds it again,
// even for a run that crashed.
func deviceLog(work string) string { return filepath.Join(work, "loop-devices") }

// noteDevice adds a loop device to the record.
func noteDevice(work, dev string) {
	f, err := os.OpenFile(deviceLog(work), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	fmt.Fprintln(f, dev)
	f.Close()
}

// detachLoops detaches the recorded loop devices whose FUSE mount is gone ("/nbd")
// and, unless onlyDead, those still on an nbdfuse file of the work dir (at teardown,
// once no daemon uses them).
func detachLoops(work string, onlyDead bool) {
	b, err := os.ReadFile(deviceLog(work))
	if err != nil {
		return
	}
	done := map[string]bool{}
	for _, dev := range strings.Fields(string(b)) {
		if done[dev] || !strings.HasPrefix(dev, "/dev/loop") {
			continue
		}
		done[dev] = true
		back, err := os.ReadFile("/sys/block/" + filepath.Base(dev) + "/loop/backing_file")
		if err != nil {
			continue // not attached
		}
		if p := strings.TrimSpace(string(back)); p == "/nbd" || (!onlyDead && under(p, work)) {
			exec.Command("losetup", "-d", dev).Run()
		}
	}
}
