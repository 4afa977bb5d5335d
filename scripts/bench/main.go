// Command bench is `make bench`: it measures blockrep against the reference NBD
// servers the way docs/PERFORMANCE.md describes and prints one table.
//
//	go run ./scripts/bench [-rounds 3] [-only one,C,A,nbdkit,nbd-server,qemu]
//	    [-workloads randwrite,write,randread,durable] [-runtime 6s] [-keep] [-md FILE]
//
// Every server gets fresh 1 GiB backing files in one temp dir (the first 256 MiB
// written with zeros and fsync'd); before each fio run every backing file is
// fdatasync'd and dropped from the page cache (posix_fadvise DONTNEED). Within a round
// each workload runs on every server back to back (the server order rotates from round
// to round); ratios are taken within a round and the table reports medians.
//
// It needs blockrepd and blockrepadm (make build), fio, nbdkit, nbd-server and
// qemu-storage-daemon, and it must run as a user allowed to start them (root here).
package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type workload struct {
	key, title, unit string
	args             []string
	read             bool // the figure is read IOPS
	mib              bool // the figure is MiB/s
	flush            bool // a FLUSH after each write: the fio job must show syncs
}

// The nbd engine of fio 3.33 rejects --fdatasync (DDIR_DATASYNC → EINVAL in
// td_io_queue); --fsync=1 makes it send NBD_CMD_FLUSH after every write (checked with
// nbdkit --filter=log: as many Flush as Write requests), which is what the method's
// "durable 4k writes" means. The run fails if fio reports no syncs.
var workloads = []workload{
	{key: "randwrite", title: "4k randwrite qd32", unit: "IOPS", args: []string{"--rw=randwrite", "--bs=4k", "--iodepth=32"}},
	{key: "write", title: "1M seq write qd8", unit: "MiB/s", args: []string{"--rw=write", "--bs=1M", "--iodepth=8"}, mib: true},
	{key: "randread", title: "4k randread qd32", unit: "IOPS", args: []string{"--rw=randread", "--bs=4k", "--iodepth=32"}, read: true},
	{key: "durable", title: "durable 4k writes qd1", unit: "writes/s", args: []string{"--rw=randwrite", "--bs=4k", "--iodepth=1", "--fsync=1"}, flush: true},
}

func workloadByKey(k string) *workload {
	for i := range workloads {
		if workloads[i].key == k {
			return &workloads[i]
		}
	}
	return nil
}

// result of one fio run on one server.
type result struct {
	figure float64 // IOPS, MiB/s or writes/s
	ios    int64
	cpu    map[string]float64 // CPU seconds per process label during the run
	ctxsw  map[string]int64   // context switches per process label
	rssKB  map[string]int64   // max VmRSS sampled (4k randwrite, blockrep only)
	idle   float64            // fraction of the machine's CPU time idle (incl. iowait) during the run
}

type options struct {
	rounds    int
	only      []string
	workloads []string
	runtime   time.Duration
	keep      bool
	md        string
	bin       string
	tmp       string
	fio       string
	verbose   bool
}

func main() {
	var o options
	var only, wls string
	flag.IntVar(&o.rounds, "rounds", 3, "rounds (each runs every workload on every server)")
	flag.StringVar(&only, "only", "", "comma list of servers: one,C,A,nbdkit,nbd-server,qemu (default all)")
	flag.StringVar(&wls, "workloads", "", "comma list of workloads: randwrite,write,randread,durable (default all)")
	flag.DurationVar(&o.runtime, "runtime", 6*time.Second, "fio runtime per run")
	flag.BoolVar(&o.keep, "keep", false, "keep the temp dir (backing files, configs, logs, fio JSON)")
	flag.StringVar(&o.md, "md", "", "also write the report as markdown to this file")
	flag.StringVar(&o.bin, "bin", "bin", "directory of blockrepd and blockrepadm")
	flag.StringVar(&o.tmp, "tmp", "", "parent of the temp dir (default $TMPDIR or /tmp); it must be a real filesystem")
	flag.StringVar(&o.fio, "fio", "fio", "fio binary")
	flag.BoolVar(&o.verbose, "v", false, "log every fio command line")
	flag.Parse()
	if flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	for _, s := range splitList(only) {
		if !slices.ContainsFunc(serverOrder, func(x struct{ key, name, tool string }) bool { return x.key == s }) {
			fatalf("-only: unknown server %q (one, C, A, nbdkit, nbd-server, qemu)", s)
		}
		o.only = append(o.only, s)
	}
	if len(o.only) == 0 {
		for _, s := range serverOrder {
			o.only = append(o.only, s.key)
		}
	}
	for _, w := range splitList(wls) {
		if workloadByKey(w) == nil {
			fatalf("-workloads: unknown workload %q (randwrite, write, randread, durable)", w)
		}
		o.workloads = append(o.workloads, w)
	}
	if len(o.workloads) == 0 {
		for _, w := range workloads {
			o.workloads = append(o.workloads, w.key)
		}
	}
	if o.rounds < 1 || o.runtime < time.Second {
		fatalf("need -rounds ≥ 1 and -runtime ≥ 1s")
	}

	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "bench: %v: stopping\n", s)
		cancel()
		<-sigs
		fmt.Fprintln(os.Stderr, "bench: second signal: exiting without waiting")
		os.Exit(130)
	}()

	err := run(ctx, &o)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(2)
}

