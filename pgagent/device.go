package pgagent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pojntfx/go-nbd/pkg/client"
	"golang.org/x/sys/unix"
)

const (
	pathFuseLoop = "nbdfuse+loop"
	pathKernel   = "nbd"
)

// device turns the NBD export into a block device. With the kernel nbd module
// (/sys/module/nbd) it connects /dev/nbdN through go-nbd; without it (as on
// machines without the module) nbdfuse exposes the export as a file in a FUSE
// mount and a loop device is put on that file.
type device struct {
	r    *resolved
	path string // pathFuseLoop or pathKernel
	dev  string // /dev/loopN or /dev/nbdN, "" when down

	fuse     *exec.Cmd
	fuseDone chan struct{}

	nbdFile *os.File
	nbdConn net.Conn
	nbdDone chan error
}

// haveKernelNBD says whether the nbd module is loaded (tests pin it false:
// they are written for the nbdfuse path).
var haveKernelNBD = func() bool {
	_, err := os.Stat("/sys/module/nbd")
	return err == nil
}

func newDevice(r *resolved) *device {
	d := &device{r: r, path: pathFuseLoop}
	if haveKernelNBD() {
		d.path = pathKernel
	}
	return d
}

func (d *device) fuseFile() string { return filepath.Join(d.r.fuseDir, "nbd") }

