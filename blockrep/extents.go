package blockrep

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// ExtentMapper is an optional extra of a Device or Backend: it reports which parts of a
// range are allocated, so that NBD clients (qemu-img, nbdcopy) can skip holes.
//
// Extents calls fn for consecutive, non-empty pieces of [off, off+n) in order; hole
// means the piece is unallocated and reads as zeroes. It stops early when fn returns
// false. A mapper that cannot tell reports data: claiming a hole wrongly loses data,
// claiming data wrongly only costs speed.
type ExtentMapper interface {
	Extents(off, n int64, fn func(off, n int64, hole bool) bool) error
}

// Extents maps the file's holes with lseek SEEK_DATA/SEEK_HOLE. The answer is a
// snapshot: concurrent writes and trims may change it at once.
func (d *FileDevice) Extents(off, n int64, fn func(off, n int64, hole bool) bool) error {
	if err := CheckRange(off, n, d.size); err != nil {
		return err
	}
	end := off + n
	for off < end {
		data, err := unix.Seek(d.fd, off, unix.SEEK_DATA)
		switch {
		case err == unix.ENXIO: // no data at or after off (possibly beyond EOF)
			fn(off, end-off, true)
			return nil
		case err == unix.EINVAL || err == unix.EOPNOTSUPP: // no sparse-file support
			fn(off, end-off, false)
			return nil
		case err != nil:
			return fmt.Errorf("%w: SEEK_DATA %s at %d: %v", ErrIO, d.f.Name(), off, err)
		}
		if data > off {
			h := min(data, end)
			if !fn(off, h-off, true) {
				return nil
			}
			off = h
			continue
		}
		hole, err := unix.Seek(d.fd, off, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("%w: SEEK_HOLE %s at %d: %v", ErrIO, d.f.Name(), off, err)
		}
		h := min(hole, end)
		if h <= off { // cannot happen after SEEK_DATA found data at off; avoid looping
			h = end
		}
		if !fn(off, h-off, false) {
			return nil
		}
		off = h
	}
	return nil
}

// Extents passes the query to the Device if it can answer, else reports data.
func (d DeviceBackend) Extents(off, n int64, fn func(off, n int64, hole bool) bool) error {
	if m, ok := d.Dev.(ExtentMapper); ok {
		return m.Extents(off, n, fn)
	}
	if err := CheckRange(off, n, d.Dev.Size()); err != nil {
		return err
	}
	if n > 0 {
		fn(off, n, false)
	}
	return nil
}