func run(ctx context.Context, o *options) (err error) {
	bin, err := filepath.Abs(o.bin)
	if err != nil {
		return err
	}
	needs := map[string]bool{o.fio: true}
	for _, key := range o.only {
		for _, s := range serverOrder {
			if s.key == key {
				if s.tool == "blockrepd" {
					needs[filepath.Join(bin, "blockrepd")] = true
					needs[filepath.Join(bin, "blockrepadm")] = true
				} else {
					needs[s.tool] = true
				}
			}
		}
	}
	for t := range needs {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s not found (make build; make deps; qemu-storage-daemon is in qemu-system-common): %v", t, err)
		}
	}

	dir, err := os.MkdirTemp(o.tmp, "brbench.")
	if err != nil {
		return err
	}
	becomeSubreaper()
	b := &bench{dir: dir, bin: bin, ps: &procSet{dir: dir}, verbose: o.verbose}
	defer func() {
		b.ps.stopAll()
		if o.keep {
			b.logf("kept %s", dir)
		} else {
			os.RemoveAll(dir)
		}
	}()
	if fs := fsType(dir); strings.HasPrefix(fs, "tmpfs ") || strings.HasPrefix(fs, "ramfs ") {
		b.logf("warning: %s is on %s: fdatasync is free there; use -tmp on a disk filesystem", dir, fs)
	}
	env := describeMachine(dir, bin, o.fio)
	b.logf("temp dir %s (%s)", dir, fsType(dir))

	// Set up every server once (fresh backing files); they stay up for all rounds and
	// sit idle while another one is measured.
	servers := map[string]*server{}
	for _, key := range o.only {
		t0 := time.Now()
		b.logf("setting up %s", serverName(key))
		s, err := b.setup(ctx, key)
		if err != nil {
			return fmt.Errorf("setting up %s: %w", serverName(key), err)
		}
		servers[key] = s
		b.logf("  %s ready in %.1fs: %s", key, time.Since(t0).Seconds(), s.uri)
	}
	var allFiles []string
	for _, key := range o.only {
		allFiles = append(allFiles, servers[key].files...)
	}

	rt := int(o.runtime.Round(time.Second) / time.Second)
	res := &results{servers: o.only, workloads: o.workloads, rounds: o.rounds, runtime: rt, env: env,
		data: map[runKey]*result{}}
	res.started = time.Now()
	total := o.rounds * len(o.workloads) * len(o.only)
	n := 0
	for r := 0; r < o.rounds; r++ {
		for _, wk := range o.workloads {
			w := workloadByKey(wk)
			order := rotate(o.only, r)
			for _, key := range order {
				n++
				s := servers[key]
				maxRes := 0.0
				for _, f := range allFiles {
					frac, err := evict(f)
					if err != nil {
						return fmt.Errorf("evicting %s: %w", f, err)
					}
					maxRes = max(maxRes, frac)
				}
				res.maxResident = max(res.maxResident, maxRes)
				out := filepath.Join(dir, fmt.Sprintf("fio-r%d-%s-%s.json", r+1, wk, key))
				rr, err := b.measure(ctx, o.fio, s, w, rt, out)
				if err != nil {
					return fmt.Errorf("round %d, %s on %s: %w", r+1, w.title, s.name, err)
				}
				res.data[runKey{r, wk, key}] = rr
				b.logf("[%d/%d] round %d %-10s %-28s %10.0f %s%s", n, total, r+1, wk, s.name, rr.figure, w.unit, cpuNote(rr))
			}
		}
	}
	res.finished = time.Now()
	res.env.loadEnd = loadavg()

	report := res.render()
	fmt.Println(report)
	if o.md != "" {
		cmdline := "go run ./scripts/bench " + strings.Join(os.Args[1:], " ")
		md := fmt.Sprintf("<!-- generated by %s -->\n\n%s", cmdline, report)
		if err := os.WriteFile(o.md, []byte(md), 0o644); err != nil {
			return err
		}
		b.logf("report written to %s", o.md)
	}
	return nil
}