func (d *device) up(ctx context.Context) error {
	if d.dev != "" {
		return nil
	}
	if d.path == pathKernel {
		return d.upKernel(ctx)
	}
	// The run dir also holds PostgreSQL's socket dir: searchable by all.
	if err := os.MkdirAll(d.r.RunDir, 0o755); err != nil {
		return err
	}
	if err := os.Mkdir(d.r.fuseDir, 0o700); err != nil && !os.IsExist(err) {
		return err
	}
	_ = os.Remove(d.r.fusePID)
	logf, err := os.OpenFile(filepath.Join(d.r.RunDir, "nbdfuse.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	c := exec.Command("nbdfuse", "-P", d.r.fusePID, d.r.fuseDir, d.r.NBDURI)
	c.Stdout, c.Stderr = logf, logf
	// Its own process group: a signal to the daemon's group must not take the
	// volume away under a mounted filesystem.
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.Start(); err != nil {
		return fmt.Errorf("nbdfuse: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = c.Wait(); close(done) }()
	d.fuse, d.fuseDone = c, done
	// nbdfuse writes its pid file once the FUSE file is served.
	for {
		if _, err := os.Stat(d.r.fusePID); err == nil {
			break
		}
		select {
		case <-done:
			return fmt.Errorf("nbdfuse exited: %s", lastLine(filepath.Join(d.r.RunDir, "nbdfuse.log")))
		case <-ctx.Done():
			return fmt.Errorf("nbdfuse not ready: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	out, err := run(ctx, "losetup", "--direct-io=off", "-f", "--show", d.fuseFile())
	if err != nil {
		return err
	}
	d.dev = strings.TrimSpace(out)
	d.r.Logger.Info("pgagent: device attached", "path", d.path, "device", d.dev, "uri", d.r.NBDURI)
	return nil
}

// down detaches whatever this resource has attached, including what a
// previous run left behind, found from the system rather than from memory.
func (d *device) down(ctx context.Context) error {
	if d.path == pathKernel {
		return d.downKernel(ctx)
	}
	var errs []error
	fuseDev := mountDev(d.r.fuseDir)
	// Loop devices on our FUSE file.
	for _, l := range loopsOn(d.fuseFile()) {
		if _, err := run(ctx, "losetup", "-d", l); err != nil {
			errs = append(errs, err)
		} else {
			d.r.Logger.Info("pgagent: loop device detached", "device", l)
		}
	}
	if fuseDev != "" {
		if err := unmountForeign(ctx, d.r, d.r.fuseDir, []string{fuseDev}); err != nil {
			errs = append(errs, err)
		}
	}
	// The loop driver drops the file asynchronously; unmount retries EBUSY.
	if err := d.unmountFuse(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := d.waitFuseExit(ctx); err != nil {
		errs = append(errs, err)
	}
	_ = os.Remove(d.r.fusePID)
	d.dev = ""
	return errors.Join(errs...)
}

func (d *device) unmountFuse(ctx context.Context) error {
	for mounted(d.r.fuseDir) {
		err := unix.Unmount(d.r.fuseDir, 0)
		if err == nil {
			d.r.Logger.Info("pgagent: nbdfuse unmounted", "dir", d.r.fuseDir)
			continue
		}
		if err == unix.ENOTCONN {
			// nbdfuse died; only a lazy unmount clears a dead FUSE mount.
			_ = unix.Unmount(d.r.fuseDir, unix.MNT_DETACH)
			continue
		}
		if err != unix.EBUSY {
			return fmt.Errorf("unmount %s: %v", d.r.fuseDir, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("unmount %s: busy: %w", d.r.fuseDir, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// waitFuseExit waits for our nbdfuse child, or a previous run's nbdfuse named
// by the pid file, to exit after its unmount.
func (d *device) waitFuseExit(ctx context.Context) error {
	if d.fuse != nil {
		select {
		case <-d.fuseDone:
		case <-time.After(10 * time.Second):
			_ = d.fuse.Process.Kill()
			<-d.fuseDone
		case <-ctx.Done():
			_ = d.fuse.Process.Kill()
			<-d.fuseDone
		}
		d.fuse = nil
		return nil
	}
	b, err := os.ReadFile(d.r.fusePID)
	if err != nil {
		return nil
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid > 0 && alive(pid) && comm(pid) == "nbdfuse" {
		if !waitGone(ctx, []int{pid}, 5*time.Second) {
			killAndWait(ctx, []int{pid}, 2*time.Second)
		}
		if alive(pid) {
			return fmt.Errorf("nbdfuse pid %d did not exit", pid)
		}
	}
	return nil
}

// loopsOn lists the loop devices whose backing file is f.
func loopsOn(f string) []string {
	var out []string
	ms, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, m := range ms {
		b, err := os.ReadFile(m)
		if err == nil && strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)") == f {
			out = append(out, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(m))))
		}
	}
	return out
}

// upKernel connects a free /dev/nbdN with go-nbd's client. NOT TESTED: the
// development and CI machines have no nbd kernel module.
func (d *device) upKernel(ctx context.Context) error {
	network, addr, err := parseNBDURI(d.r.NBDURI)
	if err != nil {
		return err
	}
	dev, err := freeNBD()
	if err != nil {
		return err
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	var dl net.Dialer
	conn, err := dl.DialContext(ctx, network, addr)
	if err != nil {
		f.Close()
		return fmt.Errorf("dial %s: %v", addr, err)
	}
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		// Connect blocks for the life of the device (NBD_DO_IT).
		done <- client.Connect(conn, f, &client.Options{
			ExportName:  exportName(d.r.NBDURI),
			BlockSize:   4096,
			OnConnected: func() { close(ready) },
		})
	}()
	select {
	case <-ready:
	case err := <-done:
		conn.Close()
		f.Close()
		return fmt.Errorf("nbd connect %s: %v", dev, err)
	case <-ctx.Done():
		_ = client.Disconnect(f)
		conn.Close()
		f.Close()
		return fmt.Errorf("nbd connect %s: %w", dev, ctx.Err())
	}
	d.nbdFile, d.nbdConn, d.nbdDone, d.dev = f, conn, done, dev
	_ = os.WriteFile(d.r.nbdDevFile, []byte(dev+"\n"), 0o644)
	d.r.Logger.Info("pgagent: device attached", "path", d.path, "device", dev, "uri", d.r.NBDURI)
	return nil
}

func (d *device) downKernel(ctx context.Context) error {
	if d.nbdFile != nil {
		err := client.Disconnect(d.nbdFile)
		select {
		case <-d.nbdDone:
		case <-ctx.Done():
		}
		d.nbdConn.Close()
		d.nbdFile.Close()
		d.nbdFile, d.dev = nil, ""
		_ = os.Remove(d.r.nbdDevFile)
		return err
	}
	// A previous run's device: disconnect it if it is still connected.
	b, err := os.ReadFile(d.r.nbdDevFile)
	if err != nil {
		return nil
	}
	dev := strings.TrimSpace(string(b))
	if _, err := os.Stat("/sys/block/" + filepath.Base(dev) + "/pid"); err == nil {
		if f, err := os.OpenFile(dev, os.O_RDWR, 0); err == nil {
			_ = client.Disconnect(f)
			f.Close()
		}
	}
	return os.Remove(d.r.nbdDevFile)
}

// freeNBD returns an nbd device with no connection (no pid attribute).
func freeNBD() (string, error) {
	ms, _ := filepath.Glob("/sys/block/nbd*")
	for _, m := range ms {
		if _, err := os.Stat(m + "/pid"); os.IsNotExist(err) {
			return "/dev/" + filepath.Base(m), nil
		}
	}
	return "", errors.New("no free /dev/nbd device")
}

func lastLine(file string) string {
	b, _ := os.ReadFile(file)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}
