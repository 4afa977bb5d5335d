package clustertest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/blockrep/blockrep/resource/control"
)

// These helpers never fail the test themselves, so that they can be used from
// goroutines other than the test's (status pollers, fault schedulers) and by callers
// that treat an error as an observation.

// TryStatus is node n's status of the cluster's resource, or why it cannot be had
// (daemon down, resource not up). It waits at most timeout.
func (c *Cluster) TryStatus(n *Node, timeout time.Duration) (control.ResourceStatus, error) {
	cl := control.NewClient(n.RunDir)
	cl.Timeout = timeout
	resp, err := cl.Do(control.Request{Verb: "status", Resource: c.Res})
	if err != nil {
		return control.ResourceStatus{}, err
	}
	if resp.Status == nil || len(resp.Status.Resources) == 0 {
		return control.ResourceStatus{}, errors.New("status names no resource")
	}
	return resp.Status.Resources[0], nil
}

// Fault installs a disk fault rule on node n ("" clears it); the daemon must run with
// Options.FaultInjection.
func (c *Cluster) Fault(n *Node, rule string) error {
	_, err := control.NewClient(n.RunDir).Do(control.Request{Verb: "fault", Resource: c.Res, Fault: rule})
	return err
}

// Running reports whether node n's daemon runs (as far as this harness started it).
func (n *Node) Running() bool { return n.cmd != nil }

// LogFile is the path of node n's daemon log (every run appends to it).
func (n *Node) LogFile() string { return n.log }

// ExportPath is the unix socket of node n's export.
func (n *Node) ExportPath() string { return control.ExportPath(n.RunDir, n.c.Res) }

// DumpGoroutines asks a running daemon for a stack dump (SIGQUIT: the Go runtime
// prints every goroutine to the log and exits), for diagnosing a hang.
func (c *Cluster) DumpGoroutines(n *Node) {
	if n.cmd == nil {
		return
	}
	n.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-n.exited:
	case <-time.After(5 * time.Second):
	}
	c.Kill(n)
}

// TryAdm runs blockrepadm as node n and returns an error carrying its message and
// exit code when it fails.
func (c *Cluster) TryAdm(n *Node, args ...string) error {
	_, errOut, code := c.Adm(n, args...)
	if code != 0 {
		return &AdmError{Node: n.Name, Args: args, Code: code, Msg: trimNL(errOut)}
	}
	return nil
}

// AdmError is a failed blockrepadm command.
type AdmError struct {
	Node string
	Args []string
	Code int
	Msg  string
}

func (e *AdmError) Error() string {
	return fmt.Sprintf("%s: blockrepadm %v: exit %d: %s", e.Node, e.Args, e.Code, e.Msg)
}

func trimNL(s string) string {
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == ' ') {
		s = s[:len(s)-1]
	}
	return s
}

// TryDataSum is DataSum that returns an error instead of failing the test.
func (c *Cluster) TryDataSum(n *Node, size int64) (string, error) {
	f, err := os.Open(n.Disk)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, size)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