func rotate(s []string, r int) []string {
	n := len(s)
	out := make([]string, n)
	for i := range s {
		out[i] = s[(i+r)%n]
	}
	return out
}

func cpuNote(r *result) string {
	if len(r.cpu) == 0 || r.ios == 0 {
		return ""
	}
	var parts []string
	for _, l := range sortedKeys(r.cpu) {
		parts = append(parts, fmt.Sprintf("%s %.1fµs", l, r.cpu[l]*1e6/float64(r.ios)))
	}
	return fmt.Sprintf("  (CPU/IO: %s; machine idle %.0f%%)", strings.Join(parts, ", "), 100*r.idle)
}

type fioOut struct {
	Jobs []struct {
		Error int `json:"error"`
		Read  struct {
			IOPS     float64 `json:"iops"`
			BwBytes  float64 `json:"bw_bytes"`
			TotalIOs int64   `json:"total_ios"`
		} `json:"read"`
		Write struct {
			IOPS     float64 `json:"iops"`
			BwBytes  float64 `json:"bw_bytes"`
			TotalIOs int64   `json:"total_ios"`
		} `json:"write"`
		Sync struct {
			TotalIOs int64 `json:"total_ios"`
		} `json:"sync"`
		JobRuntime int64   `json:"job_runtime"` // ms
		UsrCPU     float64 `json:"usr_cpu"`     // % of one CPU
		SysCPU     float64 `json:"sys_cpu"`
	} `json:"jobs"`
}

var clkTck = 100.0 // USER_HZ; 100 on Linux

// measure runs fio once against s, accounting the server processes' CPU time and
// context switches, and sampling blockrepd's RSS during the 4k random write run.
func (b *bench) measure(ctx context.Context, fioBin string, s *server, w *workload, runtime int, out string) (*result, error) {
	args := []string{"--name=" + s.key + "-" + w.key, "--ioengine=nbd", "--uri=" + s.uri,
		"--size=256M", fmt.Sprintf("--runtime=%d", runtime), "--time_based",
		"--output-format=json", "--output=" + out}
	args = append(args, w.args...)
	if b.verbose {
		b.logf("  %s %s", fioBin, strings.Join(args, " "))
	}

	// Processes per label; nbd-server's per-client child counts as nbd-server.
	pids := func() map[string][]int {
		m := map[string][]int{}
		for _, p := range s.procs {
			if p.alive() {
				m[p.label] = append(m[p.label], p.pid)
			}
		}
		if s.extraPids != nil && len(s.procs) > 0 {
			m[s.procs[0].label] = append(m[s.procs[0].label], s.extraPids()...)
		}
		return m
	}
	cpuNow := func() map[string]float64 {
		m := map[string]float64{}
		for _, p := range s.procs {
			if st, err := readStat(p.pid); err == nil {
				m[p.label] += float64(st.cpuTicks) / clkTck
			}
		}
		return m
	}
	cpuBefore := cpuNow()
	idleBefore, totalBefore := cpuIdle()
	switches := map[string]*switchCounter{}
	for l, ps := range pids() {
		switches[l] = newSwitchCounter(ps)
	}

	// A sampler: context switches of every thread (nbdkit's and nbd-server's come and
	// go with the connection) and, during the 4k random write run, blockrepd's RSS.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	rss := map[string]int64{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			for l, ps := range pids() {
				if c := switches[l]; c != nil {
					c.sample(ps)
				}
			}
			if w.key == "randwrite" {
				for _, p := range s.rssProcs {
					rss[p.label] = max(rss[p.label], statusKB(p.pid, "VmRSS"))
				}
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	cmd := exec.CommandContext(ctx, fioBin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	msg, err := cmd.CombinedOutput()
	close(stop)
	wg.Wait()
	for l, ps := range pids() {
		if c := switches[l]; c != nil {
			c.sample(ps)
		}
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("fio: %v: %s", err, strings.TrimSpace(string(msg)))
	}
	// nbd-server's per-client child is reaped by its parent a moment after fio
	// disconnects; its CPU time then shows in the parent's cutime/cstime.
	if s.extraPids != nil {
		waitFor(ctx, "nbd-server's client process to exit", 3*time.Second, func() (bool, error) {
			return len(s.extraPids()) == 0, nil
		})
	}
	cpuAfter := cpuNow()
	idleAfter, totalAfter := cpuIdle()

	raw, err := os.ReadFile(out)
	if err != nil {
		return nil, err
	}
	var fo fioOut
	if err := json.Unmarshal(raw, &fo); err != nil {
		return nil, fmt.Errorf("fio JSON %s: %v", out, err)
	}
	if len(fo.Jobs) != 1 {
		return nil, fmt.Errorf("fio JSON %s: %d jobs", out, len(fo.Jobs))
	}
	j := fo.Jobs[0]
	if j.Error != 0 {
		return nil, fmt.Errorf("fio job error %d (%s): %s", j.Error, syscall.Errno(j.Error), strings.TrimSpace(string(msg)))
	}
	r := &result{cpu: map[string]float64{}, ctxsw: map[string]int64{}, rssKB: rss}
	if d := totalAfter - totalBefore; d > 0 {
		r.idle = float64(idleAfter-idleBefore) / float64(d)
	}
	switch {
	case w.read:
		r.figure, r.ios = j.Read.IOPS, j.Read.TotalIOs
	case w.mib:
		r.figure, r.ios = j.Write.BwBytes/(1<<20), j.Write.TotalIOs
	default:
		r.figure, r.ios = j.Write.IOPS, j.Write.TotalIOs
	}
	if r.ios == 0 {
		return nil, errors.New("fio completed no I/O")
	}
	if w.flush && j.Sync.TotalIOs < j.Write.TotalIOs-1 {
		return nil, fmt.Errorf("fio sent %d flushes for %d writes: not a durable-write run", j.Sync.TotalIOs, j.Write.TotalIOs)
	}
	for l, a := range cpuAfter {
		r.cpu[l] = a - cpuBefore[l]
	}
	for l, c := range switches {
		r.ctxsw[l] = c.total()
	}
	// The client's CPU time, from fio's own accounting (context switches not known).
	r.cpu[clientLabel] = (j.UsrCPU + j.SysCPU) / 100 * float64(j.JobRuntime) / 1000
	return r, nil
}

const clientLabel = "fio (client)"

// cpuIdle returns the machine's idle+iowait and total jiffies (/proc/stat).
func cpuIdle() (idle, total int64) {
	b, _ := os.ReadFile("/proc/stat")
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	for i := 1; i < len(f) && i <= 8; i++ { // user nice system idle iowait irq softirq steal
		v, _ := strconv.ParseInt(f[i], 10, 64)
		total += v
		if i == 4 || i == 5 {
			idle += v
		}
	}
	return
}

func sortedKeys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	// primary before peer, otherwise alphabetical
	slices.SortFunc(ks, func(a, b string) int {
		rank := func(s string) int {
			switch s {
			case "primary":
				return 0
			case "peer":
				return 1
			case clientLabel:
				return 3
			}
			return 2
		}
		if d := rank(a) - rank(b); d != 0 {
			return d
		}
		return strings.Compare(a, b)
	})
	return ks
}

