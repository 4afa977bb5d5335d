// Command failover is `make failover`: PostgreSQL on a blockrep volume, served by the
// daemons' own promoters, on two data nodes and a diskless tiebreaker in network
// namespaces, with a client committing numbered rows through the floating IP while
// nodes are killed, isolated, have their postmaster killed or are switched over. It
// measures each fault's RTO (the client's gap between commits), its RPO (committed
// rows missing afterwards) and whether two nodes ever served at once, and prints a
// summary (also written as markdown to -md).
//
//	go run ./scripts/failover [-trials 3] [-kinds kill,isolate,pgkill,switchover]
//	    [-work DIR] [-keep] [-md bin/failover.md] [-rate 100] [-demo]
//
// -demo runs one kill trial and tells what happens. It needs root, ip netns,
// nbdfuse, losetup, e2fsprogs and PostgreSQL 15 (make deps), and blockrepd and
// blockrepadm in -bin (make build).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// interrupted is done on SIGINT or SIGTERM: every wait gives up and the run tears
// down.
var interrupted context.Context

func main() {
	var (
		trials = flag.Int("trials", 3, "trials per kind")
		kinds  = flag.String("kinds", "kill,isolate,pgkill,switchover", "kinds of fault, comma-separated")
		work   = flag.String("work", "/var/tmp/blockrep-failover", "work directory (emptied at start)")
		keep   = flag.Bool("keep", false, "keep the work directory (logs, backing files)")
		md     = flag.String("md", "bin/failover.md", "write the summary as markdown here (\"\" for none)")
		bin    = flag.String("bin", "bin", "directory of blockrepd and blockrepadm")
		demo   = flag.Bool("demo", false, "one kill trial, told as it happens")
		client = flag.Bool("client", false, "internal: be the client (run in the client namespace)")
		cf     clientFlags
	)
	clientFlagSet(flag.CommandLine, &cf)
	flag.Parse()
	if *client {
		cf.password = clientPassword()
		if err := clientMain(cf); err != nil {
			fmt.Fprintln(os.Stderr, "failover client:", err)
			os.Exit(1)
		}
		return
	}
	if err := canRun(); err != nil {
		fmt.Printf("failover: the failover part needs root and ip netns (%v); skipped\n", err)
		if *demo {
			return
		}
		os.Exit(1)
	}
	var ks []string
	for _, k := range strings.Split(*kinds, ",") {
		switch k = strings.TrimSpace(k); k {
		case "kill", "isolate", "pgkill", "switchover":
			ks = append(ks, k)
		case "":
		default:
			fmt.Fprintf(os.Stderr, "failover: unknown kind %q (kill, isolate, pgkill, switchover)\n", k)
			os.Exit(2)
		}
	}
	if *demo {
		ks, *trials = []string{"kill"}, 1
	}
	var stop context.CancelFunc
	interrupted, stop = signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runAll(ks, *trials, *work, *keep, *md, *bin, *demo, cf); err != nil {
		fmt.Fprintln(os.Stderr, "failover:", err)
		os.Exit(1)
	}
}

