package sgio

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/blockrep/blockrep/fence/scsi"
)

// DefaultTimeout bounds a command when neither Device.Timeout nor the context says
// otherwise.
const DefaultTimeout = 30 * time.Second

// Device is a SCSI device opened for SG_IO. It is safe for concurrent use.
type Device struct {
	// Timeout bounds each command (the kernel aborts it afterwards); 0 means
	// DefaultTimeout. A context deadline that comes sooner wins.
	Timeout time.Duration

	path string
	mu   sync.RWMutex // Execute holds it shared so Close cannot free the fd under an ioctl
	f    *os.File
}

var _ scsi.Device = (*Device)(nil)

// Open opens a SCSI generic (/dev/sgN) or SCSI block device (/dev/sdX) and checks that
// it answers SG_IO. It opens read-write (persistent reservation OUT needs it) and falls
// back to read-only.
func Open(path string) (*Device, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NONBLOCK, 0)
	if err != nil && (os.IsPermission(err) || isErrno(err, unix.EROFS)) {
		f, err = os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("sgio: open %s: %w", path, err)
	}
	var v int32
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), sgGetVersionNum, uintptr(unsafe.Pointer(&v))); errno != 0 {
		f.Close()
		return nil, fmt.Errorf("sgio: %s is not a SCSI generic or SCSI block device (SG_GET_VERSION_NUM: %v)", path, errno)
	}
	return &Device{path: path, f: f}, nil
}

func isErrno(err error, e unix.Errno) bool {
	pe, ok := err.(*os.PathError)
	return ok && pe.Err == e
}

// Path is the device path given to Open.
func (d *Device) Path() string { return d.path }

// Execute runs one command through SG_IO.
func (d *Device) Execute(ctx context.Context, cdb []byte, dir scsi.Direction, data []byte) (scsi.Result, error) {
	if err := ctx.Err(); err != nil {
		return scsi.Result{}, err
	}
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if dl, ok := ctx.Deadline(); ok {
		if r := time.Until(dl); r < timeout {
			if r <= 0 {
				return scsi.Result{}, context.DeadlineExceeded
			}
			timeout = r
		}
	}
	sense := make([]byte, senseLen)
	h, err := newHdr(cdb, dir, data, sense, timeout)
	if err != nil {
		return scsi.Result{}, err
	}
	// The kernel dereferences the pointers inside the header: pin what they point to.
	var pin runtime.Pinner
	defer pin.Unpin()
	pin.Pin(&cdb[0])
	pin.Pin(&sense[0])
	if h.dxferp != nil {
		pin.Pin(&data[0])
	}

	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.f == nil {
		return scsi.Result{}, errClosed
	}
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, d.f.Fd(), sgIO, uintptr(unsafe.Pointer(h)))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return scsi.Result{}, fmt.Errorf("sgio: %s: SG_IO: %w", d.path, errno)
		}
		break
	}
	res, err := result(h, sense)
	if err != nil {
		return res, fmt.Errorf("%s: %w", d.path, err)
	}
	return res, nil
}

// Close closes the device; commands still running finish first.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.f == nil {
		return nil
	}
	err := d.f.Close()
	d.f = nil
	return err
}
