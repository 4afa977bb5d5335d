package soak

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/blockrep/blockrep/internal/clustertest"
)

// fioRun is fio writing its own region of the device alongside the workload, saving
// its verify state: an oracle independent of this package. fio runs for a few seconds
// through whatever faults come, and --verify_only checks its writes on the node
// promoted at the end.
//
// The Primary is never killed while fio runs (killPrimary waits for it): fio counts the
// writes in flight when its connection dies as written (soak seed 20 saw all 7 of them
// missing — they had reached no replica), and its state file cannot say "may or may
// not have landed" as History does.
type fioRun struct {
	tr   *trial
	dir  string
	cmd  *exec.Cmd
	out  strings.Builder
	done chan struct{}
}

func fioArgs(n *clustertest.Node, extra ...string) []string {
	return append([]string{"--name=soak", "--ioengine=nbd", "--uri=" + n.URI(), "--rw=randwrite", "--bs=4k",
		"--iodepth=8", fmt.Sprintf("--offset=%d", fioOff), fmt.Sprintf("--size=%d", fioLen), "--verify=crc32c"}, extra...)
}

// startFio runs fio against n's export for the plan's fio runtime; nil if fio is not
// installed (the trial then says so).
func startFio(tr *trial, n *clustertest.Node) *fioRun {
	if _, err := exec.LookPath("fio"); err != nil {
		tr.logf("fio not installed: no second oracle in this trial")
		return nil
	}
	f := &fioRun{tr: tr, dir: filepath.Join(tr.c.Dir, "fio"), done: make(chan struct{})}
	os.MkdirAll(f.dir, 0o755)
	runtime := fmt.Sprintf("--runtime=%dms", tr.plan.FioRuntime.Milliseconds())
	f.cmd = exec.Command("fio", fioArgs(n, "--verify_state_save=1", "--do_verify=0", "--time_based", runtime)...)
	f.cmd.Dir = f.dir
	f.cmd.Stdout, f.cmd.Stderr = &f.out, &f.out
	if err := f.cmd.Start(); err != nil {
		tr.fail("starting fio: %v", err)
		return nil
	}
	go func() {
		f.cmd.Wait()
		close(f.done)
	}()
	tr.logf("fio writes %d MiB at %d MiB for %s", fioLen>>20, fioOff>>20, tr.plan.FioRuntime)
	return f
}

// wait lets fio end by itself (its runtime is short) before its export goes away on
// purpose.
func (f *fioRun) wait() {
	if f == nil {
		return
	}
	select {
	case <-f.done:
	case <-time.After(2 * time.Minute):
		f.kill()
		f.tr.fail("fio did not end within 2 minutes of its runtime:\n%s", f.out.String())
	}
}

func (f *fioRun) kill() {
	if f == nil {
		return
	}
	f.cmd.Process.Signal(syscall.SIGKILL)
	<-f.done
}

// verify checks fio's saved state on n.
func (f *fioRun) verify(n *clustertest.Node) {
	if f == nil {
		return
	}
	if _, err := os.Stat(filepath.Join(f.dir, "local-soak-0-verify.state")); err != nil {
		f.tr.logf("fio saved no verify state (it may have failed before writing); its output:\n%s", f.out.String())
		return
	}
	cmd := exec.Command("fio", fioArgs(n, "--verify_state_load=1", "--verify_only")...)
	cmd.Dir = f.dir
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "err= 0") {
		f.tr.fail("fio --verify_only on %s: %v\n%s", n.Name, err, out)
		return
	}
	f.tr.res.Fio = true
	f.tr.logf("fio verified its writes on %s", n.Name)
}