// canRun says why namespaces and mounts cannot be used here, or nil.
func canRun() error {
	if os.Geteuid() != 0 {
		return errors.New("not root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("ip not installed")
	}
	if err := exec.Command("ip", "netns", "list").Run(); err != nil {
		return fmt.Errorf("ip netns: %v", err)
	}
	return nil
}

// needPrograms names what the stack needs and is missing.
func needPrograms(bin string) error {
	var missingProgs []string
	for _, p := range []string{"nbdfuse", "losetup", "fsck", "mkfs.ext4", "nsenter", "umount"} {
		if _, err := exec.LookPath(p); err != nil {
			missingProgs = append(missingProgs, p)
		}
	}
	if _, err := os.Stat(filepath.Join(pgBin, "postgres")); err != nil {
		missingProgs = append(missingProgs, "postgresql-15")
	}
	if len(missingProgs) > 0 {
		return fmt.Errorf("missing %s (make deps installs them)", strings.Join(missingProgs, ", "))
	}
	for _, p := range []string{"blockrepd", "blockrepadm"} {
		if _, err := os.Stat(filepath.Join(bin, p)); err != nil {
			return fmt.Errorf("%s not in %s (make build)", p, bin)
		}
	}
	return nil
}

func runAll(kinds []string, trials int, work string, keep bool, md, bin string, demo bool, cf clientFlags) (err error) {
	bin, err = filepath.Abs(bin)
	if err != nil {
		return err
	}
	work, err = filepath.Abs(work)
	if err != nil {
		return err
	}
	if err := needPrograms(bin); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	start := time.Now()
	logf := func(format string, args ...any) {
		fmt.Printf("%6.1fs  %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	if demo {
		logf = func(format string, args ...any) { fmt.Printf(format+"\n", args...) }
		fmt.Println("PostgreSQL on a blockrep volume: data nodes alpha and beta, diskless tiebreaker gamma, each")
		fmt.Println("in its own network namespace; blockrepd's promoter starts PostgreSQL and the floating IP")
		fmt.Printf("%s on whichever node is Primary. We kill the serving node and watch a client.\n\n", vip)
	}

	// What a crashed earlier run left: its namespaces (and with them its daemons and
	// their mounts), loop devices and files.
	teardown(nil, work)
	// Killed just now or by the crash: their loop devices stay attached.
	time.Sleep(200 * time.Millisecond)
	detachLoops(work, false)
	if err := os.RemoveAll(work); err != nil {
		return fmt.Errorf("removing the previous work dir: %v", err)
	}
	c := newCluster(work, bin)
	defer func() {
		logf("tearing down")
		teardown(c, work)
		if keep || err != nil {
			fmt.Printf("work dir kept: %s (daemon logs in */daemon.log, client in client.log)\n", work)
		} else {
			os.RemoveAll(work)
		}
	}()

	members := map[string]string{clientNS: clientIP}
	for _, n := range c.Nodes {
		members[n.NS()] = n.IP
	}
	if err := setupNetwork(members); err != nil {
		return err
	}
	cf.password = randomHex(12)
	if err := c.prepare(cf.password); err != nil {
		return err
	}
	for _, n := range c.Nodes {
		if err := c.start(n); err != nil {
			return err
		}
	}
	for _, n := range c.Nodes {
		if _, err := c.adm(n, "up", resName); err != nil {
			return err
		}
	}
	logf("three daemons up in namespaces fo-alpha, fo-beta, fo-gamma (tiebreaker); pg-init on alpha")
	if _, err := c.adm(c.Nodes[0], "pg-init", "--force", "--password-file", c.PWFile, resName); err != nil {
		return err
	}
	var p *node
	if err := waitFor(120*time.Second, "a node serving PostgreSQL", func() bool { p = c.servingNode(); return p != nil }); err != nil {
		return err
	}
	logf("%s serves PostgreSQL on %s:5432", p.Name, vip)

	cl, err := startClient(self, cf, filepath.Join(work, "client.log"))
	if err != nil {
		return err
	}
	defer cl.stop()
	poll := startPoller(c)
	defer poll.close()
	h := &harness{c: c, cl: cl, poll: poll, logf: logf, missed: map[int64]bool{}}
	if err := cl.waitCommitAfter(start, 60*time.Second); err != nil {
		return fmt.Errorf("the client never committed: %v (errors: %s)", err, strings.Join(cl.errorsSince(start), "; "))
	}
	rate := "as fast as it can"
	if cf.rate > 0 {
		rate = fmt.Sprintf("%d rows/s", cf.rate)
	}
	logf("client in fo-client commits numbered rows through %s, one per transaction, %s", vip, rate)

	if demo {
		return h.demo()
	}
	var results []result
	for _, k := range kinds {
		for i := 1; i <= trials; i++ {
			if interrupted.Err() != nil {
				break
			}
			logf("%s %d/%d", k, i, trials)
			results = append(results, h.trial(k, i))
		}
	}
	tb := table(summarize(results))
	fmt.Printf("\n%s", tb)
	if md != "" {
		body := fmt.Sprintf("# make failover\n\n%s, %d trial(s) per kind; client %s. RTO: the client's gap between the last commit before the fault and the first after. Rows lost: rows the client saw committed that are missing afterwards. Two serving: trials in which a poll (every 100 ms) saw both data nodes Primary or serving; two with quorum: trials in which both of them also had quorum (only a node with quorum can take a write).\n\n%s",
			start.UTC().Format("2006-01-02 15:04 MST"), trials, rate, tb)
		var failures []string
		for _, r := range results {
			if r.Err != "" {
				failures = append(failures, fmt.Sprintf("- %s %d: %s", r.Kind, r.N, r.Err))
			}
		}
		if len(failures) > 0 {
			body += "\nFailed trials:\n\n" + strings.Join(failures, "\n") + "\n"
		}
		if err := os.MkdirAll(filepath.Dir(md), 0o755); err == nil {
			err = os.WriteFile(md, []byte(body), 0o644)
		}
		if err != nil {
			return err
		}
	}
	if interrupted.Err() != nil {
		return errors.New("interrupted")
	}
	for _, r := range results {
		if r.Err != "" || r.Lost > 0 || r.TwoServing > 0 {
			return errors.New("some trials failed (above)")
		}
	}
	return nil
}

// demo is one kill trial, told step by step.
func (h *harness) demo() error {
	r := h.trial("kill", 1)
	switch {
	case r.Err != "":
		return errors.New(r.Err)
	case !r.HaveRTO:
		return errors.New("no commit after the kill")
	}
	fmt.Printf("\nThe client's gap: %s with no commit returning.\n", secs(r.RTO))
	if r.Lost > 0 {
		return fmt.Errorf("%d committed rows lost", r.Lost)
	}
	if r.TwoServing > 0 {
		return fmt.Errorf("two nodes served at once (%d polls)", r.TwoServing)
	}
	fmt.Println("No commit lost; never two nodes serving.")
	return nil
}