// ---- machine description ----

type machine struct {
	cpus      int
	cpuModel  string
	kernel    string
	memGiB    float64
	fs        string
	tools     []string
	goVersion string
	commit    string
	binSum    string // sha256 prefix of the blockrepd measured
	loadStart string
	loadEnd   string
}

func describeMachine(dir, bin, fioBin string) machine {
	m := machine{fs: fsType(dir), loadStart: loadavg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok {
				switch strings.TrimSpace(k) {
				case "processor":
					m.cpus++
				case "model name":
					m.cpuModel = strings.TrimSpace(v)
				}
			}
		}
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		m.kernel = cstr(u.Release[:])
	}
	m.memGiB = float64(statusLineKB("/proc/meminfo", "MemTotal")) / (1 << 20)
	first := func(name string, args ...string) string {
		out, _ := exec.Command(name, args...).CombinedOutput()
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return line
	}
	m.tools = []string{
		first(fioBin, "--version"),
		first("nbdkit", "--version"),
		strings.TrimPrefix(first("nbd-server", "-V"), "This is "),
		first("qemu-storage-daemon", "--version"),
	}
	m.goVersion = first("go", "version")
	m.commit = first("git", "rev-parse", "--short", "HEAD")
	if data, err := os.ReadFile(filepath.Join(bin, "blockrepd")); err == nil {
		m.binSum = fmt.Sprintf("%x", sha256.Sum256(data))[:12]
	}
	if out, err := exec.Command("go", "version", "-m", filepath.Join(bin, "blockrepd")).Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[1] == "vcs.modified" && f[2] == "true" {
				m.commit += " + uncommitted changes"
			}
		}
	}
	return m
}

func cstr(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

func statusLineKB(path, field string) int64 {
	b, _ := os.ReadFile(path)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	return 0
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
}

// fsType: the type of the longest mount point containing path.
func fsType(path string) string {
	b, _ := os.ReadFile("/proc/mounts")
	best, typ := "", "?"
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		mp := f[1]
		if (path == mp || strings.HasPrefix(path, strings.TrimSuffix(mp, "/")+"/")) && len(mp) > len(best) {
			best, typ = mp, f[2]+" on "+f[0]
		}
	}
	return typ
}
